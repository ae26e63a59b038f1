"""Merge a LoRA/DoRA adapter into its base model (``merge_and_unload``), tokenizer and chat template copied.

The merged folder loads with plain ``AutoModelForCausalLM`` (or ``AutoModelForSequenceClassification`` for a
reward model) and carries the exact chat template it was trained with (``chat_template.jinja`` plus
``medtune_template.json``), so inference cannot silently pick another one. ``medtune_merge.json`` records the
adapter's content hash: :func:`merged_is_current` tells a merge of the current adapter from a stale one.
The model is saved in ``dtype`` (a stage passes its training dtype: bf16 on a GPU that has it, float32 on CPU).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from medtune_core.errors import MedtuneError
from medtune_core.hashing import path_sha256
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
    dtype: str = "float32",
) -> Path:
    """Merge ``adapter_dir`` into its base and save a full model in ``dtype`` to ``output_dir`` (atomically).

    The merge itself runs in float32 (adding a low-rank update to bf16 weights would round it away); only the
    saved weights are cast."""
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
    model = model.to(getattr(torch, dtype))
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
        json.dumps(
            {
                "adapter": str(adapter_dir),
                "adapter_sha256": path_sha256(adapter_dir),
                "base_model": str(base),
                "dtype": dtype,
            },
            indent=2,
        )
        + "\n"
    )
    shutil.rmtree(output_dir, ignore_errors=True)
    os.replace(staging, output_dir)
    log.info("merged %s into %s -> %s", adapter_dir, base, output_dir)
    return output_dir


def merged_is_current(adapter_dir: str | Path, merged_dir: str | Path) -> bool:
    """Whether ``merged_dir`` is a complete merge of ``adapter_dir`` as it is now (recorded adapter hash)."""
    merged_dir = Path(merged_dir)
    info = merged_dir / "medtune_merge.json"
    if not (merged_dir / "config.json").is_file() or not info.is_file():
        return False
    try:
        recorded = json.loads(info.read_text()).get("adapter_sha256")
    except ValueError:
        return False
    return recorded == path_sha256(adapter_dir)
