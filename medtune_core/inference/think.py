"""``<think>...</think>`` reasoning blocks: split a finished text or a stream of chunks into reasoning
and answer.

Three shapes occur in practice and all are handled:

- ``<think>reasoning</think>answer`` (the format the training data teaches);
- ``reasoning</think>answer`` without the opening tag (templates such as Qwen3's put ``<think>`` in the prompt);
- ``<think>reasoning...`` never closed (generation stopped by ``max_new_tokens``): everything is reasoning.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

OPEN = "<think>"
CLOSE = "</think>"


@dataclass(frozen=True)
class ThinkSplit:
    """``reasoning`` is None when the text has no reasoning block; ``closed`` tells whether it was terminated."""

    reasoning: str | None
    answer: str
    closed: bool = True

    @property
    def has_reasoning(self) -> bool:
        return bool(self.reasoning and self.reasoning.strip())


def split_think(text: str) -> ThinkSplit:
    """Split ``text`` into its reasoning block (stripped) and the answer after it (stripped)."""
    start = text.find(OPEN)
    end = text.find(CLOSE)
    if start >= 0 and (end < 0 or start < end):
        body_start = start + len(OPEN)
        end = text.find(CLOSE, body_start)
        if end < 0:
            return ThinkSplit(text[body_start:].strip(), "", closed=False)
        before = text[:start].strip()
        answer = text[end + len(CLOSE) :].strip()
        if before:
            answer = (before + "\n" + answer).strip()
        return ThinkSplit(text[body_start:end].strip(), answer)
    if end >= 0:  # closing tag only: the opening one was part of the prompt
        return ThinkSplit(text[:end].strip(), text[end + len(CLOSE) :].strip())
    return ThinkSplit(None, text.strip())


def _shingles(text: str, n: int) -> set[str]:
    text = "".join(text.split())
    return {text[i : i + n] for i in range(max(1, len(text) - n + 1))} if text else set()


def copied_from(text: str, source: str, threshold: float = 0.8, n: int = 3) -> bool:
    """Whether ``text`` is (mostly) a copy of ``source``: at least ``threshold`` of its character ``n``-grams occur
    in ``source`` (whitespace and think tags ignored). A model that echoes its instruction ("请先在<think>中分析…")
    inside a reasoning block has not reasoned."""
    text, source = (t.replace(OPEN, "").replace(CLOSE, "") for t in (text, source))
    if not text.strip() or not source.strip():
        return False
    grams = _shingles(text, n)
    if not grams:
        return False
    src = _shingles(source, n)
    return sum(g in src for g in grams) / len(grams) >= threshold


def reasoning_status(text: str, prompt: str = "", *, copy_threshold: float = 0.8) -> str:
    """Why ``text`` does or does not count as reasoning: ``ok``; ``none`` (no block); ``unclosed`` (cut by
    ``max_new_tokens`` or never closed); ``empty``; ``echo`` (copied from ``prompt``)."""
    split = split_think(text)
    if split.reasoning is None:
        return "none"
    if not split.closed:
        return "unclosed"
    if not split.reasoning.strip():
        return "empty"
    if prompt and copied_from(split.reasoning, prompt, copy_threshold):
        return "echo"
    return "ok"


def valid_reasoning(text: str, prompt: str = "", *, copy_threshold: float = 0.8) -> str | None:
    """The reasoning of ``text`` when it counts as reasoning, else None: a *closed* block (``<think>…</think>``, or
    ``…</think>`` when the template opened it), with non-blank content that is not copied from ``prompt``.

    An unclosed block (cut by ``max_new_tokens``), an empty block and an echo of the prompt do not count
    (:func:`reasoning_status` says which). The safety evaluation's reasoning coverage and the rule reward's
    reasoning bonus both use this, so the metric measures what the reward pays for.
    """
    if reasoning_status(text, prompt, copy_threshold=copy_threshold) != "ok":
        return None
    return split_think(text).reasoning


def strip_think(text: str) -> str:
    """The answer without its reasoning block (what goes back into a chat history)."""
    return split_think(text).answer


class ThinkStreamParser:
    """Incremental splitter for streamed text: ``feed(chunk)`` yields ``("think" | "answer", text)`` segments.

    Tags split across chunks (``"<thi"`` + ``"nk>"``) are held back until they can be decided, so a renderer
    never prints half a tag. ``start_in_think=True`` when the prompt already opened the block.
    """

    def __init__(self, start_in_think: bool = False) -> None:
        self.in_think = start_in_think
        self._pending = ""
        self.reasoning = ""
        self.answer = ""

    def _emit(self, kind: str, text: str) -> tuple[str, str] | None:
        if not text:
            return None
        if kind == "think":
            self.reasoning += text
        else:
            self.answer += text
        return kind, text

    def feed(self, chunk: str) -> Iterator[tuple[str, str]]:
        buf = self._pending + chunk
        self._pending = ""
        while buf:
            tag = CLOSE if self.in_think else OPEN
            kind = "think" if self.in_think else "answer"
            idx = buf.find(tag)
            if idx >= 0:
                seg = self._emit(kind, buf[:idx])
                if seg:
                    yield seg
                buf = buf[idx + len(tag) :]
                self.in_think = not self.in_think
                continue
            if not self.in_think and CLOSE in buf:  # a closing tag without an opening one: all before was reasoning
                idx = buf.find(CLOSE)
                seg = self._emit("think", buf[:idx])
                if seg:
                    yield seg
                buf = buf[idx + len(CLOSE) :]
                continue
            keep = _partial_tag_suffix(buf, (tag, CLOSE))
            out, self._pending = buf[: len(buf) - keep], buf[len(buf) - keep :]
            seg = self._emit(kind, out)
            if seg:
                yield seg
            break

    def flush(self) -> Iterator[tuple[str, str]]:
        """Whatever was held back at the end of the stream."""
        rest, self._pending = self._pending, ""
        seg = self._emit("think" if self.in_think else "answer", rest)
        if seg:
            yield seg


def _partial_tag_suffix(buf: str, tags: tuple[str, ...]) -> int:
    """Length of the longest suffix of ``buf`` that is a proper prefix of one of ``tags``."""
    best = 0
    for tag in tags:
        for n in range(min(len(tag) - 1, len(buf)), 0, -1):
            if buf.endswith(tag[:n]):
                best = max(best, n)
                break
    return best
