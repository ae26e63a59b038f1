"""``<think>...</think>`` reasoning blocks (seed 3): split a finished text or a stream of chunks into reasoning
and answer.

Three shapes occur in practice and all are handled:

- ``<think>reasoning</think>answer`` (the seed 3 format);
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
