"""The agent registry: one :class:`Agent` subclass per health-assistant agent, registered by name.

An agent is everything the synthesis flow needs to know about one kind of SFT sample:

- ``sample_input(rng)``: structured input fields drawn from :mod:`medtune_core.synthesis.vocab`;
- ``system_prompt``: the task prompt (the alpaca ``instruction`` and the LLM's system message);
- ``output_model``: the pydantic schema of the JSON answer (also sent to the LLM as its response format);
- ``few_shots()``: worked examples for the LLM prompt;
- ``checks(input, output)``: quality checks beyond the schema, each failure a ``(check, problem)`` pair;
- ``template_output(input, rng)``: the seed-mode generator, building the answer from the input offline.

Adding an agent means writing one module under :mod:`medtune_core.synthesis.agents` with a class decorated
by :func:`register_agent`; the package imports every module in it.
"""

from __future__ import annotations

import json
import random
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ValidationError

from medtune_core.errors import MedtuneError

T = TypeVar("T")

#: Version of the templates; part of every seed-mode cache key, bump it when generated text changes.
TEMPLATE_VERSION = "1"


@dataclass
class Sample:
    """One synthesized sample before it is turned into a record."""

    agent: str
    index: int
    input: dict[str, Any]
    output: dict[str, Any] | None
    source: str = "seed"  # "seed" | "llm"
    raw: str | None = None  # the raw answer text (LLM mode), kept for the rejects file
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.agent}-{self.source}-{self.index:07d}"

    def text(self) -> str:
        """Input and output as one string (duplicate detection works on this)."""
        return canonical_json(self.input) + "\n" + (canonical_json(self.output) if self.output else self.raw or "")


def canonical_json(value: Any) -> str:
    """Compact JSON with sorted keys and Chinese kept as characters (stable across runs)."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class CheckFailure:
    """One failed quality check."""

    check: str
    problem: str

    def __str__(self) -> str:
        return f"{self.check}: {self.problem}"


class Agent(ABC):
    """One agent of the health assistant; subclasses are registered with :func:`register_agent`."""

    name: ClassVar[str]
    title: ClassVar[str]
    system_prompt: ClassVar[str]
    input_model: ClassVar[type[BaseModel]]
    output_model: ClassVar[type[BaseModel]]
    #: (minimum, recommended) sample counts from seed 0's table.
    recommended_sizes: ClassVar[tuple[int, int]]
    #: How many worked examples go into an LLM prompt.
    num_few_shots: ClassVar[int] = 2

    def __init__(self) -> None:
        self._few_shots: list[tuple[dict[str, Any], dict[str, Any]]] | None = None

    # -- to implement ---------------------------------------------------------------------------
    @abstractmethod
    def sample_input(self, rng: random.Random) -> dict[str, Any]:
        """Draw one structured input from the vocabularies."""

    @abstractmethod
    def template_output(self, inp: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        """Build the answer for ``inp`` from templates (seed mode: no network, deterministic in ``rng``)."""

    def checks(self, inp: dict[str, Any], out: Any) -> Iterator[CheckFailure]:
        """Quality checks on a schema-valid output (an instance of :attr:`output_model`)."""
        return iter(())

    # -- provided -------------------------------------------------------------------------------
    def few_shots(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """Worked (input, output) examples: template outputs for fixed seeds, checked like any sample."""
        if self._few_shots is None:
            shots = []
            i = 0
            while len(shots) < self.num_few_shots and i < 50:
                rng = random.Random(f"medtune-fewshot:{self.name}:{i}")
                inp = self.sample_input(rng)
                out = self.template_output(inp, rng)
                if not self.validate(inp, out)[1]:
                    shots.append((inp, out))
                i += 1
            self._few_shots = shots
        return list(self._few_shots)

    def set_few_shots(self, shots: Sequence[tuple[dict[str, Any], dict[str, Any]]]) -> None:
        """Replace the worked examples (see :func:`medtune_core.synthesis.postprocess.refresh_few_shots`)."""
        self._few_shots = [(dict(i), dict(o)) for i, o in shots]

    def validate(self, inp: dict[str, Any], out: Any) -> tuple[dict[str, Any] | None, list[CheckFailure]]:
        """Validate an answer (dict or JSON text) against the schema, then the quality checks.

        Returns the normalised output (``model_dump``) and the failures; schema failures come as
        ``CheckFailure("schema", "field: problem")`` and stop before the quality checks.
        """
        try:
            if isinstance(out, str):
                model = self.output_model.model_validate_json(out)
            else:
                model = self.output_model.model_validate(out)
        except ValidationError as exc:
            return None, [CheckFailure("schema", _first_error(exc))]
        failures = list(self.checks(inp, model))
        return model.model_dump(mode="json"), failures

    def response_schema(self) -> dict[str, Any]:
        """The JSON schema of the answer (for ``response_format`` of an OpenAI-compatible API)."""
        return self.output_model.model_json_schema()


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ())) or "<root>"
    return f"{loc}: {err.get('msg', 'invalid')}"


AGENTS: dict[str, Agent] = {}


def register_agent(cls: type[Agent]) -> type[Agent]:
    """Class decorator adding an agent to :data:`AGENTS` under its ``name``."""
    AGENTS[cls.name] = cls()
    return cls


def get_agent(name: str) -> Agent:
    _load_agents()
    try:
        return AGENTS[name]
    except KeyError:
        raise MedtuneError(f"unknown agent {name!r}; known agents: {', '.join(agent_names())}") from None


def template_fingerprint(name: str) -> str:
    """What an agent's template output depends on: ``TEMPLATE_VERSION`` and the source of the agent's module, the
    vocabularies and the seed sampler. Part of every seed-mode cache key, so an edited template or vocabulary
    regenerates its batches without anyone remembering to bump a version."""
    import hashlib
    import inspect
    import sys

    from medtune_core.synthesis import seed, vocab

    agent_module = sys.modules[type(get_agent(name)).__module__]
    h = hashlib.sha256(TEMPLATE_VERSION.encode())
    for module in (agent_module, vocab, seed, sys.modules[__name__]):
        h.update(inspect.getsource(module).encode())
    return f"{TEMPLATE_VERSION}-{h.hexdigest()[:16]}"


def agent_names() -> list[str]:
    """Registered agent names in registration order (seed 0's order for the built-in five)."""
    _load_agents()
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


def _load_agents() -> None:
    import medtune_core.synthesis.agents  # noqa: F401  (registers the agents)


# ------------------------------------------------------------------------------ helpers for templates


def join_zh(items: Sequence[str], sep: str = "、") -> str:
    return sep.join(items)


def pick(rng: random.Random, options: Sequence[T]) -> T:
    return options[rng.randrange(len(options))]


def pick_some(rng: random.Random, options: Sequence[T], lo: int, hi: int) -> list[T]:
    """Between ``lo`` and ``hi`` distinct items, in the order they appear in ``options``."""
    hi = min(hi, len(options))
    lo = min(lo, hi)
    k = rng.randint(lo, hi)
    chosen = sorted(rng.sample(range(len(options)), k))
    return [options[i] for i in chosen]


def age_group(age: int) -> str:
    if age < 18:
        return "未成年人"
    if age < 40:
        return "青年"
    if age < 65:
        return "中年"
    return "老年人"
