"""The stage registry: ``pt, sft, rm, dpo, orpo, kto, grpo, rloo``.

Each stage is one pydantic config (:mod:`.config`) and one trainer builder on TRL 1.x. Adding a stage means
writing a config, a data preparer and a builder, and registering a :class:`Stage`.

TRL 1.x has no PPO. The original pipeline's "PPO with a reward model" is ``rloo`` (or ``grpo``) with the reward model
among its reward functions, as MedicalGPT itself did in 2026-03.
"""

from __future__ import annotations

import logging
import math
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
from medtune_core.training.identity import StageState, stage_identity
from medtune_core.training.launcher import check_launch, launch_stage
from medtune_core.training.metrics import reward_signal
from medtune_core.training.preflight import check_stage_inputs
from medtune_core.training.runner import (
    StageContext,
    StageResult,
    resolve_model_ref,
    setup_stage,
    train_and_save,
    write_result,
)

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
    return to_dataset(load_rows(config.eval_files, kind, convert=config.convert_data, **kw))


def length_to_keep(lengths: Sequence[int], share: float = 0.95) -> int:
    """The smallest max_length that keeps ``share`` of samples whole."""
    ordered = sorted(lengths)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)] if ordered else 0


def drop_unusable(
    config: StageConfig, rows: list[dict[str, Any]], lengths: Sequence[int], unusable: Sequence[bool], why: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Drop the samples that cannot train at ``max_length`` (``why`` says what that means for the stage), count
    them, and fail when more than ``max_dropped_share`` of them go, suggesting a max_length that keeps 95 %."""
    stats = truncation_stats(lengths, config.max_length)
    dropped = sum(unusable)
    share = dropped / len(rows) if rows else 0.0
    keep95 = length_to_keep(lengths)
    stats.update(dropped=dropped, dropped_share=round(share, 4), max_length_keeping_95pct=keep95)
    if dropped and (share > config.max_dropped_share or dropped == len(rows)):
        raise MedtuneError(
            f"{config.stage}: {dropped} of {len(rows)} samples ({share:.0%}) {why} at max_length={config.max_length} "
            f"(longest {stats['longest']} tokens); max_length={keep95} keeps 95% of them "
            f"(or allow more with max_dropped_share, now {config.max_dropped_share:.0%})"
        )
    if dropped:
        log.warning(
            "%s: %d of %d samples (%.1f%%) %s at max_length=%d and are left out (max_length=%d keeps 95%%)",
            config.stage,
            dropped,
            len(rows),
            100 * share,
            why,
            config.max_length,
            keep95,
        )
    return [r for r, bad in zip(rows, unusable, strict=True) if not bad], stats


def chat_lengths(tokenizer: Any, rows: Iterable[dict[str, Any]], max_length: int) -> tuple[list[int], list[bool]]:
    """Token length of each conversation under the training template, and whether truncation to ``max_length``
    leaves it without a single assistant token (a sample that would only add zero-loss steps)."""
    lengths: list[int] = []
    no_answer: list[bool] = []
    for row in rows:
        enc = tokenizer.apply_chat_template(
            row["messages"], tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        lengths.append(len(enc["input_ids"]))
        mask = enc.get("assistant_masks")
        no_answer.append(mask is not None and not any(mask[:max_length]))
    return lengths, no_answer


def prepare_chat(config: StageConfig, tokenizer: Any) -> tuple[Any, Any, dict[str, Any]]:
    rows = load_rows(config.train_files, "chat", max_samples=config.max_samples, convert=config.convert_data)
    lengths, no_answer = chat_lengths(tokenizer, rows, config.max_length)
    rows, stats = drop_unusable(config, rows, lengths, no_answer, "have no answer token left after truncation")
    stats["samples_without_answer_after_truncation"] = stats["dropped"]
    if stats["truncated_samples"]:
        log.warning(
            "sft: %d of %d samples exceed max_length=%d (%d tokens cut)",
            stats["truncated_samples"],
            stats["samples"],
            config.max_length,
            stats["tokens_dropped"],
        )
    return to_dataset(rows), _split_eval(config, "chat", tokenizer), {"truncation": stats}


def _pref_lengths(tokenizer: Any, rows: list[dict[str, Any]], answer_key: str) -> tuple[list[int], list[int]]:
    """Per row: tokens of the longest prompt + answer, and of the prompt alone (with the generation prompt)."""
    full, prompt = [], []
    for row in rows:
        answers = [row[k] for k in (answer_key, "rejected") if k in row]
        text = max((tokenizer.apply_chat_template(row["prompt"] + a, tokenize=False) for a in answers), key=len)
        full.append(len(tokenizer(text, add_special_tokens=False)["input_ids"]))
        head = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        prompt.append(len(tokenizer(head, add_special_tokens=False)["input_ids"]))
    return full, prompt


def _pref_rows(config: StageConfig, tokenizer: Any, kind: str, answer_key: str) -> tuple[list[dict], dict[str, Any]]:
    """Preference rows with the ones that cannot train at max_length dropped: for ``rm`` every pair longer than
    max_length (TRL's reward trainer would drop them silently), elsewhere pairs whose prompt leaves no room."""
    rows = load_rows(config.train_files, kind, max_samples=config.max_samples, convert=config.convert_data)
    full, prompt = _pref_lengths(tokenizer, rows, answer_key)
    if config.stage == "rm":
        unusable, why = [n > config.max_length for n in full], "are longer than max_length"
    else:
        unusable, why = [n >= config.max_length for n in prompt], "have a prompt that leaves no room for the answer"
    return drop_unusable(config, rows, full, unusable, why)


def prepare_preference(config: StageConfig, tokenizer: Any) -> tuple[Any, Any, dict[str, Any]]:
    rows, stats = _pref_rows(config, tokenizer, "preference", "chosen")
    return to_dataset(rows), _split_eval(config, "preference", tokenizer), {"truncation": stats}


def prepare_unpaired(config: StageConfig, tokenizer: Any) -> tuple[Any, Any, dict[str, Any]]:
    rows, stats = _pref_rows(config, tokenizer, "unpaired", "completion")
    labels = [r["label"] for r in rows]
    if all(labels) or not any(labels):
        raise MedtuneError("kto needs both desirable and undesirable examples (give preference pairs)")
    out = {"desirable": sum(labels), "undesirable": len(labels) - sum(labels), "truncation": stats}
    return to_dataset(rows), _split_eval(config, "unpaired", tokenizer), out


def prepare_prompts(config: StageConfig, tokenizer: Any) -> tuple[Any, Any, dict[str, Any]]:
    assert isinstance(config, OnlineRLConfig)
    rows = load_rows(
        config.train_files,
        "prompt",
        max_samples=config.max_samples,
        high_risk_first=config.high_risk_first,
        convert=config.convert_data,
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
        rows = load_rows(files, "text", max_samples=config.max_samples, convert=config.convert_data)
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
    """The stage's rewards, each wrapped so a value it cannot compute leaves it out of the group (not 0)."""
    from medtune_core.rewards import GroupMaskedReward, build_reward_functions

    cfg = ctx.config
    assert isinstance(cfg, OnlineRLConfig)
    funcs = ctx.extra.get("reward_funcs")
    left_out: list[dict[str, Any]] = []
    if funcs is not None:
        weights = list(ctx.extra.get("reward_weights") or [1.0] * len(funcs))
        named = [(getattr(f, "__name__", f"reward_{i}"), f) for i, f in enumerate(funcs)]
    else:
        judgements = cfg.judgements_path or Path(cfg.output_dir) / "teacher_judgements.jsonl"
        built = build_reward_functions(
            cfg.rewards, reward_model=cfg.reward_model, judgements_path=judgements, left_out=left_out
        )
        named, weights = [(b.name, b.func) for b in built], [b.weight for b in built]
    wrapped = [GroupMaskedReward(f, name, cfg.num_generations) for name, f in named]

    def report(trainer: Any) -> dict[str, Any]:
        return {
            "reward_components": {w.__name__: w.report() for w in wrapped},
            "rewards_left_out": left_out,
            "reward_signal": reward_signal(trainer.state.log_history, cfg.no_signal_share),
        }

    ctx.extra.setdefault("report_hooks", []).append(report)
    return list(wrapped), weights


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
        force: bool = False,
        **extra: Any,
    ) -> StageResult:
        """Train the stage; ``extra`` reaches the builder (e.g. ``reward_funcs=[...]`` for grpo/rloo).

        Inputs are checked first (nothing is written for a missing file). The stage's identity (:mod:`.identity`)
        decides what its folder's contents are worth: a finished stage of the same identity is reused, an
        unfinished one resumes, anything else is moved aside; ``force`` retrains even a finished one.
        With ``launcher: accelerate | torchrun`` the stage trains in launched subprocesses (:mod:`.launcher`).
        """
        cfg = self._config(config)
        check_stage_inputs(cfg, adapter=adapter)
        if cfg.launcher is not Launcher.INPROCESS:
            if callbacks or extra:
                raise MedtuneError(f"{self.name}: callbacks and builder extras cannot cross to launched processes")
            check_launch(cfg)
        identity = stage_identity(cfg, resolve_model_ref(cfg.model), adapter)
        state = StageState(cfg.output_dir)
        result = None if force or extra.get("reward_funcs") else state.finished(identity)
        if result is not None:
            log.info("%s: finished for these inputs already (%s); reusing %s", self.name, identity[:12], cfg.output_dir)
        else:
            state.start(identity, force=force)
            if cfg.launcher is not Launcher.INPROCESS:
                result = launch_stage(self.name, cfg, adapter=adapter)
            else:
                trainer, ctx = self.setup(cfg, adapter=adapter, callbacks=callbacks, **extra)
                result = train_and_save(trainer, ctx)
            state.finish(identity, result)
            result.identity = identity
            result.output_sha256 = state.read().get("output_sha256")
            write_result(result)
        check_learning_signal(cfg, result)
        return result


def check_learning_signal(config: StageConfig, result: StageResult) -> None:
    """Fail an online RL stage whose reward never told completions apart, when ``fail_on_no_signal`` is set
    (a WARNING otherwise)."""
    signal = result.metrics.get("reward_signal") or {}
    if not (isinstance(config, OnlineRLConfig) and signal.get("no_signal")):
        return
    if not config.fail_on_no_signal:
        log.warning(
            "%s: NO LEARNING SIGNAL: zero reward variance within every group in %d of %d steps",
            config.stage,
            signal["steps_without_signal"],
            signal["steps"],
        )
        return
    raise MedtuneError(
        f"{config.stage}: no learning signal: the reward had zero variance within every group in "
        f"{signal['steps_without_signal']} of {signal['steps']} steps (limit {config.no_signal_share:.0%}); "
        f"outputs are in {result.output_dir}. Check the rewards (left out: "
        f"{[r['name'] for r in result.metrics.get('rewards_left_out') or []]}), raise temperature or "
        "num_generations, or set fail_on_no_signal: false"
    )


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
