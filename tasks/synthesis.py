"""Synthesis tasks: one cached task per batch of samples, one per agent to merge, deduplicate and write.

Thin wrappers over :mod:`medtune_core.synthesis`. A batch task writes its samples and rejects to a batch
file under ``<output_dir>/.batches`` and returns a :class:`Manifest` of it, so a re-run serves finished
batches from the cache (and :func:`tasks.base.fresh` regenerates one whose file has gone). Output
folders are passed as strings: their changing contents must not enter the cache keys.

LLM batches resolve the API key inside the task (never an input, result or artifact). A batch the budget
stopped raises :class:`BudgetStop` (not retried, not cached) carrying the manifest of what it got: the flow stops
issuing batches, writes what it has and fails with a message; a re-run with a higher budget gets the finished
batches from the Prefect cache and every answer already paid for from the LLM response cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger
from prefect.cache_policies import TASK_SOURCE
from pydantic import BaseModel, Field

from medtune_core.dataio import Manifest
from medtune_core.errors import MedtuneError
from medtune_core.synthesis import DedupConfig, save_batch, seed_batch
from medtune_core.synthesis.run import batch_manifest, batch_path, finalize_batches
from medtune_core.synthesis.schedule import BudgetStop
from tasks.base import medtune_task
from tasks.caching import ContentInputs
from tasks.secrets import resolve_endpoint_key

__all__ = ["BudgetStop", "LLMEndpoint", "finalize_task", "llm_batch_task", "llm_pilot_task", "seed_batch_task"]


class LLMEndpoint(BaseModel):
    """Where LLM batches send their requests; no secret in here (the key is resolved inside the task)."""

    model: str = "deepseek-chat"
    base_url: str | None = None
    concurrency: int = 16
    temperature: float = 0.7
    api_key_block: str | None = Field(None, description="Prefect Secret block holding the key (else the env).")
    cache_path: str | None = Field(
        None, description="SQLite response cache; default $MEDTUNE_HOME/cache/llm_responses.sqlite"
    )
    prices: dict[str, dict[str, Any]] | None = None


@medtune_task(name="synthesis-seed-batch")
def seed_batch_task(
    agent: str,
    seed: int,
    start: int,
    count: int,
    output_dir: str,
    template_version: str,
    vocabulary: list[str] | None = None,
) -> Manifest:
    """Template-mode samples ``start .. start+count-1`` of ``agent``, validated, saved as a batch file
    (``vocabulary``: extra vocabulary files; ``template_version`` hashes them, so edits regenerate the batch)."""
    result = seed_batch(agent, seed, start, count, vocabulary or ())
    path = save_batch(batch_path(output_dir, "seed", agent, start, count), result)
    return batch_manifest(path, result, {"agent": agent, "start": start, "count": count, "template": template_version})


def client_config(endpoint: LLMEndpoint, budget: float | None = None) -> Any:
    """The LLM client settings of an endpoint, with its key resolved here, at run time (never a task input)."""
    from medtune_core.llm import LLMConfig
    from medtune_core.settings import get_settings

    base_url = endpoint.base_url or get_settings().default_base_url()
    key = resolve_endpoint_key(base_url, endpoint.api_key_block)
    local = base_url is not None and ("127.0.0.1" in base_url or "localhost" in base_url)
    if key is None and not local:
        raise MedtuneError(
            f"no API key for LLM mode at {base_url or 'the default endpoint'}: set the provider's key "
            "(OPENAI_API_KEY, DEEPSEEK_API_KEY, DASHSCOPE_API_KEY, ZHIPUAI_API_KEY) or name a Prefect Secret block "
            "(parameter api_key_block)"
        )
    cache = endpoint.cache_path or str(get_settings().cache_dir / "llm_responses.sqlite")
    return LLMConfig(
        model=endpoint.model,
        base_url=base_url,
        api_key=key or "EMPTY",
        concurrency=endpoint.concurrency,
        budget=budget,
        cache_path=Path(cache),
        prices=endpoint.prices,
    )


@medtune_task(
    name="synthesis-llm-batch",
    retry="network",
    cache_policy=TASK_SOURCE + ContentInputs(exclude=["budget", "budget_scope"]),
)
def llm_batch_task(
    agent: str,
    seed: int,
    start: int,
    count: int,
    output_dir: str,
    endpoint: LLMEndpoint,
    budget: float | None,
    budget_scope: str | None = None,
    vocabulary: list[str] | None = None,
    vocabulary_hash: str = "",
) -> Manifest:
    """LLM-mode samples of one batch (:func:`medtune_core.synthesis.llm_mode.llm_batch`). ``budget`` caps what this
    batch may spend, or with ``budget_scope`` (e.g. the flow run) what every batch of that scope in this process
    spends together; neither is part of the cache key. ``vocabulary``: extra vocabulary files (inputs and clinical
    rules); ``vocabulary_hash`` their content, so an edited file is not answered from the cache."""
    from medtune_core.llm.ledger import shared_ledger
    from medtune_core.synthesis.llm_mode import llm_batch

    ledger = shared_ledger(budget_scope) if budget_scope else None
    params = {"temperature": endpoint.temperature}
    config = client_config(endpoint, budget)
    vocab = vocabulary or ()
    m = llm_batch(config, agent, seed, start, count, output_dir, params=params, ledger=ledger, vocabulary=vocab)
    get_run_logger().info(
        "%s batch %d: %d accepted, %d rejected, %d+%d tokens, cost %.6f %s",
        agent,
        start,
        m.rows,
        m.extra["rejected"],
        m.extra["input_tokens"],
        m.extra["output_tokens"],
        m.extra["cost"],
        m.extra["currency"],
    )
    return m


@medtune_task(name="synthesis-finalize")
def finalize_task(
    agent: str,
    batches: list[Manifest],
    output_dir: str,
    source: str,
    output_format: str,
    dedup: DedupConfig,
    extra: dict[str, Any],
    nights: bool = False,
) -> dict[str, Any]:
    """Merge an agent's batches, drop duplicates across them and write ``{agent}_seed|sft_data.jsonl`` (none when
    nothing was accepted: ``manifest`` is then None and only the rejects file is written)."""
    manifest, report = finalize_batches(
        output_dir, agent, batches, source=source, output_format=output_format, dedup=dedup, extra=extra, nights=nights
    )
    return {"manifest": manifest, "report": report.as_dict()}


@medtune_task(name="synthesis-llm-pilot", retry="network")
def llm_pilot_task(
    agent: str,
    seed: int,
    k: int,
    total_n: int,
    endpoint: LLMEndpoint,
    vocabulary: list[str] | None = None,
    vocabulary_hash: str = "",
) -> dict[str, Any]:
    """The original generator's ``--test_cost`` for one agent: ``k`` requests sent, priced and projected to ``total_n``
    (``vocabulary``: extra vocabulary files the inputs come from, as in :func:`llm_batch_task`)."""
    from medtune_core.synthesis.llm_mode import pilot_agent

    sampling = {"temperature": endpoint.temperature}
    report = pilot_agent(client_config(endpoint), agent, seed, k, total_n, sampling, vocabulary or ())
    get_run_logger().info("%s %s", agent, report.summary())
    return {
        "agent": agent,
        "k": report.k,
        "ok": report.ok,
        "rejected": report.rejected,
        "reject reasons": ", ".join(f"{k}: {v}" for k, v in sorted(report.rejects_by_reason.items())),
        "failed": report.failed,
        "input_tokens": report.usage.prompt_tokens,
        "output_tokens": report.usage.completion_tokens,
        "cost": round(report.cost, 6),
        "currency": report.currency,
        "priced": report.priced,
        "total_n": report.total_n,
        "projected_cost": round(report.projected_cost, 6),
    }
