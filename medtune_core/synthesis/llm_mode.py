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
import concurrent.futures as cf
import contextlib
import os
import re
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medtune_core.dataio import Manifest
from medtune_core.errors import MedtuneError
from medtune_core.llm import BudgetExceeded, ChatRequest, ChatResult, Failed, LLMClient, LLMConfig, Rejected
from medtune_core.llm.client import PilotReport
from medtune_core.llm.ledger import CostLedger
from medtune_core.synthesis import Agent, Sample, get_agent, resolve_agents
from medtune_core.synthesis import vocab as V
from medtune_core.synthesis.postprocess import DedupConfig, PostprocessResult, Reject
from medtune_core.synthesis.requests import prompt_prefix, user_message
from medtune_core.synthesis.run import (
    AgentReport,
    batch_manifest,
    batch_path,
    batch_progress,
    batch_ranges,
    finalize_batches,
    save_batch,
    sizes_for,
    write_summary,
)
from medtune_core.synthesis.schedule import Batch, BatchSchedule, BudgetStop, wait_any_future
from medtune_core.synthesis.seed import sample_input

QUALITY_PREFIX = "quality check failed"
DEFAULT_PARAMS: dict[str, Any] = {"temperature": 0.7}


def quality_check(agent: Agent, inp: dict[str, Any]) -> Callable[[Any], str | None]:
    """The request's ``check`` for :meth:`LLMClient.chat_json`: the agent's quality checks on the validated answer
    with this input. Its problem text is what the former pydantic ``after`` validator produced (so a re-ask sends
    the same correction turn as before, and a cached re-ask still hits)."""

    vocab = V.current()  # the vocabulary the input was drawn from; the client may check on another thread

    def check(answer: Any) -> str | None:
        with V.use_vocabulary(vocab):
            failures = agent.quality_failures(inp, answer)  # the agent's checks, then the clinical rules
        if not failures:
            return None
        return f"<root>: Value error, {QUALITY_PREFIX}: " + "; ".join(str(f) for f in failures)

    return check


def quality_reason(detail: str) -> str:
    """``quality:<check>`` of the first check a re-asked answer still failed (``quality:clinical:pregnancy_age``)."""
    m = re.search(rf"{QUALITY_PREFIX}: ([\w:]+): ", detail)
    return f"quality:{m.group(1)}" if m else "quality"


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
    failures: Counter[str] = field(default_factory=Counter)
    first_failure: str = ""

    @property
    def complete(self) -> bool:
        return not self.missing


class BatchFailed(MedtuneError):
    """Requests of a batch got no answer after the client's retries; the message names the cause and what to change."""


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
            reason = quality_reason(res.detail) if QUALITY_PREFIX in res.detail else f"llm:{res.reason}"
            outcome.result.rejects.append(Reject(a.name, index, "llm", reason, res.detail[:2000], inp, None, res.text))
        elif isinstance(res, BudgetExceeded):
            outcome.missing.append(index)
            outcome.budget_stopped += 1
        else:
            assert isinstance(res, Failed)
            outcome.missing.append(index)
            outcome.failed += 1
            outcome.failures[res.reason] += 1
            outcome.first_failure = outcome.first_failure or res.detail
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
    client_config: LLMConfig,
    agent: str,
    seed: int,
    k: int,
    total_n: int,
    params: Mapping[str, Any] | None = None,
    vocabulary: Sequence[str | os.PathLike[str]] = (),
) -> PilotReport:
    """The original ``--test_cost`` for one agent: send its first ``k`` requests, price them, project to ``total_n``.

    They are the requests the real run starts with, so their answers wait in the response cache: the run that
    follows a pilot does not pay for them again.
    """
    with V.use_vocabulary(vocabulary):
        requests = [req for _, _, req in build_chat_requests(agent, seed, 0, k, params=params)]

    async def go() -> PilotReport:
        async with LLMClient(client_config) as client:
            return await client.pilot(requests, total_n)

    return asyncio.run(go())


def llm_batch(
    config: LLMConfig,
    agent: str,
    seed: int,
    start: int,
    count: int,
    output_dir: str | Path,
    *,
    params: Mapping[str, Any] | None = None,
    ledger: CostLedger | None = None,
    vocabulary: Sequence[str | os.PathLike[str]] = (),
) -> Manifest:
    """One LLM batch end to end: answered, validated, saved under ``output_dir/.batches``; returns its manifest
    (``extra``: tokens, cost, rejects by reason, indices still ``missing``). ``vocabulary``: extra vocabulary files
    the inputs are drawn from and the clinical rules read.

    A batch the budget stopped is saved too (what was paid for is kept) and raises :class:`BudgetStop` carrying
    that manifest; a batch with requests that got no answer raises :class:`BatchFailed` naming the cause (their
    answers, where any came, wait in the response cache)."""
    with V.use_vocabulary(vocabulary):
        outcome = run_llm_batch_sync(config, agent, seed, start, count, params=params, ledger=ledger)
    return saved_batch(outcome, agent, start, count, output_dir)


async def llm_batch_async(
    client: LLMClient,
    agent: str,
    seed: int,
    start: int,
    count: int,
    output_dir: str | Path,
    *,
    params: Mapping[str, Any] | None = None,
) -> Manifest:
    """:func:`llm_batch` on a running client (several batches on one event loop share its connections); the batch
    file is written in a worker thread, off the loop."""
    outcome = await run_llm_batch(client, agent, seed, start, count, params=params)
    return await asyncio.to_thread(saved_batch, outcome, agent, start, count, output_dir)


def saved_batch(outcome: BatchOutcome, agent: str, start: int, count: int, output_dir: str | Path) -> Manifest:
    """A batch's outcome saved under ``output_dir/.batches``, as :func:`llm_batch` describes (and raises)."""
    if outcome.failed:
        causes = ", ".join(f"{n} {reason}" for reason, n in outcome.failures.most_common())
        raise BatchFailed(
            f"{agent} batch {start}: {outcome.failed} of {count} requests got no answer ({causes}): "
            f"{outcome.first_failure}"
        )
    path = save_batch(batch_path(output_dir, "llm", agent, start, count), outcome.result)
    extra = {
        "agent": agent,
        "start": start,
        "count": count,
        "input_tokens": outcome.input_tokens,
        "output_tokens": outcome.output_tokens,
        "cost": outcome.cost,
        "currency": outcome.currency,
        "requests": outcome.requests,
        "missing": outcome.missing,
    }
    manifest = batch_manifest(path, outcome.result, extra)
    if outcome.budget_stopped:
        raise BudgetStop(f"{agent} batch {start}: budget reached, {len(outcome.missing)} samples not sent", manifest)
    return manifest


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
    """LLM mode end to end: ``{agent}_sft_data.jsonl`` per agent and ``synthesis_manifest.json``, on the same
    :class:`~medtune_core.synthesis.schedule.BatchSchedule` as the ``data-synthesis`` flow: up to
    ``parallel_batches`` batches (coroutines of one client on one event loop) share the endpoint's ``concurrency`` and
    one budget, and an agent's file is
    written as soon as its batches are in.

    With ``config.budget`` the run stops sending when the cap is reached and writes what it has (the manifest says
    ``complete: false`` and how many are missing). Run it again with a higher budget and the same
    ``config.cache_path``: answers already paid for come from the cache, only the rest is sent.
    """
    names = resolve_agents(agents)
    sizes = sizes_for(names, num_samples)
    dedup = dedup or DedupConfig()
    schedule: BatchSchedule[Manifest] = BatchSchedule(
        [Batch(name, "llm", start, count) for name in names for start, count in batch_ranges(sizes[name], batch_size)]
    )
    finals: dict[str, cf.Future[tuple[Manifest | None, AgentReport]]] = {}
    # the batches run on one event loop in a thread of their own, with one client (its connections serve every
    # batch); the schedule waits on their futures like on any others, and the files are written on a thread pool
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, name="llm-mode", daemon=True)
    runner.start()
    client = LLMClient(config)
    ledger = client.ledger
    submitted: list[cf.Future[Manifest]] = []
    with contextlib.ExitStack() as stack:
        stack.callback(_stop_loop, loop, runner, client, submitted)
        pool = stack.enter_context(cf.ThreadPoolExecutor(max_workers=2, thread_name_prefix="llm-finalize"))

        def submit(b: Batch) -> cf.Future[Manifest]:
            job = llm_batch_async(client, b.agent, seed, b.start, b.count, output_dir, params=params)
            submitted.append(asyncio.run_coroutine_threadsafe(job, loop))
            return submitted[-1]

        def finalize(key: tuple[str, str], batches: list[Manifest]) -> None:
            extra = {"seed": seed, "model": config.model, **batch_progress(sizes[key[0]], batches)}
            finals[key[0]] = pool.submit(
                finalize_batches,
                output_dir,
                key[0],
                batches,
                source="llm",
                output_format=output_format,
                dedup=dedup,
                extra=extra,
            )

        schedule.run(submit, wait_any_future, finalize, parallel_batches)
        reports = [finals[name].result()[1] for name in names]
    currency = next((r.extra.get("currency", "") for r in reports if r.extra.get("currency")), "")
    spent = ledger.spent(currency) if currency else ledger.spent()
    missing = {r.agent: int(r.extra.get("missing", 0)) for r in reports}
    summary = write_summary(
        output_dir,
        reports,
        {"mode": "llm", "seed": seed, "model": config.model, "num_samples": sizes, "budget": config.budget},
        run_record(ledger, reports, schedule.stopped),
    )
    return LLMRunReport(reports, schedule.stopped is not None, missing, spent, currency, summary)


def _stop_loop(
    loop: asyncio.AbstractEventLoop, runner: threading.Thread, client: LLMClient, futures: list[cf.Future[Any]]
) -> None:
    """Cancel what is still running (after an error), close the client on its loop, end the loop and its thread."""
    for fut in futures:
        fut.cancel()
    with contextlib.suppress(Exception):
        asyncio.run_coroutine_threadsafe(client.aclose(), loop).result(timeout=30)
    loop.call_soon_threadsafe(loop.stop)
    runner.join(timeout=30)
    loop.close()


def remaining(reports: Sequence[AgentReport]) -> dict[str, dict[str, Any]]:
    """The work a rerun has to do: samples still missing per agent and source, and their index ranges."""
    return {
        "remaining": {f"{r.agent}.{r.source}": int(r.extra.get("missing", 0)) for r in reports},
        "remaining_indices": {
            f"{r.agent}.{r.source}": r.extra["missing_ranges"] for r in reports if r.extra.get("missing_ranges")
        },
    }


def run_record(ledger: CostLedger, reports: Sequence[AgentReport], stopped: str | None) -> dict[str, Any]:
    """How a run ended, for its summary: every paid request (also those of a batch the budget stopped), the samples
    still missing per agent and source (a rerun sends only those), and why it stopped."""
    paid = ledger.summary()
    return {
        "paid_requests": paid["requests"],
        "cache_hits": paid["cache_hits"],
        "cost": paid["cost"],
        "prompt_tokens": paid["prompt_tokens"],
        "completion_tokens": paid["completion_tokens"],
        **remaining(reports),
        "stopped": stopped,
    }
