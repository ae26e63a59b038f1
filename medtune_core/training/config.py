"""Stage configurations: one pydantic model per stage over a common base, with validators that reject
combinations which cannot work, before any model is loaded.

Defaults that differ from TRL's (on purpose, measured on this project's CPUs, see docs/TRAINING.md): float32 and no
gradient checkpointing on CPU (TRL defaults to bf16 and checkpointing, 16x slower here); assistant-only loss
and padding-free packing for SFT; ``logging_steps=1``; TensorBoard on.
"""

from __future__ import annotations

import importlib.util
import os
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class AdapterType(StrEnum):
    LORA = "lora"
    QLORA = "qlora"
    DORA = "dora"
    FULL = "full"


class Launcher(StrEnum):
    """How a stage's training process is started: here, or as a subprocess per GPU."""

    INPROCESS = "inprocess"
    ACCELERATE = "accelerate"
    TORCHRUN = "torchrun"


#: Shipped DeepSpeed configs (``medtune_core/recipes/deepspeed``) by short name.
DEEPSPEED_PRESETS = ("zero2", "zero3")
RECIPES = Path(__file__).resolve().parent.parent / "recipes"
DEEPSPEED_DIR = RECIPES / "deepspeed"


def deepspeed_config_path(value: str | Path) -> Path:
    """``zero2`` / ``zero3`` (shipped) or a DeepSpeed JSON file that must exist."""
    from medtune_core.errors import MedtuneError

    if str(value) in DEEPSPEED_PRESETS:
        return DEEPSPEED_DIR / f"{value}.json"
    path = Path(value).expanduser().resolve()
    if not path.is_file():
        raise MedtuneError(f"deepspeed config {value} not found (use zero2, zero3 or a .json file)")
    return path


def qlora_unavailable() -> str | None:
    """Why QLoRA cannot run here (no CUDA GPU, no bitsandbytes), or None when it can."""
    import torch

    if not torch.cuda.is_available():
        return "adapter qlora needs a CUDA GPU (bitsandbytes 4/8-bit) and none is visible; use lora on CPU"
    if importlib.util.find_spec("bitsandbytes") is None:
        return "adapter qlora needs the bitsandbytes package (pip install 'medtune[gpu]')"
    return None


def _path_str(v: Any) -> Any:
    """A path given as ``Path`` (e.g. by a task that hashes it by content) is the same setting as its string."""
    return str(v) if isinstance(v, os.PathLike) else v


class ChainMode(StrEnum):
    """How a stage builds on the previous one: merge its adapter into the weights, or keep training it."""

    MERGE = "merge"
    STACK = "stack"


class AdapterConfig(BaseModel):
    """LoRA-family adapter settings (ignored for ``full``)."""

    model_config = ConfigDict(extra="forbid")

    type: AdapterType = Field(AdapterType.LORA, description="lora | qlora (4/8-bit base, CUDA only) | dora | full")
    r: int = Field(16, ge=1, le=1024, description="LoRA rank")
    alpha: int = Field(32, ge=1, description="LoRA alpha (2x rank is the original recipes' choice)")
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="module names, or 'all-linear' for every linear layer but the output head"
    )
    bits: Literal[4, 8] = Field(4, description="QLoRA quantisation bits")

    @field_validator("target_modules", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        if isinstance(v, str) and v not in ("all-linear", "all"):
            return [s.strip() for s in v.split(",") if s.strip()]
        return "all-linear" if v == "all" else v


class StageConfig(BaseModel):
    """Settings every stage shares."""

    model_config = ConfigDict(extra="forbid", use_enum_values=False)

    stage: ClassVar[str] = ""
    #: The record kind the stage's trainer consumes (see :mod:`medtune_core.training.data`).
    data_kind: ClassVar[str] = "chat"

    model: str = Field("embedded:smollm2-135m-instruct", description="embedded:NAME, a local folder or a hub id")
    train_files: list[Path] = Field(default_factory=list, description="training files in any supported format")
    eval_files: list[Path] = Field(default_factory=list, description="evaluation files (optional)")
    max_samples: int | None = Field(None, ge=1, description="use at most this many training records")
    output_dir: Path = Field(Path("out/stage"), description="checkpoints, adapter, metrics, logs")
    max_steps: int = Field(-1, description="optimizer steps; -1: run `epochs` epochs")
    epochs: float = Field(1.0, gt=0)
    learning_rate: float = Field(2e-4, gt=0)
    batch_size: int = Field(4, ge=1, description="per-device batch size")
    grad_accum: int = Field(1, ge=1)
    max_length: int = Field(1024, ge=8, description="tokens per sample (prompt + answer)")
    warmup_ratio: float = Field(0.0, ge=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    lr_scheduler_type: str = "linear"
    adapter: AdapterConfig = Field(default_factory=AdapterConfig)
    seed: int = 42
    resume: bool = Field(True, description="continue from the last checkpoint in output_dir when one exists")
    save_steps: int = Field(500, ge=1)
    save_total_limit: int | None = Field(2, ge=1)
    logging_steps: int = Field(1, ge=1)
    eval_steps: int | None = Field(None, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    bf16: bool | None = Field(None, description="None: bf16 on a CUDA GPU that supports it, float32 otherwise")
    gradient_checkpointing: bool | None = Field(None, description="None: on for CUDA, off on CPU")
    attn_implementation: str | None = Field(None, description="e.g. sdpa, eager, flash_attention_2")
    chat_template: str | None = Field(None, description="a .jinja file or tokenizer folder to train with")
    report_to: list[str] = Field(default_factory=lambda: ["tensorboard"])
    chain: ChainMode = Field(ChainMode.MERGE, description="merge the previous stage's adapter, or keep training it")
    launcher: Launcher = Field(
        Launcher.INPROCESS, description="inprocess | accelerate | torchrun (a subprocess, one process per GPU)"
    )
    num_processes: int = Field(1, ge=1, description="processes (GPUs) for accelerate / torchrun")
    deepspeed: str | None = Field(None, description="zero2 | zero3 (shipped configs) or a DeepSpeed JSON file")
    merge_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="dtype of the merged model: auto = the training dtype (bf16 on a GPU that has it)"
    )
    convert_data: bool = Field(
        False, description="accept records of another kind and convert them (e.g. preference pairs to SFT chats)"
    )
    max_dropped_share: float = Field(
        0.2, ge=0, le=1, description="fail when more than this share of samples is dropped for length"
    )

    @field_validator("train_files", "eval_files", mode="before")
    @classmethod
    def _listify(cls, v: Any) -> Any:
        if isinstance(v, (str, Path)):
            return [v]
        return v

    @field_validator("chat_template", "deepspeed", "model", mode="before")
    @classmethod
    def _path_to_str(cls, v: Any) -> Any:
        return _path_str(v)

    @model_validator(mode="after")
    def _common_checks(self) -> StageConfig:
        if self.adapter.type is AdapterType.QLORA and self.device == "cpu":
            raise ValueError("adapter qlora needs a CUDA GPU (bitsandbytes 4/8-bit); use lora on CPU")
        if self.device == "cpu" and self.bf16:
            raise ValueError("bf16 on CPU is ~16x slower than float32 here; leave bf16 unset on CPU")
        if self.device == "cpu" and self.gradient_checkpointing:
            raise ValueError("gradient checkpointing only costs time on CPU; leave it unset")
        if self.adapter.type is AdapterType.QLORA and self.bf16 is False:
            pass  # QLoRA computes in bf16/fp16 on GPU; fine either way
        if self.eval_steps is not None and not self.eval_files:
            raise ValueError("eval_steps is set but no eval_files are given")
        self._launch_checks()
        return self

    def _launch_checks(self) -> None:
        if self.launcher is Launcher.INPROCESS and self.num_processes > 1:
            raise ValueError("num_processes > 1 needs launcher accelerate or torchrun (one process per GPU)")
        if self.deepspeed is not None:
            if self.launcher is Launcher.INPROCESS:
                raise ValueError("deepspeed needs launcher accelerate or torchrun (it runs one process per GPU)")
            if self.deepspeed not in DEEPSPEED_PRESETS and not self.deepspeed.endswith(".json"):
                raise ValueError(f"deepspeed: {', '.join(DEEPSPEED_PRESETS)} or a .json config file")
        if self.device == "cpu" and (self.deepspeed or self.num_processes > 1):
            raise ValueError("deepspeed and num_processes > 1 need CUDA GPUs, but device is cpu")

    # What the runner needs from the stage (overridden by stages with more to say).
    def trl_kwargs(self) -> dict[str, Any]:
        return {}


class VocabExtensionConfig(BaseModel):
    """Domain words to add as tokens before the stage trains (see :mod:`.tokenizer_ext`)."""

    model_config = ConfigDict(extra="forbid")

    words_file: Path | None = Field(None, description="one word a line")
    learn_from: list[Path] = Field(default_factory=list, description="corpus files (any format) to learn words from")
    top_n: int = Field(200, ge=1, description="learned words to add at most")
    min_freq: int = Field(5, ge=1, description="a learned word occurs at least this often")

    @field_validator("learn_from", mode="before")
    @classmethod
    def _listify(cls, v: Any) -> Any:
        return [v] if isinstance(v, (str, Path)) else v

    @model_validator(mode="after")
    def _some_source(self) -> VocabExtensionConfig:
        if self.words_file is None and not self.learn_from:
            raise ValueError("extend_vocab needs words_file and/or learn_from")
        return self


class EmbeddingTrainingConfig(StageConfig):
    """Stages that can grow the vocabulary and train embeddings + LM head (PT, SFT)."""

    extend_vocab: VocabExtensionConfig | None = Field(None, description="add domain words as tokens first")
    train_embeddings: Literal["new_tokens", "full"] | None = Field(
        None,
        description="with LoRA: new_tokens trains only the added rows (PEFT trainable tokens), full trains the whole "
        "embedding and LM head (modules_to_save); unset: new_tokens when extend_vocab is set",
    )

    @model_validator(mode="after")
    def _embedding_checks(self) -> EmbeddingTrainingConfig:
        if self.train_embeddings == "new_tokens" and self.extend_vocab is None:
            raise ValueError("train_embeddings new_tokens needs extend_vocab (there are no new tokens otherwise)")
        return self

    def embedding_mode(self) -> str | None:
        """How the embeddings train under an adapter (None: frozen; full fine-tuning trains them anyway)."""
        if self.adapter.type is AdapterType.FULL:
            return None
        return self.train_embeddings or ("new_tokens" if self.extend_vocab is not None else None)


class PTConfig(EmbeddingTrainingConfig):
    """Continual pretraining: documents packed into ``block_size`` blocks with EOS separators."""

    stage: ClassVar[str] = "pt"
    data_kind: ClassVar[str] = "text"
    block_size: int = Field(512, ge=8, description="tokens per packed block")
    learning_rate: float = Field(2e-4, gt=0)


class SFTStageConfig(EmbeddingTrainingConfig):
    """Supervised fine-tuning on conversations."""

    stage: ClassVar[str] = "sft"
    data_kind: ClassVar[str] = "chat"
    assistant_only_loss: bool = Field(True, description="loss on assistant tokens only (template markers)")
    packing: bool = Field(True, description="padding-free best-fit packing into max_length rows")
    neftune_noise_alpha: float | None = Field(None, gt=0, description="NEFTune noise (e.g. 5)")

    def trl_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "assistant_only_loss": self.assistant_only_loss,
            "packing": self.packing,
            "max_length": self.max_length,
        }
        if self.packing:
            kw["packing_strategy"] = "bfd"
        if self.neftune_noise_alpha is not None:
            kw["neftune_noise_alpha"] = self.neftune_noise_alpha
        return kw


class RMConfig(StageConfig):
    """Reward model on preference pairs (a sequence-classification head with one output)."""

    stage: ClassVar[str] = "rm"
    data_kind: ClassVar[str] = "preference"
    learning_rate: float = Field(1e-4, gt=0)
    center_rewards_coefficient: float | None = Field(None, ge=0)

    def trl_kwargs(self) -> dict[str, Any]:
        return {"max_length": self.max_length, "center_rewards_coefficient": self.center_rewards_coefficient}


class DPOStageConfig(StageConfig):
    stage: ClassVar[str] = "dpo"
    data_kind: ClassVar[str] = "preference"
    learning_rate: float = Field(5e-6, gt=0)
    beta: float = Field(0.1, gt=0)
    loss_type: str = "sigmoid"

    def trl_kwargs(self) -> dict[str, Any]:
        return {"beta": self.beta, "loss_type": [self.loss_type], "max_length": self.max_length}


class ORPOStageConfig(StageConfig):
    """ORPO: SFT and preference alignment at once, no reference model (TRL: ``trl.experimental.orpo``)."""

    stage: ClassVar[str] = "orpo"
    data_kind: ClassVar[str] = "preference"
    learning_rate: float = Field(8e-6, gt=0)
    beta: float = Field(0.1, gt=0)
    max_completion_length: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _lengths(self) -> ORPOStageConfig:
        if self.max_completion_length is not None and self.max_completion_length >= self.max_length:
            raise ValueError("max_completion_length must be smaller than max_length (the prompt needs room)")
        return self

    def trl_kwargs(self) -> dict[str, Any]:
        return {
            "beta": self.beta,
            "max_length": self.max_length,
            "max_completion_length": self.max_completion_length or self.max_length // 2,
        }


class KTOStageConfig(StageConfig):
    """KTO on unpaired desirable / undesirable answers (preference pairs are split into both)."""

    stage: ClassVar[str] = "kto"
    data_kind: ClassVar[str] = "unpaired"
    learning_rate: float = Field(5e-6, gt=0)
    beta: float = Field(0.1, gt=0)
    desirable_weight: float = Field(1.0, gt=0)
    undesirable_weight: float = Field(1.0, gt=0)
    batch_size: int = Field(4, ge=2, description="KTO estimates its KL term across the batch: at least 2")

    def trl_kwargs(self) -> dict[str, Any]:
        return {
            "beta": self.beta,
            "desirable_weight": self.desirable_weight,
            "undesirable_weight": self.undesirable_weight,
            "max_length": self.max_length,
        }


class RewardSpec(BaseModel):
    """One reward function by registry name, its weight and its options."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="rules | teacher | reward_model | any registered reward")
    weight: float = 1.0
    options: dict[str, Any] = Field(default_factory=dict)


def default_rewards() -> list[RewardSpec]:
    """The reasoning-RL ``R = 0.6 x rules + 0.4 x teacher``."""
    return [RewardSpec(name="rules", weight=0.6), RewardSpec(name="teacher", weight=0.4)]


class OnlineRLConfig(StageConfig):
    """Settings shared by GRPO and RLOO: prompts in, completions sampled, scored by reward functions."""

    data_kind: ClassVar[str] = "prompt"
    learning_rate: float = Field(1e-6, gt=0)
    rewards: list[RewardSpec] = Field(default_factory=default_rewards)
    num_generations: int = Field(4, ge=2, description="completions per prompt (the group)")
    max_completion_length: int = Field(256, ge=1)
    temperature: float = Field(1.0, gt=0)
    beta: float = Field(0.0, ge=0, description="KL coefficient against the reference (0: no reference model)")
    high_risk_first: bool = Field(True, description="order prompts by meta.risk_level, highest first")
    judgements_path: Path | None = Field(None, description="teacher judgements cache (JSONL)")
    reward_model: str | None = Field(None, description="reward model folder (set by a preceding rm stage)")
    fail_on_no_signal: bool = Field(
        False, description="fail the stage when the reward has zero variance within groups over most steps"
    )
    no_signal_share: float = Field(
        0.5, ge=0, le=1, description="share of steps without reward variance above which the stage learned nothing"
    )

    @field_validator("reward_model", mode="before")
    @classmethod
    def _rm_str(cls, v: Any) -> Any:
        return _path_str(v)

    @model_validator(mode="after")
    def _rl_checks(self) -> OnlineRLConfig:
        if not self.rewards:
            raise ValueError(f"{self.stage} needs at least one reward function (e.g. rules, teacher, reward_model)")
        if all(r.weight == 0 for r in self.rewards):
            raise ValueError(f"{self.stage}: every reward weight is 0")
        per_step = self.batch_size * self.grad_accum
        if per_step % self.num_generations:
            raise ValueError(
                f"{self.stage}: batch_size x grad_accum ({per_step}) must be a multiple of num_generations "
                f"({self.num_generations}): each prompt's group of completions is scored together"
            )
        if self.max_completion_length >= self.max_length:
            raise ValueError("max_completion_length must be smaller than max_length (the prompt needs room)")
        return self

    def trl_kwargs(self) -> dict[str, Any]:
        return {
            "num_generations": self.num_generations,
            "max_completion_length": self.max_completion_length,
            "temperature": self.temperature,
            "beta": self.beta,
            "reward_weights": [r.weight for r in self.rewards],
        }


class GRPOStageConfig(OnlineRLConfig):
    stage: ClassVar[str] = "grpo"


class RLOOStageConfig(OnlineRLConfig):
    """RLOO: TRL 1.x's replacement for PPO (MedicalGPT switched its PPO stage to RLOO in 2026-03)."""

    stage: ClassVar[str] = "rloo"
    beta: float = Field(0.05, ge=0, description="KL coefficient against the reference policy")


#: Stages that compare against a reference policy: stacking onto the previous adapter would make the
#: reference the untouched base model instead of the previous stage's policy.
NEEDS_REFERENCE = {"dpo", "kto"}
