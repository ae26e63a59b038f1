"""Bailian (Alibaba Cloud Model Studio) client on the ``dashscope`` SDK: files, fine-tune jobs, deployments.

What it adds to the SDK:

- **Settings per call, never global.** The SDK reads its base URL and key at import; this client passes
  ``base_address``, ``api_key`` and ``workspace`` to every call, so two clients (regions, test servers)
  coexist in one process. The key is a :class:`~pydantic.SecretStr` and never reaches a log line, a repr or
  an exception message.
- **Errors as exceptions.** The SDK returns error responses (``status_code``, ``code``, ``message``); here a
  failed call raises :class:`BailianError`, after retrying transient failures (429, 5xx, connection errors)
  with exponential backoff.
- **Idempotence.** A local registry (JSON, file-locked) maps a file's sha256 to its Bailian file id and a job's
  inputs to its job id, per endpoint and workspace. Uploading a file already uploaded, or creating a job with
  the same inputs again, returns the recorded one; when the registry does not know it, the remote file list
  (name + md5) and job list are checked before anything is created.
- **Our own poll loop** (interval, backoff, timeout, log lines streamed to a callback, cancel on interrupt)
  instead of ``FineTunes.wait``'s fixed 30 s sleep.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any, ClassVar, Literal

import requests
from filelock import FileLock
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from medtune_core.dataio import atomic_write_text
from medtune_core.errors import MedtuneError
from medtune_core.hashing import file_sha256

log = logging.getLogger(__name__)

#: Base URLs of the DashScope HTTP API by region.
REGION_URLS: dict[str, str] = {
    "cn-beijing": "https://dashscope.aliyuncs.com/api/v1",
    "ap-southeast-1": "https://dashscope-intl.aliyuncs.com/api/v1",
    "intl": "https://dashscope-intl.aliyuncs.com/api/v1",
}
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELED")
TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
TrainingType = Literal["efficient_sft", "sft"]


class BailianError(MedtuneError):
    """A DashScope call failed; ``status_code`` / ``code`` / ``request_id`` as the service returned them."""

    def __init__(
        self,
        action: str,
        status_code: int | None,
        code: str | None,
        message: str,
        request_id: str = "",
        *,
        transient: bool | None = None,
    ) -> None:
        self.action = action
        self._transient = transient
        self.status_code = status_code
        self.code = code
        self.request_id = request_id
        detail = f"{action} failed"
        if status_code is not None:
            detail += f": HTTP {status_code}"
        if code:
            detail += f" {code}"
        if message:
            detail += f": {message}"
        if request_id:
            detail += f" (request {request_id})"
        super().__init__(detail)

    @property
    def transient(self) -> bool:
        """Worth retrying: 408/429/5xx, or a network failure (no status at all)."""
        if self._transient is not None:
            return self._transient
        return self.status_code in TRANSIENT_STATUS


class BailianJobFailed(BailianError):
    """A fine-tune job ended FAILED or CANCELED."""

    def __init__(self, job: JobInfo, last_logs: list[str]) -> None:
        self.job = job
        self.last_logs = last_logs
        tail = "\n".join(last_logs[-10:])
        msg = f"job {job.job_id} ended {job.status}" + (f"; last log lines:\n{tail}" if tail else "")
        super().__init__("fine-tune", None, job.status, msg, transient=False)


class BailianTimeout(MedtuneError):
    """The poll loop gave up waiting; the job itself keeps running on Bailian."""


# --------------------------------------------------------------------------------------------------- models


class HyperParameters(BaseModel):
    """Fine-tune hyper-parameters as Bailian names them; ``extra`` passes any other one through."""

    model_config = ConfigDict(extra="forbid")

    n_epochs: int = Field(3, ge=1, le=100, description="Passes over the training data (billed per epoch).")
    batch_size: int = Field(16, ge=1, le=1024, description="Samples per optimizer step.")
    learning_rate: float = Field(1e-4, gt=0, lt=1, description="Peak learning rate.")
    max_length: int = Field(2048, ge=64, le=131072, description="Tokens per sample; longer ones are truncated.")
    lora_rank: int | None = Field(64, ge=1, le=512, description="LoRA rank (efficient_sft only).")
    lora_alpha: int | None = Field(128, ge=1, le=1024, description="LoRA alpha (efficient_sft only).")
    lora_dropout: float | None = Field(None, ge=0, lt=1, description="LoRA dropout (efficient_sft only).")
    target_modules: str | None = Field("ALL", description="LoRA target modules (efficient_sft only).")
    warmup_ratio: float | None = Field(None, ge=0, lt=1)
    extra: dict[str, Any] = Field(default_factory=dict, description="Other Bailian hyper-parameters, as is.")

    LORA_KEYS: ClassVar[tuple[str, ...]] = ("lora_rank", "lora_alpha", "lora_dropout", "target_modules")

    def to_api(self, training_type: str) -> dict[str, Any]:
        """The ``hyper_parameters`` body: LoRA keys only for efficient_sft, None values left out."""
        out: dict[str, Any] = {}
        for key, value in self.model_dump(exclude={"extra"}).items():
            if value is None or (training_type != "efficient_sft" and key in self.LORA_KEYS):
                continue
            out[key] = _format_lr(value) if key == "learning_rate" else value
        out.update(self.extra)
        return out


def _format_lr(value: float) -> str:
    """Bailian's examples pass the learning rate as a string (``"1.6e-5"``)."""
    return f"{value:.6g}"


class JobSpec(BaseModel):
    """Everything that defines a fine-tune job; equal specs are the same job (see :meth:`key`)."""

    model: str = Field("qwen2.5-7b-instruct", min_length=1, description="Base model to fine-tune.")
    training_file_ids: list[str] = Field(min_length=1)
    validation_file_ids: list[str] = Field(default_factory=list)
    training_type: TrainingType = "efficient_sft"
    hyper_parameters: HyperParameters = Field(default_factory=HyperParameters)
    finetuned_output: str | None = Field(None, description="Name suffix of the resulting model (optional).")

    @field_validator("training_file_ids", "validation_file_ids")
    @classmethod
    def _no_blank_ids(cls, v: list[str]) -> list[str]:
        if any(not i.strip() for i in v):
            raise ValueError("file ids must not be blank")
        return v

    @model_validator(mode="after")
    def _lora_needs_efficient(self) -> JobSpec:
        if self.training_type == "efficient_sft" and self.hyper_parameters.lora_rank is None:
            raise ValueError("efficient_sft (LoRA) needs hyper_parameters.lora_rank")
        return self

    def request(self) -> dict[str, Any]:
        body = {
            "model": self.model,
            "training_file_ids": list(self.training_file_ids),
            "validation_file_ids": list(self.validation_file_ids),
            "training_type": self.training_type,
            "hyper_parameters": self.hyper_parameters.to_api(self.training_type),
        }
        if self.finetuned_output:
            body["finetuned_output"] = self.finetuned_output
        return body

    def key(self, scope: str) -> str:
        return hashlib.sha256(json.dumps([scope, self.request()], sort_keys=True).encode()).hexdigest()


@dataclass
class FileInfo:
    file_id: str
    name: str
    sha256: str | None = None
    md5: str | None = None
    bytes: int | None = None
    reused: bool = False  # True when no upload happened (registry or remote list)


@dataclass
class JobInfo:
    job_id: str
    status: str
    model: str | None = None
    base_model: str | None = None
    finetuned_output: str | None = None
    training_type: str | None = None
    hyper_parameters: dict[str, Any] = field(default_factory=dict)
    training_file_ids: list[str] = field(default_factory=list)
    validation_file_ids: list[str] = field(default_factory=list)
    usage: Any = None
    create_time: str | None = None
    end_time: str | None = None
    reused: bool = False

    @classmethod
    def from_output(cls, out: Any, *, reused: bool = False) -> JobInfo:
        d = dict(out) if isinstance(out, dict) else dict(vars(out))
        return cls(
            job_id=d["job_id"],
            status=d.get("status") or "UNKNOWN",
            model=d.get("model"),
            base_model=d.get("base_model"),
            finetuned_output=d.get("finetuned_output"),
            training_type=d.get("training_type"),
            hyper_parameters=dict(d.get("hyper_parameters") or {}),
            training_file_ids=list(d.get("training_file_ids") or []),
            validation_file_ids=list(d.get("validation_file_ids") or []),
            usage=d.get("usage"),
            create_time=d.get("create_time"),
            end_time=d.get("end_time"),
            reused=reused,
        )

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RetryPolicy:
    attempts: int = 4
    backoff: float = 1.0
    factor: float = 2.0
    max_backoff: float = 30.0

    def delays(self) -> Iterator[float]:
        delay = self.backoff
        for _ in range(self.attempts - 1):
            yield min(delay, self.max_backoff)
            delay *= self.factor


# ------------------------------------------------------------------------------------------------- registry


class Registry:
    """A JSON file recording uploads (sha256 → file id) and jobs (spec key → job id), safe across processes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.lock = FileLock(str(self.path) + ".lock")

    def _read(self) -> dict[str, Any]:
        if not self.path.is_file():
            return {"files": {}, "jobs": {}}
        data = json.loads(self.path.read_text(encoding="utf-8"))
        data.setdefault("files", {})
        data.setdefault("jobs", {})
        return data

    def get(self, table: str, key: str) -> dict[str, Any] | None:
        with self.lock:
            return self._read()[table].get(key)

    def put(self, table: str, key: str, value: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.lock:
            data = self._read()
            data[table][key] = value
            atomic_write_text(self.path, json.dumps(data, ensure_ascii=False, indent=2, sort_keys=True) + "\n")

    def drop(self, table: str, key: str) -> None:
        with self.lock:
            data = self._read()
            if data[table].pop(key, None) is not None:
                atomic_write_text(self.path, json.dumps(data, ensure_ascii=False, indent=2, sort_keys=True) + "\n")

    def all(self, table: str) -> dict[str, Any]:
        with self.lock:
            return self._read()[table]


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------------- client


class BailianClient:
    """Files, fine-tune jobs and deployments on Bailian through the ``dashscope`` SDK.

    ``api_key`` defaults to ``DASHSCOPE_API_KEY`` (via medtune's settings); ``base_url`` to the region's URL.
    ``registry_path`` (default ``$MEDTUNE_HOME/bailian/registry.json``) is what makes uploads and job creation
    idempotent across runs and processes.
    """

    def __init__(
        self,
        api_key: SecretStr | str | None = None,
        *,
        region: str = "cn-beijing",
        base_url: str | None = None,
        workspace: str | None = None,
        registry_path: str | os.PathLike[str] | None = None,
        retry: RetryPolicy | None = None,
        request_timeout: float = 120.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        from medtune_core.settings import get_settings

        settings = get_settings()
        if api_key is None:
            api_key = settings.dashscope_api_key
        if api_key is None or not (api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key):
            raise MedtuneError("no DashScope API key: set DASHSCOPE_API_KEY or pass api_key")
        self._key = api_key if isinstance(api_key, SecretStr) else SecretStr(api_key)
        if base_url is None:
            try:
                base_url = REGION_URLS[region]
            except KeyError:
                raise MedtuneError(f"unknown region {region!r}; known: {', '.join(REGION_URLS)}") from None
        self.base_url = base_url.rstrip("/")
        self.workspace = workspace
        self.registry = Registry(registry_path or settings.home / "bailian" / "registry.json")
        self.retry = retry or RetryPolicy()
        self.request_timeout = request_timeout
        self.sleep = sleep

    def __repr__(self) -> str:
        return f"BailianClient(base_url={self.base_url!r}, workspace={self.workspace!r})"

    @property
    def scope(self) -> str:
        """What file and job ids are valid for: the endpoint and the workspace."""
        return f"{self.base_url}|{self.workspace or ''}"

    # -- plumbing

    def _kwargs(self) -> dict[str, Any]:
        return {
            "api_key": self._key.get_secret_value(),
            "workspace": self.workspace,
            "base_address": self.base_url,
            "request_timeout": self.request_timeout,
        }

    def _scrub(self, text: str) -> str:
        key = self._key.get_secret_value()
        return text.replace(key, "**********") if key else text

    def _once(self, action: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            rsp = fn(*args, **self._kwargs(), **kwargs)
        except MedtuneError:
            raise
        except (requests.RequestException, OSError) as exc:  # connection refused, timeouts: transient
            raise BailianError(action, None, type(exc).__name__, self._scrub(str(exc)), transient=True) from None
        except Exception as exc:  # the SDK's own checks (e.g. a file that is not JSONL): not worth retrying
            raise BailianError(action, None, type(exc).__name__, self._scrub(str(exc)), transient=False) from None
        status = getattr(rsp, "status_code", None)
        if status is None and isinstance(rsp, dict):
            status = rsp.get("status_code")
        if status not in (HTTPStatus.OK, HTTPStatus.CREATED, 200, 201):
            get = rsp.get if isinstance(rsp, dict) else lambda k, d=None: getattr(rsp, k, d)
            raise BailianError(
                action, status, get("code"), self._scrub(str(get("message") or "")), get("request_id") or ""
            )
        return rsp

    def _call(self, action: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """One SDK call, retried with backoff while it fails transiently."""
        delays = self.retry.delays()
        while True:
            try:
                return self._once(action, fn, *args, **kwargs)
            except BailianError as exc:
                if not exc.transient:
                    raise
                delay = next(delays, None)
                if delay is None:
                    raise
                log.warning("%s; retrying in %.1f s", exc, delay)
                self.sleep(delay)

    # -- files

    def list_files(self, *, page_size: int = 100, max_pages: int = 20) -> list[dict[str, Any]]:
        from dashscope import Files

        files: list[dict[str, Any]] = []
        for page in range(1, max_pages + 1):
            rsp = self._call("list files", Files.list, page=page, page_size=page_size)
            out = rsp.output or {}
            batch = list(out.get("files") or [])
            files += batch
            if len(batch) < page_size or len(files) >= int(out.get("total") or 0):
                break
        return files

    def get_file(self, file_id: str) -> dict[str, Any]:
        from dashscope import Files

        return dict(self._call("get file", Files.get, file_id).output or {})

    def delete_file(self, file_id: str) -> None:
        from dashscope import Files

        self._call("delete file", Files.delete, file_id)
        for sha, entry in self.registry.all("files").items():
            if entry.get("file_id") == file_id:
                self.registry.drop("files", sha)

    def upload(
        self, path: str | os.PathLike[str], *, description: str | None = None, verify_remote: bool = True
    ) -> FileInfo:
        """Upload a fine-tune file once: a file with the same sha256 already uploaded here is reused."""
        from dashscope import Files

        p = Path(path)
        sha = file_sha256(p)
        key = f"{self.scope}|{sha}"
        known = self.registry.get("files", key)
        if known is not None:
            if not verify_remote or self._file_exists(known["file_id"]):
                log.info("%s already uploaded as %s", p.name, known["file_id"])
                return FileInfo(known["file_id"], known["name"], sha, known.get("md5"), known.get("bytes"), True)
            self.registry.drop("files", key)
        md5 = _md5(p)
        size = p.stat().st_size
        remote = self._find_remote_file(p.name, md5, size)
        if remote is not None:
            log.info("%s found on Bailian as %s; not uploading again", p.name, remote)
            self._record_file(key, remote, p, sha, md5, size)
            return FileInfo(remote, p.name, sha, md5, size, True)
        rsp = self._call(
            "upload " + p.name, Files.upload, file_path=str(p), purpose="fine_tune", description=description
        )
        out = rsp.output or {}
        uploaded = out.get("uploaded_files") or []
        failed = out.get("failed_uploads") or []
        if failed or not uploaded:
            why = "; ".join(f"{f.get('name')}: {f.get('code')} {f.get('message')}" for f in failed) or "no file id"
            raise BailianError("upload " + p.name, rsp.status_code, "UploadFailed", why, rsp.request_id or "")
        file_id = uploaded[0]["file_id"]
        self._record_file(key, file_id, p, sha, md5, size)
        log.info("uploaded %s as %s", p.name, file_id)
        return FileInfo(file_id, p.name, sha, md5, size, False)

    def _record_file(self, key: str, file_id: str, p: Path, sha: str, md5: str, size: int) -> None:
        entry = {"file_id": file_id, "name": p.name, "md5": md5, "bytes": size, "path": str(p), "at": _now()}
        self.registry.put("files", key, {**entry, "sha256": sha})

    def _file_exists(self, file_id: str) -> bool:
        try:
            self.get_file(file_id)
        except BailianError as exc:
            if exc.status_code == HTTPStatus.NOT_FOUND:
                return False
            raise
        return True

    def _find_remote_file(self, name: str, md5: str, size: int) -> str | None:
        for f in self.list_files():
            if f.get("name") == name and f.get("md5") == md5 and int(f.get("size", size)) == size:
                return f.get("file_id")
        return None

    # -- jobs

    def create_job(self, spec: JobSpec, *, recreate_failed: bool = False) -> JobInfo:
        """Create a fine-tune job once per spec: the same spec returns the job recorded (or found) before."""
        from dashscope import FineTunes

        key = spec.key(self.scope)
        known = self.registry.get("jobs", key)
        if known is not None:
            job = self.get_job(known["job_id"])
            if not (recreate_failed and job.status in ("FAILED", "CANCELED")):
                log.info("job for these inputs already exists: %s (%s)", job.job_id, job.status)
                job.reused = True
                return job
        else:
            remote = self._find_remote_job(spec)
            if remote is not None:
                self.registry.put("jobs", key, {"job_id": remote.job_id, "model": spec.model, "at": _now()})
                log.info("job for these inputs found on Bailian: %s (%s)", remote.job_id, remote.status)
                remote.reused = True
                return remote
        body = spec.request()
        extra = {"finetuned_output": body["finetuned_output"]} if "finetuned_output" in body else {}
        rsp = self._call(
            "create fine-tune",
            FineTunes.call,
            model=body["model"],
            training_file_ids=body["training_file_ids"],
            validation_file_ids=body["validation_file_ids"],
            mode=body["training_type"],
            hyper_parameters=body["hyper_parameters"],
            **extra,
        )
        job = JobInfo.from_output(rsp.output)
        self.registry.put("jobs", key, {"job_id": job.job_id, "model": spec.model, "at": _now()})
        log.info("created fine-tune job %s (%s)", job.job_id, job.status)
        return job

    def _find_remote_job(self, spec: JobSpec) -> JobInfo | None:
        want = spec.request()
        for job in self.list_jobs():
            if job.status in ("FAILED", "CANCELED"):
                continue
            same_files = job.training_file_ids == want["training_file_ids"] and (job.validation_file_ids or []) == (
                want["validation_file_ids"] or []
            )
            same_model = want["model"] in (job.model, job.base_model)
            same_type = job.training_type in (None, want["training_type"])
            same_hp = all(str(job.hyper_parameters.get(k)) == str(v) for k, v in want["hyper_parameters"].items())
            if same_files and same_model and same_type and same_hp:
                return job
        return None

    def get_job(self, job_id: str) -> JobInfo:
        from dashscope import FineTunes

        return JobInfo.from_output(self._call("get fine-tune " + job_id, FineTunes.get, job_id).output)

    def list_jobs(self, *, page_size: int = 100, max_pages: int = 10) -> list[JobInfo]:
        from dashscope import FineTunes

        jobs: list[JobInfo] = []
        for page in range(1, max_pages + 1):
            rsp = self._call("list fine-tunes", FineTunes.list, page_no=page, page_size=page_size)
            out = rsp.output
            batch = list(getattr(out, "jobs", None) or [])
            jobs += [JobInfo.from_output(j) for j in batch]
            if len(batch) < page_size or len(jobs) >= int(getattr(out, "total", 0) or 0):
                break
        return jobs

    def cancel_job(self, job_id: str) -> None:
        from dashscope import FineTunes

        self._call("cancel fine-tune " + job_id, FineTunes.cancel, job_id)
        log.info("cancelled fine-tune job %s", job_id)

    def job_logs(self, job_id: str, *, offset: int = 0, lines: int = 1000) -> tuple[list[str], int]:
        """Log lines after the first ``offset`` ones, and the total the service reports."""
        from dashscope import FineTunes

        rsp = self._call("fine-tune logs " + job_id, FineTunes.logs, job_id, offset=offset, line=lines)
        out = rsp.output or {}
        logs = [str(x) for x in (out.get("logs") or [])]
        return logs, int(out.get("total") or offset + len(logs))

    def wait(
        self,
        job_id: str,
        *,
        interval: float = 10.0,
        max_interval: float = 60.0,
        backoff: float = 1.5,
        timeout: float | None = None,
        on_log: Callable[[str], None] | None = None,
        on_status: Callable[[JobInfo], None] | None = None,
        raise_on_failure: bool = True,
        cancel_on_interrupt: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> JobInfo:
        """Poll a job until SUCCEEDED / FAILED / CANCELED, streaming new log lines to ``on_log``.

        The interval starts at ``interval`` and grows by ``backoff`` up to ``max_interval`` while the status does
        not change. ``timeout`` raises :class:`BailianTimeout` (the job keeps running). An interrupt (Ctrl-C, a
        cancelled flow run) cancels the job first when ``cancel_on_interrupt``. FAILED / CANCELED raise
        :class:`BailianJobFailed` with the last log lines unless ``raise_on_failure`` is False.
        """
        start = clock()
        seen = 0
        tail: list[str] = []
        last_status = None
        delay = interval
        try:
            while True:
                job = self.get_job(job_id)
                if job.status != last_status:
                    log.info("fine-tune job %s: %s", job_id, job.status)
                    if on_status is not None:
                        on_status(job)
                    last_status, delay = job.status, interval
                while True:
                    lines, total = self.job_logs(job_id, offset=seen)
                    for line in lines:
                        if on_log is not None:
                            on_log(line)
                    seen += len(lines)
                    tail = (tail + lines)[-50:]
                    if not lines or seen >= total:
                        break
                if job.done:
                    if job.status != "SUCCEEDED" and raise_on_failure:
                        raise BailianJobFailed(job, tail)
                    return job
                if timeout is not None and clock() - start + delay > timeout:
                    raise BailianTimeout(f"job {job_id} still {job.status} after {clock() - start:.0f} s; not waiting")
                self.sleep(delay)
                delay = min(delay * backoff, max_interval)
        except BaseException as exc:
            # KeyboardInterrupt, SystemExit, a cancelled flow run's signal: the job must not run on unwatched
            if isinstance(exc, Exception) or not cancel_on_interrupt:
                raise
            log.warning("interrupted while waiting: cancelling fine-tune job %s", job_id)
            self.cancel_job(job_id)
            raise

    # -- deployments

    def deploy(self, model: str, *, capacity: int = 1, plan: str | None = None, suffix: str | None = None) -> dict:
        from dashscope import Deployments

        rsp = self._call("deploy " + model, Deployments.call, model=model, capacity=capacity, plan=plan, suffix=suffix)
        return _plain(rsp.output)

    def get_deployment(self, deployed_model: str) -> dict:
        from dashscope import Deployments

        return _plain(self._call("get deployment " + deployed_model, Deployments.get, deployed_model).output)

    def list_deployments(self) -> list[dict]:
        from dashscope import Deployments

        out = self._call("list deployments", Deployments.list, page_no=1, page_size=100).output
        return [_plain(d) for d in (getattr(out, "deployments", None) or [])]

    def delete_deployment(self, deployed_model: str) -> None:
        from dashscope import Deployments

        self._call("delete deployment " + deployed_model, Deployments.delete, deployed_model)

    def wait_deployment(
        self, deployed_model: str, *, interval: float = 10.0, max_interval: float = 60.0, timeout: float = 3600.0
    ) -> dict:
        """Poll a deployment until RUNNING (returned) or FAILED (raised)."""
        start, delay = time.monotonic(), interval
        while True:
            dep = self.get_deployment(deployed_model)
            status = dep.get("status")
            if status == "RUNNING":
                return dep
            if status == "FAILED":
                raise BailianError("deploy " + deployed_model, None, "FAILED", f"deployment {deployed_model} failed")
            if time.monotonic() - start + delay > timeout:
                raise BailianTimeout(f"deployment {deployed_model} still {status} after {timeout:.0f} s")
            self.sleep(delay)
            delay = min(delay * 1.5, max_interval)


def _plain(obj: Any) -> dict:
    if obj is None:
        return {}
    if isinstance(obj, dict):
        return dict(obj)
    return {k: v for k, v in vars(obj).items() if not k.startswith("_")}
