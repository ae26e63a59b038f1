"""Chains of stages (``pt -> sft -> dpo``, ``sft -> rm -> rloo`` ...) run in one process.

Between stages the policy moves on: with ``chain: merge`` (default) the previous adapter is merged into its
base (``<stage>/merged``, tokenizer and template copied) and the next stage trains a fresh adapter on that;
with ``chain: stack`` the next stage keeps training the previous adapter (only for stages without a
reference model: for DPO/KTO/GRPO/RLOO the reference would silently become the original base).
An ``rm`` stage does not move the policy: it trains a reward model from the current policy and hands its
(merged) folder to the later ``grpo``/``rloo`` stages as their ``reward_model``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medtune_core.errors import MedtuneError
from medtune_core.training.config import ChainMode, OnlineRLConfig, StageConfig
from medtune_core.training.merge import merge_adapter, merged_is_current
from medtune_core.training.runner import StageResult
from medtune_core.training.stages import get_stage

log = logging.getLogger(__name__)


def merged_model_of(result: StageResult) -> Path:
    """A loadable full model for a stage's result: ``<output_dir>/merged``, merged again whenever it is missing or
    was made from another adapter than the current one (its recorded adapter hash)."""
    if result.model_dir is not None:
        return result.model_dir
    if result.adapter_dir is None:
        raise MedtuneError(f"stage {result.stage} produced neither a model nor an adapter")
    target = result.output_dir / "merged"
    if not merged_is_current(result.adapter_dir, target):
        merge_adapter(
            result.adapter_dir, target, sequence_classification=result.is_reward_model, dtype=result.merge_dtype
        )
    return target


def validate_chain(configs: Sequence[StageConfig]) -> None:
    """Reject chains that cannot work, before anything trains."""
    if not configs:
        raise MedtuneError("no stages to run")
    names = [c.stage for c in configs]
    for i, cfg in enumerate(configs):
        stage = get_stage(cfg.stage)
        if i and cfg.chain is ChainMode.STACK and stage.uses_reference:
            raise MedtuneError(
                f"stage {cfg.stage}: chain 'stack' would make the reference model the original base instead of "
                f"the previous stage's policy; use chain 'merge'"
            )
        if cfg.stage == "rm" and i == len(configs) - 1 and len(configs) > 1:
            log.info("the chain ends with a reward model; nothing uses it afterwards")
        if isinstance(cfg, OnlineRLConfig):
            unplaced = any(r.name == "reward_model" and not r.options.get("path") for r in cfg.rewards)
            if unplaced and not cfg.reward_model and "rm" not in names[:i]:
                raise MedtuneError(
                    f"stage {cfg.stage} uses a reward_model reward but no rm stage comes before it; give an "
                    "existing reward model with the reward's options.path or the stage's reward_model"
                )


def run_chain(
    configs: Sequence[StageConfig],
    *,
    merge_final: bool = True,
    callbacks: Sequence[Any] = (),
) -> list[StageResult]:
    """Run ``configs`` in order; each stage's ``model`` is replaced by the previous policy (not for the first)."""
    validate_chain(configs)
    results: list[StageResult] = []
    policy: str | None = None  # current policy model folder
    policy_adapter: Path | None = None
    policy_result: StageResult | None = None
    reward_model: str | None = None
    for i, cfg in enumerate(configs):
        updates: dict[str, Any] = {}
        adapter = None
        if i and policy_result is not None:
            if cfg.chain is ChainMode.STACK and policy_adapter is not None:
                updates["model"] = str(policy_result.base_model)
                adapter = policy_adapter
            else:
                updates["model"] = str(merged_model_of(policy_result))
        if isinstance(cfg, OnlineRLConfig) and reward_model and not cfg.reward_model:
            updates["reward_model"] = reward_model
        cfg = cfg.model_copy(update=updates) if updates else cfg
        log.info("stage %d/%d: %s on %s", i + 1, len(configs), cfg.stage, cfg.model)
        result = get_stage(cfg.stage).run(cfg, adapter=adapter, callbacks=callbacks)
        results.append(result)
        if cfg.stage == "rm":
            reward_model = str(merged_model_of(result))
        else:
            policy_result = result
            policy = str(result.model_dir or result.adapter_dir)
            policy_adapter = result.adapter_dir
    if merge_final and policy_result is not None and policy_result.adapter_dir is not None:
        merged_model_of(policy_result)
    log.info("chain finished; policy %s", policy)
    return results


def write_summary(results: Sequence[StageResult], path: str | Path) -> Path:
    path = Path(path)
    rows = [r.to_dict() for r in results]
    path.write_text(json.dumps(rows, indent=2, ensure_ascii=False, default=str) + "\n")
    return path
