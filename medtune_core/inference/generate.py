"""Batched and streamed generation over a :class:`~medtune_core.inference.loader.LoadedModel`.

- prompts are rendered with the model's (training) chat template and tokenized without extra special tokens;
- batches are left-padded, so every row's continuation starts at the same position;
- sampling: ``temperature`` 0 is greedy; otherwise ``top_p`` / ``top_k`` / ``repetition_penalty`` / ``seed``;
- each row stops at any end-of-turn token (``finish_reason="stop"``), at a ``stop`` string (cut before it, also
  ``"stop"``) or at ``max_new_tokens`` (``"length"``);
- one :class:`Generator` serves one model to many threads: a lock admits one ``generate`` call at a time, so
  concurrent callers (server requests) never share a batch or see each other's tokens.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from medtune_core.errors import MedtuneError
from medtune_core.inference.loader import LoadedModel

log = logging.getLogger(__name__)

MessageLike = Mapping[str, Any] | Any  # {"role", "content"} or formats.Message


class SamplingParams(BaseModel):
    """Sampling parameters; ``temperature: 0`` decodes greedily (deterministic)."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(512, ge=1, le=32768, description="Tokens generated at most per answer.")
    temperature: float = Field(0.7, ge=0, le=2, description="0: greedy decoding.")
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int | None = Field(None, ge=1)
    repetition_penalty: float = Field(1.0, gt=0)
    stop: list[str] = Field(default_factory=list, description="Strings that end an answer (not included in it).")
    seed: int | None = Field(None, description="Seed for sampling (the whole call).")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" or "length"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def normalize_messages(messages: Sequence[MessageLike]) -> list[dict[str, str]]:
    """``[{"role", "content"}]`` from dicts or :class:`~medtune_core.formats.Message` objects; content parts joined."""
    out: list[dict[str, str]] = []
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, Mapping) else getattr(m, "role", None)
        content = m.get("content") if isinstance(m, Mapping) else getattr(m, "content", None)
        if isinstance(content, list):  # OpenAI content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, Mapping) and p.get("type") == "text")
        if role not in ("system", "user", "assistant") or not isinstance(content, str):
            raise MedtuneError(f"messages[{i}]: expected role system/user/assistant and text content")
        out.append({"role": role, "content": content})
    if not out:
        raise MedtuneError("messages: empty")
    return out


REPLACEMENT = "\ufffd"


def drop_partial_char(text: str) -> str:
    """``text`` without the replacement characters a decoder leaves at its end when the last tokens hold only part
    of a character's UTF-8 bytes (byte-level BPE splits most Chinese characters over two or three tokens, so
    ``max_new_tokens`` often cuts one in half). As in vLLM's incremental detokenizer, a trailing U+FFFD is taken for
    such an unfinished sequence: it is held back while streaming and left out of the final text."""
    return text.rstrip(REPLACEMENT)


def _cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class _Cancelled:
    """A stopping criterion that ends generation when an event is set (a client went away)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class Generator:
    """Thread-safe generation with one loaded model."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.loaded.name

    # ------------------------------------------------------------------------------------------- prompts
    def render(self, messages: Sequence[MessageLike], add_generation_prompt: bool = True) -> str:
        msgs = normalize_messages(messages)
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=add_generation_prompt)
        text = "".join(f"{m['role']}: {m['content']}\n" for m in msgs)
        return text + ("assistant: " if add_generation_prompt else "")

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _encode(self, prompts: Sequence[str]) -> Any:
        enc = self.tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
        return enc.to(self.model.device)

    def _gen_kwargs(self, params: SamplingParams) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "max_new_tokens": params.max_new_tokens,
            "eos_token_id": self.loaded.eos_token_ids or None,
            "pad_token_id": self.tokenizer.pad_token_id,
            "repetition_penalty": params.repetition_penalty,
        }
        if params.greedy:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kw.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=params.top_k or 0)
        if params.stop:
            kw.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)
        return kw

    def _finish(self, new_ids: list[int], prompt_tokens: int, params: SamplingParams) -> Generation:
        eos = set(self.loaded.eos_token_ids)
        end = next((i for i, t in enumerate(new_ids) if t in eos), None)
        tokens = new_ids if end is None else new_ids[:end]
        completion = len(new_ids) if end is None else end + 1
        text = drop_partial_char(self.tokenizer.decode(tokens, skip_special_tokens=True))
        text, stopped = _cut_at_stop(text, params.stop)
        hit_limit = end is None and not stopped and completion >= params.max_new_tokens
        reason = "length" if hit_limit else "stop"
        return Generation(text, prompt_tokens, completion, reason)

    # ------------------------------------------------------------------------------------------ generate
    def generate(
        self, batch: Sequence[Sequence[MessageLike]], params: SamplingParams | None = None
    ) -> list[Generation]:
        """Answers for a batch of conversations (each ending with a user turn), in order."""
        params = params or SamplingParams()
        if not batch:
            return []
        prompts = [self.render(m) for m in batch]
        return self.generate_prompts(prompts, params)

    def generate_prompts(self, prompts: Sequence[str], params: SamplingParams) -> list[Generation]:
        """Like :meth:`generate` for already rendered prompts."""
        import torch

        with self.lock:
            enc = self._encode(prompts)
            if params.seed is not None:
                torch.manual_seed(params.seed)
            with torch.inference_mode():
                out = self.model.generate(**enc, **self._gen_kwargs(params))
        width = enc["input_ids"].shape[1]
        prompt_lens = enc["attention_mask"].sum(dim=1).tolist()
        return [self._finish(out[i, width:].tolist(), int(prompt_lens[i]), params) for i in range(len(prompts))]

    def stream(
        self,
        messages: Sequence[MessageLike],
        params: SamplingParams | None = None,
        cancel: threading.Event | None = None,
    ) -> GenerationStream:
        """Stream one answer as text chunks (``for chunk in gen.stream(msgs)``); ``.result`` is set at the end."""
        return GenerationStream(self, self.render(messages), params or SamplingParams(), cancel)


class GenerationStream:
    """Iterator of text chunks of one answer, generated in a background thread (under the generator's lock).

    Text that might be the start of a ``stop`` string is held back until it is decided. Leaving the loop early
    (``close()`` or a set ``cancel`` event) stops the generation at its next token.
    """

    def __init__(self, gen: Generator, prompt: str, params: SamplingParams, cancel: threading.Event | None) -> None:
        self.gen = gen
        self.prompt = prompt
        self.params = params
        self.cancel_event = cancel or threading.Event()
        self.result: Generation | None = None
        self._started = False

    def cancel(self) -> None:
        self.cancel_event.set()

    def close(self) -> None:
        self.cancel()

    def __iter__(self) -> Iterator[str]:
        if self._started:
            raise MedtuneError("a GenerationStream can be iterated once")
        self._started = True
        return self._run()

    def _run(self) -> Iterator[str]:
        import torch
        from transformers import StoppingCriteriaList

        gen, params = self.gen, self.params
        streamer = _whole_char_streamer(gen.tokenizer, skip_prompt=True, skip_special_tokens=True)
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                with gen.lock:
                    enc = gen._encode([self.prompt])
                    box["enc"] = enc
                    if params.seed is not None:
                        torch.manual_seed(params.seed)
                    with torch.inference_mode():
                        box["out"] = gen.model.generate(
                            **enc,
                            **gen._gen_kwargs(params),
                            streamer=streamer,
                            stopping_criteria=StoppingCriteriaList([_Cancelled(self.cancel_event)]),
                        )
            except BaseException as exc:  # handed to the consumer
                box["error"] = exc
                streamer.end()

        thread = threading.Thread(target=work, name="medtune-generate", daemon=True)
        thread.start()
        stops = [s for s in params.stop if s]
        emitted = ""
        pending = ""
        stopped = False
        try:
            for chunk in streamer:
                if stopped:
                    continue
                pending += chunk
                if stops:
                    cut, hit = _cut_at_stop(pending, stops)
                    if hit:
                        pending, stopped = cut, True
                        self.cancel_event.set()
                    else:
                        hold = max((_overlap(pending, s) for s in stops), default=0)
                        cut = pending[: len(pending) - hold]
                        if cut:
                            emitted += cut
                            yield cut
                        pending = pending[len(pending) - hold :]
                        continue
                if pending:
                    emitted += pending
                    yield pending
                    pending = ""
            if pending and not stopped:
                emitted += pending
                yield pending
        finally:
            # finished, stopped at a stop string, or the consumer left early: no more tokens are needed
            self.cancel_event.set()
            thread.join()
        if "error" in box:
            raise box["error"]
        enc = box["enc"]
        new_ids = box["out"][0, enc["input_ids"].shape[1] :].tolist()
        res = gen._finish(new_ids, int(enc["attention_mask"].sum()), params)
        self.result = Generation(
            emitted, res.prompt_tokens, res.completion_tokens, "stop" if stopped else res.finish_reason
        )


def _whole_char_streamer_class() -> type:
    from transformers import TextIteratorStreamer

    class WholeCharStreamer(TextIteratorStreamer):
        """transformers' streamer that never ends on half a character. While streaming, transformers already holds
        back text ending in a symbol such as U+FFFD until the next space; at the end of the stream it flushes
        everything, so an answer cut by ``max_new_tokens`` in the middle of a character would end in U+FFFD. This
        flush drops it (:func:`drop_partial_char`), so the streamed text equals the plain answer."""

        def end(self) -> None:
            if self.token_cache:
                text = drop_partial_char(self.tokenizer.decode(self.token_cache, **self.decode_kwargs))
                printable = text[self.print_len :]
                self.token_cache, self.print_len = [], 0
            else:
                printable = ""
            self.next_tokens_are_prompt = True
            self.on_finalized_text(printable, stream_end=True)

    return WholeCharStreamer


_STREAMER_CLASS: type | None = None


def _whole_char_streamer(*args: Any, **kwargs: Any) -> Any:
    """A :class:`WholeCharStreamer` (the class is made on first use, so importing this module loads no transformers)."""
    global _STREAMER_CLASS
    if _STREAMER_CLASS is None:
        _STREAMER_CLASS = _whole_char_streamer_class()
    return _STREAMER_CLASS(*args, **kwargs)


def _overlap(text: str, stop: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``stop``."""
    for n in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0
