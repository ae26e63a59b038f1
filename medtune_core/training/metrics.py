"""Training metrics: effective (non-padding) tokens per second, loss curves, reward statistics.

:func:`count_tokens_hook` wraps a trainer's ``training_step`` to count the tokens that are not padding in
every batch (attention-mask sums; padding-free batches have no padding, so every input id counts) and time
the steps. :func:`summarise` turns ``trainer.state.log_history`` into ``metrics.json`` and
:func:`plot_loss_curve` draws ``loss_curve.png`` (matplotlib's Agg backend, no display needed).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MASK_KEYS = (
    "attention_mask",
    "prompt_attention_mask",
    "chosen_attention_mask",
    "rejected_attention_mask",
    "completion_attention_mask",
    "prompt_mask",
    "completion_mask",
)


@dataclass
class TokenMeter:
    """Non-padding tokens and wall time of the training steps."""

    tokens: int = 0
    padded_tokens: int = 0
    seconds: float = 0.0
    steps: int = 0
    per_step: list[tuple[int, float]] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def padding_ratio(self) -> float:
        return 1.0 - self.tokens / self.padded_tokens if self.padded_tokens else 0.0


def batch_tokens(inputs: Any) -> tuple[int, int]:
    """(non-padding tokens, tokens including padding) in one collated batch; (0, 0) when unknown."""
    if not isinstance(inputs, dict):
        return 0, 0
    masks = [inputs[k] for k in MASK_KEYS if k in inputs and hasattr(inputs[k], "sum")]
    if masks:
        return int(sum(int(m.sum()) for m in masks)), int(sum(m.numel() for m in masks))
    ids = inputs.get("input_ids")
    if ids is not None and hasattr(ids, "numel"):
        # padding-free batch: sequences are concatenated, nothing is padded
        return int(ids.numel()), int(ids.numel())
    return 0, 0


def count_tokens_hook(trainer: Any) -> TokenMeter:
    """Instrument ``trainer.training_step``; returns the meter it fills."""
    meter = TokenMeter()
    original = trainer.training_step

    def training_step(model: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        real, padded = batch_tokens(inputs)
        start = time.perf_counter()
        out = original(model, inputs, *args, **kwargs)
        elapsed = time.perf_counter() - start
        meter.tokens += real
        meter.padded_tokens += padded
        meter.seconds += elapsed
        meter.per_step.append((real, elapsed))
        return out

    trainer.training_step = training_step
    return meter


REWARD_PREFIXES = ("reward", "rewards/")


def summarise(log_history: list[dict[str, Any]], meter: TokenMeter | None = None) -> dict[str, Any]:
    """Final loss, eval loss, step counts, tokens/s and reward statistics from a trainer's log history."""
    losses = [(h["step"], h["loss"]) for h in log_history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h]
    final = next((h for h in reversed(log_history) if "train_runtime" in h), {})
    out: dict[str, Any] = {
        "steps": max((h.get("step", 0) for h in log_history), default=0),
        "loss_first": losses[0][1] if losses else None,
        "loss_last": losses[-1][1] if losses else None,
        "train_loss": final.get("train_loss"),
        "train_runtime_s": final.get("train_runtime"),
        "eval_loss": evals[-1][1] if evals else None,
    }
    if meter is not None and meter.tokens:
        out.update(
            effective_tokens=meter.tokens,
            padded_tokens=meter.padded_tokens,
            padding_ratio=round(meter.padding_ratio, 4),
            effective_tokens_per_s=round(meter.tokens_per_second, 2),
        )
    rewards: dict[str, list[float]] = {}
    for h in log_history:
        for k, v in h.items():
            if k.startswith(REWARD_PREFIXES) and isinstance(v, (int, float)) and math.isfinite(v):
                rewards.setdefault(k, []).append(float(v))
    if rewards:
        out["rewards"] = {
            k: {"first": v[0], "last": v[-1], "mean": sum(v) / len(v), "n": len(v)} for k, v in sorted(rewards.items())
        }
    return out


def plot_loss_curve(log_history: list[dict[str, Any]], path: str | Path, title: str = "") -> Path | None:
    """Draw training (and eval) loss against step into a PNG; None when nothing was logged."""
    losses = [(h["step"], h["loss"]) for h in log_history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h]
    if not losses and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if losses:
        ax.plot(*zip(*losses, strict=True), label="train loss", marker="." if len(losses) < 50 else None)
    if evals:
        ax.plot(*zip(*evals, strict=True), label="eval loss", marker="o")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_metrics(path: str | Path, metrics: dict[str, Any]) -> None:
    from medtune_core.dataio import atomic_write_text

    atomic_write_text(Path(path), json.dumps(metrics, indent=2, ensure_ascii=False, default=str) + "\n")


def reward_signal(log_history: list[dict[str, Any]], limit: float) -> dict[str, Any]:
    """Whether an online RL stage's reward told completions apart: TRL logs ``frac_reward_zero_std`` per step (the
    share of groups whose completions all got the same reward, so their advantages are 0 and nothing is learned).
    ``no_signal`` when more than ``limit`` of the steps had no group with any variance."""
    fracs = [float(e["frac_reward_zero_std"]) for e in log_history if "frac_reward_zero_std" in e]
    flat = sum(1 for f in fracs if f >= 1.0 - 1e-9)
    return {
        "steps": len(fracs),
        "steps_without_signal": flat,
        "mean_frac_reward_zero_std": round(sum(fracs) / len(fracs), 4) if fracs else None,
        "no_signal": bool(fracs) and flat / len(fracs) > limit,
    }
