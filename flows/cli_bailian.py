"""``medtune bailian ...``: the Bailian steps one at a time, without Prefect (the flow ``bailian-upload`` chains them).

    medtune bailian convert MedQA/ out/            # a MedQA tree (or one file) → Bailian files + manifests
    medtune bailian split out/mainland_4opt_train.jsonl --max-mb 300
    medtune bailian estimate out/*_train.jsonl --model qwen2.5-7b-instruct --epochs 3
    medtune bailian upload out/mainland_4opt_train.jsonl
    medtune bailian jobs create --train FILE_ID --val FILE_ID -e 3 -b 16 -l 1e-4 --lora-rank 64
    medtune bailian jobs list | get ID | wait ID | logs ID | cancel ID

Kept light at import (the main CLI mounts it at start-up): heavy modules are imported inside commands.
The API key comes from ``DASHSCOPE_API_KEY``; it is never printed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from flows.cli_common import fail, user_errors

app = typer.Typer(help="Bailian (Alibaba Cloud Model Studio) fine-tuning, step by step.", no_args_is_help=True)
jobs_app = typer.Typer(help="Fine-tune jobs: create, list, get, wait, logs, cancel.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")

RegionOpt = Annotated[
    str | None,
    typer.Option(help="Bailian region: cn-beijing or ap-southeast-1 (default: DASHSCOPE_API_REGION, else cn-beijing)."),
]
BaseUrlOpt = Annotated[
    str | None, typer.Option(help="DashScope API URL (default: DASHSCOPE_HTTP_BASE_URL, else the region's URL).")
]
WorkspaceOpt = Annotated[str | None, typer.Option(help="Bailian workspace id (default: DASHSCOPE_WORKSPACE_ID).")]


def _client(region: str | None, base_url: str | None, workspace: str | None) -> Any:
    from medtune_core.bailian import BailianClient

    with user_errors(code=2):
        return BailianClient(region=region, base_url=base_url, workspace=workspace)


def _echo_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, ensure_ascii=False, default=str))


@app.command()
def convert(
    source: Annotated[Path, typer.Argument(help="MedQA folder (with questions/...) or one MedQA JSONL file.")],
    out_dir: Annotated[Path, typer.Argument(help="Output folder.")],
    region: Annotated[list[str] | None, typer.Option("--region", help="mainland, taiwan, us (repeatable).")] = None,
    split: Annotated[list[str] | None, typer.Option("--split", help="train, dev, test (repeatable).")] = None,
    language: Annotated[str, typer.Option(help="auto (read from the text), zh or en.")] = "auto",
    system_prompt: Annotated[str | None, typer.Option(help="Replace the system prompt.")] = None,
    policy: Annotated[str, typer.Option(help="strict or skip (bad rows to OUT.rejects.jsonl).")] = "strict",
) -> None:
    """Convert MedQA to Bailian's ``{"messages": [...]}`` format; prints one line per output file."""
    from medtune_core.bailian import BailianPrompts, convert_medqa_file, convert_medqa_tree

    prompts = BailianPrompts().with_system(system_prompt)
    with user_errors(FileNotFoundError):
        if source.is_file():
            fallback = "en" if "US" in source.parts else "zh"
            manifests = [
                convert_medqa_file(
                    source,
                    out_dir / source.name,
                    language=language,  # type: ignore[arg-type]
                    fallback_language=fallback,
                    prompts=prompts,
                    policy=policy,
                )
            ]
        else:
            manifests = convert_medqa_tree(
                source,
                out_dir,
                regions=region,
                splits=split,
                prompts=prompts,
                policy=policy,
                language=language,  # type: ignore[arg-type]
            )
    for m in manifests:
        rejected = f", {m.rejects['count']} rejected → {m.rejects['path']}" if m.rejects else ""
        typer.echo(f"{m.path}: {m.rows} rows ({m.extra.get('language')}){rejected}")


@app.command()
def split(
    files: Annotated[list[Path], typer.Argument(help="Bailian files.")],
    max_mb: Annotated[float, typer.Option(help="Size limit per part, decimal MB (at most 294, 2% under 300).")] = 300.0,
    max_rows: Annotated[int | None, typer.Option(help="Row limit per part.")] = None,
    out_dir: Annotated[Path | None, typer.Option(help="Where parts go; default beside each file.")] = None,
) -> None:
    """Validate and split files under the size limit, whole lines only."""
    from medtune_core.bailian import max_part_bytes, split_file

    for f in files:
        with user_errors(FileNotFoundError):
            parts = split_file(f, out_dir, max_bytes=max_part_bytes(max_mb), max_rows=max_rows)
        for p in parts:
            typer.echo(f"{p.path}: {p.rows} rows, {p.bytes} bytes")


@app.command()
def estimate(
    files: Annotated[list[Path], typer.Argument(help="Bailian training files.")],
    model: Annotated[str, typer.Option(help="Base model (sets the price).")] = "qwen2.5-7b-instruct",
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 3,
    max_length: Annotated[int | None, typer.Option(help="Count rows longer than this.")] = 2048,
    price: Annotated[float | None, typer.Option(help="Price override, CNY per 1k tokens.")] = None,
) -> None:
    """Count Qwen tokens per file and estimate the training cost."""
    from medtune_core.bailian import TokenCounter, count_file_tokens, estimate_cost

    counter = TokenCounter()
    with user_errors(FileNotFoundError):
        stats = [count_file_tokens(f, counter, max_length=max_length) for f in files]
        est = estimate_cost(model, epochs, stats, prices={model: price} if price is not None else None)
    for s in stats:
        over = f", {s.rows_over_max_length} rows over max_length {max_length}" if max_length is not None else ""
        typer.echo(f"{s.path}: {s.rows} rows, {s.tokens:,} tokens (max {s.max_row_tokens}/row){over}")
    over_total = sum(s.rows_over_max_length for s in stats)
    if over_total:
        typer.echo(f"warning: {over_total} rows longer than max_length {max_length} will be truncated", err=True)
    typer.echo(est.summary())


@app.command()
def upload(
    files: Annotated[list[Path], typer.Argument(help="Bailian files (each at most 300 MB), checked line by line.")],
    region: RegionOpt = None,
    base_url: BaseUrlOpt = None,
    workspace: WorkspaceOpt = None,
) -> None:
    """Upload files for fine-tuning (a file already uploaded is not sent again); prints ``FILE: FILE_ID``."""
    client = _client(region, base_url, workspace)
    for f in files:
        with user_errors(FileNotFoundError):
            info = client.upload(f)
        typer.echo(f"{f}: {info.file_id}{' (already uploaded)' if info.reused else ''}")


@app.command("files")
def files_cmd(
    delete: Annotated[list[str] | None, typer.Option("--delete", help="Delete these file ids.")] = None,
    region: RegionOpt = None,
    base_url: BaseUrlOpt = None,
    workspace: WorkspaceOpt = None,
) -> None:
    """List uploaded files (JSON lines), or delete some."""
    client = _client(region, base_url, workspace)
    with user_errors():
        if delete:
            for file_id in delete:
                client.delete_file(file_id)
                typer.echo(f"deleted {file_id}")
            return
        for f in client.list_files():
            _echo_json(f)


@jobs_app.command("create")
def jobs_create(
    train: Annotated[list[str], typer.Option("--train", "-t", help="Training file id (repeatable).")],
    val: Annotated[list[str] | None, typer.Option("--val", "-v", help="Validation file id (repeatable).")] = None,
    model: Annotated[str, typer.Option("--model", "-m")] = "qwen2.5-7b-instruct",
    mode: Annotated[str, typer.Option("--mode", help="efficient_sft (LoRA) or sft.")] = "efficient_sft",
    epochs: Annotated[int, typer.Option("--epochs", "-e")] = 3,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b")] = 16,
    learning_rate: Annotated[float, typer.Option("--learning-rate", "-l")] = 1e-4,
    lora_rank: Annotated[int, typer.Option()] = 64,
    lora_alpha: Annotated[int, typer.Option()] = 128,
    max_length: Annotated[int, typer.Option()] = 2048,
    region: RegionOpt = None,
    base_url: BaseUrlOpt = None,
    workspace: WorkspaceOpt = None,
) -> None:
    """Create a fine-tune job (the same inputs give back the job created before)."""
    from pydantic import ValidationError

    from medtune_core.bailian import HyperParameters, JobSpec

    try:
        spec = JobSpec(
            model=model,
            training_file_ids=train,
            validation_file_ids=val or [],
            training_type=mode,  # type: ignore[arg-type]
            hyper_parameters=HyperParameters(
                n_epochs=epochs,
                batch_size=batch_size,
                learning_rate=learning_rate,
                lora_rank=lora_rank,
                lora_alpha=lora_alpha,
                max_length=max_length,
            ),
        )
    except ValidationError as exc:
        fail(str(exc), 2)
    client = _client(region, base_url, workspace)
    with user_errors():
        _echo_json(client.create_job(spec).as_dict())


@jobs_app.command("list")
def jobs_list(region: RegionOpt = None, base_url: BaseUrlOpt = None, workspace: WorkspaceOpt = None) -> None:
    """List fine-tune jobs, one JSON object a line."""
    client = _client(region, base_url, workspace)
    with user_errors():
        for job in client.list_jobs():
            _echo_json(job.as_dict())


@jobs_app.command("get")
def jobs_get(
    job_id: str, region: RegionOpt = None, base_url: BaseUrlOpt = None, workspace: WorkspaceOpt = None
) -> None:
    """One job as JSON."""
    client = _client(region, base_url, workspace)
    with user_errors():
        _echo_json(client.get_job(job_id).as_dict())


@jobs_app.command("logs")
def jobs_logs(
    job_id: str, region: RegionOpt = None, base_url: BaseUrlOpt = None, workspace: WorkspaceOpt = None
) -> None:
    """Print a job's log lines."""
    from medtune_core.bailian import LogCursor

    client = _client(region, base_url, workspace)
    with user_errors():
        for line in client.new_log_lines(job_id, LogCursor()):
            typer.echo(line)


@jobs_app.command("wait")
def jobs_wait(
    job_id: str,
    interval: Annotated[float, typer.Option(help="First poll interval in seconds.")] = 30.0,
    timeout: Annotated[float | None, typer.Option(help="Give up after this many seconds.")] = None,
    region: RegionOpt = None,
    base_url: BaseUrlOpt = None,
    workspace: WorkspaceOpt = None,
) -> None:
    """Follow a job to its end, printing its logs; Ctrl-C cancels the job."""
    client = _client(region, base_url, workspace)
    with user_errors():
        job = client.wait(job_id, interval=interval, timeout=timeout, on_log=typer.echo)
    _echo_json(job.as_dict())


@jobs_app.command("cancel")
def jobs_cancel(
    job_id: str, region: RegionOpt = None, base_url: BaseUrlOpt = None, workspace: WorkspaceOpt = None
) -> None:
    """Cancel a running job."""
    client = _client(region, base_url, workspace)
    with user_errors():
        client.cancel_job(job_id)
    typer.echo(f"cancelled {job_id}")
