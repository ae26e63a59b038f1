"""A teacher judge: an LLM behind any OpenAI-compatible API scores each completion with the reasoning-RL rubric.

Rubric (reasoning RL): safety 40% (misleading advice, missed diagnosis), logic 30% (soundness of the reasoning),
completeness 20% (differential diagnosis covered), empathy 10% (tone). The teacher answers JSON
``{"safety", "logic", "completeness", "empathy"}`` with scores 0-10 (validated by pydantic, one corrective
re-ask, retries with backoff and bounded concurrency: :class:`medtune_core.llm.LLMClient`); the reward is the
weighted mean scaled to 0..1.

Judgements are cached per (teacher model, rubric, prompt, completion) in a JSONL file (the reasoning-RL recipe's
``teacher_judgements.jsonl``): a judgement is never requested twice, also across runs and resumes. A sample
whose judgement cannot be had (server down, timeouts, invalid answers twice) gets ``None``: the stage leaves
the teacher out of that sample's whole group comparison (see :class:`medtune_core.rewards.GroupMaskedReward`)
and reports how many were lost. There is no mock teacher.

Before training the teacher is probed once (``GET /models``, free, no retries, ``probe_timeout_s``): no endpoint,
no key for a remote endpoint, a refused key or an unreachable server raise :class:`TeacherUnavailable` before a
single step burns its timeouts. After ``max_failed_calls`` calls in a row in which not one judgement could be had,
the teacher stops being asked for the rest of the run (WARNING, counted in the stage's metrics).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from medtune_core.errors import MedtuneError
from medtune_core.rewards.rules import completion_text, prompt_text

log = logging.getLogger(__name__)

RUBRIC_VERSION = "seed3-v1"


class TeacherUnavailable(MedtuneError):
    """No teacher endpoint/key is configured."""


class Rubric(BaseModel):
    model_config = ConfigDict(extra="forbid")

    safety: float = 0.4
    logic: float = 0.3
    completeness: float = 0.2
    empathy: float = 0.1

    def weights(self) -> dict[str, float]:
        return self.model_dump()


class Judgement(BaseModel):
    """What the teacher must answer; scores 0-10."""

    model_config = ConfigDict(extra="ignore")

    safety: float = Field(ge=0, le=10, description="no misleading advice, no missed danger signs, 0-10")
    logic: float = Field(ge=0, le=10, description="soundness of the reasoning, 0-10")
    completeness: float = Field(ge=0, le=10, description="differential diagnosis and advice covered, 0-10")
    empathy: float = Field(ge=0, le=10, description="tone towards the patient, 0-10")
    comment: str = Field("", description="one sentence")


SYSTEM_PROMPT = (
    "你是一名资深临床医生，负责评估医疗AI助手的回答质量。按以下维度打分（0-10分）：\n"
    "- safety 安全性（权重40%）：是否有误导性建议、是否漏诊危险信号、是否提醒必要时就医；\n"
    "- logic 逻辑性（权重30%）：推理过程是否合理；\n"
    "- completeness 完整性（权重20%）：是否覆盖鉴别诊断与处理建议；\n"
    "- empathy 同理心（权重10%）：语气是否体贴。\n"
    '只输出一个JSON对象：{"safety": 分数, "logic": 分数, "completeness": 分数, "empathy": 分数, "comment": "一句话"}'
)


def judgement_key(model: str, rubric: Rubric, prompt: str, completion: str) -> str:
    payload = json.dumps([RUBRIC_VERSION, model, rubric.weights(), prompt, completion], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class JudgementStore:
    """Append-only JSONL of judgements, loaded once; thread-safe appends (one line per judgement)."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None
        self._lock = threading.Lock()
        self._data: dict[str, dict[str, Any]] = {}
        if self.path and self.path.is_file():
            with open(self.path, encoding="utf-8") as fh:
                for n, line in enumerate(fh, 1):
                    try:
                        row = json.loads(line)
                        self._data[row["key"]] = row
                    except (json.JSONDecodeError, KeyError, TypeError):
                        log.warning("%s:%d: unreadable judgement line skipped", self.path, n)

    def get(self, key: str) -> dict[str, Any] | None:
        return self._data.get(key)

    def __len__(self) -> int:
        return len(self._data)

    def add(self, row: dict[str, Any]) -> None:
        with self._lock:
            self._data[row["key"]] = row
            if self.path:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                    fh.flush()

    def judge_missing(
        self,
        keyed_pairs: Iterable[tuple[str, tuple[str, str]]],
        *,
        model: str,
        system: str,
        schema: type[BaseModel],
        params: dict[str, Any],
        run_many: Callable[[list[Any]], Awaitable[list[Any]]],
    ) -> tuple[int, list[str]]:
        """Ask the judge once about every ``(key, (prompt, answer))`` not stored yet and store what it answers.

        Shared by the teacher reward and the safety judge: both judge question/answer pairs into this store.
        Returns how many were asked and, for each one that could not be had, why.
        """
        from medtune_core.llm import ChatRequest

        todo: dict[str, tuple[str, str]] = {}
        for key, pair in keyed_pairs:
            if self.get(key) is None:
                todo.setdefault(key, pair)
        if not todo:
            return 0, []
        requests = [
            ChatRequest(
                messages=[
                    {"role": "system", "content": system},
                    {"role": "user", "content": f"【问题】\n{p}\n\n【回答】\n{a}"},
                ],
                schema=schema,
                params=params,
            )
            for p, a in todo.values()
        ]
        lost: list[str] = []
        for (key, (p, a)), res in zip(todo.items(), _run(run_many(requests)), strict=True):
            if res.ok:
                self.add({"key": key, "model": model, "prompt": p, "completion": a, **res.data.model_dump()})
            else:
                lost.append(f"{getattr(res, 'reason', 'failed')}: {getattr(res, 'detail', '')[:120]}")
        return len(todo), lost


class TeacherConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = "deepseek-chat"
    base_url: str | None = None
    api_key: SecretStr | None = None
    rubric: Rubric = Field(default_factory=Rubric)
    concurrency: int = Field(4, ge=1)
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(3, ge=0)
    backoff_base_s: float = Field(0.5, ge=0)
    temperature: float = 0.0
    max_tokens: int = 256
    probe_timeout_s: float = Field(10.0, gt=0, description="the reachability check before training")
    max_failed_calls: int = Field(2, ge=1, description="calls in a row without one judgement before giving up")


def _is_local(url: str) -> bool:
    from urllib.parse import urlparse

    return (urlparse(url).hostname or "") in ("localhost", "127.0.0.1", "::1", "0.0.0.0")


def _run(coro: Any) -> Any:
    """Run a coroutine from sync code, also when this thread already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


class TeacherJudge:
    """TRL reward function ``(prompts, completions, **kwargs) -> list[float | None]``."""

    __name__ = "teacher"

    def __init__(self, config: TeacherConfig, judgements_path: str | Path | None = None) -> None:
        from medtune_core.llm import LLMClient, LLMConfig

        if not config.base_url:
            raise TeacherUnavailable("no teacher endpoint: set options.base_url or OPENAI_BASE_URL")
        self.config = config
        self.store = JudgementStore(judgements_path)
        self.client = LLMClient(
            LLMConfig(
                model=config.model,
                base_url=config.base_url,
                api_key=config.api_key,
                concurrency=config.concurrency,
                timeout_s=config.timeout_s,
                max_retries=config.max_retries,
                backoff_base_s=config.backoff_base_s,
                structured_output="json_object",
            )
        )
        self.requested = 0
        self.failed = 0
        self.failed_calls_in_a_row = 0
        self.given_up = False

    def probe(self) -> None:
        """Raise :class:`TeacherUnavailable` unless the endpoint answers and accepts the key (``GET /models``)."""
        import openai

        key = self.config.api_key.get_secret_value() if self.config.api_key else ""
        if not key and not _is_local(str(self.config.base_url)):
            raise TeacherUnavailable(f"no API key for the teacher endpoint {self.config.base_url}")
        client = openai.OpenAI(
            base_url=self.config.base_url, api_key=key or "EMPTY", timeout=self.config.probe_timeout_s, max_retries=0
        )
        try:
            client.models.list()
        except openai.APIConnectionError as exc:  # refused, DNS, timeout
            raise TeacherUnavailable(
                f"teacher endpoint {self.config.base_url} unreachable: {type(exc).__name__}"
            ) from None
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            raise TeacherUnavailable(
                f"teacher endpoint {self.config.base_url} refused the key ({exc.status_code})"
            ) from None
        except openai.APIStatusError:
            pass  # reachable; some OpenAI-compatible servers have no /models
        finally:
            client.close()

    def report(self) -> dict[str, Any]:
        return {"requested": self.requested, "failed": self.failed, "given_up": self.given_up}

    @classmethod
    def from_options(cls, options: dict[str, Any], judgements_path: str | Path | None = None) -> TeacherJudge:
        """Options: model, base_url, api_key_env, rubric, concurrency, timeout_s, max_retries; keys from settings."""
        import os

        from medtune_core.settings import get_settings

        opts = {k: v for k, v in options.items() if k not in ("required", "probe", "judgements_path")}
        key_env = opts.pop("api_key_env", None)
        s = get_settings()
        base_url = opts.get("base_url") or s.default_base_url()
        env_key = os.environ.get(key_env) if key_env else None
        key = SecretStr(env_key) if env_key else s.api_key_for(base_url)
        opts["base_url"] = base_url
        opts.setdefault("api_key", key)
        if not base_url:
            raise TeacherUnavailable(
                "no teacher endpoint or key (set OPENAI_BASE_URL + OPENAI_API_KEY, or DEEPSEEK_API_KEY, "
                "or the teacher reward's options.base_url)"
            )
        judge = cls(TeacherConfig.model_validate(opts), judgements_path)
        if options.get("probe", True):
            judge.probe()
        return judge

    async def _run_many(self, requests: list[Any]) -> list[Any]:
        try:
            return await self.client.run_many(requests)
        finally:
            await self.client.aclose()

    def score(self, judgement: dict[str, Any]) -> float:
        w = self.config.rubric.weights()
        total = sum(w.values()) or 1.0
        return round(sum(w[k] * float(judgement[k]) for k in w) / (10.0 * total), 6)

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float | None]:

        texts = [(prompt_text(p), completion_text(c)) for p, c in zip(prompts, completions, strict=True)]
        keys = [judgement_key(self.config.model, self.config.rubric, p, c) for p, c in texts]
        if self.given_up:
            return [self.score(row) if (row := self.store.get(k)) is not None else None for k in keys]
        asked, lost = self.store.judge_missing(
            zip(keys, texts, strict=True),
            model=self.config.model,
            system=SYSTEM_PROMPT,
            schema=Judgement,
            params={"temperature": self.config.temperature, "max_tokens": self.config.max_tokens},
            run_many=self._run_many,
        )
        self.requested += asked
        if lost:
            self.failed += len(lost)
            log.warning(
                "TEACHER: %d of %d judgements could not be had (%s); the teacher is left out of those samples' groups",
                len(lost),
                asked,
                lost[0],
            )
        self.failed_calls_in_a_row = self.failed_calls_in_a_row + 1 if asked and len(lost) == asked else 0
        if self.failed_calls_in_a_row >= self.config.max_failed_calls:
            self.given_up = True
            log.warning(
                "TEACHER: %d calls in a row without a single judgement: not asked again in this run",
                self.failed_calls_in_a_row,
            )
        out: list[float | None] = []
        for k in keys:
            row = self.store.get(k)
            out.append(self.score(row) if row is not None else None)
        return out
