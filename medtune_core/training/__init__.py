"""Training stages on TRL 1.x: ``pt, sft, rm, dpo, orpo, kto, grpo, rloo`` (registry in :mod:`.stages`).

    from medtune_core.training import get_stage, run_chain, stage_config
    sft = stage_config("sft", model="embedded:smollm2-135m-instruct", train_files=["data.jsonl"], output_dir="out/sft")
    result = get_stage("sft").run(sft)

TRL 1.x has no PPO: the original PPO-with-a-reward-model is ``rloo`` (or ``grpo``) with ``reward_model`` among
its rewards (MedicalGPT made the same switch in 2026-03).
"""

from medtune_core.training.config import (
    AdapterConfig,
    AdapterType,
    ChainMode,
    DPOStageConfig,
    GRPOStageConfig,
    KTOStageConfig,
    ORPOStageConfig,
    PTConfig,
    RewardSpec,
    RLOOStageConfig,
    RMConfig,
    SFTStageConfig,
    StageConfig,
)
from medtune_core.training.merge import merge_adapter
from medtune_core.training.pipeline import merged_model_of, run_chain, validate_chain
from medtune_core.training.runner import StageResult, resolve_model_ref
from medtune_core.training.stages import STAGES, PackedCollator, Stage, get_stage, pack_documents, stage_config
from medtune_core.training.templates import check_template, prepare_training_template

__all__ = [
    "STAGES",
    "AdapterConfig",
    "AdapterType",
    "ChainMode",
    "DPOStageConfig",
    "GRPOStageConfig",
    "KTOStageConfig",
    "ORPOStageConfig",
    "PTConfig",
    "PackedCollator",
    "RLOOStageConfig",
    "RMConfig",
    "RewardSpec",
    "SFTStageConfig",
    "Stage",
    "StageConfig",
    "StageResult",
    "check_template",
    "get_stage",
    "merge_adapter",
    "merged_model_of",
    "pack_documents",
    "prepare_training_template",
    "resolve_model_ref",
    "run_chain",
    "stage_config",
    "validate_chain",
]
