"""Flow ``data-synthesis``: SFT data for the five agents of a health assistant (docs/BACKGROUND.md §1).

DAG: for each agent → batches (template mode and/or LLM mode; each batch a cached, retryable task) →
finalize (merge, deduplicate, write ``{agent}_seed.jsonl`` / ``{agent}_sft_data.jsonl`` with manifest and
rejects) → artifacts (table of rows / rejects / tokens / cost per agent, a preview of samples, progress).
A run that fails half way regenerates only the missing batches when run again.

Sizes: with neither ``num_samples`` nor ``sizes`` set, a run makes ``DEMO_NUM_SAMPLES`` (50) per agent, which
finishes in well under a minute on 2 CPUs in template mode; ``sizes=minimum`` / ``sizes=recommended`` use
the original agent-data guide's table (preprocess 1000/5000, critic 500/2000, check_rag 500/2000, diagnosis 3000/10000,
drug 2000/5000); ``num_samples`` sets one number for every agent.

Nightly: :func:`nightly_deployment` schedules it at 02:00 Asia/Shanghai with ``seed`` unset, so the seed is
the run's scheduled date (``YYYYMMDD``): each night's data is new, a retry of that night reproduces it.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Any, ClassVar, Literal
from zoneinfo import ZoneInfo

from prefect import flow, get_run_logger
from prefect.futures import as_completed
from prefect.runtime import flow_run
from pydantic import Field, field_validator, model_validator

from medtune_core.dataio import Manifest, atomic_write_text
from medtune_core.errors import MedtuneError
from medtune_core.llm.ledger import forget_ledger, shared_ledger
from medtune_core.llm.pricing import PriceTable
from medtune_core.params import HttpUrl, OutputDir, StrictParams
from medtune_core.synthesis import (
    DEMO_NUM_SAMPLES,
    DedupConfig,
    agent_names,
    batch_ranges,
    recommended_size,
    write_summary,
)
from medtune_core.synthesis.llm_mode import remaining, run_record
from medtune_core.synthesis.run import AgentReport, batch_progress
from medtune_core.synthesis.schedule import Batch, BatchSchedule
from medtune_core.synthesis.templates import template_fingerprint
from medtune_core.synthesis.vocab import vocabulary_for
from tasks.artifacts import Progress, publish_markdown, publish_table
from tasks.base import FreshFuture, submit_fresh
from tasks.synthesis import LLMEndpoint, finalize_task, llm_batch_task, llm_pilot_task, seed_batch_task

#: Every registered agent (a sixth agent module appears here, in the UI's form and the CLI by itself) and "all".
AgentChoice = Literal[("all", *agent_names())]  # type: ignore[valid-type]
TIMEZONE = "Asia/Shanghai"
NIGHTLY_CRON = "0 2 * * *"


class DataSynthesisParams(StrictParams):
    """What to synthesize, how, and where to put it."""

    SYNONYMS: ClassVar[dict[str, str]] = {"test_cost": "pilot"}  # the original generator's flag for the pilot

    agents: list[AgentChoice] = Field(
        default_factory=lambda: ["all"], description="Agents to generate for; 'all' for every registered agent."
    )
    num_samples: int | None = Field(
        default=None, ge=1, le=1_000_000, description="Samples per agent (overrides 'sizes')."
    )
    sizes: Literal["demo", "minimum", "recommended"] = Field(
        default="demo",
        description=f"Without num_samples: demo = {DEMO_NUM_SAMPLES} per agent, or the original minimum / recommended.",
    )
    mode: Literal["template", "seed", "llm", "both"] = Field(
        default="template",
        description="template: offline templates (free; 'seed' is its former name); llm: an OpenAI-compatible API; "
        "both.",
    )
    vocabulary: list[Path] = Field(
        default_factory=list,
        description="Extra vocabulary files or folders (YAML/JSON, e.g. a hospital formulary) over the built-in ones.",
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
        "full size, write no data (the original --test_cost). The real run then gets those answers from the cache.",
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
    min_yield: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Fraction of the requested rows each agent must deliver (accepted after checks and dedup); "
        "below it the run fails with its reject reasons and what it paid.",
    )

    @field_validator("agents", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("mode", mode="before")
    @classmethod
    def _template_mode(cls, value: Any) -> Any:
        return "template" if value == "seed" else value  # the original generator's name for template mode

    @field_validator("vocabulary")
    @classmethod
    def _load_vocabulary(cls, value: list[Path]) -> list[Path]:
        try:
            vocabulary_for(value)  # every file readable and every cross-reference resolved, before any task runs
        except MedtuneError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("prices")
    @classmethod
    def _check_prices(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        try:
            PriceTable().with_overrides(value)
        except MedtuneError as exc:
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _pilot_needs_llm(self) -> DataSynthesisParams:
        if self.pilot is not None and self.mode == "template":
            raise ValueError("pilot prices LLM requests: set mode to llm or both")
        return self

    def agent_list(self) -> list[str]:
        return agent_names() if "all" in self.agents or not self.agents else list(dict.fromkeys(self.agents))

    def size_of(self, agent: str) -> int:
        if self.num_samples is not None:
            return self.num_samples
        return DEMO_NUM_SAMPLES if self.sizes == "demo" else recommended_size(agent, self.sizes)

    def vocabulary_args(self) -> tuple[list[str], str]:
        """The extra vocabulary files as LLM task arguments: their paths and the hash of their content."""
        return [str(p) for p in self.vocabulary], vocabulary_for(self.vocabulary).fingerprint

    def sources(self) -> list[str]:
        return {"template": ["seed"], "llm": ["llm"], "both": ["seed", "llm"]}[self.mode]


def seed_for_date(day: dt.date) -> int:
    return int(day.strftime("%Y%m%d"))


def run_seed(params: DataSynthesisParams) -> int:
    """The seed given, or the date the run was scheduled for (Asia/Shanghai)."""
    if params.seed is not None:
        return params.seed
    when = flow_run.scheduled_start_time or dt.datetime.now(dt.UTC)
    return seed_for_date(when.astimezone(ZoneInfo(TIMEZONE)).date())


@flow(name="data-synthesis", log_prints=True)
def data_synthesis(params: DataSynthesisParams) -> dict[str, str]:
    """Generate, check, deduplicate and write SFT data per agent; returns output paths by ``agent.source``."""
    seed = run_seed(params)
    # a dated run (seed from the schedule) writes into its own folder: tonight's data never overwrites last night's
    root = params.output_dir if params.seed is not None else params.output_dir / str(seed)
    out_dir = str(root)
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
    # every LLM batch of this run shares one ledger: side by side, they together spend at most the budget
    scope = f"data-synthesis:{flow_run.get_id() or id(params)}"
    schedule: BatchSchedule[Manifest] = BatchSchedule(
        [
            Batch(name, source, start, count)
            for source in params.sources()
            for name in params.agent_list()
            for start, count in batch_ranges(params.size_of(name), params.batch_size)
        ]
    )
    progress = Progress(f"data-synthesis: {len(schedule.batches)} batches", len(schedule.batches))
    vocabulary = params.vocabulary_args()
    submit = {
        "seed": lambda b: submit_fresh(
            seed_batch_task,
            b.agent,
            seed,
            b.start,
            b.count,
            out_dir,
            template_fingerprint(b.agent, params.vocabulary),
            [str(p) for p in params.vocabulary],
        ),
        "llm": lambda b: submit_fresh(
            llm_batch_task, b.agent, seed, b.start, b.count, out_dir, endpoint, params.budget, scope, *vocabulary
        ),
    }
    finals: dict[tuple[str, str], FreshFuture] = {}
    dedup = DedupConfig(threshold=params.dedup_threshold)

    def wait_any(handles: list[FreshFuture]) -> FreshFuture:
        done = next(as_completed([h.future for h in handles]))
        done.wait()  # its final state, as the engine reported it
        progress.advance()
        return next(h for h in handles if h.future is done)

    def finalize(key: tuple[str, str], batches: list[Manifest]) -> None:
        """Merge, deduplicate and write one agent's file as soon as its batches are in: it runs on the task runner
        while the other agents' requests are in flight."""
        name, source = key
        extra = {"seed": seed, **batch_progress(params.size_of(name), batches)}
        if source == "llm":
            extra["model"] = params.model
        dated = params.seed is None  # a nightly run: drop near copies of earlier nights' samples too
        finals[key] = submit_fresh(
            finalize_task, name, batches, out_dir, source, params.output_format, dedup, extra, dated
        )

    try:
        schedule.run(lambda b: submit[b.source](b), wait_any, finalize, params.parallel_batches)
        run = run_record(shared_ledger(scope), [], schedule.stopped)
    finally:
        forget_ledger(scope)
    if schedule.stopped is not None:
        get_run_logger().warning("budget reached (%s): writing what is done", schedule.stopped)

    outputs: dict[str, str] = {}
    reports: list[AgentReport] = []
    for name, source in schedule.agent_sources():
        result = finals[(name, source)].result()
        if result["manifest"] is not None:
            outputs[f"{name}.{source}"] = result["manifest"].path
        reports.append(AgentReport(**result["report"]))
    run.update(remaining(reports))
    summary = write_summary(
        root, reports, {**params.model_dump(mode="json", exclude={"api_key_block"}), "seed": seed}, run
    )
    outputs["summary"] = str(summary)
    _publish(reports, params.preview)
    if schedule.stopped is not None:
        raise MedtuneError(
            f"{schedule.stopped}; {_paid(run)}; still missing: {_remaining(run)}. Finished batches are kept: rerun "
            "with a higher budget to complete (answers already paid for come from the cache)"
        )
    short = [r for r in reports if r.accepted < params.min_yield * r.requested]
    if short:
        raise MedtuneError(yield_failure(short, params.min_yield, run))
    return outputs


def _paid(run: dict[str, Any]) -> str:
    cost = ", ".join(f"{v:.6g} {c}" for c, v in run["cost"].items()) or "0"
    return f"paid {run['paid_requests']} requests ({cost})"


def _remaining(run: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in run["remaining"].items() if v) or "nothing"


def yield_failure(short: list[AgentReport], min_yield: float, run: dict[str, Any]) -> str:
    """The message of a run that delivered too little: per agent the rows it got, the rows needed, and a table of
    why the rest was rejected; what the run paid."""
    lines = [f"too few usable rows (min_yield {min_yield:g} of the requested rows per agent); {_paid(run)}:"]
    lines.append("| agent | accepted | needed | rejected | reject reasons |")
    lines.append("|---|---|---|---|---|")
    for r in short:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(r.reasons.items(), key=lambda kv: -kv[1])) or "-"
        needed = math.ceil(min_yield * r.requested)
        lines.append(f"| {r.agent}.{r.source} | {r.accepted} | {needed} | {r.rejected} | {reasons} |")
    lines.append("Rejected answers are in each agent's .rejects.jsonl; no data file is written for an agent with none.")
    return "\n".join(lines)


def run_pilot(params: DataSynthesisParams, seed: int, endpoint: LLMEndpoint) -> dict[str, str]:
    """Price ``pilot`` requests per agent and project each agent's full size; a table artifact and ``pilot.json``.
    A pilot in which an agent got no usable answer fails: the full run would pay for nothing."""
    assert params.pilot is not None
    rows = [
        llm_pilot_task(
            name,
            seed,
            min(params.pilot, params.size_of(name)),
            params.size_of(name),
            endpoint,
            *params.vocabulary_args(),
        )
        for name in params.agent_list()
    ]
    total = round(sum(r["projected_cost"] for r in rows), 6)
    currencies = sorted({r["currency"] for r in rows})
    publish_table("data-synthesis-pilot", rows, f"Pilot: cost of the first requests and projection ({total})")
    path = params.output_dir / "pilot.json"
    atomic_write_text(path, json.dumps({"seed": seed, "agents": rows, "projected_cost": total}, indent=2) + "\n")
    useless = [r for r in rows if r["ok"] == 0]
    if useless:
        detail = "; ".join(f"{r['agent']}: 0/{r['k']} usable ({r['reject reasons'] or 'no answer'})" for r in useless)
        raise MedtuneError(f"pilot got no usable answer: {detail}; a full run would pay for nothing (see {path})")
    unpriced = [r["agent"] for r in rows if not r["priced"]]
    note = f"; no price for {params.model}: add it with the prices parameter" if unpriced else ""
    get_run_logger().info("pilot: projected cost %.4f %s for the full run%s", total, "/".join(currencies), note)
    return {"pilot": str(path), "projected_cost": f"{total} {'/'.join(currencies)}"}


def _publish(reports: list[AgentReport], preview: int) -> None:
    rows = [
        {
            "agent": r.agent,
            "source": r.source,
            "rows": r.accepted,
            "rejected": r.rejected,
            "reject reasons": ", ".join(f"{k}: {v}" for k, v in r.reasons.items()) or "-",
            "novelty": "-" if r.novelty is None else f"{r.novelty:.1%}",  # share with no earlier near copy
            "input tokens": r.input_tokens,
            "output tokens": r.output_tokens,
            "cost": round(r.cost, 6),
        }
        for r in reports
    ]
    publish_table("data-synthesis-summary", rows, "Rows, rejects, tokens and cost per agent")
    if preview:
        parts = ["# data-synthesis preview\n"]
        for r in (r for r in reports if r.accepted):
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
