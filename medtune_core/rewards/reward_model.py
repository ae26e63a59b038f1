"""The reward model trained by the ``rm`` stage as a TRL reward function.

Prompt and completion are rendered with the reward model's own chat template (the one saved with it), padded
on the right, and the classifier's single output is the reward.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medtune_core.rewards.rules import completion_text


class RewardModelScorer:
    """``(prompts, completions, **kwargs) -> list[float]`` from a one-output sequence classifier."""

    __name__ = "reward_model"

    def __init__(self, path: str | Path, *, batch_size: int = 8, max_length: int = 1024, device: str | None = None):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.path = Path(path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right"
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = AutoModelForSequenceClassification.from_pretrained(self.path, num_labels=1, dtype=torch.float32)
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.to(self.device).eval()
        self.batch_size = batch_size
        self.max_length = max_length

    def _text(self, prompt: Any, completion: Any) -> str:
        if isinstance(prompt, list):
            messages = [*prompt, {"role": "assistant", "content": completion_text(completion)}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        return f"{prompt}{completion_text(completion)}"

    def __call__(self, prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        import torch

        texts = [self._text(p, c) for p, c in zip(prompts, completions, strict=True)]
        out: list[float] = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(
                texts[i : i + self.batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_length,
                add_special_tokens=False,
            ).to(self.device)
            with torch.no_grad():
                out.extend(self.model(**enc).logits[:, 0].float().tolist())
        return out
