"""Domain vocabulary (:mod:`medtune_core.training.tokenizer_ext`) on the tiny model and the shipped Chinese samples:
learned terms, words files, single-token encoding, mean-of-sub-tokens initialisation, the ``extend_vocab`` /
``train_embeddings`` stage options (real LoRA training, CPU) and ``medtune train extend-vocab``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from flows.cli_training import app as train_app
from medtune_core.errors import MedtuneError
from medtune_core.models.tiny import tiny_model_path
from medtune_core.training import get_stage, merged_model_of, stage_config
from medtune_core.training.tokenizer_ext import (
    EDGE_STOP,
    VOCAB_INFO,
    VocabExtension,
    corpus_texts,
    domain_words,
    extend_vocabulary,
    extended_base,
    learn_terms,
    read_words_file,
)
from tests.test_training_stages import ANS, QS, TINY

SAMPLES = Path(__file__).resolve().parent.parent / "medtune_core" / "samples"
WORDS = ["糖皮质激素", "冠状动脉", "受体阻滞剂", "hypertension"]


@pytest.fixture(scope="module")
def tiny() -> Path:
    return tiny_model_path()


@pytest.fixture(scope="module")
def tok(tiny: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny)


@pytest.fixture(scope="module")
def extended(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> VocabExtension:
    return extend_vocabulary(tiny, [*WORDS, "头痛", "冠状动脉"], tmp_path_factory.mktemp("ext") / "model")


@pytest.fixture(scope="module")
def chat(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("vocab-data") / "chat.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i in range(16):
            row = {"instruction": QS[i % 8], "input": "", "output": ANS[i % 8]}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


# --------------------------------------------------------------------------------------------- learning


def test_learned_terms_are_whole_medical_words_not_fragments(tok) -> None:
    texts = list(corpus_texts([SAMPLES / "pretrain_zh.txt"]))
    terms = learn_terms(texts, top_n=200, tokenizer=tok)
    words = [t.word for t in terms]
    assert 50 <= len(words) <= 200
    for word in ("糖皮质激素", "冠状动脉", "受体阻滞剂", "带状疱疹", "非甾体抗炎药", "高血压"):
        assert word in words, word
    fragments = ("糖皮质", "皮质激素", "受体阻滞", "阻滞剂", "冠状动", "状动脉", "带状疱", "状疱疹", "高血", "血压")
    for fragment in fragments:
        assert fragment not in words, fragment
    # no kept word is part of another kept word; none starts or ends with a function character
    assert not [(a, b) for a in words for b in words if a != b and a in b]
    assert not [w for w in words if w[0] in EDGE_STOP or w[-1] in EDGE_STOP]
    # every term is split by the tokenizer today; words it already has as one token are left out
    assert all(t.pieces == len(_ids(tok, t.word)) >= 2 for t in terms)
    assert len(_ids(tok, "头痛")) == 1
    assert "头痛" in [t.word for t in learn_terms(texts, top_n=500)]
    assert "头痛" not in words
    # best first, top_n respected
    assert [t.score for t in terms] == sorted((t.score for t in terms), reverse=True)
    assert len(learn_terms(texts, top_n=5, tokenizer=tok)) == 5


def test_learning_reads_any_format_and_needs_frequency() -> None:
    files = [SAMPLES / "pretrain_zh.jsonl", SAMPLES / "sft_alpaca_zh.jsonl"]  # documents and alpaca chats
    words = [t.word for t in learn_terms(corpus_texts(files), top_n=100)]
    assert {"细胞", "血红蛋白", "阿司匹林"} <= set(words)
    assert learn_terms(corpus_texts(files), min_freq=1000) == []
    assert learn_terms(["only latin text, 123"]) == []


# ------------------------------------------------------------------------------------------- words file


def test_words_file_comments_jieba_lines_and_tabs(tmp_path: Path) -> None:
    path = tmp_path / "words.txt"
    path.write_text(
        "\ufeff# domain terms\n\n糖皮质激素\n冠状动脉 1200 n\n受体阻滞剂 35\nheart failure\tdisease\n  二甲双胍  \n",
        encoding="utf-8",
    )
    assert read_words_file(path) == ["糖皮质激素", "冠状动脉", "受体阻滞剂", "heart failure", "二甲双胍"]
    assert domain_words(words_file=path)[:2] == ["糖皮质激素", "冠状动脉"]


@pytest.mark.parametrize(
    ("content", "line", "message"),
    [
        ("高血压\n# ok\nheart failure\n", 3, "expected one word a line"),
        ("高血压\n冠状动脉 many n\n", 2, "expected one word a line"),
        ("高血压\n" + "很长" * 30 + "\n", 2, "longer than 48 characters"),
        ("高血压\n糖尿\x07病\n", 2, "control characters"),
    ],
)
def test_bad_words_file_names_file_and_line(tmp_path: Path, content: str, line: int, message: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(MedtuneError, match=message) as info:
        read_words_file(path)
    assert f"{path}:{line}:" in str(info.value)


def test_words_file_not_utf8_or_missing(tmp_path: Path) -> None:
    path = tmp_path / "gbk.txt"
    path.write_bytes("高血压\n".encode() + "糖尿病\n".encode("gbk"))
    with pytest.raises(MedtuneError, match=re.escape(f"{path}:2: not UTF-8")):
        read_words_file(path)
    with pytest.raises(MedtuneError, match=r"words file .*missing\.txt"):
        read_words_file(tmp_path / "missing.txt")


# ------------------------------------------------------------------------------------------- extension


def test_new_words_encode_as_one_token_and_decode_verbatim(extended: VocabExtension, tok) -> None:
    from transformers import AutoTokenizer

    new = AutoTokenizer.from_pretrained(extended.output_dir)
    assert extended.words == WORDS  # order kept, duplicates dropped
    assert extended.skipped == {"头痛": "already one token"}
    assert len(new) == len(tok) + len(WORDS)
    for word, token_id in zip(extended.words, extended.token_ids, strict=True):
        assert _ids(new, word) == [token_id]
        assert extended.sub_tokens[word] == _ids(tok, word) and len(extended.sub_tokens[word]) >= 2
    text = "原发性冠状动脉疾病，糖皮质激素 and hypertension."
    ids = _ids(new, text)
    assert new.decode(ids) == text
    assert extended.token_ids[1] in ids and extended.token_ids[0] in ids
    assert len(ids) < len(_ids(tok, text))
    # a Latin word only matches as a whole word
    assert extended.token_ids[3] not in _ids(new, "hypertensions")


def test_new_rows_are_the_mean_of_old_sub_token_rows(extended: VocabExtension, tiny: Path) -> None:
    from transformers import AutoModelForCausalLM

    old = AutoModelForCausalLM.from_pretrained(tiny)
    new = AutoModelForCausalLM.from_pretrained(extended.output_dir)
    w_old, w_new = old.get_input_embeddings().weight, new.get_input_embeddings().weight
    assert w_new.shape == (w_old.shape[0] + len(WORDS), w_old.shape[1])
    assert new.config.vocab_size == w_new.shape[0]
    assert torch.equal(w_new[: w_old.shape[0]], w_old)  # old rows untouched
    for word, token_id in zip(extended.words, extended.token_ids, strict=True):
        torch.testing.assert_close(w_new[token_id], w_old[extended.sub_tokens[word]].mean(dim=0))
    assert new.get_output_embeddings().weight.data_ptr() == w_new.data_ptr()  # still tied


def test_output_folder_has_vocab_info_and_is_reused(extended: VocabExtension, tiny: Path) -> None:
    folder = extended.output_dir
    info = json.loads((folder / VOCAB_INFO).read_text(encoding="utf-8"))
    assert info["words"] == WORDS and info["token_ids"] == extended.token_ids
    assert info["base_model"] == str(tiny)
    assert (folder / "chat_template.jinja").is_file()
    assert not folder.with_name(folder.name + ".partial").exists()
    assert VocabExtension.load(folder) == extended
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    again = extended_base(tiny, [*WORDS, "头痛"], folder)  # same base and words: not rebuilt
    assert again.token_ids == extended.token_ids
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp


def test_nothing_new_to_add_is_an_error(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(MedtuneError, match="no new words"):
        extend_vocabulary(tiny, ["头痛", ""], tmp_path / "out")


# ------------------------------------------------------------------------------------------- stages


def test_config_checks_for_vocab_options(chat: Path) -> None:
    with pytest.raises(ValueError, match="words_file and/or learn_from"):
        stage_config("sft", train_files=[chat], extend_vocab={})
    with pytest.raises(ValueError, match="new_tokens needs extend_vocab"):
        stage_config("sft", train_files=[chat], train_embeddings="new_tokens")
    cfg = stage_config("pt", train_files=[chat], extend_vocab={"learn_from": str(chat)})
    assert cfg.extend_vocab.learn_from == [chat] and cfg.embedding_mode() == "new_tokens"
    assert stage_config("sft", adapter={"type": "full"}, extend_vocab={"learn_from": chat}).embedding_mode() is None
    assert stage_config("sft", train_embeddings="full").embedding_mode() == "full"


def test_sft_with_extend_vocab_trains_only_the_new_rows(chat: Path, tiny: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    words = tmp_path / "words.txt"
    words.write_text("# terms\n偏头痛 12 n\n急性心肌梗死\n口服补液盐\n", encoding="utf-8")
    cfg = stage_config(
        "sft", **TINY, train_files=[chat], max_steps=2, output_dir=tmp_path / "sft", extend_vocab={"words_file": words}
    )
    result = get_stage("sft").run(cfg)
    ext = VocabExtension.load(tmp_path / "sft" / "extended_base")
    assert result.base_model == ext.output_dir and ext.words == ["偏头痛", "急性心肌梗死", "口服补液盐"]
    assert json.loads((result.adapter_dir / "medtune_base.json").read_text())["base_model"] == str(ext.output_dir)
    assert len(AutoTokenizer.from_pretrained(result.adapter_dir)) == 1024 + 3
    assert result.metrics["steps"] == 2

    before = AutoModelForCausalLM.from_pretrained(ext.output_dir).get_input_embeddings().weight
    merged = AutoModelForCausalLM.from_pretrained(merged_model_of(result))
    after = merged.get_input_embeddings().weight
    assert after.shape == (1024 + 3, 64)
    changed = ((after - before).abs().sum(dim=1) > 0).nonzero().flatten().tolist()
    assert changed == ext.token_ids  # trainable tokens: the new rows moved, every old row is as it was
    assert merged.get_output_embeddings().weight.data_ptr() == after.data_ptr()


def test_untied_lm_head_gets_its_own_mean_init_and_trainable_rows(chat: Path, tiny: Path, tmp_path: Path) -> None:
    """Larger models (Llama, Qwen2.5-7B) do not tie the LM head: its new rows are initialised and trained too."""
    import shutil

    from transformers import AutoModelForCausalLM

    untied = tmp_path / "untied"
    model = AutoModelForCausalLM.from_pretrained(tiny)
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(model.get_input_embeddings().weight.detach().clone() * 0.5)
    model.save_pretrained(untied)
    for f in tiny.iterdir():
        if f.is_file() and not f.name.startswith(("model", "config")):
            shutil.copy2(f, untied / f.name)
    words = tmp_path / "words.txt"
    words.write_text("偏头痛\n急性心肌梗死\n", encoding="utf-8")
    cfg = stage_config(
        "sft",
        **{**TINY, "model": str(untied)},
        train_files=[chat],
        max_steps=2,
        output_dir=tmp_path / "sft",
        extend_vocab={"words_file": words},
    )
    result = get_stage("sft").run(cfg)
    ext = VocabExtension.load(result.base_model)
    base = AutoModelForCausalLM.from_pretrained(result.base_model)
    head = base.get_output_embeddings().weight
    assert head.data_ptr() != base.get_input_embeddings().weight.data_ptr()
    for word, token_id in zip(ext.words, ext.token_ids, strict=True):
        torch.testing.assert_close(head[token_id], model.lm_head.weight[ext.sub_tokens[word]].mean(dim=0))
    merged = AutoModelForCausalLM.from_pretrained(merged_model_of(result))
    moved = ((merged.get_output_embeddings().weight - head).abs().sum(dim=1) > 0).nonzero().flatten().tolist()
    assert moved == ext.token_ids  # the head's new rows trained, its old rows did not


def test_pt_learns_vocab_and_trains_full_embeddings(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    corpus = SAMPLES / "pretrain_zh.txt"
    cfg = stage_config(
        "pt",
        **TINY,
        train_files=[corpus],
        max_samples=24,
        block_size=64,
        max_steps=1,
        output_dir=tmp_path / "pt",
        extend_vocab={"learn_from": [corpus], "top_n": 20},
        train_embeddings="full",
    )
    result = get_stage("pt").run(cfg)
    ext = VocabExtension.load(tmp_path / "pt" / "extended_base")
    assert len(ext.words) == 20 and "糖皮质激素" in ext.words
    config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert "embed_tokens" in config["modules_to_save"] and config["ensure_weight_tying"]  # the head is tied
    before = AutoModelForCausalLM.from_pretrained(ext.output_dir).get_input_embeddings().weight
    after = AutoModelForCausalLM.from_pretrained(merged_model_of(result)).get_input_embeddings().weight
    assert after.shape == (1024 + 20, 64)
    assert ((after - before).abs().sum(dim=1) > 0).sum() > 20  # old rows train too


# ------------------------------------------------------------------------------------------------ CLI


def _cli(*args: str):
    """``medtune train ...`` as flows/cli.py mounts it (SUBAPPS)."""
    import typer

    top = typer.Typer()
    top.add_typer(train_app, name="train")
    return CliRunner().invoke(top, ["train", *args])


def test_cli_extend_vocab(tmp_path: Path) -> None:
    words = tmp_path / "words.txt"
    words.write_text("糖皮质激素\n冠状动脉 7 n\n", encoding="utf-8")
    out = tmp_path / "ext"
    result = _cli("extend-vocab", "-m", "tiny", "--words", str(words), "--out", str(out))
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["added"] == 2 and summary["words"] == ["糖皮质激素", "冠状动脉"]
    assert (out / VOCAB_INFO).is_file()

    corpus = str(SAMPLES / "pretrain_zh.txt")
    dry = _cli("extend-vocab", "-m", "tiny", "--learn-from", corpus, "--top-n", "5", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert len(dry.stdout.split()) == 5

    bad = tmp_path / "bad.txt"
    bad.write_text("高血压\ntwo words\n", encoding="utf-8")
    failed = _cli("extend-vocab", "-m", "tiny", "-w", str(bad), "-o", str(out))
    assert failed.exit_code == 1 and f"{bad}:2:" in failed.output
    usage = _cli("extend-vocab", "-m", "tiny", "-o", str(out))
    assert usage.exit_code == 2 and "--words FILE and/or --learn-from" in usage.output
    missing = _cli("extend-vocab", "-m", str(tmp_path / "nope"), "-w", str(words), "-o", str(out))
    assert missing.exit_code == 1 and "no such folder" in missing.output
