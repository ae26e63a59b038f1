"""Interactive multi-turn chat in a terminal: history, ``/reset``, ``/exit``, streamed tokens, reasoning shown dimmed.

    medtune chat --model embedded:smollm2-135m-instruct --adapter out/sft/adapter

Commands: ``/reset`` (forget the conversation), ``/history`` (show it), ``/system TEXT`` (set the system prompt and
reset), ``/help``, ``/exit`` (or ``/quit``, Ctrl-D). Reasoning inside ``<think>...</think>`` is printed dim grey
(plain ``[think] ... [/think]`` markers when colour is off), and only the answer after it goes back into the history,
as reasoning models are trained.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import TextIO

from medtune_core.inference.generate import Generator, SamplingParams
from medtune_core.inference.think import ThinkStreamParser

DIM = "\x1b[2;37m"
BOLD = "\x1b[1m"
RESET = "\x1b[0m"

HELP = "commands: /reset  /history  /system TEXT  /help  /exit"


class ChatSession:
    """A conversation with one model: ``send(text)`` streams ``("think" | "answer", chunk)`` and records the turn."""

    def __init__(
        self,
        generator: Generator,
        params: SamplingParams | None = None,
        system: str | None = None,
        *,
        keep_reasoning: bool = False,
    ) -> None:
        self.generator = generator
        self.params = params or SamplingParams()
        self.system = system
        self.keep_reasoning = keep_reasoning
        self.history: list[dict[str, str]] = []

    def messages(self, user_text: str | None = None) -> list[dict[str, str]]:
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        msgs += self.history
        if user_text is not None:
            msgs.append({"role": "user", "content": user_text})
        return msgs

    def reset(self) -> None:
        self.history.clear()

    def send(self, user_text: str) -> Iterator[tuple[str, str]]:
        parser = ThinkStreamParser()
        stream = self.generator.stream(self.messages(user_text), self.params)
        try:
            for chunk in stream:
                yield from parser.feed(chunk)
            yield from parser.flush()
        finally:
            stream.close()
        full = parser.answer.strip()
        if self.keep_reasoning and parser.reasoning:
            full = f"<think>{parser.reasoning}</think>\n{full}"
        self.history += [{"role": "user", "content": user_text}, {"role": "assistant", "content": full}]


def run_chat(
    session: ChatSession,
    *,
    read: Callable[[str], str] = input,
    out: TextIO | None = None,
    color: bool | None = None,
    banner: str | None = None,
) -> int:
    """The read-eval-print loop; returns the number of turns answered."""
    out = out or sys.stdout
    if color is None:
        color = out.isatty()
    dim, bold, reset = (DIM, BOLD, RESET) if color else ("", "", "")
    if banner:
        out.write(banner + "\n")
    out.write(HELP + "\n")
    out.flush()
    turns = 0
    while True:
        try:
            line = read(f"{bold}you> {reset}")
        except (EOFError, KeyboardInterrupt):
            out.write("\n")
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            session.reset()
            out.write("(conversation reset)\n")
            out.flush()
            continue
        if text == "/help":
            out.write(HELP + "\n")
            continue
        if text == "/history":
            if not session.history:
                out.write("(no history)\n")
            for m in session.history:
                out.write(f"[{m['role']}] {m['content']}\n")
            out.flush()
            continue
        if text.startswith("/system"):
            session.system = text[len("/system") :].strip() or None
            session.reset()
            out.write(f"(system prompt {'set' if session.system else 'cleared'}; conversation reset)\n")
            continue
        if text.startswith("/"):
            out.write(f"unknown command {text.split()[0]}; {HELP}\n")
            continue
        out.write(f"{bold}assistant>{reset} ")
        out.flush()
        kind_now = None
        try:
            for kind, chunk in session.send(text):
                if kind != kind_now:
                    if kind_now == "think":
                        out.write(reset if color else " [/think]\n")
                    if kind == "think":
                        out.write(dim if color else "[think] ")
                    kind_now = kind
                out.write(chunk)
                out.flush()
        except KeyboardInterrupt:
            out.write(f"{reset}\n(interrupted)")
        if kind_now == "think":
            out.write(reset if color else " [/think]")
        out.write("\n")
        out.flush()
        turns += 1
    out.write("bye\n")
    out.flush()
    return turns
