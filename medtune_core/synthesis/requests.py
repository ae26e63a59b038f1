"""LLM-mode request building and answer validation (the transport is :mod:`medtune_core.llm`).

A request is the agent's system prompt (with the answer's JSON schema spelled out, for providers without
``response_format`` JSON-schema support), its few-shot examples as user/assistant turns, then the sampled
input. The answer is checked with the agent's schema and quality checks before it may be written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from medtune_core.formats.chat import json_text
from medtune_core.synthesis.base import Agent, CheckFailure
from medtune_core.synthesis.registry import get_agent

USER_PREFIX = "请处理以下输入（JSON）：\n"


@dataclass
class AgentRequest:
    """Everything the LLM client needs for one sample."""

    agent: str
    index: int
    input: dict[str, Any]
    messages: list[dict[str, str]]
    schema: type[BaseModel]

    @property
    def json_schema(self) -> dict[str, Any]:
        return self.schema.model_json_schema()


# (agent, its prompt, its output model) -> system message; the JSON schema in it costs ~1 ms to compute
_SYSTEM_MESSAGES: dict[tuple[Agent, str, type[BaseModel]], str] = {}


def system_message(agent: Agent) -> str:
    """The agent's prompt and the JSON schema of its answer; computed once per agent, prompt and output model."""
    key = (agent, agent.system_prompt, agent.output_model)
    msg = _SYSTEM_MESSAGES.get(key)
    if msg is None:
        schema = json.dumps(agent.response_schema(), ensure_ascii=False, separators=(",", ":"))
        msg = f"{agent.system_prompt}\n只输出一个JSON对象，不要输出其他文字。JSON需符合以下Schema：\n{schema}"
        _SYSTEM_MESSAGES[key] = msg
    return msg


def user_message(inp: dict[str, Any]) -> str:
    return USER_PREFIX + json_text(inp)


def prompt_prefix(
    agent: Agent | str, few_shots: list[tuple[dict[str, Any], dict[str, Any]]] | None = None
) -> list[dict[str, str]]:
    """System prompt + few-shot turns: the messages of every request of ``agent`` before its input."""
    a = get_agent(agent) if isinstance(agent, str) else agent
    shots = a.few_shots() if few_shots is None else few_shots
    messages = [{"role": "system", "content": system_message(a)}]
    for shot_in, shot_out in shots:
        messages.append({"role": "user", "content": user_message(shot_in)})
        messages.append({"role": "assistant", "content": json_text(shot_out)})
    return messages


def build_messages(
    agent: Agent | str,
    inp: dict[str, Any],
    few_shots: list[tuple[dict[str, Any], dict[str, Any]]] | None = None,
) -> list[dict[str, str]]:
    """System prompt + few-shot turns + the input, as OpenAI chat messages."""
    return [*prompt_prefix(agent, few_shots), {"role": "user", "content": user_message(inp)}]


def build_request(
    agent: Agent | str,
    inp: dict[str, Any],
    index: int,
    few_shots: list[tuple[dict[str, Any], dict[str, Any]]] | None = None,
) -> AgentRequest:
    a = get_agent(agent) if isinstance(agent, str) else agent
    return AgentRequest(a.name, index, inp, build_messages(a, inp, few_shots), a.output_model)


def validate_answer(
    agent: Agent | str, inp: dict[str, Any], answer: str | dict[str, Any]
) -> tuple[dict[str, Any] | None, list[CheckFailure]]:
    """Schema + quality checks of an LLM answer (JSON text, possibly fenced, or an already parsed dict)."""
    a = get_agent(agent) if isinstance(agent, str) else agent
    if isinstance(answer, str):
        text = answer.strip()
        if text.startswith("```"):
            text = text.strip("`")
            text = text[text.find("{") :] if "{" in text else text
        try:
            answer = json.loads(text)
        except json.JSONDecodeError as exc:
            return None, [CheckFailure("schema", f"<json>: invalid JSON: {exc.msg} (column {exc.colno})")]
    return a.validate(inp, answer)
