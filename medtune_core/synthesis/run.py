"""Running synthesis: batches of samples per agent, then one deduplicated file per agent and a run summary.

The work is cut into batches (``index`` ranges) so a caller (the Prefect flow) can cache each batch on its
own: a batch is generated and validated, saved as a JSONL batch file, and :func:`finalize_agent` merges the
batches of one agent in index order, removes duplicates across them and writes the agent's output file.
:func:`run_seed_mode` does the whole thing in-process.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medtune_core.dataio import Manifest, atomic_write, atomic_write_text, manifest_path, rejects_path_for
from medtune_core.hashing import file_sha256
from medtune_core.synthesis.base import TEMPLATE_VERSION, Sample
from medtune_core.synthesis.diversity import summary_novelty
from medtune_core.synthesis.nights import drop_previous_nights
from medtune_core.synthesis.output import output_path, write_agent_file, write_rejects
from medtune_core.synthesis.postprocess import DedupConfig, PostprocessResult, Reject, deduplicate
from medtune_core.synthesis.registry import resolve_agents
from medtune_core.synthesis.sizes import recommended_size
from medtune_core.synthesis.templates import template_batch

SUMMARY_NAME = "synthesis_manifest.json"
#: Facts of an agent's ``extra`` that its report carries (tokens and cost become fields of their own).
REPORT_EXTRA = ("input_tokens", "output_tokens", "cost", "currency", "complete", "missing", "missing_ranges")
DEFAULT_BATCH_SIZE = 250


def batch_ranges(n: int, batch_size: int = DEFAULT_BATCH_SIZE) -> list[tuple[int, int]]:
    """``[(start, count), ...]`` covering ``0 .. n-1``."""
    return [(s, min(batch_size, n - s)) for s in range(0, n, batch_size)]


def sizes_for(agents: Sequence[str], num_samples: int | Mapping[str, int] | None) -> dict[str, int]:
    """Samples per agent: one number for all, a mapping, or None for the original guide's recommended sizes."""
    if num_samples is None:
        return {a: recommended_size(a) for a in agents}
    if isinstance(num_samples, Mapping):
        return {a: int(num_samples.get(a, recommended_size(a))) for a in agents}
    return dict.fromkeys(agents, int(num_samples))


# ------------------------------------------------------------------------------------------- batches


def seed_batch(
    agent: str, seed: int, start: int, count: int, vocabulary: Sequence[str | os.PathLike[str]] = ()
) -> PostprocessResult:
    """Generate and validate samples ``start .. start+count-1`` in template mode (``vocabulary``: extra files)."""
    return template_batch(agent, seed, start, count, vocabulary)


def save_batch(path: str | os.PathLike[str], result: PostprocessResult) -> Path:
    """Write a batch (accepted samples and rejects) atomically as JSON lines."""
    with atomic_write(path) as fh:
        for s in result.accepted:
            row = {"kind": "sample", **asdict(s)}
            fh.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
        for r in result.rejects:
            fh.write(json.dumps({"kind": "reject", **asdict(r)}, ensure_ascii=False, sort_keys=True) + "\n")
    return Path(path)


def batch_path(output_dir: str | os.PathLike[str], source: str, agent: str, start: int, count: int) -> Path:
    """Where a batch of ``agent`` from ``source`` is saved: ``<output_dir>/.batches/``."""
    return Path(output_dir) / ".batches" / f"{agent}_{source}_{start:07d}_{count}.jsonl"


def batch_manifest(path: Path, result: PostprocessResult, extra: dict[str, Any]) -> Manifest:
    """The manifest of a saved batch: rows accepted, and in ``extra`` the rejects (count and reasons) and the
    caller's facts (tokens, cost, indices still missing ...)."""
    return Manifest(
        path=str(path),
        format="synthesis-batch",
        kind="batch",
        rows=len(result.accepted),
        sha256=file_sha256(path),
        bytes=path.stat().st_size,
        extra={"rejected": len(result.rejects), "reasons": dict(sorted(result.reasons().items())), **extra},
    )


def batch_progress(planned: int, batches: Sequence[Manifest]) -> dict[str, Any]:
    """What an agent's batches cover of the ``planned`` samples: answered (accepted or rejected), missing, and the
    index ranges still missing (``[[start, end), ...]``: exactly what a rerun has to do), where the batches say
    which indices they hold (``start``, ``count`` and ``missing`` in their ``extra``)."""
    done = sum(m.rows + int(m.extra.get("rejected", 0)) for m in batches)
    out: dict[str, Any] = {"planned": planned, "complete": done >= planned, "missing": max(0, planned - done)}
    if all("start" in m.extra for m in batches):
        covered = [False] * planned
        for m in batches:
            start, count = int(m.extra["start"]), int(m.extra["count"])
            for i in range(start, min(start + count, planned)):
                covered[i] = True
            for i in m.extra.get("missing", []):
                covered[i] = False
        out["missing_ranges"] = _ranges(i for i, c in enumerate(covered) if not c)
    return out


def _ranges(indices: Iterable[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for i in indices:
        if out and out[-1][1] == i:
            out[-1][1] = i + 1
        else:
            out.append([i, i + 1])
    return out


def load_batch(path: str | os.PathLike[str]) -> PostprocessResult:
    result = PostprocessResult()
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            kind = row.pop("kind")
            if kind == "sample":
                result.accepted.append(Sample(**row))
            else:
                result.rejects.append(Reject(**row))
    return result


# ------------------------------------------------------------------------------------------- finalize


@dataclass
class AgentReport:
    """Counts of one agent's output file (what the flow's table artifact shows)."""

    agent: str
    source: str
    requested: int
    accepted: int
    rejected: int
    reasons: dict[str, int]
    path: str
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    #: share of the written samples (first 1,000) with no earlier near copy (see :mod:`.diversity`)
    novelty: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def finalize_agent(
    output_dir: str | os.PathLike[str],
    agent: str,
    batches: Sequence[PostprocessResult],
    *,
    source: str = "seed",
    output_format: str = "instruction",
    dedup: DedupConfig | None = None,
    extra: dict[str, Any] | None = None,
    nights: bool = False,
) -> tuple[Manifest | None, AgentReport]:
    """Merge batches in index order, drop duplicates across them and write the agent's file.

    ``nights``: ``output_dir`` is one night of a dated run; near copies of earlier nights' samples are dropped too
    (:mod:`.nights`, reason ``duplicate:previous_night``).

    With nothing accepted no data file is written (an empty file would look like a result; one from an earlier run
    is removed): only the rejects file, and the manifest is None. ``extra["planned"]`` is the size asked for (the
    report's ``requested``); without it, the samples the batches answered."""
    samples = sorted((s for b in batches for s in b.accepted), key=lambda s: s.index)
    rejects = sorted((r for b in batches for r in b.rejects), key=lambda r: r.index)
    deduped = deduplicate(samples, dedup)
    if nights:
        fresh = drop_previous_nights(output_dir, agent, source, deduped.accepted, dedup)
        deduped = PostprocessResult(fresh.accepted, deduped.rejects + fresh.rejects)
    all_rejects = sorted(rejects + deduped.rejects, key=lambda r: r.index)
    info = {"template_version": TEMPLATE_VERSION, **(extra or {})}
    if dedup is not None:
        info["dedup"] = asdict(dedup)
    data_path = output_path(output_dir, agent, source)
    manifest: Manifest | None = None
    if deduped.accepted:
        manifest = write_agent_file(
            output_dir, agent, deduped.accepted, all_rejects, source=source, output_format=output_format, extra=info
        )
    else:
        write_rejects(rejects_path_for(data_path), all_rejects)
        for stale in (data_path, manifest_path(data_path)):
            stale.unlink(missing_ok=True)
    report = AgentReport(
        agent=agent,
        source=source,
        requested=int((extra or {}).get("planned", len(samples) + len(rejects))),
        accepted=len(deduped.accepted),
        rejected=len(all_rejects),
        reasons=dict(sorted(PostprocessResult(rejects=all_rejects).reasons().items())),
        path=str(data_path if manifest is not None else rejects_path_for(data_path)),
        extra={k: v for k, v in (extra or {}).items() if k in REPORT_EXTRA},
        novelty=summary_novelty([s.output for s in deduped.accepted]),
    )
    report.input_tokens = int(report.extra.pop("input_tokens", 0))
    report.output_tokens = int(report.extra.pop("output_tokens", 0))
    report.cost = float(report.extra.pop("cost", 0.0))
    return manifest, report


def finalize_batches(
    output_dir: str | os.PathLike[str],
    agent: str,
    batches: Sequence[Manifest],
    *,
    source: str,
    output_format: str = "instruction",
    dedup: DedupConfig | None = None,
    extra: dict[str, Any] | None = None,
    nights: bool = False,
) -> tuple[Manifest | None, AgentReport]:
    """:func:`finalize_agent` over saved batch files (their manifests): tokens and cost summed from the batches."""
    results = [load_batch(m.path) for m in batches]
    totals: dict[str, Any] = {k: sum(m.extra.get(k, 0) for m in batches) for k in ("input_tokens", "output_tokens")}
    totals["cost"] = round(sum(float(m.extra.get("cost", 0.0)) for m in batches), 8)
    currency = next((m.extra["currency"] for m in batches if m.extra.get("currency")), None)
    if currency:
        totals["currency"] = currency
    return finalize_agent(
        output_dir,
        agent,
        results,
        source=source,
        output_format=output_format,
        dedup=dedup,
        extra={**(extra or {}), **totals},
        nights=nights,
    )


def write_summary(
    output_dir: str | os.PathLike[str],
    reports: Sequence[AgentReport],
    params: dict[str, Any] | None = None,
    run: dict[str, Any] | None = None,
) -> Path:
    """``synthesis_manifest.json``: the run's parameters, counts per agent and source, and ``run``: how it ended
    (e.g. every paid request, the work still missing, why it stopped)."""
    path = Path(output_dir) / SUMMARY_NAME
    body = {
        "params": params or {},
        **({"run": run} if run else {}),
        "agents": [r.as_dict() for r in reports],
        "totals": {
            "accepted": sum(r.accepted for r in reports),
            "rejected": sum(r.rejected for r in reports),
            "input_tokens": sum(r.input_tokens for r in reports),
            "output_tokens": sum(r.output_tokens for r in reports),
            "cost": round(sum(r.cost for r in reports), 6),
        },
    }
    atomic_write_text(path, json.dumps(body, ensure_ascii=False, indent=2, sort_keys=True) + "\n")
    return path


def run_seed_mode(
    output_dir: str | os.PathLike[str],
    agents: str | Sequence[str] = "all",
    num_samples: int | Mapping[str, int] | None = None,
    *,
    seed: int = 0,
    output_format: str = "instruction",
    dedup: DedupConfig | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> list[AgentReport]:
    """Template mode end to end: ``{agent}_seed.jsonl`` per agent plus ``synthesis_manifest.json``."""
    names = resolve_agents(agents)
    sizes = sizes_for(names, num_samples)
    dedup = dedup or DedupConfig()
    reports = []
    for name in names:
        batches = [seed_batch(name, seed, start, count) for start, count in batch_ranges(sizes[name], batch_size)]
        _, report = finalize_agent(
            output_dir, name, batches, output_format=output_format, dedup=dedup, extra={"seed": seed}
        )
        reports.append(report)
    params = {"mode": "template", "seed": seed, "output_format": output_format, "num_samples": sizes}
    write_summary(output_dir, reports, params)
    return reports
