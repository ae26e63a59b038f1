"""Load a model for inference: a base model, a base + adapter, or a merged model, with its training chat template.

The template a model was trained with is saved beside its adapter or merged folder (``chat_template.jinja`` and
``medtune_template.json``, see :mod:`medtune_core.training.templates`). Here:

- the tokenizer comes from the adapter/merged folder when it holds one, else from the base model;
- when a training template is saved, it is the one used; if the tokenizer carried another one, or the caller
  forced another with ``chat_template=``, :func:`~medtune_core.training.templates.check_template` reports the
  mismatch (a warning, or :class:`~medtune_core.training.templates.TemplateError` with ``strict_template``);
- padding is on the left (batched generation), the pad token is not EOS when the vocabulary allows;
- generation stops at every end-of-turn token the model knows (the tokenizer's EOS, the generation config's,
  ``<|im_end|>`` / ``<|eot_id|>`` / ``<|endoftext|>`` when present).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medtune_core.errors import MedtuneError

log = logging.getLogger(__name__)

END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")


@dataclass
class LoadedModel:
    """A model ready to generate; ``name`` is what a server reports as the model id."""

    model: Any
    tokenizer: Any
    name: str
    model_dir: Path
    adapter_dir: Path | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    template_source: str = "tokenizer"  # "training" (saved beside the model), "tokenizer" or "override"
    template_mismatch: bool = False
    device: str = "cpu"


def is_adapter_dir(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))


def _read_template(value: str | os.PathLike[str]) -> str:
    path = Path(value)
    try:
        if path.is_file():
            return path.read_text(encoding="utf-8")
        if path.is_dir():
            from transformers import AutoTokenizer

            tpl = AutoTokenizer.from_pretrained(path).chat_template
            if not tpl:
                raise MedtuneError(f"{path}: that tokenizer has no chat template")
            return tpl
    except OSError:
        pass
    return str(value)


def eos_ids_for(tokenizer: Any, model: Any) -> list[int]:
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    gen = getattr(model, "generation_config", None)
    cfg_eos = getattr(gen, "eos_token_id", None) if gen is not None else None
    if isinstance(cfg_eos, int):
        ids.append(cfg_eos)
    elif isinstance(cfg_eos, (list, tuple)):
        ids.extend(int(i) for i in cfg_eos)
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    vocab = tokenizer.get_vocab()
    for tok in END_OF_TURN_TOKENS:
        # <|endoftext|> ends a turn only for templates that do not use it as padding between turns
        if tok in vocab and (tok in template or tok == tokenizer.eos_token):
            ids.append(int(vocab[tok]))
    return list(dict.fromkeys(ids))


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MedtuneError(f"device {device!r} was asked for, but no CUDA GPU is visible")
    return device


def load_for_inference(
    model: str | os.PathLike[str] | None,
    adapter: str | os.PathLike[str] | None = None,
    *,
    chat_template: str | os.PathLike[str] | None = None,
    strict_template: bool = False,
    device: str = "auto",
    dtype: str | None = None,
    merge: bool = True,
    name: str | None = None,
) -> LoadedModel:
    """Load ``model`` (any reference :func:`~medtune_core.training.runner.resolve_model_ref` takes: ``tiny``,
    ``embedded:NAME``, a folder, a cached hub id), plus ``adapter`` (a PEFT folder) when given.

    ``model`` may itself be an adapter folder (its base is read from ``medtune_base.json`` / ``adapter_config.json``),
    or None with ``adapter`` given. ``merge``: fold the LoRA weights into the base after loading (faster generation).
    ``dtype``: ``float32`` / ``bfloat16`` / ``float16``; default float32 on CPU, bfloat16 on CUDA when supported.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from medtune_core.training.merge import adapter_base
    from medtune_core.training.runner import load_tokenizer, resolve_model_ref
    from medtune_core.training.templates import (
        TEMPLATE_FILE,
        TEMPLATE_INFO,
        check_template,
        saved_template,
        template_sha,
    )

    if model is None and adapter is None:
        raise MedtuneError("no model: pass a model reference, an adapter folder, or both")
    if model is not None and adapter is None and Path(str(model)).is_dir() and is_adapter_dir(model):
        adapter, model = model, None
    adapter_dir = Path(adapter) if adapter is not None else None
    if adapter_dir is not None and not is_adapter_dir(adapter_dir):
        raise MedtuneError(f"{adapter_dir}: not an adapter folder (no adapter_config.json)")
    if model is None:
        assert adapter_dir is not None
        base = adapter_base(adapter_dir)
        if not base.exists():
            base = resolve_model_ref(str(base))
    else:
        base = resolve_model_ref(model)
    # the folder that speaks for the trained model: its tokenizer and saved training template
    owner = adapter_dir if adapter_dir is not None else base
    tok_dir = owner if _has_tokenizer(owner) else base
    tokenizer = load_tokenizer(tok_dir)
    tokenizer.padding_side = "left"
    training_tpl = None
    if (owner / TEMPLATE_INFO).is_file():
        recorded = json.loads((owner / TEMPLATE_INFO).read_text(encoding="utf-8")).get("sha256")
        candidate = saved_template(owner)
        if candidate is not None and template_sha(candidate) == recorded:
            training_tpl = candidate
        else:
            log.warning("%s: %s does not hold the recorded training template any more", owner, TEMPLATE_FILE)
    source = "tokenizer"
    if chat_template is not None:
        tokenizer.chat_template = _read_template(chat_template)
        source = "override"
    elif training_tpl is not None:
        source = "training"
    mismatch = not check_template(owner, tokenizer, strict=strict_template)
    if mismatch and source == "training":
        tokenizer.chat_template = training_tpl  # reported above; the training template wins
    if not tokenizer.chat_template:
        log.warning("%s: no chat template; prompts are rendered as plain 'role: content' lines", tok_dir)

    dev = resolve_device(device)
    if dtype is None:
        torch_dtype = torch.bfloat16 if dev.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
    else:
        try:
            torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
        except KeyError:
            raise MedtuneError(f"dtype {dtype!r}: expected float32, bfloat16 or float16") from None
    lm = AutoModelForCausalLM.from_pretrained(base, dtype=torch_dtype)
    if adapter_dir is not None:
        from peft import PeftModel

        lm = PeftModel.from_pretrained(lm, str(adapter_dir))
        if merge:
            lm = lm.merge_and_unload()
    lm.to(dev)
    lm.eval()
    if lm.generation_config is not None and tokenizer.pad_token_id is not None:
        lm.generation_config.pad_token_id = tokenizer.pad_token_id
    label = name or _default_name(model, adapter_dir, base)
    log.info("loaded %s (%s, template from %s) on %s", label, base, source, dev)
    return LoadedModel(
        model=lm,
        tokenizer=tokenizer,
        name=label,
        model_dir=Path(base),
        adapter_dir=adapter_dir,
        eos_token_ids=eos_ids_for(tokenizer, lm),
        template_source=source,
        template_mismatch=mismatch,
        device=dev,
    )


def _default_name(model: Any, adapter_dir: Path | None, base: Path) -> str:
    if adapter_dir is not None:
        info = adapter_dir / "medtune_base.json"
        stage = json.loads(info.read_text()).get("stage") if info.is_file() else None
        return adapter_dir.parent.name or stage or adapter_dir.name
    if model is not None and not Path(str(model)).exists():
        return str(model).removeprefix("embedded:")
    return base.name
