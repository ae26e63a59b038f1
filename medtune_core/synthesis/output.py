"""Turning samples into records and writing the per-agent files with their manifests and rejects.

Records are built as alpaca rows ``{"instruction": system/task prompt, "input": {...}, "output": {...}}``
(the original scripts' default) and parsed into a canonical :class:`Conversation`, so the registry's ``alpaca``,
``sharegpt`` and ``messages`` formats write them (and ``DatasetReader`` reads them back).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from medtune_core.dataio import Manifest, atomic_write, rejects_path_for, write_records
from medtune_core.errors import MedtuneError
from medtune_core.formats import Conversation, get_format
from medtune_core.synthesis.base import Sample
from medtune_core.synthesis.postprocess import Reject
from medtune_core.synthesis.registry import get_agent

#: Output format names of the original scripts (and the registry's own names) → registry format.
OUTPUT_FORMATS: dict[str, str] = {
    "instruction": "alpaca",
    "alpaca": "alpaca",
    "conversations": "sharegpt",
    "conversation": "sharegpt",
    "sharegpt": "sharegpt",
    "messages": "messages",
}
#: File suffix by source: ``{agent}_seed.jsonl`` (template mode), ``{agent}_sft_data.jsonl`` (LLM mode).
FILE_SUFFIX = {"seed": "seed", "llm": "sft_data"}


def format_name(output_format: str) -> str:
    try:
        return OUTPUT_FORMATS[output_format]
    except KeyError:
        raise MedtuneError(
            f"unknown output format {output_format!r}; choose one of {', '.join(OUTPUT_FORMATS)}"
        ) from None


def output_path(output_dir: str | os.PathLike[str], agent: str, source: str) -> Path:
    return Path(output_dir) / f"{agent}_{FILE_SUFFIX[source]}.jsonl"


def sample_row(sample: Sample) -> dict[str, Any]:
    """The alpaca row of a sample, with a ``meta`` block naming its agent, source and id."""
    if sample.output is None:
        raise MedtuneError(f"{sample.id}: no output to write")
    agent = get_agent(sample.agent)
    return {
        "instruction": agent.system_prompt,
        "input": sample.input,
        "output": sample.output,
        "meta": {"agent": sample.agent, "source": sample.source, "id": sample.id, **sample.meta},
    }


def sample_record(sample: Sample) -> Conversation:
    record = get_format("alpaca").parse(sample_row(sample))
    assert isinstance(record, Conversation)
    return record


def write_rejects(path: str | os.PathLike[str], rejects: Iterable[Reject]) -> int:
    """Write rejects as JSON lines atomically (the file exists even when empty); return their count."""
    n = 0
    with atomic_write(path) as fh:
        for r in rejects:
            fh.write(json.dumps(r.as_row(), ensure_ascii=False, sort_keys=True) + "\n")
            n += 1
    return n


def write_agent_file(
    output_dir: str | os.PathLike[str],
    agent: str,
    samples: Sequence[Sample],
    rejects: Sequence[Reject],
    *,
    source: str = "seed",
    output_format: str = "instruction",
    extra: dict[str, Any] | None = None,
) -> Manifest:
    """Write ``{agent}_seed.jsonl`` (or ``_sft_data``) with its manifest and ``.rejects.jsonl`` beside it.

    The manifest's ``extra`` carries ``agent``, ``source``, ``output_format`` and ``counts``
    (generated / accepted / rejected); its ``rejects`` block the count per reason and the rejects path.
    """
    path = output_path(output_dir, agent, source)
    rej_path = rejects_path_for(path)
    write_rejects(rej_path, rejects)
    reasons: dict[str, int] = {}
    for r in rejects:
        reasons[r.reason] = reasons.get(r.reason, 0) + 1
    info = {
        "agent": agent,
        "source": source,
        "output_format": output_format,
        "counts": {"generated": len(samples) + len(rejects), "accepted": len(samples), "rejected": len(rejects)},
        **(extra or {}),
        "rejects": {"count": len(rejects), "reasons": dict(sorted(reasons.items())), "path": str(rej_path)},
    }
    return write_records(path, (sample_record(s) for s in samples), format_name(output_format), extra=info)
