"""Merge a LoRA/DoRA adapter into its base model (``merge_and_unload``), tokenizer and chat template copied.

The merged folder loads with plain ``AutoModelForCausalLM`` (or ``AutoModelForSequenceClassification`` for a
reward model) and carries the exact chat template it was trained with (``chat_template.jinja`` plus
``medtune_template.json``), so inference cannot silently pick another one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from medtune_core.errors import MedtuneError
from medtune_core.training.templates import TEMPLATE_FILE, TEMPLATE_INFO

log = logging.getLogger(__name__)


def adapter_base(adapter_dir: str | Path) -> Path:
    """The base model an adapter was trained on (from ``medtune_base.json`` or PEFT's config)."""
    adapter_dir = Path(adapter_dir)
    info = adapter_dir / "medtune_base.json"
    if info.is_file():
        return Path(json.loads(info.read_text())["base_model"])
    cfg = adapter_dir / "adapter_config.json"
    if cfg.is_file():
        return Path(json.loads(cfg.read_text())["base_model_name_or_path"])
    raise MedtuneError(f"{adapter_dir}: not an adapter folder (no adapter_config.json)")


def merge_adapter(
    adapter_dir: str | Path,
    output_dir: str | Path,
    *,
    base_model: str | Path | None = None,
    sequence_classification: bool | None = None,
) -> Path:
    """Merge ``adapter_dir`` into its base and save a full float32 model to ``output_dir`` (atomically)."""
    import torch
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    adapter_dir, output_dir = Path(adapter_dir), Path(output_dir)
    base = Path(base_model) if base_model else adapter_base(adapter_dir)
    peft_cfg = PeftConfig.from_pretrained(str(adapter_dir))
    if sequence_classification is None:
        sequence_classification = str(peft_cfg.task_type) in ("SEQ_CLS", "TaskType.SEQ_CLS")
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    if sequence_classification:
        model = AutoModelForSequenceClassification.from_pretrained(
            base, num_labels=1, pad_token_id=tokenizer.pad_token_id, dtype=torch.float32
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None and not sequence_classification:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    staging = output_dir.with_name(output_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    for name in (TEMPLATE_FILE, TEMPLATE_INFO, "medtune_base.json"):
        if (adapter_dir / name).is_file():
            shutil.copy2(adapter_dir / name, staging / name)
    (staging / "medtune_merge.json").write_text(
        json.dumps({"adapter": str(adapter_dir), "base_model": str(base)}, indent=2) + "\n"
    )
    shutil.rmtree(output_dir, ignore_errors=True)
    os.replace(staging, output_dir)
    log.info("merged %s into %s -> %s", adapter_dir, base, output_dir)
    return output_dir
