"""A local DashScope (Bailian) HTTP server, standard library only, for driving the real ``dashscope`` SDK in tests.

It speaks the endpoints the SDK calls under ``/api/v1``: ``files`` (multipart upload, list, get, delete),
``fine-tunes`` (create, list, get, cancel, logs, delete) and ``deployments`` (create, list, get, delete).
It checks the bearer key, walks each job PENDING → RUNNING → SUCCEEDED (or FAILED) over a number of polls,
records every request (method, path, query, body — never the key) and injects failures on demand.

It answers the way the real service does where that is awkward for a client: the file list carries no md5
(``list_md5=True`` adds it), a file that is gone answers ``400 ... File not found`` (not 404), a job's list
entry does not echo the ``model_name`` it was created with (it shows only inside ``finetuned_output`` once the
job SUCCEEDED), and ``ignore_log_offsets`` answers every log page from the first line. It can also hold an
answer after storing what the request created (``hold``: a client killed then has lost the answer, the server
kept the object), delete a file as the console would (``remove_file``) and fail a running job (``fail_job``).

    with FakeDashScope(api_key="sk-test") as server:
        server.fail("POST", "/api/v1/files", status=503)   # the next upload gets a 503
        client = BailianClient("sk-test", base_url=server.base_url, ...)
"""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlparse

from tests.fakes.http_base import ThreadedFake

TRAINING_TYPES = {"sft", "efficient_sft", "cpt", "dpo_full", "dpo_lora"}
PREFIX = "/api/v1"


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    auth_ok: bool
    status: int = 0


@dataclass
class Injected:
    method: str
    path: str
    status: int
    body: dict[str, Any]
    times: int


@dataclass
class Hold:
    """Answer the next ``times`` requests to ``method path`` only once :attr:`release` is set (the object the
    request creates is stored at once); :attr:`holding` is set while an answer waits."""

    method: str
    path: str
    times: int
    release: threading.Event = field(default_factory=threading.Event)
    holding: threading.Event = field(default_factory=threading.Event)


@dataclass
class FakeJob:
    output: dict[str, Any]
    outcome: str
    polls: int = 0
    logs: list[str] = field(default_factory=list)


class FakeDashScope(ThreadedFake):
    """The server; :attr:`requests` lists what the SDK sent, in order."""

    def __init__(
        self,
        api_key: str = "sk-fake-0123456789",
        *,
        polls_per_state: int = 1,
        list_md5: bool = False,
        missing_status: int = 400,
        ignore_log_offsets: bool = False,
        keep_contents: bool = True,
    ) -> None:
        self.api_key = api_key
        self.polls_per_state = polls_per_state
        self.list_md5 = list_md5
        self.missing_status = missing_status
        self.ignore_log_offsets = ignore_log_offsets
        self.keep_contents = keep_contents
        self._holds: list[Hold] = []
        self._clock = datetime(2026, 11, 23, 10, 0, 0)
        self.job_outcome = "SUCCEEDED"  # what the next created job ends as
        self.requests: list[Recorded] = []
        self.files: dict[str, dict[str, Any]] = {}
        self.file_contents: dict[str, bytes] = {}
        self.jobs: dict[str, FakeJob] = {}
        self.model_names: dict[str, str | None] = {}  # kept, not listed: shows in finetuned_output on success
        self.deployments: dict[str, dict[str, Any]] = {}
        self._injected: list[Injected] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    thread_name = "fake-dashscope"

    def handler_class(self) -> type[BaseHTTPRequestHandler]:
        return _Handler

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PREFIX}"

    # -- test helpers

    def fail(self, method: str, path: str, *, status: int = 500, times: int = 1, code: str | None = None) -> None:
        """Answer the next ``times`` requests to ``method path`` (path prefix match) with ``status``."""
        body = {"request_id": "injected", "code": code or f"Injected{status}", "message": f"injected {status}"}
        self._injected.append(Injected(method.upper(), path, status, body, times))

    def hold(self, method: str, path: str, *, times: int = 1) -> Hold:
        """Store what the next ``method path`` request creates, but keep its answer until ``.release.set()``."""
        h = Hold(method.upper(), path, times)
        self._holds.append(h)
        return h

    def release_holds(self) -> None:
        for h in self._holds:
            h.release.set()

    def remove_file(self, file_id: str) -> None:
        """Delete a file as a user in the console would (no request recorded)."""
        with self._lock:
            self.files.pop(file_id, None)
            self.file_contents.pop(file_id, None)

    def fail_job(self, job_id: str, reason: str = "ERROR - training data rejected") -> None:
        """End a job FAILED now, with a reason in its log."""
        with self._lock:
            job = self.jobs[job_id]
            job.output["status"] = "FAILED"
            job.output["end_time"] = self._now()
            job.logs += [reason, "finetune-job failed"]

    def _now(self) -> str:
        """A clock that moves a minute a call: create times order jobs as the real list does."""
        self._clock += timedelta(minutes=1)
        return self._clock.strftime("%Y-%m-%d %H:%M:%S")

    def calls(self, method: str | None = None, path: str | None = None) -> list[Recorded]:
        """Recorded requests filtered by method and exact path."""
        return [
            r
            for r in self.requests
            if (method is None or r.method == method.upper()) and (path is None or r.path == path)
        ]

    def count(self, method: str, path: str) -> int:
        return len(self.calls(method, path))

    def _next_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids):04d}"

    # -- dispatch

    def handle(self, method: str, path: str, query: dict[str, str], body: Any, auth_ok: bool) -> tuple[int, Any]:
        rec = Recorded(method, path, query, _without_content(body), auth_ok)
        with self._lock:
            self.requests.append(rec)
            status, payload = self._route(method, path, query, body, auth_ok)
            rec.status = status
            hold = next(
                (h for h in self._holds if h.times > 0 and h.method == method and path.startswith(h.path)), None
            )
            if hold is not None:
                hold.times -= 1
        if hold is not None:  # stored; the answer waits (a client killed now never learns the id)
            hold.holding.set()
            hold.release.wait(timeout=60)
        return status, payload

    def _route(self, method: str, path: str, query: dict[str, str], body: Any, auth_ok: bool) -> tuple[int, Any]:
        if not auth_ok:
            return 401, {"request_id": "r", "code": "InvalidApiKey", "message": "Invalid API-key provided."}
        for inj in self._injected:
            if inj.times > 0 and inj.method == method and path.startswith(inj.path):
                inj.times -= 1
                return inj.status, inj.body
        if not path.startswith(PREFIX + "/"):
            return 404, _err("NotFound", f"no route {path}")
        parts = path[len(PREFIX) + 1 :].split("/")
        resource, rest = parts[0], parts[1:]
        handler = getattr(self, f"_{resource.replace('-', '_')}", None)
        if handler is None:
            return 404, _err("NotFound", f"no route {path}")
        return handler(method, rest, query, body)

    # -- files

    def _files(self, method: str, rest: list[str], query: dict[str, str], body: Any) -> tuple[int, Any]:
        if method == "POST" and not rest:
            uploaded, failed = [], []
            for f in body.get("files", []):
                content = f["_content"]
                try:
                    for line in content.decode("utf-8").splitlines():
                        json.loads(line)
                except (UnicodeDecodeError, json.JSONDecodeError):
                    failed.append({"name": f["name"], "code": "InvalidFile", "message": "not JSONL"})
                    continue
                file_id = self._next_id("file-ft")
                self.files[file_id] = {
                    "file_id": file_id,
                    "name": f["name"],
                    "description": (body.get("descriptions") or [""])[0],
                    "size": len(content),
                    "md5": hashlib.md5(content, usedforsecurity=False).hexdigest(),
                    "gmt_create": self._now(),
                    "purpose": "fine-tune",
                }
                if self.keep_contents:
                    self.file_contents[file_id] = content
                uploaded.append({"file_id": file_id, "name": f["name"]})
            return 200, {"request_id": "r", "data": {"uploaded_files": uploaded, "failed_uploads": failed}}
        if method == "GET" and not rest:
            page_no, page_size = int(query.get("page_no", 1)), int(query.get("page_size", 10))
            items = [f if self.list_md5 else {k: v for k, v in f.items() if k != "md5"} for f in self.files.values()]
            page = items[(page_no - 1) * page_size : page_no * page_size]
            data = {"total": len(items), "page_no": page_no, "page_size": page_size, "files": page}
            return 200, {"request_id": "r", "data": data}
        if len(rest) == 1:
            file = self.files.get(rest[0])
            if file is None:  # DashScope answers 400 for a file id it does not know
                return self.missing_status, _err("InvalidParameter", f"File not found: {rest[0]}")
            if method == "GET":
                return 200, {"request_id": "r", "data": file}
            if method == "DELETE":
                del self.files[rest[0]]
                return 200, {"request_id": "r", "data": {"file_id": rest[0], "deleted": True}}
        return 405, _err("MethodNotAllowed", f"{method} files/{'/'.join(rest)}")

    # -- fine-tunes

    def _fine_tunes(self, method: str, rest: list[str], query: dict[str, str], body: Any) -> tuple[int, Any]:
        if method == "POST" and not rest:
            problem = self._check_job(body)
            if problem:
                return 400, _err("InvalidParameter", problem)
            job_id = self._next_id("ft-202611231000")
            self.model_names[job_id] = body.get("model_name")
            output = {
                "job_id": job_id,
                "job_name": job_id,
                "status": "PENDING",
                "model": body["model"],
                "base_model": body["model"],
                "finetuned_output": None,
                "training_file_ids": body["training_file_ids"],
                "validation_file_ids": body.get("validation_file_ids") or [],
                "hyper_parameters": body.get("hyper_parameters") or {},
                "training_type": body.get("training_type") or "efficient_sft",
                "create_time": self._now(),
                "end_time": None,
                "usage": None,
            }
            self.jobs[job_id] = FakeJob(output, self.job_outcome, logs=[f"job {job_id} queued"])
            return 200, {"request_id": "r", "output": dict(output)}
        if method == "GET" and not rest:
            page_no, page_size = int(query.get("page_no", 1)), int(query.get("page_size", 10))
            jobs = [dict(j.output) for j in self.jobs.values()]
            page = jobs[(page_no - 1) * page_size : page_no * page_size]
            out = {"page_no": page_no, "page_size": page_size, "total": len(jobs), "jobs": page}
            return 200, {"request_id": "r", "output": out}
        job = self.jobs.get(rest[0]) if rest else None
        if job is None:
            return 404, _err("NotFound", f"job {rest[0] if rest else ''} not found")
        if method == "GET" and len(rest) == 1:
            self._advance(job)
            return 200, {"request_id": "r", "output": dict(job.output)}
        if method == "GET" and rest[1:] == ["logs"]:
            offset, line = int(query.get("offset", 0)), int(query.get("line", 100))
            if self.ignore_log_offsets:
                offset = 0
            out = {"total": len(job.logs), "logs": job.logs[offset : offset + line]}
            return 200, {"request_id": "r", "output": out}
        if method == "POST" and rest[1:] == ["cancel"]:
            if job.output["status"] in ("SUCCEEDED", "FAILED", "CANCELED"):
                return 400, _err("InvalidStatus", f"job {rest[0]} already {job.output['status']}")
            job.output["status"] = "CANCELED"
            job.logs.append("job canceled by user")
            return 200, {"request_id": "r", "output": {"status": "success"}}
        if method == "DELETE" and len(rest) == 1:
            del self.jobs[rest[0]]
            return 200, {"request_id": "r", "output": {"status": "success"}}
        return 405, _err("MethodNotAllowed", f"{method} fine-tunes/{'/'.join(rest)}")

    def _check_job(self, body: Any) -> str | None:
        if not isinstance(body, dict):
            return "body must be a JSON object"
        if not str(body.get("model") or "").startswith("qwen"):
            return f"model {body.get('model')!r} cannot be fine-tuned"
        ids = body.get("training_file_ids") or []
        if not ids:
            return "training_file_ids is required"
        for fid in [*ids, *(body.get("validation_file_ids") or [])]:
            if fid not in self.files:
                return f"file {fid} does not exist"
        if body.get("training_type", "efficient_sft") not in TRAINING_TYPES:
            return f"training_type {body.get('training_type')!r} is not supported"
        hp = body.get("hyper_parameters") or {}
        try:
            if "n_epochs" in hp and not 1 <= int(hp["n_epochs"]) <= 100:
                return "n_epochs must be within [1, 100]"
            if "learning_rate" in hp and not 0 < float(hp["learning_rate"]) < 1:
                return "learning_rate must be within (0, 1)"
            if "batch_size" in hp and int(hp["batch_size"]) < 1:
                return "batch_size must be positive"
        except (TypeError, ValueError) as exc:
            return f"bad hyper_parameters: {exc}"
        return None

    def _advance(self, job: FakeJob) -> None:
        """Each GET is a poll; after ``polls_per_state`` polls in a state the job moves on."""
        status = job.output["status"]
        if status in ("SUCCEEDED", "FAILED", "CANCELED"):
            return
        job.polls += 1
        if job.polls < self.polls_per_state:
            return
        job.polls = 0
        if status == "PENDING":
            job.output["status"] = "RUNNING"
            job.logs += ["start training", "{'loss': 1.234, 'epoch': 1.0}"]
        elif job.outcome == "FAILED":
            job.output["status"] = "FAILED"
            job.output["end_time"] = self._now()
            job.logs += ["ERROR - CUDA out of memory", "finetune-job failed"]
        else:
            job.output["status"] = "SUCCEEDED"
            job.output["end_time"] = self._now()
            name = self.model_names.get(job.output["job_id"])
            infix = f"-{name}" if name else ""
            job.output["finetuned_output"] = f"{job.output['model']}{infix}-ft-{job.output['job_id']}"
            job.output["usage"] = 279808
            job.logs += ["{'loss': 0.912, 'epoch': 2.0}", "Fine-tune succeeded!", "finetune-job succeeded"]

    # -- deployments

    def _deployments(self, method: str, rest: list[str], query: dict[str, str], body: Any) -> tuple[int, Any]:
        if method == "POST" and not rest:
            model = (body or {}).get("model_name")
            if not model:
                return 400, _err("InvalidParameter", "model_name is required")
            dep_id = f"{model}-{(body.get('suffix') or 'dep')}-{next(self._ids):04d}"
            dep = {
                "deployed_model": dep_id,
                "model_name": model,
                "base_model": model,
                "status": "PENDING",
                "capacity": body.get("capacity", 1),
                "ready_capacity": 0,
                "_polls": 0,
            }
            self.deployments[dep_id] = dep
            return 200, {"request_id": "r", "output": _public(dep)}
        if method == "GET" and not rest:
            deps = [_public(d) for d in self.deployments.values()]
            out = {"page_no": 1, "page_size": len(deps), "total": len(deps), "deployments": deps}
            return 200, {"request_id": "r", "output": out}
        dep = self.deployments.get(rest[0]) if rest else None
        if dep is None:
            return 404, _err("NotFound", "deployment not found")
        if method == "GET":
            dep["_polls"] += 1
            if dep["_polls"] >= self.polls_per_state:
                dep["status"], dep["ready_capacity"] = "RUNNING", dep["capacity"]
            return 200, {"request_id": "r", "output": _public(dep)}
        if method == "DELETE":
            del self.deployments[rest[0]]
            return 200, {"request_id": "r", "output": {"status": "success"}}
        return 405, _err("MethodNotAllowed", method)


def _err(code: str, message: str) -> dict[str, Any]:
    return {"request_id": "r", "code": code, "message": message}


def _without_content(body: Any) -> Any:
    if isinstance(body, dict) and isinstance(body.get("files"), list):
        files = [{k: v for k, v in f.items() if k != "_content"} for f in body["files"]]
        return {**body, "files": files}
    return body


def _public(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if not k.startswith("_")}


class _Handler(BaseHTTPRequestHandler):
    fake: FakeDashScope

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        return

    def _serve(self) -> None:
        url = urlparse(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        ctype = self.headers.get("Content-Type", "")
        body: Any = None
        if ctype.startswith("multipart/form-data"):
            body = _parse_multipart(ctype, raw)
        elif raw:
            try:
                body = json.loads(raw)
            except json.JSONDecodeError:
                body = raw.decode("utf-8", "replace")
        auth_ok = self.headers.get("Authorization") == f"Bearer {self.fake.api_key}"
        status, payload = self.fake.handle(self.command, url.path, query, body, auth_ok)
        data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _serve


def _parse_multipart(ctype: str, raw: bytes) -> dict[str, Any]:
    """The SDK's upload: ``files`` parts (name, content) and optional ``descriptions`` fields.

    The recorded body keeps each file's name, size and sha256; its bytes go to the handler as ``_content``.
    """
    msg = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {ctype}\r\n\r\n".encode() + raw)
    files, descriptions = [], []
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        if name == "files":
            filename = part.get_filename()
            files.append(
                {
                    "name": filename,
                    "bytes": len(payload),
                    "sha256": hashlib.sha256(payload).hexdigest(),
                    "_content": payload,
                }
            )
        elif name == "descriptions":
            descriptions.append(payload.decode("utf-8"))
    return {"files": files, "descriptions": descriptions}
