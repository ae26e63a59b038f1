"""Flow ``data-synthesis``: SFT data for the five health-assistant agents of seed 0.

DAG: for each agent → batches (template mode and/or LLM mode; each batch a cached, retryable task) →
finalize (merge, deduplicate, write ``{agent}_seed.jsonl`` / ``{agent}_sft_data.jsonl`` with manifest and
rejects) → artifacts (table of rows / rejects / tokens / cost per agent, a preview of samples, progress).
A run that fails half way regenerates only the missing batches when run again.

Sizes: with neither ``num_samples`` nor ``sizes`` set, a run makes ``DEMO_NUM_SAMPLES`` (50) per agent, which
finishes in well under a minute on 2 CPUs in template mode; ``sizes=minimum`` / ``sizes=recommended`` use
seed 0's table (preprocess 1000/5000, critic 500/2000, check_rag 500/2000, diagnosis 3000/10000,
drug 2000/5000); ``num_samples`` sets one number for every agent.

Nightly: :func:`nightly_deployment` schedules it at 02:00 Asia/Shanghai with ``seed`` unset, so the seed is
the run's scheduled date (``YYYYMMDD``): each night's data is new, a retry of that night reproduces it.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar, Literal
from zoneinfo import ZoneInfo

from prefect import flow, get_run_logger
from prefect.futures import as_completed
from prefect.runtime import flow_run
from pydantic import Field, field_validator, model_validator

from medtune_core.dataio import atomic_write_text
from medtune_core.errors import MedtuneError
from medtune_core.llm.ledger import forget_ledger
from medtune_core.params import HttpUrl, OutputDir, StrictParams
from medtune_core.synthesis import (
    DEMO_NUM_SAMPLES,
    DedupConfig,
    agent_names,
    batch_ranges,
    recommended_size,
    write_summary,
)
from medtune_core.synthesis.templates import template_fingerprint
from medtune_core.synthesis.run import AgentReport
from tasks.artifacts import Progress, publish_markdown, publish_table
from tasks.base import FreshFuture, call_fresh, submit_fresh
from tasks.synthesis import BudgetStop, LLMEndpoint, finalize_task, llm_batch_task, llm_pilot_task, seed_batch_task

#: Every registered agent (a sixth agent module appears here, in the UI's form and the CLI by itself) and "all".
AgentChoice = Literal[("all", *agent_names())]  # type: ignore[valid-type]
TIMEZONE = "Asia/Shanghai"
NIGHTLY_CRON = "0 2 * * *"


class DataSynthesisParams(StrictParams):
    """What to synthesize, how, and where to put it."""

    SYNONYMS: ClassVar[dict[str, str]] = {"test_cost": "pilot"}  # the seed's flag for the pilot

    agents: list[AgentChoice] = Field(
        default_factory=lambda: ["all"], description="Agents to generate for; 'all' for every registered agent."
    )
    num_samples: int | None = Field(
        default=None, ge=1, le=1_000_000, description="Samples per agent (overrides 'sizes')."
    )
    sizes: Literal["demo", "minimum", "recommended"] = Field(
        default="demo",
        description=f"Without num_samples: demo = {DEMO_NUM_SAMPLES} per agent, or seed 0's minimum / recommended.",
    )
    mode: Literal["seed", "llm", "both"] = Field(
        default="seed", description="seed: offline templates (free); llm: an OpenAI-compatible API; both."
    )
    model: str = Field(default="deepseek-chat", description="Chat model for LLM mode.")
    base_url: HttpUrl | None = Field(default=None, description="OpenAI-compatible endpoint; default OPENAI_BASE_URL.")
    api_key_block: str | None = Field(default=None, description="Prefect Secret block with the API key (else env).")
    concurrency: int = Field(default=16, ge=1, le=512, description="LLM requests in flight at most.")
    parallel_batches: int = Field(
        default=2,
        ge=1,
        le=16,
        description="LLM batches running at once: they share the concurrency limit and the budget, so a batch's "
        "tail never leaves the endpoint idle.",
    )
    prices: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description='Price overrides per model, per million tokens, e.g. {"my-model": {"input": 0.5, '
        '"output": 1.5, "currency": "CNY"}}: a model missing from the built-in table is not capped by '
        "the budget until it is priced here.",
    )
    pilot: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="LLM mode: send only this many requests per agent, report their cost and its projection to the "
        "full size, write no data (the seed's --test_cost). The real run then gets those answers from the cache.",
    )
    budget: float | None = Field(
        default=5.0, ge=0, description="Money this run may spend in LLM mode (model's currency); None: no cap."
    )
    temperature: float = Field(default=0.7, ge=0, le=2)
    output_format: Literal["instruction", "conversations", "messages"] = Field(
        default="instruction", description="instruction: alpaca with JSON input/output (seed default)."
    )
    output_dir: OutputDir = Field(default=Path("out/data-synthesis"), description="Where the files and manifests go.")
    seed: int | None = Field(
        default=0,
        description="Random seed; None: the run's scheduled date as YYYYMMDD, and the files go to output_dir/YYYYMMDD.",
    )
    batch_size: int = Field(default=250, ge=1, le=10_000, description="Samples per cached batch task.")
    dedup_threshold: float = Field(default=0.9, gt=0, le=1, description="Near-duplicate Jaccard threshold.")
    preview: int = Field(default=2, ge=0, le=20, description="Samples per agent shown in the preview artifact.")

    @field_validator("agents", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @model_validator(mode="after")
    def _pilot_needs_llm(self) -> DataSynthesisParams:
        if self.pilot is not None and self.mode == "seed":
            raise ValueError("pilot prices LLM requests: set mode to llm or both")
        return self

    def agent_list(self) -> list[str]:
        return agent_names() if "all" in self.agents or not self.agents else list(dict.fromkeys(self.agents))

    def size_of(self, agent: str) -> int:
        if self.num_samples is not None:
            return self.num_samples
        return DEMO_NUM_SAMPLES if self.sizes == "demo" else recommended_size(agent, self.sizes)

    def sources(self) -> list[str]:
        return {"seed": ["seed"], "llm": ["llm"], "both": ["seed", "llm"]}[self.mode]


def seed_for_date(day: dt.date) -> int:
    return int(day.strftime("%Y%m%d"))


def run_seed(params: DataSynthesisParams) -> int:
    """The seed given, or the date the run was scheduled for (Asia/Shanghai)."""
    if params.seed is not None:
        return params.seed
    from prefect.runtime import flow_run

    when = flow_run.scheduled_start_time or dt.datetime.now(dt.UTC)
    return seed_for_date(when.astimezone(ZoneInfo(TIMEZONE)).date())


@flow(name="data-synthesis", log_prints=True)
def data_synthesis(params: DataSynthesisParams) -> dict[str, str]:
    """Generate, check, deduplicate and write SFT data per agent; returns output paths by ``agent.source``."""
    logger = get_run_logger()
    seed = run_seed(params)
    # a dated run (seed from the schedule) writes into its own folder: tonight's data never overwrites last night's
    root = params.output_dir if params.seed is not None else params.output_dir / str(seed)
    out_dir = str(root)
    names = params.agent_list()
    dedup = DedupConfig(threshold=params.dedup_threshold)
    endpoint = LLMEndpoint(
        model=params.model,
        base_url=params.base_url,
        concurrency=params.concurrency,
        temperature=params.temperature,
        api_key_block=params.api_key_block,
        prices=params.prices or None,
    )
    if params.pilot is not None:
        return run_pilot(params, seed, endpoint)
    plan = [
        (name, source, start, count)
        for source in params.sources()
        for name in names
        for start, count in batch_ranges(params.size_of(name), params.batch_size)
    ]
    progress = Progress(f"data-synthesis: {len(plan)} batches", len(plan))
    batches: dict[tuple[str, str], list[Any]] = {}
    finals: dict[tuple[str, str], FreshFuture] = {}
    left = Counter((name, source) for name, source, _, _ in plan)  # batches of each agent and source not yet in

    def finalize(name: str, source: str) -> None:
        """Merge, deduplicate and write one agent's file as soon as its batches are in: it runs on the task runner
        while the other agents' requests are in flight, instead of all agents one after another at the end."""
        ms = batches.get((name, source), [])
        planned = params.size_of(name)
        done = sum(m.rows + int(m.extra.get("rejected", 0)) for m in ms)
        extra = {"seed": seed, "complete": done == planned, "missing": planned - done}
        if source == "llm":
            extra["model"] = params.model
        finals[(name, source)] = submit_fresh(
            finalize_task, name, ms, out_dir, source, params.output_format, dedup, extra
        )

    for name, _, start, count in (p for p in plan if p[1] == "seed"):
        batches.setdefault((name, "seed"), []).append(
            call_fresh(seed_batch_task, name, seed, start, count, out_dir, template_fingerprint(name))
        )
        progress.advance()
        left[(name, "seed")] -= 1
        if left[(name, "seed")] == 0:
            finalize(name, "seed")

    # every batch of this run shares one ledger: side by side, they together spend at most the budget
    scope = f"data-synthesis:{flow_run.get_id() or id(params)}"
    stopped: str | None = None

    def settle(args: tuple[str, int, int], state: Any) -> None:
        """One LLM batch's final state: keep its manifest, or note that the budget stopped the run; the agent's
        file is written once its last batch is in."""
        nonlocal stopped
        name, start, count = args
        left[(name, "llm")] -= 1
        if state.is_failed():
            exc = _exception(state)
            if not isinstance(exc, BudgetStop):
                raise exc
            if stopped is None:
                stopped = str(exc)
                logger.warning("budget reached (%s): writing what is done; rerun with a higher budget", stopped)
        else:
            m = state.result()
            if not m.is_current():  # the batch file went away since it was cached
                m = llm_batch_task.with_options(refresh_cache=True)(
                    name, seed, start, count, out_dir, endpoint, params.budget, scope
                )
            batches.setdefault((name, "llm"), []).append(m)
            progress.advance()
        if left[(name, "llm")] == 0 and (name, "llm") in batches:
            finalize(name, "llm")

    # at most parallel_batches at once; a new batch starts as soon as ANY running one ends (a short batch ending
    # first must not leave the endpoint to one batch's draining tail while its successor starts up)
    in_flight: dict[Any, tuple[str, int, int]] = {}
    for args in [(name, start, count) for name, source, start, count in plan if source == "llm"]:
        if stopped is not None:
            break
        name, start, count = args
        in_flight[llm_batch_task.submit(name, seed, start, count, out_dir, endpoint, params.budget, scope)] = args
        if len(in_flight) >= params.parallel_batches:
            done = next(as_completed(list(in_flight)))
            done.wait()  # its final state, as the engine reported it
            settle(in_flight.pop(done), done.state)
    for done in as_completed(list(in_flight)):
        done.wait()
        settle(in_flight.pop(done), done.state)
    forget_ledger(scope)

    outputs: dict[str, str] = {}
    reports: list[AgentReport] = []
    for name, source in [(n, src) for src in params.sources() for n in names if (n, src) in batches]:
        if (name, source) not in finals:  # an agent a budget stop left unfinished: written now, with what it has
            finalize(name, source)
        result = finals[(name, source)].result()
        outputs[f"{name}.{source}"] = result["manifest"].path
        reports.append(AgentReport(**result["report"]))
    summary = write_summary(
        root,
        reports,
        {**params.model_dump(mode="json", exclude={"api_key_block"}), "seed": seed, "budget_stopped": stopped},
    )
    outputs["summary"] = str(summary)
    _publish(reports, params.preview)
    if stopped is not None:
        raise MedtuneError(f"{stopped}; finished batches are kept, rerun with a higher budget to complete")
    return outputs


def run_pilot(params: DataSynthesisParams, seed: int, endpoint: LLMEndpoint) -> dict[str, str]:
    """Price ``pilot`` requests per agent and project each agent's full size; a table artifact and ``pilot.json``."""
    assert params.pilot is not None
    rows = [
        llm_pilot_task(name, seed, min(params.pilot, params.size_of(name)), params.size_of(name), endpoint)
        for name in params.agent_list()
    ]
    total = round(sum(r["projected_cost"] for r in rows), 6)
    currencies = sorted({r["currency"] for r in rows})
    publish_table("data-synthesis-pilot", rows, f"Pilot: cost of the first requests and projection ({total})")
    path = params.output_dir / "pilot.json"
    atomic_write_text(path, json.dumps({"seed": seed, "agents": rows, "projected_cost": total}, indent=2) + "\n")
    unpriced = [r["agent"] for r in rows if not r["priced"]]
    note = f"; no price for {params.model}: add it with the prices parameter" if unpriced else ""
    get_run_logger().info("pilot: projected cost %.4f %s for the full run%s", total, "/".join(currencies), note)
    return {"pilot": str(path), "projected_cost": f"{total} {'/'.join(currencies)}"}


def _exception(state: Any) -> BaseException:
    try:
        state.result()
    except BaseException as exc:
        return exc
    return MedtuneError(state.message or "task failed")


def _from_cache(state: Any) -> bool:
    return state.name == "Cached"


def _publish(reports: list[AgentReport], preview: int) -> None:
    rows = [
        {
            "agent": r.agent,
            "source": r.source,
            "rows": r.accepted,
            "rejected": r.rejected,
            "reject reasons": ", ".join(f"{k}: {v}" for k, v in r.reasons.items()) or "-",
            "input tokens": r.input_tokens,
            "output tokens": r.output_tokens,
            "cost": round(r.cost, 6),
        }
        for r in reports
    ]
    publish_table("data-synthesis-summary", rows, "Rows, rejects, tokens and cost per agent")
    if preview:
        parts = ["# data-synthesis preview\n"]
        for r in reports:
            parts.append(f"## {r.agent} ({r.source})\n")
            with open(r.path, encoding="utf-8") as fh:
                for _, line in zip(range(preview), fh, strict=False):
                    pretty = json.dumps(json.loads(line), ensure_ascii=False, indent=1)
                    parts.append(f"```json\n{pretty[:3000]}\n```\n")
        publish_markdown("data-synthesis-preview", "\n".join(parts), "First samples of each output file")


def nightly_deployment(name: str = "nightly", **overrides: Any) -> Any:
    """A deployment running the flow at 02:00 Asia/Shanghai every night, seed from the scheduled date.

    ``overrides`` set parameters (e.g. ``mode="both"``, ``sizes="recommended"``); work pools are wired in
    ``deployments/``. Serve it with ``prefect.serve(nightly_deployment())`` or deploy it to a pool.
    """
    from prefect.schedules import Cron

    values = {"seed": None, "sizes": "minimum", "output_dir": Path("out/data-synthesis/nightly"), **overrides}
    params = DataSynthesisParams(**values)
    return data_synthesis.to_deployment(
        name=name,
        schedules=[Cron(NIGHTLY_CRON, timezone=TIMEZONE)],
        parameters={"params": params.model_dump(mode="json")},
        description="Nightly SFT data for the health-assistant agents; seed = scheduled date (YYYYMMDD).",
        tags=["synthesis", "nightly"],
    )
