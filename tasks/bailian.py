"""Bailian tasks: convert, split, count tokens, estimate, upload (one task per file), create job, wait.

Thin wrappers over :mod:`medtune_core.bailian`. The local steps are cached by content (a re-run over unchanged
inputs does nothing). Upload and job creation are not cached: the server is the truth, and the core client asks
it every time (a file deleted in the console is uploaded again, the newest job for the same inputs wins) while
never sending a file or creating a job twice, on any machine, after any crash. The API key is resolved inside each
remote task at run time: it is never a task input, result or artifact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger
from pydantic import BaseModel, Field

from medtune_core.bailian import (
    BailianClient,
    BailianPrompts,
    JobSpec,
    TokenCounter,
    convert_medqa_file,
    convert_medqa_tree,
    count_file_tokens,
    estimate_cost,
    resolve_api_key,
    split_file,
)
from medtune_core.bailian.tokens import FileTokens
from medtune_core.dataio import Manifest, Policy
from medtune_core.errors import MedtuneError
from tasks.base import medtune_task
from tasks.secrets import resolve_secret

KEY_ENV = ("DASHSCOPE_API_KEY", "MEDTUNE_DASHSCOPE_API_KEY")


class BailianEndpoint(BaseModel):
    """Where the remote tasks talk to; no secret in here (the key is resolved inside each task)."""

    region: str | None = Field(None, description="Bailian region; default DASHSCOPE_API_REGION, else cn-beijing.")
    base_url: str | None = Field(None, description="API URL; default DASHSCOPE_HTTP_BASE_URL, else the region's.")
    workspace: str | None = None
    registry: str | None = Field(None, description="Upload/job registry file; default $MEDTUNE_HOME/bailian.")
    api_key_block: str | None = Field(None, description="Prefect Secret block holding the key (else the env).")

    def client(self) -> BailianClient:
        """A client; the key from the environment, else the Secret block, else the SDK's key file."""
        key = resolve_secret(KEY_ENV, self.api_key_block) or resolve_api_key()
        if key is None:
            raise MedtuneError("no DashScope API key: set DASHSCOPE_API_KEY or name a Prefect Secret block")
        return BailianClient(
            key, region=self.region, base_url=self.base_url, workspace=self.workspace, registry_path=self.registry
        )


@medtune_task
def convert_medqa(
    source: Path,
    output_dir: Path,
    regions: list[str],
    splits: list[str],
    system_prompt: str | None = None,
    policy: Policy = Policy.STRICT,
    language: str = "auto",
) -> list[Manifest]:
    """A MedQA tree → ``output_dir/<subset>_<split>.jsonl`` in Bailian's format, one manifest each."""
    manifests = convert_medqa_tree(
        source,
        output_dir,
        regions=regions,
        splits=splits,
        prompts=BailianPrompts().with_system(system_prompt),
        policy=policy,
        language=language,  # type: ignore[arg-type]
    )
    _log_converted(manifests)
    return manifests


def _log_converted(manifests: list[Manifest]) -> None:
    logger = get_run_logger()
    for m in manifests:
        rejected = (m.rejects or {}).get("count", 0)
        logger.info(
            "%s: %d rows (%s)%s",
            Path(m.path).name,
            m.rows,
            m.extra.get("language"),
            f", {rejected} rejected → {m.rejects['path']}" if rejected else "",
        )


@medtune_task
def convert_medqa_files(
    files: list[Path],
    output_dir: Path,
    language: str = "auto",
    split: str = "train",
    system_prompt: str | None = None,
    policy: Policy = Policy.STRICT,
    names: list[str] | None = None,
) -> list[Manifest]:
    """Single MedQA files → ``output_dir/<name>.jsonl`` (``names``: one per file, default the file's stem);
    ``auto`` language reads each file's text (English for paths under ``US`` where the text cannot tell)."""
    prompts = BailianPrompts().with_system(system_prompt)
    names = names or [Path(f).stem for f in files]
    if len(names) != len(files) or len(set(names)) != len(names):
        raise MedtuneError(f"convert_medqa_files: output names must be one per file and distinct, got {names}")
    out = []
    for f, name in zip(files, names, strict=True):
        out.append(
            convert_medqa_file(
                f,
                output_dir / f"{name}.jsonl",
                language=language,  # type: ignore[arg-type]
                fallback_language="en" if "US" in Path(f).parts else "zh",
                prompts=prompts,
                policy=policy,
                extra={"dataset": name, "split": split},
            )
        )
    if out:
        _log_converted(out)
    return out


@medtune_task
def split_for_upload(manifest: Manifest, where: str, max_bytes: int, max_rows: int | None = None) -> list[Manifest]:
    """Parts under the size limit (the file itself when it fits), every line validated.

    ``where`` is the file's path as a string: the cache key holds the contents (manifest) AND the location,
    so two files with equal contents do not share one cached result naming the other's parts.
    """
    parts = split_file(where, Path(where).parent / "parts", max_bytes=max_bytes, max_rows=max_rows)
    if len(parts) > 1:
        get_run_logger().info("%s: split into %d parts", Path(where).name, len(parts))
    return parts


@medtune_task
def count_tokens(
    manifest: Manifest, where: str, max_length: int | None = None, tokenizer: str = "qwen-7b-chat"
) -> dict:
    """Qwen tokens of one file (ChatML frame included), rows over ``max_length`` counted."""
    stats = count_file_tokens(where, TokenCounter(tokenizer), max_length=max_length)
    if stats.rows_over_max_length:
        get_run_logger().warning(
            "%s: %d rows longer than max_length %d will be truncated",
            Path(where).name,
            stats.rows_over_max_length,
            max_length,
        )
    return stats.as_dict()


@medtune_task
def estimate_training_cost(
    model: str, epochs: int, training: list[dict], validation: list[dict], prices: dict[str, float]
) -> dict:
    """Tokens × epochs × price, from the per-file counts."""

    def files(items: list[dict]) -> list[FileTokens]:
        keep = {"path", "rows", "tokens", "max_row_tokens", "rows_over_max_length", "max_length"}
        return [FileTokens(**{k: v for k, v in d.items() if k in keep}) for d in items]

    est = estimate_cost(model, epochs, files(training), validation=files(validation), prices=prices)
    get_run_logger().info("estimate: %s", est.summary())
    return {**est.as_dict(), "summary": est.summary()}


@medtune_task(retry="network", cache=False)
def upload_file(manifest: Manifest, endpoint: BailianEndpoint) -> dict[str, Any]:
    """Upload one file once: the server is asked every run (by the file's sha256), so a file deleted there is
    uploaded again and a file uploaded from another machine, or before a crash, is not."""
    info = endpoint.client().upload(manifest.path)
    verb = "already on Bailian as" if info.reused else "uploaded as"
    get_run_logger().info("%s %s %s", Path(manifest.path).name, verb, info.file_id)
    return {"file_id": info.file_id, "name": info.name, "sha256": info.sha256, "reused": info.reused}


@medtune_task(retry="network", cache=False)
def create_fine_tune(spec: JobSpec, endpoint: BailianEndpoint, recreate_failed: bool = False) -> dict[str, Any]:
    """Create the fine-tune job for ``spec`` once: the server's newest job for the same inputs comes back instead,
    unless it ended FAILED or CANCELED and ``recreate_failed`` asks for a new one. Not cached: a cached job could be
    one the server has since replaced."""
    client = endpoint.client()
    job = client.create_job(spec, recreate_failed=recreate_failed)
    get_run_logger().info("fine-tune job %s: %s%s", job.job_id, job.status, " (existing)" if job.reused else "")
    return {**job.as_dict(), "endpoint": client.base_url, "endpoint_from": client.endpoint_source}


@medtune_task(retry="network")
def wait_fine_tune(
    job_id: str,
    endpoint: BailianEndpoint,
    interval: float = 30.0,
    max_interval: float = 300.0,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Poll the job to its end, its log lines streamed into this run's logs; a FAILED/CANCELED job raises.

    An interrupted or cancelled run cancels the job on Bailian before it stops.
    """
    logger = get_run_logger()
    job = endpoint.client().wait(
        job_id,
        interval=interval,
        max_interval=max_interval,
        timeout=timeout,
        on_log=lambda line: logger.info("[%s] %s", job_id, line),
    )
    return job.as_dict()


@medtune_task(retry="network")
def deploy_model(model: str, endpoint: BailianEndpoint, capacity: int = 1) -> dict[str, Any]:
    """Deploy the fine-tuned model and wait until it serves."""
    client = endpoint.client()
    dep = client.deploy(model, capacity=capacity)
    return client.wait_deployment(dep["deployed_model"])
