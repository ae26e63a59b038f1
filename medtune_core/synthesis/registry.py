"""Agents by name: every module of :mod:`medtune_core.synthesis.agents` imported, then looked up here.

Kept apart from :mod:`.base` (the :class:`~.base.Agent` class and :func:`~.base.register_agent`), which the agent
modules import: the agents import ``base``, this module imports the agents, and nothing imports back.
"""

from __future__ import annotations

from collections.abc import Sequence

import medtune_core.synthesis.agents  # noqa: F401  (registers every agent)
from medtune_core.errors import MedtuneError
from medtune_core.synthesis.base import AGENTS, Agent


def get_agent(name: str) -> Agent:
    try:
        return AGENTS[name]
    except KeyError:
        raise MedtuneError(f"unknown agent {name!r}; known agents: {', '.join(agent_names())}") from None


def agent_names() -> list[str]:
    """Registered agent names in registration order (the original order for the built-in five)."""
    return list(AGENTS)


def resolve_agents(agents: str | Sequence[str]) -> list[str]:
    """``"all"``, a comma-separated string or a list of names → validated agent names."""
    if isinstance(agents, str):
        agents = [a.strip() for a in agents.split(",") if a.strip()]
    names = list(agents)
    if not names or "all" in names:
        return agent_names()
    for n in names:
        get_agent(n)
    return list(dict.fromkeys(names))
