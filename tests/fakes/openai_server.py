"""A local HTTP server speaking the OpenAI wire protocol, so tests drive the real ``openai`` SDK.

Endpoints: ``POST /v1/chat/completions`` (``response_format`` json_schema / json_object, ``usage`` with
``prompt_tokens_details.cached_tokens``, ``stream: true`` as server-sent events), ``POST /v1/embeddings``
(deterministic vectors from a hash of model and text, ``float`` or ``base64``), ``GET /v1/models``.

It counts requests (total, per path, per distinct request body), records the usage it reported, checks a bearer key
when one is configured (echoing the wrong key in the 401 message, as some providers do, to test scrubbing), and takes
a programmable ``responder`` plus a FIFO script of faults (``"429:2"`` = 429 with ``Retry-After: 2``, ``"429ms:50"``,
``"500"``, ``"503"``, ``"400"``, ``"timeout"``, ``"disconnect"``, ``"invalid_json"``, ``"schema_violation"``).
``latency_s`` delays every answer (benchmarks); the threading server serves hundreds of concurrent requests.

    with FakeOpenAIServer(latency_s=0.2) as server:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="x")
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from tests.fakes.http_base import ThreadedFake

__all__ = [
    "FakeOpenAIServer",
    "FakeRequest",
    "Fault",
    "ModelLike",
    "Reply",
    "example_from_schema",
    "fake_embedding",
    "schema_title",
]


@dataclass(frozen=True)
class Fault:
    """One injected failure. ``kind``: 429, 500, 503, 400, 401, timeout, disconnect, invalid_json, schema_violation."""

    kind: str
    retry_after: float | None = None
    retry_after_ms: int | None = None
    sleep_s: float | None = None

    @classmethod
    def parse(cls, spec: str | Fault) -> Fault:
        if isinstance(spec, Fault):
            return spec
        kind, _, arg = spec.partition(":")
        if kind == "429ms":
            return cls("429", retry_after_ms=int(arg))
        if kind in {"429", "503"} and arg:
            return cls(kind, retry_after=float(arg))
        if kind == "timeout" and arg:
            return cls("timeout", sleep_s=float(arg))
        if kind not in {"429", "500", "503", "400", "401", "timeout", "disconnect", "invalid_json", "schema_violation"}:
            raise ValueError(f"unknown fault {spec!r}")
        return cls(kind)


@dataclass(frozen=True)
class FakeRequest:
    """What the responder sees. ``seen``: how many times this exact body has arrived, this one included."""

    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    seen: int

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages") or [])

    @property
    def last_user(self) -> str:
        for m in reversed(self.messages):
            if m.get("role") == "user":
                return _text(m.get("content"))
        return ""

    @property
    def response_format(self) -> dict[str, Any] | None:
        return self.body.get("response_format")


@dataclass
class Reply:
    """A programmed answer: content, or an HTTP error (``status`` != 200, ``content`` is the error message)."""

    content: str | None = None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    usage: dict[str, Any] | None = None
    finish_reason: str = "stop"
    reasoning_content: str | None = None


Responder = Callable[[FakeRequest], "str | Reply | dict[str, Any]"]


def fake_embedding(text: str, dim: int, model: str = "") -> list[float]:
    """The server's deterministic unit vector for ``text`` (float32-exact values)."""
    raw = b""
    counter = 0
    while len(raw) < 4 * dim:
        raw += hashlib.sha256(f"{model}\0{text}\0{counter}".encode()).digest()
        counter += 1
    ints = struct.unpack(f"<{dim}I", raw[: 4 * dim])
    vec = [(i / 0xFFFFFFFF) * 2 - 1 for i in ints]
    norm = sum(v * v for v in vec) ** 0.5 or 1.0
    return [struct.unpack("<f", struct.pack("<f", v / norm))[0] for v in vec]


def example_from_schema(schema: Mapping[str, Any], text: str = "ok", defs: Mapping[str, Any] | None = None) -> Any:
    """A small instance that satisfies a (pydantic-generated) JSON schema."""
    defs = defs if defs is not None else schema.get("$defs", {})
    if "$ref" in schema:
        return example_from_schema(defs[schema["$ref"].rsplit("/", 1)[1]], text, defs)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            options = [s for s in schema[key] if s.get("type") != "null"] or schema[key]
            return example_from_schema(options[0], text, defs)
    if "default" in schema:
        return schema["default"]
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties", {})
        return {name: example_from_schema(sub, text, defs) for name, sub in props.items()}
    if kind == "array":
        n = max(1, int(schema.get("minItems", 1)))
        return [example_from_schema(schema.get("items", {"type": "string"}), text, defs) for _ in range(n)]
    if kind == "string":
        s = text or "ok"
        min_len = int(schema.get("minLength", 0))
        return (s * (min_len // max(1, len(s)) + 1))[: max(min_len, len(s))]
    if kind in {"integer", "number"}:
        lo = schema.get("minimum", schema.get("exclusiveMinimum", 0))
        value = max(1, lo + (1 if "exclusiveMinimum" in schema else 0))
        if "maximum" in schema:
            value = min(value, schema["maximum"])
        return int(value) if kind == "integer" else float(value)
    if kind == "boolean":
        return True
    return None


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def _tokens(text: str) -> int:
    """Roughly what a BPE tokenizer of a Chinese-capable model counts: ~4 ASCII characters or ~1.5 CJK characters a
    token (so prompt sizes, and what a budget buys, are realistic for Chinese prompts)."""
    ascii_n = len(text.encode("ascii", "ignore"))
    return ascii_n // 4 + (len(text) - ascii_n) * 2 // 3 + 1


#: How often a :class:`ModelLike` answer comes in each style (a first answer; a re-asked one is mostly fixed).
DEFAULT_MIX: dict[str, float] = {
    "valid": 0.5,
    "fenced": 0.1,  # ```json ... ``` around a valid object: a client should still read it
    "prose": 0.1,  # a sentence before and after the object
    "missing_field": 0.1,  # one field left out
    "off_schema": 0.1,  # the object wrapped in another key, types changed
    "truncated": 0.1,  # cut off (finish_reason "length")
}
STYLES = tuple(DEFAULT_MIX)


class ModelLike:
    """A responder that answers like a chat model asked for a JSON object, not like the code under test.

    ``answers`` maps the title of the requested JSON schema (``response_format.json_schema``, or the schema spelled out
    in the system prompt in JSON mode) to objects a model might produce; each answer is one of them in a style drawn
    from ``mix`` (valid, fenced, prose around it, a missing field, off-schema, truncated), chosen by a hash of the
    request, so a run is reproducible and an identical request gets the identical answer. A re-ask (the conversation
    ends with the fake's own answer and a correction) is answered from ``reask_mix`` (mostly valid, as models mostly
    fix their answer). ``styles`` counts what was served."""

    def __init__(
        self,
        answers: Mapping[str, list[dict[str, Any]]],
        mix: Mapping[str, float] | None = None,
        reask_mix: Mapping[str, float] | None = None,
    ) -> None:
        self.answers = {k: list(v) for k, v in answers.items()}
        self.mix = dict(mix or DEFAULT_MIX)
        self.reask_mix = dict(reask_mix or {"valid": 0.8, "missing_field": 0.1, "off_schema": 0.1})
        unknown = (set(self.mix) | set(self.reask_mix)) - set(STYLES)
        if unknown:
            raise ValueError(f"unknown answer styles {sorted(unknown)}; known: {STYLES}")
        self._produced: set[str] = set()
        self._lock = threading.Lock()
        self.styles: Counter[str] = Counter()

    def __call__(self, req: FakeRequest) -> Reply:
        title = schema_title(req)
        book = self.answers.get(title or "")
        if not book:
            return Reply(f"I can help with that. (no answer for schema {title!r})")
        messages = req.messages
        with self._lock:
            reask = len(messages) >= 2 and _text(messages[-2].get("content")) in self._produced
        digest = hashlib.sha256(json.dumps(messages[-3:] if reask else messages[-1:], ensure_ascii=False).encode())
        roll = int.from_bytes(digest.digest()[:8], "big")
        answer = book[roll % len(book)]
        style = _pick(self.reask_mix if reask else self.mix, (roll >> 16) % 10_000 / 10_000)
        text, finish = render(answer, style, roll)
        with self._lock:
            self._produced.add(text)
            self.styles[("reask:" if reask else "") + style] += 1
        return Reply(text, finish_reason=finish)


def _pick(mix: Mapping[str, float], u: float) -> str:
    total = sum(mix.values()) or 1.0
    acc = 0.0
    for style, weight in mix.items():
        acc += weight / total
        if u < acc:
            return style
    return next(iter(mix))


def schema_title(req: FakeRequest) -> str | None:
    """The title of the JSON schema a request asks for: from ``response_format``, else the last ``"title"`` of the
    schema in the system prompt (pydantic writes the top-level title after those of ``$defs``)."""
    rf = req.response_format or {}
    if rf.get("type") == "json_schema":
        spec = rf.get("json_schema") or {}
        return (spec.get("schema") or {}).get("title") or spec.get("name")
    system = next((_text(m.get("content")) for m in req.messages if m.get("role") == "system"), "")
    titles = re.findall(r'"title"\s*:\s*"([^"]+)"', system)
    return titles[-1] if titles else None


def render(answer: dict[str, Any], style: str, roll: int) -> tuple[str, str]:
    """An answer object as a model's reply text in ``style``; returns (text, finish_reason)."""
    body = json.dumps(answer, ensure_ascii=False)
    if style == "fenced":
        return f"```json\n{json.dumps(answer, ensure_ascii=False, indent=2)}\n```", "stop"
    if style == "prose":
        return f"好的，以下是按要求输出的结果：\n{body}\n如需进一步说明请告诉我。", "stop"
    if style == "missing_field":
        keys = list(answer)
        dropped = keys[roll % len(keys)]
        return json.dumps({k: v for k, v in answer.items() if k != dropped}, ensure_ascii=False), "stop"
    if style == "off_schema":
        changed = {k: (", ".join(map(str, v)) if isinstance(v, list) else v) for k, v in answer.items()}
        return json.dumps({"result": changed, "status": "ok"}, ensure_ascii=False), "stop"
    if style == "truncated":
        return body[: max(1, len(body) // 2)], "length"
    return body, "stop"


class FakeOpenAIServer(ThreadedFake):
    """The server; a context manager (``with FakeOpenAIServer() as s: s.base_url``) or ``start()`` / ``stop()``."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        responder: Responder | None = None,
        latency_s: float = 0.0,
        embedding_dim: int = 8,
        models: Iterable[str] = ("fake-model", "fake-embedding"),
        strict_models: bool = False,
        json_schema_supported: bool = True,
        faults: Iterable[str | Fault] = (),
        timeout_sleep_s: float = 3.0,
    ) -> None:
        self.api_key = api_key
        self.responder = responder
        self.latency_s = latency_s
        self.embedding_dim = embedding_dim
        self.models = list(models)
        self.strict_models = strict_models  # a chat request for a model not in ``models`` gets OpenAI's 404
        self.json_schema_supported = json_schema_supported
        self.timeout_sleep_s = timeout_sleep_s
        self._faults: deque[Fault] = deque(Fault.parse(f) for f in faults)
        self._lock = threading.Lock()
        self._seen_prefixes: set[str] = set()
        self.reset()

    # ---------------------------------------------------------------------------------------------- control
    def reset(self) -> None:
        """Forget counts and recorded requests (faults and settings stay)."""
        with self._lock:
            self.total = 0
            self.by_path: Counter[str] = Counter()
            self.body_counts: Counter[str] = Counter()
            self.bodies: list[dict[str, Any]] = []
            self.reported_usage: list[dict[str, Any]] = []
            self.faults_served: list[str] = []
            self.in_flight = 0
            self.max_in_flight = 0

    def add_faults(self, *faults: str | Fault) -> None:
        with self._lock:
            self._faults.extend(Fault.parse(f) for f in faults)

    @property
    def pending_faults(self) -> int:
        with self._lock:
            return len(self._faults)

    @staticmethod
    def body_key(body: Mapping[str, Any]) -> str:
        return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def count_for(self, body: Mapping[str, Any]) -> int:
        return self.body_counts[self.body_key(body)]

    thread_name = "fake-openai"

    def handler_class(self) -> type[BaseHTTPRequestHandler]:
        return _Handler

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # ---------------------------------------------------------------------------------------------- logic
    def _next_fault(self) -> Fault | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def _register(self, path: str, body: dict[str, Any]) -> int:
        key = self.body_key(body)
        with self._lock:
            self.total += 1
            self.by_path[path] += 1
            self.body_counts[key] += 1
            self.bodies.append(body)
            return self.body_counts[key]

    def _default_content(self, req: FakeRequest) -> str:
        rf = req.response_format or {}
        if rf.get("type") == "json_schema":
            schema = (rf.get("json_schema") or {}).get("schema") or {}
            return json.dumps(example_from_schema(schema, req.last_user), ensure_ascii=False)
        if rf.get("type") == "json_object":
            return json.dumps({"answer": req.last_user}, ensure_ascii=False)
        return f"echo: {req.last_user}"

    def _usage(self, body: dict[str, Any], content: str) -> dict[str, Any]:
        messages = body.get("messages") or []
        prompt = sum(_tokens(_text(m.get("content"))) + 3 for m in messages)
        cached = 0
        if messages and messages[0].get("role") == "system":
            prefix = _text(messages[0].get("content"))
            with self._lock:
                if prefix in self._seen_prefixes:
                    cached = min(_tokens(prefix), prompt)
                self._seen_prefixes.add(prefix)
        completion = _tokens(content)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: with Nagle on, the body waits for the client's delayed ACK (~40 ms
    # per request on Linux keep-alive connections), which capped a 200 ms-latency benchmark at 32/0.25 s.
    disable_nagle_algorithm = True
    fake: FakeOpenAIServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    # ---------------------------------------------------------------------------------------------- plumbing
    def _send_json(self, status: int, obj: Any, headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(obj, ensure_ascii=False).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _error(self, status: int, message: str, headers: Mapping[str, str] | None = None, code: str | None = None):
        kind = {400: "invalid_request_error", 401: "invalid_request_error", 429: "rate_limit_error"}.get(
            status, "server_error"
        )
        self._send_json(status, {"error": {"message": message, "type": kind, "code": code, "param": None}}, headers)

    def _authorized(self) -> bool:
        want = self.fake.api_key
        if want is None:
            return True
        got = self.headers.get("Authorization", "")
        if got == f"Bearer {want}":
            return True
        provided = got.removeprefix("Bearer ")
        self._error(401, f"Incorrect API key provided: {provided}.", code="invalid_api_key")
        return False

    def _read_body(self) -> dict[str, Any] | None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            self._error(400, "request body is not JSON")
            return None
        if not isinstance(body, dict):
            self._error(400, "request body must be an object")
            return None
        return body

    # ---------------------------------------------------------------------------------------------- routes
    def do_GET(self) -> None:
        if not self._authorized():
            return
        if self.path.rstrip("/") == "/v1/models":
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.fake.models]
            self._send_json(200, {"object": "list", "data": data})
        else:
            self._error(404, f"no route {self.path}")

    def do_POST(self) -> None:
        fake = self.fake
        path = self.path.rstrip("/")
        body = self._read_body()
        if body is None:
            return
        seen = fake._register(path, body)
        with fake._lock:
            fake.in_flight += 1
            fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
        try:
            if fake.latency_s:
                time.sleep(fake.latency_s)
            if not self._authorized():
                return
            if path == "/v1/chat/completions":
                self._chat(body, seen)
            elif path == "/v1/embeddings":
                self._embeddings(body, seen)
            else:
                self._error(404, f"no route {self.path}")
        finally:
            with fake._lock:
                fake.in_flight -= 1

    def _http_fault(self, fault: Fault) -> bool:
        """Serve a transport/HTTP fault; True if the request is answered by it."""
        fake = self.fake
        with fake._lock:
            fake.faults_served.append(fault.kind)
        if fault.kind in {"429", "503"}:
            headers = {}
            if fault.retry_after is not None:
                headers["Retry-After"] = f"{fault.retry_after:g}"
            if fault.retry_after_ms is not None:
                headers["retry-after-ms"] = str(fault.retry_after_ms)
            msg = "Rate limit reached" if fault.kind == "429" else "Service unavailable"
            self._error(int(fault.kind), msg, headers, code="rate_limit_exceeded" if fault.kind == "429" else None)
            return True
        if fault.kind == "500":
            self._error(500, "The server had an error while processing your request.")
            return True
        if fault.kind == "400":
            self._error(400, "Invalid request (injected fault).")
            return True
        if fault.kind == "401":
            self._error(401, "Unauthorized (injected fault).")
            return True
        if fault.kind == "timeout":
            time.sleep(fault.sleep_s if fault.sleep_s is not None else fake.timeout_sleep_s)
            self.close_connection = True
            return True
        if fault.kind == "disconnect":
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(2)
            return True
        return False

    def _chat(self, body: dict[str, Any], seen: int) -> None:
        fake = self.fake
        if not body.get("model") or not isinstance(body.get("messages"), list) or not body["messages"]:
            self._error(400, "'model' and a non-empty 'messages' are required")
            return
        if fake.strict_models and body["model"] not in fake.models:
            message = f"The model `{body['model']}` does not exist or you do not have access to it."
            self._error(404, message, code="model_not_found")
            return
        rf = body.get("response_format") or {}
        if rf.get("type") == "json_schema" and not fake.json_schema_supported:
            self._error(400, "response_format type 'json_schema' is not supported by this model")
            return
        fault = fake._next_fault()
        if fault is not None and self._http_fault(fault):
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() != "authorization"}
        req = FakeRequest("/v1/chat/completions", body, headers, seen)
        if fault is not None and fault.kind == "invalid_json":
            reply = Reply('Sure! Here is the JSON: {"answer": "unterminated')
        elif fault is not None and fault.kind == "schema_violation":
            reply = Reply(json.dumps({"unexpected_field": [1, 2, 3]}))
        else:
            out = fake.responder(req) if fake.responder is not None else fake._default_content(req)
            if isinstance(out, Reply):
                reply = out
            elif isinstance(out, dict):
                reply = Reply(json.dumps(out, ensure_ascii=False))
            else:
                reply = Reply(str(out))
        if reply.status != 200:
            self._error(reply.status, reply.content or "error", reply.headers)
            return
        content = reply.content if reply.content is not None else fake._default_content(req)
        usage = reply.usage or fake._usage(body, content)
        with fake._lock:
            fake.reported_usage.append(usage)
        model = body["model"]
        rid = f"chatcmpl-{hashlib.sha256(f'{fake.total}{time.time()}'.encode()).hexdigest()[:12]}"
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if reply.reasoning_content is not None:
            message["reasoning_content"] = reply.reasoning_content
        if body.get("stream"):
            self._stream(rid, model, message, reply.finish_reason, usage, body, reply.headers)
            return
        self._send_json(
            200,
            {
                "id": rid,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": reply.finish_reason, "logprobs": None}],
                "usage": usage,
            },
            reply.headers,
        )

    def _stream(
        self,
        rid: str,
        model: str,
        message: dict[str, Any],
        finish: str,
        usage: dict[str, Any],
        body: dict[str, Any],
        headers: Mapping[str, str],
    ) -> None:
        def chunk(delta: dict[str, Any] | None, finish_reason: str | None = None, with_usage: bool = False) -> bytes:
            obj: dict[str, Any] = {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            }
            if with_usage:
                obj["usage"] = usage
            return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()

        content = message["content"] or ""
        events = [chunk({"role": "assistant", "content": ""})]
        if message.get("reasoning_content"):
            events.append(chunk({"reasoning_content": message["reasoning_content"]}))
        events += [chunk({"content": content[i : i + 8]}) for i in range(0, len(content), 8)]
        events.append(chunk({}, finish))
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append(chunk(None, with_usage=True))
        events.append(b"data: [DONE]\n\n")
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            for ev in events:
                self.wfile.write(ev)
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True

    def _embeddings(self, body: dict[str, Any], seen: int) -> None:
        fake = self.fake
        inputs = body.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not body.get("model") or not isinstance(inputs, list) or not inputs:
            self._error(400, "'model' and a non-empty 'input' are required")
            return
        fault = fake._next_fault()
        if fault is not None and self._http_fault(fault):
            return
        dim = int(body.get("dimensions") or fake.embedding_dim)
        fmt = body.get("encoding_format") or "float"
        data = []
        for i, text in enumerate(inputs):
            vec = fake_embedding(str(text), dim, body["model"])
            emb: Any = base64.b64encode(struct.pack(f"<{dim}f", *vec)).decode() if fmt == "base64" else vec
            data.append({"object": "embedding", "index": i, "embedding": emb})
        tokens = sum(_tokens(str(t)) for t in inputs)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        with fake._lock:
            fake.reported_usage.append(usage)
        self._send_json(200, {"object": "list", "data": data, "model": body["model"], "usage": usage})


@contextlib.contextmanager
def spawn_server(*, latency_s: float = 0.0, embedding_dim: int = 8, api_key: str | None = None) -> Iterator[str]:
    """Run a default server in a child process and yield its base URL. For benchmarks: an in-process server shares
    the GIL with the client under test and caps throughput at what one core can serve."""
    cmd = [sys.executable, "-m", "tests.fakes.openai_server", "--latency", str(latency_s), "--dim", str(embedding_dim)]
    env = dict(os.environ)
    if api_key is not None:
        env["FAKE_OPENAI_API_KEY"] = api_key
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        if not url.startswith("http"):
            raise RuntimeError(f"fake server did not start (got {url!r})")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main(argv: list[str] | None = None) -> None:
    """``python -m tests.fakes.openai_server --latency 0.2``: serve until killed; prints the base URL first."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--dim", type=int, default=8)
    args = parser.parse_args(argv)
    server = FakeOpenAIServer(
        latency_s=args.latency, embedding_dim=args.dim, api_key=os.environ.get("FAKE_OPENAI_API_KEY")
    )
    server.start()
    print(server.base_url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    main()
