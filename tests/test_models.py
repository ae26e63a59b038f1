"""Embedded models and model references."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from medtune_core.errors import ModelNotAvailableError
from medtune_core.models.registry import READY_MARKER, materialize, resolve_model


@pytest.mark.slow
def test_embedded_smollm2_materialises_once_and_generates() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(materialize("smollm2-135m-instruct"))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[0] == results[1]  # two workers at once: one materialisation, one folder
    path = resolve_model("embedded:smollm2-135m-instruct")
    assert path == results[0] and (path / READY_MARKER).exists() and (path / "model.safetensors").exists()

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is hypertension?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    text = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert len(text.split()) >= 3


def test_embedded_minilm_embeds() -> None:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(resolve_model("embedded:minilm-l6")), device="cpu")
    vectors = model.encode(["chest pain radiating to the left arm", "myocardial infarction", "a recipe for bread"])
    assert vectors.shape == (3, 384)
    sim = vectors @ vectors.T
    assert sim[0, 1] > sim[0, 2]


def test_unknown_references_say_why(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailableError, match="unknown embedded model 'nope'"):
        resolve_model("embedded:nope")
    with pytest.raises(ModelNotAvailableError, match="not in the local Hugging Face cache"):
        resolve_model("Qwen/Qwen2.5-0.5B-Instruct-not-cached")
    assert resolve_model(tmp_path) == tmp_path


def test_models_cli_lists_embedded_models() -> None:
    result = CliRunner().invoke(app, ["models", "list"])
    assert result.exit_code == 0
    assert "embedded:smollm2-135m-instruct" in result.output and "embedded:minilm-l6" in result.output
