"""Running synthesis: batches of samples per agent, then one deduplicated file per agent and a run summary.

The work is cut into batches (``index`` ranges) so a caller (the Prefect flow) can cache each batch on its
own: a batch is generated and validated, saved as a JSONL batch file, and :func:`finalize_agent` merges the
batches of one agent in index order, removes duplicates across them and writes the agent's output file.
:func:`run_seed_mode` does the whole thing in-process.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medtune_core.dataio import Manifest, atomic_write, atomic_write_text
from medtune_core.synthesis.base import TEMPLATE_VERSION, Sample
from medtune_core.synthesis.registry import resolve_agents
from medtune_core.synthesis.output import output_path, write_agent_file
from medtune_core.synthesis.postprocess import DedupConfig, PostprocessResult, Reject, deduplicate, validate_samples
from medtune_core.synthesis.templates import generate_template_samples
from medtune_core.synthesis.sizes import recommended_size

SUMMARY_NAME = "synthesis_manifest.json"
DEFAULT_BATCH_SIZE = 250


def batch_ranges(n: int, batch_size: int = DEFAULT_BATCH_SIZE) -> list[tuple[int, int]]:
    """``[(start, count), ...]`` covering ``0 .. n-1``."""
    return [(s, min(batch_size, n - s)) for s in range(0, n, batch_size)]


def sizes_for(agents: Sequence[str], num_samples: int | Mapping[str, int] | None) -> dict[str, int]:
    """Samples per agent: one number for all, a mapping, or None for seed 0's recommended sizes."""
    if num_samples is None:
        return {a: recommended_size(a) for a in agents}
    if isinstance(num_samples, Mapping):
        return {a: int(num_samples.get(a, recommended_size(a))) for a in agents}
    return dict.fromkeys(agents, int(num_samples))


# ------------------------------------------------------------------------------------------- batches


def seed_batch(agent: str, seed: int, start: int, count: int) -> PostprocessResult:
    """Generate and validate samples ``start .. start+count-1`` in template mode."""
    return validate_samples(agent, generate_template_samples(agent, count, seed, start=start))


def save_batch(path: str | os.PathLike[str], result: PostprocessResult) -> Path:
    """Write a batch (accepted samples and rejects) atomically as JSON lines."""
    with atomic_write(path) as fh:
        for s in result.accepted:
            row = {"kind": "sample", **asdict(s)}
            fh.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
        for r in result.rejects:
            fh.write(json.dumps({"kind": "reject", **asdict(r)}, ensure_ascii=False, sort_keys=True) + "\n")
    return Path(path)


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
) -> tuple[Manifest, AgentReport]:
    """Merge batches in index order, drop duplicates across them and write the agent's file."""
    samples = sorted((s for b in batches for s in b.accepted), key=lambda s: s.index)
    rejects = sorted((r for b in batches for r in b.rejects), key=lambda r: r.index)
    deduped = deduplicate(samples, dedup)
    all_rejects = sorted(rejects + deduped.rejects, key=lambda r: r.index)
    info = {"template_version": TEMPLATE_VERSION, **(extra or {})}
    if dedup is not None:
        info["dedup"] = asdict(dedup)
    manifest = write_agent_file(
        output_dir, agent, deduped.accepted, all_rejects, source=source, output_format=output_format, extra=info
    )
    report = AgentReport(
        agent=agent,
        source=source,
        requested=len(samples) + len(rejects),
        accepted=len(deduped.accepted),
        rejected=len(all_rejects),
        reasons=dict(sorted(PostprocessResult(rejects=all_rejects).reasons().items())),
        path=str(output_path(output_dir, agent, source)),
        extra={k: v for k, v in (extra or {}).items() if k in ("input_tokens", "output_tokens", "cost")},
    )
    report.input_tokens = int(report.extra.pop("input_tokens", 0))
    report.output_tokens = int(report.extra.pop("output_tokens", 0))
    report.cost = float(report.extra.pop("cost", 0.0))
    return manifest, report


def write_summary(
    output_dir: str | os.PathLike[str], reports: Sequence[AgentReport], params: dict[str, Any] | None = None
) -> Path:
    """``synthesis_manifest.json``: the run's parameters and counts per agent and source."""
    path = Path(output_dir) / SUMMARY_NAME
    body = {
        "params": params or {},
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
    params = {"mode": "seed", "seed": seed, "output_format": output_format, "num_samples": sizes}
    write_summary(output_dir, reports, params)
    return reports
