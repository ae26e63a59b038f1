"""The stage registry: ``pt, sft, rm, dpo, orpo, kto, grpo, rloo``.

Each stage is one pydantic config (:mod:`.config`) and one trainer builder on TRL 1.x. Adding a stage means
writing a config, a data preparer and a builder, and registering a :class:`Stage`.

TRL 1.x has no PPO. The seeds' "PPO with a reward model" is ``rloo`` (or ``grpo``) with the reward model
among its reward functions, as MedicalGPT itself did in 2026-03.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medtune_core.errors import MedtuneError
from medtune_core.training.config import (
    DPOStageConfig,
    GRPOStageConfig,
    KTOStageConfig,
    Launcher,
    OnlineRLConfig,
    ORPOStageConfig,
    PTConfig,
    RLOOStageConfig,
    RMConfig,
    SFTStageConfig,
    StageConfig,
)
from medtune_core.training.data import load_rows, to_dataset
from medtune_core.training.runner import StageContext, StageResult, setup_stage, train_and_save

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- data


def truncation_stats(lengths: Sequence[int], max_length: int) -> dict[str, Any]:
    """How many samples exceed ``max_length`` and how many tokens truncation drops."""
    over = [n for n in lengths if n > max_length]
    total = sum(lengths)
    return {
        "samples": len(lengths),
        "tokens": total,
        "max_length": max_length,
        "longest": max(lengths, default=0),
        "mean_length": round(total / len(lengths), 1) if lengths else 0,
        "truncated_samples": len(over),
        "truncated_fraction": round(len(over) / len(lengths), 4) if lengths else 0.0,
        "tokens_dropped": sum(n - max_length for n in over),
    }


def _split_eval(config: StageConfig, kind: str, tokenizer: Any, **kw: Any) -> Any:
    if not config.eval_files:
        return None
    return to_dataset(load_rows(config.eval_files, kind, **kw))


def chat_lengths(tokenizer: Any, rows: Iterable[dict[str, Any]], max_length: int) -> dict[str, Any]:
    """Token lengths of conversations under the training template, and assistant tokens lost to truncation."""
    lengths: list[int] = []
    no_answer_left = 0
    for row in rows:
        enc = tokenizer.apply_chat_template(
            row["messages"], tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        lengths.append(len(enc["input_ids"]))
        mask = enc.get("assistant_masks")
        if mask is not None and len(mask) > max_length and not any(mask[:max_length]):
            no_answer_left += 1
    stats = truncation_stats(lengths, max_length)
    stats["samples_without_answer_after_truncation"] = no_answer_left
    return stats


def prepare_chat(config: StageConfig, tokenizer: Any) -> tuple[Any, Any, dict[str, Any]]:
    rows = load_rows(config.train_files, "chat", max_samples=config.max_samples)
    stats = {"truncation": chat_lengths(tokenizer, rows, config.max_length)}
    t = stats["truncation"]
    if t["truncated_samples"]:
        log.warning(
            "sft: %d of %d samples exceed max_length=%d (%d tokens dropped, %d samples lose their whole answer)",
            t["truncated_samples"],
            t["samples"],
            config.max_length,
            t["tokens_dropped"],
            t["samples_without_answer_after_truncation"],
        )
    return to_dataset(rows), _split_eval(config, "chat", tokenizer), stats


def _pref_lengths(tokenizer: Any, rows: list[dict[str, Any]], max_length: int, answer_key: str) -> dict[str, Any]:
    lengths = []
    for row in rows:
        answers = [row[k] for k in (answer_key, "rejected") if k in row]
        text = max(
            (tokenizer.apply_chat_template(row["prompt"] + a, tokenize=False) for a in answers),
            key=len,
        )
        lengths.append(len(tokenizer(text, add_special_tokens=False)["input_ids"]))
    return truncation_stats(lengths, max_length)


def prepare_preference(config: StageConfig, tokenizer: Any) -> tuple[Any, Any, dict[str, Any]]:
    rows = load_rows(config.train_files, "preference", max_samples=config.max_samples)
    stats = {"truncation": _pref_lengths(tokenizer, rows, config.max_length, "chosen")}
    return to_dataset(rows), _split_eval(config, "preference", tokenizer), stats


def prepare_unpaired(config: StageConfig, tokenizer: Any) -> tuple[Any, Any, dict[str, Any]]:
    rows = load_rows(config.train_files, "unpaired", max_samples=config.max_samples)
    labels = [r["label"] for r in rows]
    if all(labels) or not any(labels):
        raise MedtuneError("kto needs both desirable and undesirable examples (give preference pairs)")
    stats = {
        "desirable": sum(labels),
        "undesirable": len(labels) - sum(labels),
        "truncation": _pref_lengths(tokenizer, rows, config.max_length, "completion"),
    }
    return to_dataset(rows), _split_eval(config, "unpaired", tokenizer), stats


def prepare_prompts(config: StageConfig, tokenizer: Any) -> tuple[Any, Any, dict[str, Any]]:
    assert isinstance(config, OnlineRLConfig)
    rows = load_rows(
        config.train_files, "prompt", max_samples=config.max_samples, high_risk_first=config.high_risk_first
    )
    stats = {"prompts": len(rows), "high_risk_prompts": sum(1 for r in rows if r["risk_level"] >= 3)}
    return to_dataset(rows), None, stats


# ------------------------------------------------------------------------------------------------- pt


def pack_documents(docs: Iterable[list[int]], block_size: int, eos_id: int) -> list[list[int]]:
    """Concatenate documents, each followed by EOS, and cut into ``block_size`` blocks (the last may be short)."""
    blocks: list[list[int]] = []
    buf: list[int] = []
    for ids in docs:
        buf.extend(ids)
        buf.append(eos_id)
        while len(buf) >= block_size:
            blocks.append(buf[:block_size])
            buf = buf[block_size:]
    if buf:
        blocks.append(buf)
    return blocks


@dataclass
class PackedCollator:
    """Pads packed blocks; padding positions get attention 0 and label -100 (decided by length, not token id,
    so a pad token equal to EOS never hides a real EOS)."""

    pad_token_id: int

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        longest = max(len(e["input_ids"]) for e in examples)
        ids = torch.full((len(examples), longest), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(examples), longest), dtype=torch.long)
        labels = torch.full((len(examples), longest), -100, dtype=torch.long)
        for i, e in enumerate(examples):
            n = len(e["input_ids"])
            ids[i, :n] = torch.tensor(e["input_ids"])
            mask[i, :n] = 1
            labels[i, :n] = ids[i, :n]
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def prepare_pt(config: StageConfig, tokenizer: Any) -> tuple[Any, Any, dict[str, Any]]:
    from datasets import Dataset

    assert isinstance(config, PTConfig)
    eos = tokenizer.eos_token_id
    if eos is None:
        raise MedtuneError("pt: the tokenizer has no EOS token to separate documents")

    def blocks(files: list[Path]) -> list[list[int]]:
        rows = load_rows(files, "text", max_samples=config.max_samples)
        docs = (tokenizer(r["text"], add_special_tokens=False)["input_ids"] for r in rows)
        return pack_documents(docs, config.block_size, eos)

    train = blocks(config.train_files)
    stats = {
        "blocks": len(train),
        "block_size": config.block_size,
        "tokens": sum(map(len, train)),
        "padding_in_last_block": config.block_size - len(train[-1]) if train else 0,
    }
    eval_ds = Dataset.from_dict({"input_ids": blocks(config.eval_files)}) if config.eval_files else None
    return Dataset.from_dict({"input_ids": train}), eval_ds, stats


def build_pt(ctx: StageContext) -> Any:
    from peft import PeftModel, get_peft_model
    from transformers import Trainer, TrainingArguments

    model = ctx.model
    if ctx.peft_config is not None and not isinstance(model, PeftModel):
        model = get_peft_model(model, ctx.peft_config)
    args = TrainingArguments(**ctx.args_kwargs, remove_unused_columns=False)
    return Trainer(
        model=model,
        args=args,
        train_dataset=ctx.train_dataset,
        eval_dataset=ctx.eval_dataset,
        data_collator=PackedCollator(ctx.tokenizer.pad_token_id),
        processing_class=ctx.tokenizer,
    )


# ------------------------------------------------------------------------------------------------ sft


def check_padding_free(model: Any) -> None:
    """Raise unless the model keeps packed sequences apart when given position ids and no attention mask.

    Transformers' mask builders (sdpa, eager, flex) and flash-attention detect sequence starts from
    ``position_ids``; a model that ignores them would let packed samples attend to each other.
    """
    import torch

    a = torch.tensor([[5, 6, 7, 8]])
    b = torch.tensor([[9, 10, 11]])
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            alone = model(input_ids=b.to(device), use_cache=False).logits[0]
            packed = model(
                input_ids=torch.cat([a, b], 1).to(device),
                position_ids=torch.tensor([[0, 1, 2, 3, 0, 1, 2]], device=device),
                use_cache=False,  # as SFTTrainer calls it; a KV cache turns off packed-sequence detection
            ).logits[0, 4:]
    finally:
        model.train(was_training)
    if not torch.allclose(alone.float(), packed.float(), atol=1e-3, rtol=1e-3):
        raise MedtuneError(
            "packing needs attention that keeps packed samples apart (flash-attention, or transformers' "
            "position-id aware masks); this model mixes them. Set `packing: false`."
        )


def trl_trainer(
    ctx: StageContext, config_cls: Any, trainer_cls: Any, args: dict[str, Any] | None = None, **kw: Any
) -> Any:
    """A TRL trainer on the stage's model, data, tokenizer and adapter; ``args`` default to the stage's own."""
    if args is None:
        args = {**ctx.args_kwargs, **ctx.config.trl_kwargs()}
    kw.setdefault("eval_dataset", ctx.eval_dataset)
    return trainer_cls(
        model=ctx.model,
        args=config_cls(**args),
        train_dataset=ctx.train_dataset,
        processing_class=ctx.tokenizer,
        peft_config=ctx.peft_config,
        **kw,
    )


@dataclass
class PackedRowsCollator:
    """Packed SFT rows batched as rows, for dense attention (sdpa / eager: every CPU run).

    TRL's padding-free collator flattens the whole batch into ONE sequence of batch x max_length tokens. That is
    right for flash-attention's variable-length kernel, which computes each sample's own block only; dense attention
    computes every score of that sequence, so a batch of 4 rows of 1,024 pays 4,096^2 scores per head instead of
    4 x 1,024^2. Here each packed row goes through TRL's collator alone (its labels, assistant masks and per-sample
    position ids stay TRL's) and the rows are stacked: padding gets label -100 and position id 0, no attention mask,
    so transformers still detects the samples inside each row from the position ids and keeps them apart.
    """

    inner: Callable[[list[dict[str, Any]]], dict[str, Any]]
    pad_token_id: int

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        rows = [self.inner([e]) for e in examples]
        longest = max(r["input_ids"].shape[1] for r in rows)
        out = {}
        for key, fill in (("input_ids", self.pad_token_id), ("labels", -100), ("position_ids", 0)):
            stacked = torch.full((len(rows), longest), fill, dtype=rows[0][key].dtype)
            for i, r in enumerate(rows):
                stacked[i, : r[key].shape[1]] = r[key][0]
            out[key] = stacked
        return out


def build_sft(ctx: StageContext) -> Any:
    from trl import SFTConfig, SFTTrainer

    assert isinstance(ctx.config, SFTStageConfig)
    if ctx.config.packing:
        check_padding_free(ctx.model)
    trainer = trl_trainer(ctx, SFTConfig, SFTTrainer)
    attention = str(getattr(trainer.model.config, "_attn_implementation", "") or "")
    if ctx.config.packing and "flash" not in attention:
        trainer.data_collator = PackedRowsCollator(trainer.data_collator, ctx.tokenizer.pad_token_id)
    return trainer


# ----------------------------------------------------------------------------------------- preference


def build_rm(ctx: StageContext) -> Any:
    from trl import RewardConfig, RewardTrainer

    return trl_trainer(ctx, RewardConfig, RewardTrainer)


def build_dpo(ctx: StageContext) -> Any:
    from trl import DPOConfig, DPOTrainer

    return trl_trainer(ctx, DPOConfig, DPOTrainer)


def build_orpo(ctx: StageContext) -> Any:
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    return trl_trainer(ctx, ORPOConfig, ORPOTrainer)


def build_kto(ctx: StageContext) -> Any:
    from trl import KTOConfig, KTOTrainer

    return trl_trainer(ctx, KTOConfig, KTOTrainer)


# -------------------------------------------------------------------------------------------- online RL


def _reward_functions(ctx: StageContext) -> tuple[list[Callable], list[float]]:
    from medtune_core.rewards import build_reward_functions

    cfg = ctx.config
    assert isinstance(cfg, OnlineRLConfig)
    funcs = ctx.extra.get("reward_funcs")
    if funcs is not None:
        weights = ctx.extra.get("reward_weights") or [1.0] * len(funcs)
        return list(funcs), list(weights)
    judgements = cfg.judgements_path or Path(cfg.output_dir) / "teacher_judgements.jsonl"
    built = build_reward_functions(cfg.rewards, reward_model=cfg.reward_model, judgements_path=judgements)
    return [b.func for b in built], [b.weight for b in built]


def _online_args(ctx: StageContext) -> dict[str, Any]:
    cfg = ctx.config
    assert isinstance(cfg, OnlineRLConfig)
    kw = {**ctx.args_kwargs, **cfg.trl_kwargs()}
    funcs, weights = _reward_functions(ctx)
    kw["reward_weights"] = weights
    kw["shuffle_dataset"] = not cfg.high_risk_first
    kw["log_completions"] = False
    ctx.extra["_funcs"] = funcs
    return kw


def build_grpo(ctx: StageContext) -> Any:
    from trl import GRPOConfig, GRPOTrainer

    args = _online_args(ctx)  # online RL evaluates by generating: no eval set
    return trl_trainer(ctx, GRPOConfig, GRPOTrainer, args, reward_funcs=ctx.extra["_funcs"], eval_dataset=None)


def build_rloo(ctx: StageContext) -> Any:
    from trl import RLOOConfig, RLOOTrainer

    args = _online_args(ctx)
    return trl_trainer(ctx, RLOOConfig, RLOOTrainer, args, reward_funcs=ctx.extra["_funcs"], eval_dataset=None)


# ------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Stage:
    """One training stage: its config class, how its data is prepared and how its trainer is built."""

    name: str
    config_cls: type[StageConfig]
    prepare: Callable[[StageConfig, Any], tuple[Any, Any, dict[str, Any]]]
    build: Callable[[StageContext], Any]
    description: str
    sequence_classification: bool = False
    need_markers: bool = False
    uses_reference: bool = False

    def _config(self, config: StageConfig | dict[str, Any]) -> StageConfig:
        if isinstance(config, self.config_cls):
            return config
        data = config if isinstance(config, dict) else config.model_dump(exclude_unset=True)
        return self.config_cls.model_validate(data)

    def setup(
        self,
        config: StageConfig | dict[str, Any],
        *,
        adapter: str | Path | None = None,
        callbacks: Sequence[Any] = (),
        **extra: Any,
    ) -> tuple[Any, StageContext]:
        """The ready trainer and its context, without training (inspection, benchmarks)."""
        config = self._config(config)
        return setup_stage(
            config,
            self.build,
            prepare_data=self.prepare,
            adapter=adapter,
            callbacks=callbacks,
            sequence_classification=self.sequence_classification,
            need_markers=self.need_markers and getattr(config, "assistant_only_loss", True),
            extra=extra,
        )

    def run(
        self,
        config: StageConfig | dict[str, Any],
        *,
        adapter: str | Path | None = None,
        callbacks: Sequence[Any] = (),
        **extra: Any,
    ) -> StageResult:
        """Train the stage; ``extra`` reaches the builder (e.g. ``reward_funcs=[...]`` for grpo/rloo).

        With ``launcher: accelerate | torchrun`` the stage trains in launched subprocesses (:mod:`.launch`).
        """
        cfg = self._config(config)
        if cfg.launcher is not Launcher.INPROCESS:
            if callbacks or extra:
                raise MedtuneError(f"{self.name}: callbacks and builder extras cannot cross to launched processes")
            from medtune_core.training.launch import launch_stage

            return launch_stage(self.name, cfg, adapter=adapter)
        trainer, ctx = self.setup(cfg, adapter=adapter, callbacks=callbacks, **extra)
        return train_and_save(trainer, ctx)


STAGES: dict[str, Stage] = {}


def register_stage(stage: Stage) -> Stage:
    STAGES[stage.name] = stage
    return stage


def get_stage(name: str) -> Stage:
    try:
        return STAGES[name]
    except KeyError:
        raise MedtuneError(f"unknown training stage {name!r}; known: {', '.join(STAGES)}") from None


for _stage in (
    Stage("pt", PTConfig, prepare_pt, build_pt, "continual pretraining on text packed into blocks"),
    Stage(
        "sft",
        SFTStageConfig,
        prepare_chat,
        build_sft,
        "supervised fine-tuning, assistant-only loss, padding-free packing",
        need_markers=True,
    ),
    Stage(
        "rm",
        RMConfig,
        prepare_preference,
        build_rm,
        "reward model (one-output classifier) on preference pairs",
        sequence_classification=True,
    ),
    Stage("dpo", DPOStageConfig, prepare_preference, build_dpo, "direct preference optimisation", uses_reference=True),
    Stage("orpo", ORPOStageConfig, prepare_preference, build_orpo, "odds-ratio preference optimisation (no reference)"),
    Stage(
        "kto", KTOStageConfig, prepare_unpaired, build_kto, "KTO on desirable/undesirable answers", uses_reference=True
    ),
    Stage("grpo", GRPOStageConfig, prepare_prompts, build_grpo, "GRPO with reward functions", uses_reference=True),
    Stage(
        "rloo",
        RLOOStageConfig,
        prepare_prompts,
        build_rloo,
        "RLOO (TRL's PPO successor) with reward functions",
        uses_reference=True,
    ),
):
    register_stage(_stage)


def stage_config(name: str, **values: Any) -> StageConfig:
    """Validate ``values`` as the config of stage ``name``."""
    return get_stage(name).config_cls.model_validate(values)
