"""Flow ``prepare-data``: validate datasets and convert them to the formats training expects.

DAG: for each input file → validate → convert (chat → ``chat_format``, preference → ``preference_format``,
text → ``text_format``, multiple choice → ``mcq_format``) → summary table artifact.
Every step is cached by file contents, so a re-run over unchanged files does no work.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from pydantic import Field

from medtune_core.dataio import Policy
from medtune_core.formats import RecordKind, get_format
from medtune_core.params import ExistingPath, OutputDir, StrictParams
from tasks.artifacts import publish_table
from tasks.base import call_fresh
from tasks.data import convert_dataset, validate_dataset


def _default_inputs() -> list[Path]:
    from medtune_core.samples import samples_dir

    root = samples_dir()
    return sorted(p for p in root.glob("*") if p.suffix in {".jsonl", ".txt", ".csv"})


class PrepareDataParams(StrictParams):
    """Which files to prepare and into which formats."""

    inputs: list[ExistingPath] = Field(
        default_factory=_default_inputs,
        description="Dataset files (any supported format). Default: the project's sample data.",
    )
    output_dir: OutputDir = Field(
        default=Path("out/prepare-data"), description="Where converted files and manifests go."
    )
    policy: Policy = Field(default=Policy.STRICT, description="strict: stop at the first bad row; skip: reject it.")
    chat_format: str = Field(
        default="sharegpt", description="Target format for chat data (sharegpt, messages, alpaca)."
    )
    preference_format: str = Field(default="preference", description="Target format for preference data.")
    text_format: str = Field(default="text", description="Target format for pretraining text.")
    mcq_format: str = Field(default="medqa", description="Target format for multiple-choice questions.")

    def target_format(self, kind: str) -> str:
        return {
            RecordKind.CHAT: self.chat_format,
            RecordKind.PREFERENCE: self.preference_format,
            RecordKind.TEXT: self.text_format,
            RecordKind.MCQ: self.mcq_format,
        }[RecordKind(kind)]


@flow(name="prepare-data", log_prints=True)
def prepare_data(params: PrepareDataParams) -> dict[str, str]:
    """Validate and convert every input file; returns output file paths by input name."""
    outputs: dict[str, str] = {}
    rows = []
    for src in params.inputs:
        report = validate_dataset(src, None, params.policy)
        target = params.target_format(report["kind"])
        suffix = {"csv": ".csv", "txt": ".txt"}.get(get_format(target).container, ".jsonl")
        dst = params.output_dir / f"{src.stem}.{target}{suffix}"
        manifest = call_fresh(convert_dataset, src, dst, target, params.policy)
        outputs[src.stem] = manifest.path
        rejected = manifest.rejects["count"] if manifest.rejects else 0
        rows.append(
            {"input": src.name, "format": report["format"], "to": target, "rows": manifest.rows, "rejected": rejected}
        )
    publish_table("prepare-data-summary", rows, "Rows per file after validation and conversion")
    return outputs
