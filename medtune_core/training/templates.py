"""Chat templates for training: generation markers for assistant-only loss, saved with every output.

The template a model is trained with must be the one it is served with; a mismatch is the top cause of
"endless repetition" reports against MedicalGPT and LLaMA-Factory. So:

- :func:`prepare_training_template` makes sure the tokenizer's template has ``{% generation %}`` markers.
  A ChatML template without them (SmolLM2, Qwen2.5 before TRL's patches) is replaced by an equivalent
  ChatML template with markers (checked by rendering both on sample conversations: the text must be
  identical); other templates go through TRL's :func:`get_training_chat_template`; anything else is an
  error that says what to do.
- :func:`save_template` writes ``chat_template.jinja`` and ``medtune_template.json`` (its sha256) next
  to an adapter or merged model; :func:`check_template` warns or raises when a tokenizer used for
  inference carries a different template.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any

from medtune_core.errors import MedtuneError
from medtune_core.models.chatml import CHATML_TRAINING_TEMPLATE

log = logging.getLogger(__name__)

TEMPLATE_FILE = "chat_template.jinja"
TEMPLATE_INFO = "medtune_template.json"

_SAMPLES: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "头痛怎么办？"}, {"role": "assistant", "content": "建议休息。"}],
    [
        {"role": "system", "content": "You are a doctor."},
        {"role": "user", "content": "Fever?"},
        {"role": "assistant", "content": "Drink water."},
        {"role": "user", "content": "And then?"},
        {"role": "assistant", "content": "See a doctor."},
    ],
]


class TemplateError(MedtuneError):
    """A chat template cannot be used for the requested training."""


def has_generation_markers(template: str | None) -> bool:
    return bool(template) and re.search(r"\{%-?\s*generation\s*-?%\}", template) is not None


def chatml_training_template(default_system: str | None = None) -> str:
    """ChatML with generation markers; ``default_system`` is inserted when a conversation has no system turn."""
    if default_system is None:
        return CHATML_TRAINING_TEMPLATE
    escaped = default_system.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
    head = (
        "{%- if messages and messages[0]['role'] != 'system' %}"
        "{{- '<|im_start|>system\\n" + escaped + "<|im_end|>\\n' }}"
        "{%- endif %}"
    )
    return head + CHATML_TRAINING_TEMPLATE


def _render(tokenizer: Any, messages: list[dict[str, str]], template: str, gen: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, chat_template=template, add_generation_prompt=gen)


def _default_system(tokenizer: Any, template: str) -> str | None:
    text = _render(tokenizer, [{"role": "user", "content": "x"}], template)
    m = re.match(r"<\|im_start\|>system\n(.*?)<\|im_end\|>\n", text, flags=re.S)
    return m.group(1) if m else None


def _same_rendering(tokenizer: Any, a: str, b: str) -> bool:
    try:
        for sample in _SAMPLES:
            if _render(tokenizer, sample, a) != _render(tokenizer, sample, b):
                return False
            if _render(tokenizer, sample[:-1], a, True) != _render(tokenizer, sample[:-1], b, True):
                return False
    except Exception:  # a template that cannot render a sample is not equivalent
        return False
    return True


def training_template_for(tokenizer: Any) -> str:
    """A template with generation markers that renders exactly like the tokenizer's own template."""
    current = tokenizer.chat_template
    if isinstance(current, dict):
        current = current.get("default")
    if not current:
        raise TemplateError(
            "the tokenizer has no chat template; pass `chat_template` (a .jinja file or a tokenizer folder) "
            "or use a chat model"
        )
    if has_generation_markers(current):
        return current
    if "<|im_start|>" in current:
        candidate = chatml_training_template(_default_system(tokenizer, current))
        if _same_rendering(tokenizer, current, candidate):
            return candidate
    from trl.chat_template_utils import get_training_chat_template

    try:
        patched = get_training_chat_template(tokenizer)
    except ValueError as exc:
        raise TemplateError(
            "assistant-only loss needs a chat template with {% generation %} markers and this model's template "
            "has none that medtune or TRL can add; pass `chat_template` with a marker-equipped template, or set "
            f"`assistant_only_loss: false` ({exc})"
        ) from exc
    return patched or current


def prepare_training_template(tokenizer: Any, chat_template: str | Path | None = None) -> str:
    """Install the template used for training on ``tokenizer`` and return it.

    ``chat_template`` may be a .jinja file or a folder holding a tokenizer; otherwise the tokenizer's own
    template is made marker-equipped by :func:`training_template_for`.
    """
    if chat_template is not None:
        path = Path(chat_template)
        if path.is_dir():
            from transformers import AutoTokenizer

            template = AutoTokenizer.from_pretrained(path).chat_template
        elif path.is_file():
            template = path.read_text(encoding="utf-8")
        else:
            template = str(chat_template)
        tokenizer.chat_template = template
    template = training_template_for(tokenizer)
    if template != tokenizer.chat_template:
        log.info("installed a chat template with generation markers (renders the same text as the original)")
    tokenizer.chat_template = template
    return template


def template_sha(template: str) -> str:
    return hashlib.sha256(template.encode("utf-8")).hexdigest()


def save_template(folder: str | Path, template: str) -> None:
    """Write the training template beside a model/adapter so that inference uses the same one."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / TEMPLATE_FILE).write_text(template, encoding="utf-8")
    info = {"sha256": template_sha(template), "generation_markers": has_generation_markers(template)}
    (folder / TEMPLATE_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def saved_template(folder: str | Path) -> str | None:
    path = Path(folder) / TEMPLATE_FILE
    return path.read_text(encoding="utf-8") if path.is_file() else None


def check_template(folder: str | Path, tokenizer: Any, *, strict: bool = False) -> bool:
    """Whether ``tokenizer``'s template is the one the model in ``folder`` was trained with.

    A mismatch is logged as a warning, or raised as :class:`TemplateError` when ``strict``.
    """
    info_path = Path(folder) / TEMPLATE_INFO
    if not info_path.is_file():
        return True
    expected = json.loads(info_path.read_text(encoding="utf-8"))["sha256"]
    current = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    if current is not None and template_sha(current) == expected:
        return True
    msg = (
        f"{folder}: the tokenizer's chat template differs from the one the model was trained with "
        f"(see {TEMPLATE_FILE}); generation with another template often never stops"
    )
    if strict:
        raise TemplateError(msg)
    log.warning(msg)
    return False
