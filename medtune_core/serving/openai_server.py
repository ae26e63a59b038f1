"""An OpenAI-compatible HTTP server over one local model (CPU fallback of vLLM; see ``docs/SERVING.md``).

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions`` (plain, or ``stream: true`` as server-sent events in
OpenAI's chunk format ending with ``data: [DONE]``; ``usage`` always in plain answers and, with
``stream_options.include_usage``, in a last chunk), ``POST /v1/embeddings`` when an embedding model is loaded
(sentence-transformers, e.g. ``embedded:minilm-l6``), ``GET /health``.

- ``model`` must name the served model or one of its aliases (``--served-model-name``, repeatable), as with vLLM;
  another name gets 404 ``model_not_found`` in OpenAI's error shape, so a client pointed at the wrong server or
  model learns it at once instead of getting answers from a model it did not ask for. ``response_format`` is
  accepted and ignored (the client validates answers itself).
- ``max_tokens`` above the server's limit is a 400 naming the limit (never silently capped); a body that is not
  JSON is a 400 that says so in plain words, with the position of the error.
- ``api_key`` set: every ``/v1`` request needs ``Authorization: Bearer <key>`` (401 otherwise, OpenAI error body).
- Binds ``127.0.0.1`` unless told otherwise; binding elsewhere without a key logs a warning.
- Concurrency: requests are accepted concurrently, generation runs in worker threads under the model's lock
  (:class:`~medtune_core.inference.generate.Generator`), one request at a time, so answers never mix. A client that
  disconnects mid-stream stops its generation at the next token.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import struct
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field

from medtune_core.errors import MedtuneError
from medtune_core.inference.generate import Generator, SamplingParams, normalize_messages

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    model: str | None = None
    messages: list[ChatMessageIn]
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(1, ge=1)
    repetition_penalty: float | None = Field(None, gt=0)
    response_format: dict[str, Any] | None = None


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    model: str | None = None
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"


class ServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    api_key: str | None = Field(None, description="Bearer key required on /v1 routes; None: open.")
    default_max_tokens: int = Field(512, ge=1)
    max_tokens_limit: int = Field(4096, ge=1, description="A request asking for more tokens gets a 400.")
    default_temperature: float = Field(0.7, ge=0, le=2)
    aliases: list[str] = Field(default_factory=list, description="More names the chat model answers to.")


def _error(
    status: int,
    message: str,
    type_: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
) -> Any:
    from fastapi.responses import JSONResponse

    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(status_code=status, content=body)


def _unknown_model(name: str, known: list[str]) -> Any:
    return _error(
        404,
        f"The model `{name}` does not exist on this server; it serves: {', '.join(known) or 'nothing'}.",
        code="model_not_found",
        param="model",
    )


def _validation_message(errors: list[dict[str, Any]]) -> str:
    """Plain words for FastAPI's validation errors (a body that is not JSON reads "JSON decode error" otherwise)."""
    problems = []
    for e in errors:
        if e.get("type") == "json_invalid":
            pos = e["loc"][-1] if e.get("loc") else "?"
            reason = (e.get("ctx") or {}).get("error", "not valid JSON")
            problems.append(f"the request body is not valid JSON: {reason} (at character {pos})")
        elif e.get("type") == "model_attributes_type":
            problems.append("the request body must be a JSON object")
        else:
            where = ".".join(map(str, e.get("loc", ())[1:])) or "body"
            problems.append(f"{where}: {e.get('msg', 'invalid')}")
    return "; ".join(problems) or "invalid request"


class Embedder:
    """A sentence-transformers model behind ``/v1/embeddings``."""

    def __init__(self, ref: str = "embedded:minilm-l6", name: str | None = None) -> None:
        from sentence_transformers import SentenceTransformer

        from medtune_core.models.registry import resolve_model

        self.model = SentenceTransformer(str(resolve_model(ref)), device="cpu")
        self.name = name or ref.removeprefix("embedded:")
        self.lock = threading.Lock()

    def embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        with self.lock:
            vectors = self.model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
            tokens = sum(len(self.model.tokenizer(t, add_special_tokens=True)["input_ids"]) for t in texts)
        return vectors.tolist(), tokens


def sampling_from_request(req: ChatCompletionRequest, cfg: ServerConfig) -> SamplingParams:
    """Sampling parameters of a request; ``max_tokens`` above the server's limit is refused (ValueError)."""
    max_tokens = req.max_completion_tokens or req.max_tokens or cfg.default_max_tokens
    if max_tokens > cfg.max_tokens_limit:
        field = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
        raise ValueError(
            f"{field}: {max_tokens} is more than this server allows ({cfg.max_tokens_limit}); ask for at most "
            f"{cfg.max_tokens_limit} (medtune api --max-tokens-limit raises it)"
        )
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    return SamplingParams(
        max_new_tokens=max_tokens,
        temperature=cfg.default_temperature if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        top_k=req.top_k,
        repetition_penalty=req.repetition_penalty or 1.0,
        stop=stop,
        seed=req.seed,
    )


def create_app(
    generator: Generator | None,
    *,
    config: ServerConfig | None = None,
    embedder: Embedder | None = None,
    model_name: str | None = None,
) -> Any:
    """The FastAPI application; ``generator`` None serves embeddings only."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import StreamingResponse
    from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

    cfg = config or ServerConfig()
    served = model_name or (generator.name if generator is not None else None)
    chat_names = list(dict.fromkeys([served, *cfg.aliases])) if served else []
    app = FastAPI(title="medtune OpenAI-compatible server", version="1")
    created = int(time.time())

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Any:
        return _error(400, _validation_message(list(exc.errors())))

    @app.middleware("http")
    async def _auth(request: Request, call_next: Any) -> Any:
        if cfg.api_key and request.url.path.startswith("/v1"):
            header = request.headers.get("authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip(), cfg.api_key):
                return _error(401, "invalid or missing API key", "authentication_error", "invalid_api_key")
        return await call_next(request)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": served, "embeddings": embedder.name if embedder else None}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        data = [{"id": name, "object": "model", "created": created, "owned_by": "medtune"} for name in chat_names]
        if embedder is not None:
            data.append({"id": embedder.name, "object": "model", "created": created, "owned_by": "medtune"})
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest, request: Request) -> Any:
        if generator is None:
            return _error(404, "this server has no chat model loaded", code="model_not_found", param="model")
        if req.model is not None and req.model not in chat_names:
            return _unknown_model(req.model, chat_names)
        if req.n != 1:
            return _error(400, "n: only n=1 is supported")
        try:
            messages = normalize_messages([m.model_dump() for m in req.messages])
            params = sampling_from_request(req, cfg)
            prompt = generator.render(messages)
        except (MedtuneError, ValueError) as exc:
            return _error(400, str(exc))
        except Exception as exc:  # a chat template that rejects the conversation (e.g. roles out of order)
            return _error(400, f"messages: cannot render with the chat template: {exc}")
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        now = int(time.time())
        if not req.stream:
            gen = (await run_in_threadpool(generator.generate_prompts, [prompt], params))[0]
            return {
                "id": cid,
                "object": "chat.completion",
                "created": now,
                "model": served,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": gen.text},
                        "finish_reason": gen.finish_reason,
                        "logprobs": None,
                    }
                ],
                "usage": {
                    "prompt_tokens": gen.prompt_tokens,
                    "completion_tokens": gen.completion_tokens,
                    "total_tokens": gen.total_tokens,
                },
            }

        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        cancel = threading.Event()
        from medtune_core.inference.generate import GenerationStream

        stream = GenerationStream(generator, prompt, params, cancel)

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            body: dict[str, Any] = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": now,
                "model": served,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
            }
            if include_usage:
                body["usage"] = None
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        async def events() -> AsyncIterator[str]:
            try:
                yield chunk({"role": "assistant", "content": ""})
                async for piece in iterate_in_threadpool(iter(stream)):
                    if await request.is_disconnected():
                        cancel.set()
                        break
                    yield chunk({"content": piece})
                result = stream.result
                if result is None:
                    return
                yield chunk({}, result.finish_reason)
                if include_usage:
                    usage = {
                        "prompt_tokens": result.prompt_tokens,
                        "completion_tokens": result.completion_tokens,
                        "total_tokens": result.total_tokens,
                    }
                    body = {
                        "id": cid,
                        "object": "chat.completion.chunk",
                        "created": now,
                        "model": served,
                        "choices": [],
                        "usage": usage,
                    }
                    yield f"data: {json.dumps(body)}\n\n"
                yield "data: [DONE]\n\n"
            finally:
                cancel.set()

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.post("/v1/embeddings")
    async def embeddings(req: EmbeddingRequest) -> Any:
        if embedder is None:
            return _error(
                404,
                "this server has no embedding model (start it with --embeddings)",
                code="model_not_found",
                param="model",
            )
        if req.model is not None and req.model != embedder.name:
            return _unknown_model(req.model, [embedder.name])
        texts = [req.input] if isinstance(req.input, str) else list(req.input)
        if not texts or not all(isinstance(t, str) for t in texts):
            return _error(400, "input: expected a string or a non-empty list of strings")
        vectors, tokens = await run_in_threadpool(embedder.embed, texts)
        data = []
        for i, vec in enumerate(vectors):
            value: Any = vec
            if req.encoding_format == "base64":
                value = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode("ascii")
            data.append({"object": "embedding", "index": i, "embedding": value})
        return {
            "object": "list",
            "data": data,
            "model": embedder.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    return app


def serve(app: Any, host: str = "127.0.0.1", port: int = 8000, *, api_key: str | None = None) -> None:
    """Run ``app`` with uvicorn until interrupted."""
    import uvicorn

    if host not in LOOPBACK and not api_key:
        log.warning("serving on %s without an API key: anyone who can reach this port can use the model", host)
    uvicorn.run(app, host=host, port=port, log_level="info")


class BackgroundServer:
    """uvicorn in a daemon thread on a free loopback port (tests, notebooks): ``with BackgroundServer(app) as s:``."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        import socket

        import uvicorn

        if port == 0:
            with socket.socket() as sock:
                sock.bind((host, 0))
                port = sock.getsockname()[1]
        self.host, self.port = host, port
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name="medtune-api", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise MedtuneError(f"the server did not start on {self.host}:{self.port}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
