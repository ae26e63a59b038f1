"""Bailian (Alibaba Cloud Model Studio) client on the ``dashscope`` SDK: files, fine-tune jobs, deployments.

What it adds to the SDK:

- **The SDK's conventions, settings per call.** The endpoint, workspace and key are resolved as the SDK documents
  them (:mod:`medtune_core.bailian.endpoint`: ``DASHSCOPE_HTTP_BASE_URL`` wins over the region table unless
  ``base_url`` is given) and passed to every call, so two clients (regions, test servers) coexist in one process.
  The key is a :class:`~pydantic.SecretStr` and never reaches a log line, a repr or an exception message.
- **Errors as exceptions, retries by tenacity.** The SDK returns error responses (``status_code``, ``code``,
  ``message``); here a failed call raises :class:`BailianError`. Only transient failures are retried (connection
  errors, timeouts, 408/429/5xx), never a 4xx that says the request is wrong, never a programming error.
- **The server is the truth: never a second upload or a second paid job.** Every file carries its sha256 in its
  uploaded name and description, every job the hash of what it trains in its model name
  (:mod:`medtune_core.bailian.identity`). Before uploading or creating, the server's list is searched for that
  identity; a retry after a timeout searches again before sending again; a local registry (JSON, file-locked)
  only saves look-ups and is checked against the server before it is believed (a file deleted in the console
  is uploaded again; the newest job for the same inputs wins). So a second machine, a fresh ``MEDTUNE_HOME`` or
  a ``kill -9`` between the server storing and answering re-attach instead of paying twice.
- **Streaming upload** (:mod:`medtune_core.bailian.upload`): memory flat in the file's size.
- **Our own poll loop** (interval, backoff, timeout, deduplicated log lines to a callback, cancel on interrupt)
  instead of ``FineTunes.wait``'s fixed 30 s sleep.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

import httpx
import requests
from filelock import FileLock
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from medtune_core.bailian.endpoint import REGION_URLS, resolve_api_key, resolve_endpoint
from medtune_core.bailian.identity import (
    LogCursor,
    file_identity,
    file_key,
    file_matches,
    job_identity,
    job_tag,
    pages_until_done,
    same_hyper_parameters,
    upload_description,
    upload_name,
)
from medtune_core.bailian.split import BAILIAN_FILE_LIMIT, validate_bailian_file
from medtune_core.bailian.upload import post_file
from medtune_core.dataio import atomic_write_text
from medtune_core.errors import MedtuneError
from medtune_core.hashing import file_sha256

log = logging.getLogger(__name__)

__all__ = ["REGION_URLS", "BailianClient", "BailianError", "BailianJobFailed", "BailianTimeout", "RetryPolicy"]

TERMINAL = ("SUCCEEDED", "FAILED", "CANCELED")
ENDED_BADLY = ("FAILED", "CANCELED")
TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
#: Exceptions of the HTTP layers that mean "the network, not the request": worth another try.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
    ConnectionError,
    TimeoutError,
)
_NOT_FOUND = re.compile(r"not.?found|not.?exist|no such", re.IGNORECASE)
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
        self.message = message
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

    @property
    def not_found(self) -> bool:
        """The object is gone: HTTP 404, or a 400 whose code or message says "not found" (DashScope's files)."""
        if self.status_code == 404:
            return True
        return self.status_code == 400 and bool(_NOT_FOUND.search(f"{self.code or ''} {self.message}"))


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
    finetuned_output: str | None = Field(
        None, description="Name of the resulting model (optional; sent as model_name with the job's identity tag)."
    )

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
        return body

    def key(self, scope: str) -> str:
        """A hash of the request by file ids (the client keys jobs by file contents: ``job_identity``)."""
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
    model_name: str | None = None
    job_name: str | None = None
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
            model_name=d.get("model_name"),
            job_name=d.get("job_name"),
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

    def names(self) -> str:
        """Every name the server gives the job (where a job's identity tag can show)."""
        return " ".join(str(x) for x in (self.model_name, self.finetuned_output, self.job_name) if x)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RetryPolicy:
    """How transient failures are retried: ``attempts`` tries in all, ``backoff × factor^n`` s apart (capped)."""

    attempts: int = 4
    backoff: float = 1.0
    factor: float = 2.0
    max_backoff: float = 30.0

    def retrying(self, sleep: Callable[[float], None] = time.sleep) -> Retrying:
        """A tenacity controller that retries :class:`BailianError` marked transient, and nothing else."""
        return Retrying(
            retry=retry_if_exception(lambda exc: isinstance(exc, BailianError) and exc.transient),
            stop=stop_after_attempt(max(self.attempts, 1)),
            wait=wait_exponential(multiplier=self.backoff, exp_base=self.factor, max=self.max_backoff),
            sleep=sleep,
            before_sleep=_log_retry,
            reraise=True,
        )


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome is not None else None
    delay = state.next_action.sleep if state.next_action is not None else 0.0
    log.warning("%s; retrying in %.1f s", exc, delay)


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

    def sha_of(self, scope: str, file_id: str) -> str | None:
        """The sha256 recorded for a file id in ``scope`` (None when this registry never saw it)."""
        for key, entry in self.all("files").items():
            if key.startswith(scope + "|") and entry.get("file_id") == file_id:
                return entry.get("sha256")
        return None

    def operation_lock(self, name: str) -> FileLock:
        """A lock for one find-or-create (one file's upload, one job's creation) across this machine's processes."""
        folder = self.path.parent / "locks"
        folder.mkdir(parents=True, exist_ok=True)
        return FileLock(str(folder / f"{name}.lock"))


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _plain(obj: Any) -> dict:
    if obj is None:
        return {}
    if isinstance(obj, dict):
        return dict(obj)
    return {k: v for k, v in vars(obj).items() if not k.startswith("_")}


# --------------------------------------------------------------------------------------------------- client


class BailianClient:
    """Files, fine-tune jobs and deployments on Bailian through the ``dashscope`` SDK.

    ``api_key``, ``region``, ``base_url`` and ``workspace`` default as the SDK documents (see
    :mod:`medtune_core.bailian.endpoint`). ``registry_path`` (default ``$MEDTUNE_HOME/bailian/registry.json``)
    saves look-ups; the server's lists decide what exists.
    """

    def __init__(
        self,
        api_key: SecretStr | str | None = None,
        *,
        region: str | None = None,
        base_url: str | None = None,
        workspace: str | None = None,
        registry_path: str | os.PathLike[str] | None = None,
        retry: RetryPolicy | None = None,
        request_timeout: float = 120.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        from medtune_core.settings import get_settings

        key = resolve_api_key(api_key)
        if key is None:
            raise MedtuneError("no DashScope API key: set DASHSCOPE_API_KEY or pass api_key")
        self._key = key
        endpoint = resolve_endpoint(region, base_url, workspace)
        self.base_url = endpoint.base_url
        self.endpoint_source = endpoint.source
        self.workspace = endpoint.workspace
        log.info("DashScope endpoint %s (from %s)", self.base_url, self.endpoint_source)
        self.registry = Registry(registry_path or get_settings().home / "bailian" / "registry.json")
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
        """One SDK call; an error answer or exception becomes a :class:`BailianError` (transient or not)."""
        try:
            rsp = fn(*args, **self._kwargs(), **kwargs)
        except MedtuneError:
            raise
        except TRANSIENT_ERRORS as exc:
            raise BailianError(action, None, type(exc).__name__, self._scrub(str(exc)), transient=True) from None
        except Exception as exc:  # the SDK's own checks, a bad argument: retrying cannot help
            raise BailianError(action, None, type(exc).__name__, self._scrub(str(exc)), transient=False) from None
        status = getattr(rsp, "status_code", None)
        if status is None and isinstance(rsp, dict):
            status = rsp.get("status_code")
        if status not in (200, 201):
            get = rsp.get if isinstance(rsp, dict) else lambda k, d=None: getattr(rsp, k, d)
            raise BailianError(
                action, status, get("code"), self._scrub(str(get("message") or "")), get("request_id") or ""
            )
        return rsp

    def _call(self, action: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """One SDK call, retried (tenacity) while it fails transiently. Only for calls that are safe to repeat."""
        return self._retrying()(self._once, action, fn, *args, **kwargs)

    def _retrying(self) -> Retrying:
        return self.retry.retrying(self.sleep)

    # -- files

    def list_files(self, *, page_size: int = 100, max_pages: int = 50) -> list[dict[str, Any]]:
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
        for key, entry in self.registry.all("files").items():
            if entry.get("file_id") == file_id:
                self.registry.drop("files", key)

    def upload(
        self,
        path: str | os.PathLike[str],
        *,
        description: str | None = None,
        verify_remote: bool = True,
        validate: bool = True,
    ) -> FileInfo:
        """Upload a fine-tune file once, on this machine or any other.

        The file is validated first (``path:line: field: problem``; raw MedQA is refused). A file recorded in the
        registry is reused after checking it still exists on the server; otherwise the server's list is searched
        for its sha256 (name or description) before anything is sent, and again before every retry, so a timeout
        or a crash after the server stored it never leaves a second copy.
        """
        p = Path(path)
        size = p.stat().st_size
        if size > BAILIAN_FILE_LIMIT:
            raise MedtuneError(f"{p}: {size:,} bytes, over Bailian's {BAILIAN_FILE_LIMIT:,}-byte limit: split it")
        if validate:
            validate_bailian_file(p)
        sha, md5 = file_sha256(p), _md5(p)
        key = f"{self.scope}|{sha}"
        with self.registry.operation_lock(f"file-{sha[:16]}"):
            known = self.registry.get("files", key)
            if known is not None:
                if not verify_remote or self._file_exists(known["file_id"]):
                    log.info("%s already uploaded as %s", p.name, known["file_id"])
                    return FileInfo(known["file_id"], known["name"], sha, md5, size, True)
                log.warning("%s: file %s is gone from the server; uploading again", p.name, known["file_id"])
                self.registry.drop("files", key)
            name = upload_name(p, sha)
            desc = upload_description(p.name, sha, description)

            def find_or_upload() -> FileInfo:
                remote = self._find_remote_file(p.name, sha, md5, size)
                if remote is not None:
                    log.info("%s found on the server as %s; not uploading again", p.name, remote)
                    self._record_file(key, remote, p, sha, md5, size)
                    return FileInfo(remote, p.name, sha, md5, size, True)
                file_id = self._post_file(p, name, desc)
                log.info("uploaded %s as %s (%s)", p.name, file_id, name)
                kept = self._settle_file_race(file_id, p.name, sha, md5, size)
                self._record_file(key, kept, p, sha, md5, size)
                return FileInfo(kept, p.name, sha, md5, size, kept != file_id)

            return self._retrying()(find_or_upload)

    def _post_file(self, p: Path, name: str, description: str) -> str:
        action = "upload " + p.name
        try:
            answer = post_file(
                self.base_url,
                p,
                name=name,
                description=description,
                api_key=self._key.get_secret_value(),
                workspace=self.workspace,
                timeout=self.request_timeout,
            )
        except TRANSIENT_ERRORS as exc:
            raise BailianError(action, None, type(exc).__name__, self._scrub(str(exc)), transient=True) from None
        body = answer.body
        if answer.status_code not in (200, 201):
            message = str(body.get("message") or answer.text)
            raise BailianError(
                action, answer.status_code, body.get("code"), self._scrub(message), body.get("request_id") or ""
            )
        out = body.get("data") or body.get("output") or {}
        uploaded = out.get("uploaded_files") or []
        failed = out.get("failed_uploads") or []
        if failed or not uploaded:
            why = "; ".join(f"{f.get('name')}: {f.get('code')} {f.get('message')}" for f in failed) or "no file id"
            raise BailianError(action, answer.status_code, "UploadFailed", why, body.get("request_id") or "")
        return str(uploaded[0]["file_id"])

    def _settle_file_race(self, mine: str, name: str, sha: str, md5: str, size: int) -> str:
        """After an upload: when another run (another machine) uploaded the same file at the same moment, every run
        keeps the first copy (oldest, then smallest id) and the others delete their own, so one copy remains."""
        from dashscope import Files

        same = [f for f in self.list_files() if file_matches(f, sha=sha, md5=md5, size=size, name=name)]
        if len(same) <= 1:
            return mine
        first = str(min(same, key=lambda f: (str(f.get("gmt_create") or ""), str(f.get("file_id"))))["file_id"])
        if first != mine:
            log.warning(
                "%s was uploaded by another run at the same time as %s; deleting this copy %s", name, first, mine
            )
            self._call("delete file", Files.delete, mine)
        return first

    def _record_file(self, key: str, file_id: str, p: Path, sha: str, md5: str, size: int) -> None:
        entry = {"file_id": file_id, "name": p.name, "md5": md5, "bytes": size, "path": str(p), "at": _now()}
        self.registry.put("files", key, {**entry, "sha256": sha})

    def _file_exists(self, file_id: str) -> bool:
        try:
            self.get_file(file_id)
        except BailianError as exc:
            if exc.not_found:
                return False
            raise
        return True

    def _find_remote_file(self, name: str, sha: str, md5: str, size: int) -> str | None:
        for f in self.list_files():
            if file_matches(f, sha=sha, md5=md5, size=size, name=name):
                return f.get("file_id")
        return None

    def _file_keys(self, file_ids: list[str], listed: list[dict[str, Any]] | None) -> list[str]:
        """Content keys of file ids: from the registry, else from the server's list, else the id itself."""
        by_id = {f.get("file_id"): file_identity(f) for f in listed or []}
        return [file_key(self.registry.sha_of(self.scope, i) or by_id.get(i), i) for i in file_ids]

    # -- jobs

    def job_identity(self, spec: JobSpec, listed_files: list[dict[str, Any]] | None = None) -> str:
        """The hash of what ``spec`` trains, by file contents (see :mod:`medtune_core.bailian.identity`)."""
        body = spec.request()
        return job_identity(
            body["model"],
            body["training_type"],
            body["hyper_parameters"],
            self._file_keys(spec.training_file_ids, listed_files),
            self._file_keys(spec.validation_file_ids, listed_files),
        )

    def create_job(self, spec: JobSpec, *, recreate_failed: bool = False) -> JobInfo:
        """Create a fine-tune job once per set of inputs, on this machine or any other.

        The newest job on the server for the same inputs (by its identity tag, or by its own fields) is returned
        instead, unless it ended FAILED/CANCELED and ``recreate_failed`` asks for a new one. A retry after a
        timeout searches again before sending again.
        """
        listed_files = self.list_files() if self._needs_file_list(spec) else None
        identity = self.job_identity(spec, listed_files)
        tag = job_tag(identity)
        key = f"{self.scope}|job|{identity}"
        with self.registry.operation_lock(f"job-{identity[:16]}"):

            def find_or_create() -> JobInfo:
                matches = self._matching_jobs(spec, tag, key, listed_files)
                newest = matches[0] if matches else None
                if newest is not None and not (recreate_failed and newest.status in ENDED_BADLY):
                    log.info("job for these inputs already exists: %s (%s)", newest.job_id, newest.status)
                    self.registry.put("jobs", key, {"job_id": newest.job_id, "model": spec.model, "at": _now()})
                    newest.reused = True
                    return newest
                job = self._post_job(spec, tag, attempt=len(matches) + 1)
                log.info("created fine-tune job %s (%s) as %s", job.job_id, job.status, tag)
                job = self._settle_job_race(job, spec, tag, key, listed_files, {j.job_id for j in matches})
                self.registry.put("jobs", key, {"job_id": job.job_id, "model": spec.model, "at": _now()})
                return job

            return self._retrying()(find_or_create)

    def cancel_unfinished_jobs_for(self, spec: JobSpec) -> list[str]:
        """Cancel every job for these inputs that has not ended; returns their ids.

        For a run stopped between creating its job and watching it (Ctrl-C while the create call was answering):
        a paid job must not train on unwatched after its run was cancelled."""
        listed_files = self.list_files() if self._needs_file_list(spec) else None
        identity = self.job_identity(spec, listed_files)
        key = f"{self.scope}|job|{identity}"
        cancelled = []
        for job in self._matching_jobs(spec, job_tag(identity), key, listed_files):
            if job.status not in TERMINAL:
                log.warning("run stopped: cancelling fine-tune job %s (%s)", job.job_id, job.status)
                self.cancel_job(job.job_id)
                cancelled.append(job.job_id)
        return cancelled

    def _settle_job_race(
        self,
        mine: JobInfo,
        spec: JobSpec,
        tag: str,
        key: str,
        listed_files: list[dict[str, Any]] | None,
        before: set[str],
    ) -> JobInfo:
        """After creating: when another run created a job for the same inputs at the same moment, every run keeps
        the first of the new ones (oldest, then smallest id) and the others cancel their own before it trains."""
        new = [j for j in self._matching_jobs(spec, tag, key, listed_files) if j.job_id not in before]
        if len(new) <= 1:
            return mine
        first = min(new, key=lambda j: (j.create_time or "", j.job_id))
        if first.job_id == mine.job_id:
            return mine
        log.warning(
            "job %s was created by another run for these inputs; cancelling this one %s", first.job_id, mine.job_id
        )
        self.cancel_job(mine.job_id)
        first.reused = True
        return first

    def _needs_file_list(self, spec: JobSpec) -> bool:
        ids = [*spec.training_file_ids, *spec.validation_file_ids]
        return any(self.registry.sha_of(self.scope, i) is None for i in ids)

    def _post_job(self, spec: JobSpec, tag: str, attempt: int) -> JobInfo:
        from dashscope import FineTunes

        body = spec.request()
        name = f"{spec.finetuned_output}-{tag}" if spec.finetuned_output else tag
        body["model_name"] = name if attempt == 1 else f"{name}-{attempt}"
        # FineTunes.call builds its own body and cannot carry model_name; its create call takes the body as is
        create = super(FineTunes, FineTunes).call  # type: ignore[misc]
        rsp = self._once("create fine-tune", create, body)
        return JobInfo.from_output(rsp.output)

    def _matching_jobs(
        self, spec: JobSpec, tag: str, key: str, listed_files: list[dict[str, Any]] | None
    ) -> list[JobInfo]:
        """Jobs on the server for these inputs, newest first (the registry's one included when still there)."""
        want = spec.request()
        want_files = (
            self._file_keys(spec.training_file_ids, listed_files),
            self._file_keys(spec.validation_file_ids, listed_files),
        )
        found: dict[str, JobInfo] = {}
        for job in self.list_jobs():
            if tag in job.names():
                found[job.job_id] = job
                continue
            same = (
                want["model"] in (job.model, job.base_model)
                and job.training_type in (None, want["training_type"])
                and same_hyper_parameters(want["hyper_parameters"], job.hyper_parameters)
                and (
                    self._file_keys(job.training_file_ids, listed_files),
                    self._file_keys(job.validation_file_ids or [], listed_files),
                )
                == want_files
            )
            if same:
                found[job.job_id] = job
        known = self.registry.get("jobs", key)
        if known is not None and known["job_id"] not in found:
            try:
                found[known["job_id"]] = self.get_job(known["job_id"])
            except BailianError as exc:
                if not exc.not_found:
                    raise
                self.registry.drop("jobs", key)
        return sorted(found.values(), key=lambda j: (j.create_time or "", j.job_id), reverse=True)

    def get_job(self, job_id: str) -> JobInfo:
        from dashscope import FineTunes

        return JobInfo.from_output(self._call("get fine-tune " + job_id, FineTunes.get, job_id).output)

    def list_jobs(self, *, page_size: int = 100, max_pages: int = 20) -> list[JobInfo]:
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
        """One page of log lines from ``offset`` as the server answers it, and the total it reports."""
        from dashscope import FineTunes

        rsp = self._call("fine-tune logs " + job_id, FineTunes.logs, job_id, offset=offset, line=lines)
        out = rsp.output or {}
        logs = [str(x) for x in (out.get("logs") or [])]
        return logs, int(out.get("total") or offset + len(logs))

    def new_log_lines(self, job_id: str, cursor: LogCursor) -> list[str]:
        """The log lines ``cursor`` has not seen, each once (servers that ignore ``offset`` included)."""
        return pages_until_done(lambda offset: self.job_logs(job_id, offset=offset), cursor)

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
        """Poll a job until SUCCEEDED / FAILED / CANCELED, streaming new log lines (each once) to ``on_log``.

        The interval starts at ``interval`` and grows by ``backoff`` up to ``max_interval`` while the status does
        not change. ``timeout`` raises :class:`BailianTimeout` (the job keeps running). An interrupt (Ctrl-C, a
        cancelled flow run) cancels the job first when ``cancel_on_interrupt``. FAILED / CANCELED raise
        :class:`BailianJobFailed` with the last log lines unless ``raise_on_failure`` is False.
        """
        start = clock()
        cursor = LogCursor()
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
                for line in self.new_log_lines(job_id, cursor):
                    if on_log is not None:
                        on_log(line)
                if job.done:
                    if job.status != "SUCCEEDED" and raise_on_failure:
                        raise BailianJobFailed(job, cursor.lines[-50:])
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
