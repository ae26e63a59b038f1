"""LLM mode: each agent's sampled inputs answered by a model through :class:`medtune_core.llm.LLMClient`.

Per batch, every index gets its input (from its own seeded generator, so a batch is reproducible and a rerun
sends byte-identical requests that the response cache answers for free), its request (system prompt +
few-shots + input, JSON schema of the agent's answer) and one :meth:`LLMClient.chat_json` call. The answer is
validated with the agent's fixed output model, then the agent's quality checks run on it with the request's
input (the request's ``check``), so a failing answer gets the client's one corrective re-ask before it is
rejected. The system message (with the agent's JSON schema) is computed once per agent, the few-shot turns
once per batch: building a request costs the input's sampling and one user message. An accepted answer is not
validated again (the client did it, checks included).

Outcomes per index: accepted; rejected with a reason (written to the rejects file, never to the data);
``failed`` (no answer after the client's retries) or ``budget`` (not sent: the cap would be exceeded) — the
last two are *missing*, not rejected, so a later run (a retry, a higher budget) fills them in.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medtune_core.llm import BudgetExceeded, ChatRequest, ChatResult, Failed, LLMClient, LLMConfig, Rejected
from medtune_core.llm.client import PilotReport
from medtune_core.llm.ledger import CostLedger
from medtune_core.synthesis.base import Agent, Sample
from medtune_core.synthesis.registry import get_agent, resolve_agents
from medtune_core.synthesis.postprocess import DedupConfig, PostprocessResult, Reject
from medtune_core.synthesis.requests import prompt_prefix, user_message
from medtune_core.synthesis.run import AgentReport, batch_ranges, finalize_agent, sizes_for, write_summary
from medtune_core.synthesis.templates import sample_input

QUALITY_PREFIX = "quality check failed"
DEFAULT_PARAMS: dict[str, Any] = {"temperature": 0.7}


def quality_check(agent: Agent, inp: dict[str, Any]) -> Callable[[Any], str | None]:
    """The request's ``check`` for :meth:`LLMClient.chat_json`: the agent's quality checks on the validated answer
    with this input. Its problem text is what the former pydantic ``after`` validator produced (so a re-ask sends
    the same correction turn as before, and a cached re-ask still hits)."""

    def check(answer: Any) -> str | None:
        failures = list(agent.checks(inp, answer))
        if not failures:
            return None
        return f"<root>: Value error, {QUALITY_PREFIX}: " + "; ".join(str(f) for f in failures)

    return check


@dataclass
class BatchOutcome:
    """One LLM batch: samples and rejects, indices still missing, tokens and cost of this call."""

    result: PostprocessResult
    missing: list[int] = field(default_factory=list)
    failed: int = 0
    budget_stopped: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost: float = 0.0
    currency: str = ""
    cache_hits: int = 0
    requests: int = 0

    @property
    def complete(self) -> bool:
        return not self.missing


def build_chat_requests(
    agent: Agent | str,
    seed: int,
    start: int,
    count: int,
    *,
    params: Mapping[str, Any] | None = None,
    few_shots: list[tuple[dict[str, Any], dict[str, Any]]] | None = None,
) -> list[tuple[int, dict[str, Any], ChatRequest]]:
    """Input and request of samples ``start .. start+count-1``: the messages of
    :func:`~medtune_core.synthesis.requests.build_messages` (the system and few-shot turns built once and shared by
    all requests of the batch), the agent's output model as the schema, and its quality checks with the sample's
    input as ``check``."""
    a = get_agent(agent) if isinstance(agent, str) else agent
    if count <= 0:
        return []
    prefix = prompt_prefix(a, few_shots)
    sampling = dict(params or DEFAULT_PARAMS)
    out = []
    for i in range(start, start + count):
        inp = sample_input(a, seed, i, source="llm")
        messages = [*prefix, {"role": "user", "content": user_message(inp)}]
        out.append((i, inp, ChatRequest(messages, a.output_model, dict(sampling), check=quality_check(a, inp))))
    return out


async def run_llm_batch(
    client: LLMClient,
    agent: Agent | str,
    seed: int,
    start: int,
    count: int,
    *,
    params: Mapping[str, Any] | None = None,
    few_shots: list[tuple[dict[str, Any], dict[str, Any]]] | None = None,
    on_result: Callable[[int, Any], None] | None = None,
) -> BatchOutcome:
    """Answer samples ``start .. start+count-1`` of ``agent`` through ``client`` and validate them."""
    a = get_agent(agent) if isinstance(agent, str) else agent
    planned = build_chat_requests(a, seed, start, count, params=params, few_shots=few_shots)
    results = await client.run_many([req for _, _, req in planned], on_result=on_result)
    outcome = BatchOutcome(PostprocessResult(), currency=client.budget_currency)
    for (index, inp, _), res in zip(planned, results, strict=True):
        usage = getattr(res, "usage", None)
        if usage is not None:
            outcome.input_tokens += usage.prompt_tokens
            outcome.output_tokens += usage.completion_tokens
            outcome.cached_tokens += usage.cached_tokens
        outcome.cost += float(getattr(res, "cost", 0.0) or 0.0)
        if isinstance(res, ChatResult):
            outcome.requests += 1
            outcome.cache_hits += int(res.cached)
            if isinstance(res.data, a.output_model):  # validated and checked by the client (``check``)
                out, failures = res.data.model_dump(mode="json"), []
            else:  # pragma: no cover - a request built elsewhere
                out, failures = a.validate(inp, res.data.model_dump(mode="json"))
            sample = Sample(a.name, index, inp, out, source="llm", raw=None, meta={"seed": seed, "model": res.model})
            if failures or out is None:
                f = failures[0]
                reason = "schema" if f.check == "schema" else f"quality:{f.check}"
                outcome.result.rejects.append(
                    Reject.of(Sample(a.name, index, inp, None, "llm", res.text), reason, str(f))
                )
            else:
                outcome.result.accepted.append(sample)
        elif isinstance(res, Rejected):
            outcome.requests += 1
            reason = "quality" if QUALITY_PREFIX in res.detail else f"llm:{res.reason}"
            outcome.result.rejects.append(Reject(a.name, index, "llm", reason, res.detail[:2000], inp, None, res.text))
        elif isinstance(res, BudgetExceeded):
            outcome.missing.append(index)
            outcome.budget_stopped += 1
        else:
            assert isinstance(res, Failed)
            outcome.missing.append(index)
            outcome.failed += 1
    return outcome


def run_llm_batch_sync(
    client_config: LLMConfig, *args: Any, ledger: CostLedger | None = None, **kwargs: Any
) -> BatchOutcome:
    """:func:`run_llm_batch` from synchronous code, with its own client (closed afterwards); a shared ``ledger``
    makes the budget hold for the sum of several batches."""

    async def go() -> BatchOutcome:
        async with LLMClient(client_config, ledger=ledger) as client:
            return await run_llm_batch(client, *args, **kwargs)

    return asyncio.run(go())


def pilot_agent(
    client_config: LLMConfig, agent: str, seed: int, k: int, total_n: int, params: Mapping[str, Any] | None = None
) -> PilotReport:
    """The seed's ``--test_cost`` for one agent: send its first ``k`` requests, price them, project to ``total_n``.

    They are the requests the real run starts with, so their answers wait in the response cache: the run that
    follows a pilot does not pay for them again.
    """
    requests = [req for _, _, req in build_chat_requests(agent, seed, 0, k, params=params)]

    async def go() -> PilotReport:
        async with LLMClient(client_config) as client:
            return await client.pilot(requests, total_n)

    return asyncio.run(go())


@dataclass
class LLMRunReport:
    """What :func:`run_llm_mode` did: reports per agent, whether it stopped on the budget, what is missing."""

    reports: list[AgentReport]
    budget_stopped: bool
    missing: dict[str, int]
    spent: float
    currency: str
    summary_path: Path | None = None

    @property
    def complete(self) -> bool:
        return not any(self.missing.values())


def run_llm_mode(
    output_dir: str | Path,
    config: LLMConfig,
    agents: str | Sequence[str] = "all",
    num_samples: int | Mapping[str, int] | None = None,
    *,
    seed: int = 0,
    output_format: str = "instruction",
    dedup: DedupConfig | None = None,
    batch_size: int = 100,
    params: Mapping[str, Any] | None = None,
    parallel_batches: int = 2,
) -> LLMRunReport:
    """LLM mode end to end: ``{agent}_sft_data.jsonl`` per agent and ``synthesis_manifest.json``.

    Up to ``parallel_batches`` batches are in flight at once, sharing the client's ``concurrency`` (a batch's
    draining tail never leaves the endpoint idle), and an agent's file is written (in a worker thread) as soon as its
    batches are in, while the other agents' requests go on: the same schedule as the ``data-synthesis`` flow.

    With ``config.budget`` the run stops sending when the cap would be exceeded and writes what it has (the
    manifest says ``complete: false`` and how many are missing). Run it again with a higher budget and the
    same ``config.cache_path``: answers already paid for come from the cache, only the rest is sent.
    """
    if parallel_batches < 1:
        raise ValueError(f"parallel_batches must be at least 1, got {parallel_batches}")
    names = resolve_agents(agents)
    sizes = sizes_for(names, num_samples)
    dedup = dedup or DedupConfig()
    plan = [(name, start, count) for name in names for start, count in batch_ranges(sizes[name], batch_size)]

    def finalize(name: str, batches: list[BatchOutcome]) -> AgentReport:
        currency = next((b.currency for b in batches if b.currency), "")
        missing = sum(len(b.missing) for b in batches)
        extra = {
            "seed": seed,
            "model": config.model,
            "complete": missing == 0,
            "missing": missing,
            "input_tokens": sum(b.input_tokens for b in batches),
            "output_tokens": sum(b.output_tokens for b in batches),
            "cost": round(sum(b.cost for b in batches), 8),
            "currency": currency,
        }
        _, report = finalize_agent(
            output_dir,
            name,
            [b.result for b in batches],
            source="llm",
            output_format=output_format,
            dedup=dedup,
            extra=extra,
        )
        return report

    async def go() -> tuple[dict[str, list[BatchOutcome]], dict[str, AgentReport], bool, float]:
        loop = asyncio.get_running_loop()
        outcomes: dict[str, dict[int, BatchOutcome]] = {n: {} for n in names}
        left = Counter(name for name, _, _ in plan)  # batches of each agent not yet in
        written: dict[str, asyncio.Future[AgentReport]] = {}
        stopped = False

        def settle(name: str, start: int, outcome: BatchOutcome) -> None:
            nonlocal stopped
            outcomes[name][start] = outcome
            stopped = stopped or outcome.budget_stopped > 0
            left[name] -= 1
            if left[name] == 0:
                ordered = [outcomes[name][k] for k in sorted(outcomes[name])]
                written[name] = loop.run_in_executor(None, finalize, name, ordered)

        async def one(name: str, start: int, count: int) -> tuple[str, int, BatchOutcome]:
            return name, start, await run_llm_batch(client, name, seed, start, count, params=params)

        async def drain(pending: set[asyncio.Task[Any]], down_to: int) -> set[asyncio.Task[Any]]:
            while len(pending) > down_to:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    settle(*task.result())
            return pending

        async with LLMClient(config) as client:
            pending: set[asyncio.Task[Any]] = set()
            for name, start, count in plan:
                if stopped:
                    settle(name, start, _skipped(start, count))
                    continue
                pending.add(asyncio.create_task(one(name, start, count)))
                pending = await drain(pending, parallel_batches - 1)
            await drain(pending, 0)
            spent = client.ledger.spent(client.budget_currency)
        for name in names:  # an agent with nothing planned still gets its (empty) file
            if name not in written:
                written[name] = loop.run_in_executor(None, finalize, name, [])
        reports = {name: await fut for name, fut in written.items()}
        ordered = {n: [outcomes[n][k] for k in sorted(outcomes[n])] for n in names}
        return ordered, reports, stopped, spent

    outcomes, by_agent, stopped, spent = asyncio.run(go())
    reports = [by_agent[name] for name in names]
    missing = {name: sum(len(b.missing) for b in outcomes[name]) for name in names}
    currency = next((b.currency for name in names for b in outcomes[name] if b.currency), "")
    summary = write_summary(
        output_dir,
        reports,
        {"mode": "llm", "seed": seed, "model": config.model, "num_samples": sizes, "budget": config.budget},
    )
    return LLMRunReport(reports, stopped, missing, spent, currency, summary)


def _skipped(start: int, count: int) -> BatchOutcome:
    return BatchOutcome(PostprocessResult(), missing=list(range(start, start + count)), budget_stopped=count)
