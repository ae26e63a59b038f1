"""Flow ``bailian-upload``: MedQA → Bailian SFT files → split → token/cost estimate → upload → fine-tune.

DAG: convert (a MedQA tree or single files) → split each file under the size limit → count tokens per part →
estimate the cost (rows under Bailian's minimum: warned) → [dry run stops here] → minimum rows, cost ceiling →
upload one task per part → create the job → wait for it (logs streamed into the run) → optionally deploy the model.
The local steps are cached by content; upload and job creation ask the server every run and find what it already
holds by the identities it keeps, so no re-run, on this machine or another, after any crash, uploads a file twice
or creates a second job.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from prefect import flow, get_run_logger
from pydantic import Field, model_validator

import medtune_core
from medtune_core.bailian import (
    MIN_TRAINING_ROWS,
    HyperParameters,
    JobSpec,
    check_cost_ceiling,
    max_part_bytes,
    too_few_rows,
)
from medtune_core.dataio import Manifest, Policy
from medtune_core.errors import MedtuneError
from medtune_core.params import ExistingPath, HttpUrl, OutputDir, StrictParams
from tasks.artifacts import publish_markdown, publish_table
from tasks.bailian import (
    BailianEndpoint,
    convert_medqa,
    convert_medqa_files,
    count_tokens,
    create_fine_tune,
    deploy_model,
    estimate_training_cost,
    split_for_upload,
    upload_file,
    wait_fine_tune,
)
from tasks.base import call_fresh

SAMPLE_MEDQA = Path(medtune_core.__file__).parent / "samples" / "medqa"


class BailianUploadParams(StrictParams):
    """MedQA to a Bailian fine-tune job. Dry run (the default) converts, splits and estimates only."""

    CONFIRM_ABOVE: ClassVar[float] = 100.0

    output_dir: OutputDir = Field(Path("out/bailian-upload"), description="Where the Bailian files and manifests go.")
    source_dir: ExistingPath = Field(
        SAMPLE_MEDQA,
        description="MedQA folder (holding questions/Mainland, Taiwan, US). Default: the project's sample data.",
    )
    source_files: list[ExistingPath] = Field(
        default_factory=list, description="Single MedQA JSONL files to train on instead of a folder tree."
    )
    validation_files: list[ExistingPath] = Field(default_factory=list, description="MedQA files for validation.")
    regions: list[Literal["mainland", "taiwan", "us"]] = Field(
        default_factory=lambda: ["mainland", "taiwan", "us"], description="Regions of the tree to convert."
    )
    splits: list[Literal["train", "dev", "test"]] = Field(
        default_factory=lambda: ["train", "dev"],
        description="Splits to convert; train files are trained on, dev files validate, test is only converted.",
    )
    language: Literal["auto", "zh", "en"] = Field(
        "auto", description="Prompt language: auto (read from each file's text), zh or en."
    )
    system_prompt: str | None = Field(None, description="Replace the default system prompt (both languages).")
    policy: Policy = Field(Policy.STRICT, description="strict: stop at the first bad row; skip: reject it.")
    model: str = Field("qwen2.5-7b-instruct", description="Base model (qwen2.5-7b/14b/32b-instruct, ...).")
    training_type: Literal["efficient_sft", "sft"] = Field(
        "efficient_sft", description="efficient_sft = LoRA, sft = full fine-tuning."
    )
    hyper_parameters: HyperParameters = Field(default_factory=HyperParameters)
    max_file_mb: float = Field(
        300.0, gt=0, le=300.0, description="Split files larger than this, decimal MB (parts stay 2% under 300 MB)."
    )
    max_rows_per_file: int | None = Field(None, ge=1, description="Also split after this many rows.")
    prices: dict[str, float] = Field(default_factory=dict, description="Training price overrides, CNY per 1k tokens.")
    min_training_rows: int = Field(
        MIN_TRAINING_ROWS,
        ge=1,
        description=f"Refuse to upload fewer training rows (Bailian needs {MIN_TRAINING_ROWS:,}); a dry run warns.",
    )
    dry_run: bool = Field(True, description="Stop after convert, split and estimate: nothing uploaded, nothing paid.")
    max_cost: float = Field(20.0, ge=0, description="Refuse to upload when the estimate exceeds this (CNY).")
    confirm_cost: bool = Field(False, description=f"Required when max_cost is above {CONFIRM_ABOVE:.0f} CNY.")
    region: Literal["cn-beijing", "ap-southeast-1"] | None = Field(
        None, description="Bailian region; default DASHSCOPE_API_REGION, else cn-beijing."
    )
    base_url: HttpUrl | None = Field(
        None, description="DashScope API URL; default DASHSCOPE_HTTP_BASE_URL, else the region's URL."
    )
    workspace: str | None = Field(None, description="Bailian workspace id.")
    api_key_block: str | None = Field(None, description="Prefect Secret block with the key (else DASHSCOPE_API_KEY).")
    registry: Path | None = Field(
        None, description="Upload/job registry file; default $MEDTUNE_HOME/bailian/registry.json."
    )
    recreate_failed: bool = Field(
        False, description="When the job for these inputs ended FAILED or CANCELED, create a new one instead."
    )
    wait: bool = Field(True, description="Follow the job to its end.")
    poll_interval_s: float = Field(30.0, ge=0, description="First poll interval; grows while nothing changes.")
    poll_max_interval_s: float = Field(300.0, ge=0)
    wait_timeout_s: float | None = Field(24 * 3600.0, gt=0, description="Stop waiting (the job keeps running).")
    deploy: bool = Field(False, description="Deploy the fine-tuned model when the job succeeds.")
    deploy_capacity: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _confirm_high_ceiling(self) -> BailianUploadParams:
        if self.max_cost > self.CONFIRM_ABOVE and not self.confirm_cost:
            raise ValueError(f"max_cost {self.max_cost} is above {self.CONFIRM_ABOVE:.0f} CNY: set confirm_cost=true")
        if self.deploy and not self.wait:
            raise ValueError("deploy needs wait=true (the model exists only when the job has succeeded)")
        self.output_names()  # two inputs that would write one output file are refused here
        return self

    def output_names(self) -> tuple[list[str], list[str]]:
        """Output names of ``source_files`` and ``validation_files``: the file's stem, or ``<folder>-<stem>``
        where two inputs share a stem (``Taiwan/train.jsonl`` and ``US/train.jsonl`` must not overwrite each
        other); two inputs that still clash are refused."""
        files = [*self.source_files, *self.validation_files]
        stems = [f.stem for f in files]
        names = [f"{f.parent.name}-{f.stem}" if stems.count(f.stem) > 1 else f.stem for f in files]
        if len(set(names)) != len(names):
            clash = sorted({str(f) for f, n in zip(files, names, strict=True) if names.count(n) > 1})
            raise ValueError(f"bailian-upload: these inputs would write the same output file: {', '.join(clash)}")
        n = len(self.source_files)
        return names[:n], names[n:]

    def endpoint(self) -> BailianEndpoint:
        return BailianEndpoint(
            region=self.region,
            base_url=self.base_url,
            workspace=self.workspace,
            registry=str(self.registry) if self.registry else None,
            api_key_block=self.api_key_block,
        )


def rejected_in(path: str, converted: list[Manifest]) -> int:
    """Rows the conversion of ``path`` rejected (``policy=skip``)."""
    return sum((m.rejects or {}).get("count", 0) for m in converted if m.path == path)


@flow(name="bailian-upload", log_prints=True)
def bailian_upload(params: BailianUploadParams) -> dict[str, str]:
    """Convert, split and estimate; unless dry run, upload and fine-tune. Returns output paths and job facts."""
    out = params.output_dir
    if params.source_files:
        train_names, val_names = params.output_names()
        train = call_fresh(
            convert_medqa_files,
            params.source_files,
            out,
            params.language,
            "train",
            params.system_prompt,
            params.policy,
            train_names,
        )
        val = call_fresh(
            convert_medqa_files,
            params.validation_files,
            out,
            params.language,
            "dev",
            params.system_prompt,
            params.policy,
            val_names,
        )
        converted = train + val
    else:
        converted = call_fresh(
            convert_medqa,
            params.source_dir,
            out,
            list(params.regions),
            list(params.splits),
            params.system_prompt,
            params.policy,
            params.language,
        )
    max_bytes = max_part_bytes(params.max_file_mb)
    parts = {m.path: call_fresh(split_for_upload, m, m.path, max_bytes, params.max_rows_per_file) for m in converted}
    split_of = {m.path: m.extra.get("split", "train") for m in converted}
    language_of = {m.path: m.extra.get("language", "") for m in converted}
    tokens = {p.path: count_tokens(p, p.path, params.hyper_parameters.max_length) for ps in parts.values() for p in ps}

    rows = []
    for src, ps in parts.items():
        for p in ps:
            t = tokens[p.path]
            rows.append(
                {
                    "file": Path(p.path).name,
                    "split": split_of[src],
                    "language": language_of[src],
                    "rows": p.rows,
                    "bytes": p.bytes,
                    "tokens": t["tokens"],
                    "max_row_tokens": t["max_row_tokens"],
                    "over_max_length": t["rows_over_max_length"],
                    "rejected": rejected_in(src, converted) if p is ps[0] else 0,
                }
            )
    publish_table("bailian-files", rows, "Bailian files: rows, bytes and Qwen tokens per split and part")

    train_parts = [p for src, ps in parts.items() if split_of[src] == "train" for p in ps]
    val_parts = [p for src, ps in parts.items() if split_of[src] == "dev" for p in ps]
    estimate = estimate_training_cost(
        params.model,
        params.hyper_parameters.n_epochs,
        [tokens[p.path] for p in train_parts],
        [tokens[p.path] for p in val_parts],
        params.prices,
    )
    training_rows = sum(p.rows for p in train_parts)
    rejected = sum(rejected_in(m.path, converted) for m in converted)
    few = too_few_rows(training_rows, params.min_training_rows)
    note = f"\n\n**Warning** — {few}\n" if few else ""
    publish_markdown(
        "bailian-estimate", f"**Estimated training cost** — {estimate['summary']}\n{note}", "Cost estimate"
    )
    outputs = {Path(p.path).stem: p.path for ps in parts.values() for p in ps}
    outputs["estimated_cost_cny"] = f"{estimate['cost']:.4f}"
    outputs["training_rows"] = str(training_rows)
    outputs["rejected_rows"] = str(rejected)
    if few:
        get_run_logger().warning("%s", few)
        outputs["warning"] = few
    if params.dry_run:
        print(f"dry run: {estimate['summary']}; {rejected} rows rejected; nothing uploaded")
        return outputs

    if few:
        raise MedtuneError(f"{few}. Not uploading: add data, or set min_training_rows={training_rows} to send anyway")
    check_cost_ceiling(estimate["cost"], params.max_cost)
    endpoint = params.endpoint()
    train_ids = [upload_file(p, endpoint)["file_id"] for p in train_parts]
    val_ids = [upload_file(p, endpoint)["file_id"] for p in val_parts]
    spec = JobSpec(
        model=params.model,
        training_file_ids=train_ids,
        validation_file_ids=val_ids,
        training_type=params.training_type,
        hyper_parameters=params.hyper_parameters,
    )
    try:
        job = create_fine_tune(spec, endpoint, params.recreate_failed)
        where = {k: job[k] for k in ("endpoint", "endpoint_from", "reused")}  # which server, and found or created
        if params.wait:
            job = wait_fine_tune(
                job["job_id"], endpoint, params.poll_interval_s, params.poll_max_interval_s, params.wait_timeout_s
            )
    except KeyboardInterrupt:
        # stopped before the wait took charge of the job (or while it did): the job is not left training unwatched
        if params.wait:
            endpoint.client().cancel_unfinished_jobs_for(spec)
        raise
    facts = {**{k: job.get(k) for k in ("job_id", "status", "finetuned_output", "usage", "model")}, **where}
    publish_table("bailian-job", [{k: "" if v is None else str(v) for k, v in facts.items()}], "Fine-tune job")
    outputs.update({k: str(v) for k, v in facts.items() if v is not None})
    if params.deploy and job.get("finetuned_output"):
        dep = deploy_model(job["finetuned_output"], endpoint, params.deploy_capacity)
        outputs["deployed_model"] = str(dep.get("deployed_model"))
    return outputs
