"""The agent registry: one :class:`Agent` subclass per health-assistant agent, registered by name.

An agent is everything the synthesis flow needs to know about one kind of SFT sample:

- ``sample_input(rng)``: structured input fields drawn from :mod:`medtune_core.synthesis.vocab`;
- ``system_prompt``: the task prompt (the alpaca ``instruction`` and the LLM's system message);
- ``output_model``: the pydantic schema of the JSON answer (also sent to the LLM as its response format);
- ``few_shots()``: worked examples for the LLM prompt;
- ``checks(input, output)``: quality checks beyond the schema, each failure a ``(check, problem)`` pair;
- ``template_output(input, rng)``: the template-mode generator, building the answer from the input offline.

Adding an agent means writing one module under :mod:`medtune_core.synthesis.agents` with a class decorated
by :func:`register_agent`; the package imports every module in it. Looking agents up by name
(:func:`medtune_core.synthesis.registry.get_agent`) lives in :mod:`.registry`, which imports the agents: this module
imports none of them, so the agents can import it without a cycle.
"""

from __future__ import annotations

import json
import random
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ValidationError

from medtune_core.synthesis.clinical import ClinicalFacts, check_facts

T = TypeVar("T")

#: Version of the templates; part of every template-mode cache key, bump it when generated text changes.
TEMPLATE_VERSION = "2"


@dataclass
class Sample:
    """One synthesized sample before it is turned into a record."""

    agent: str
    index: int
    input: dict[str, Any]
    output: dict[str, Any] | None
    source: str = "seed"  # "seed" (template mode: the original scripts' label, kept in file names) | "llm"
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
    #: (minimum, recommended) sample counts from the original guide's table.
    recommended_sizes: ClassVar[tuple[int, int]]
    #: How many worked examples go into an LLM prompt.
    num_few_shots: ClassVar[int] = 2
    #: Output fields that describe or advise this patient (checked for phrases that cannot apply to them).
    patient_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        self._few_shots: list[tuple[dict[str, Any], dict[str, Any]]] | None = None

    # -- to implement ---------------------------------------------------------------------------
    @abstractmethod
    def sample_input(self, rng: random.Random) -> dict[str, Any]:
        """Draw one structured input from the vocabularies."""

    @abstractmethod
    def template_output(self, inp: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        """Build the answer for ``inp`` from templates (template mode: no network, deterministic in ``rng``)."""

    def checks(self, inp: dict[str, Any], out: Any) -> Iterator[CheckFailure]:
        """Quality checks on a schema-valid output (an instance of :attr:`output_model`)."""
        return iter(())

    def clinical_facts(self, inp: dict[str, Any], out: dict[str, Any]) -> ClinicalFacts:
        """What the sample states about its patient, from the field names the built-in agents share (``age``,
        ``sex``, ``history``, ``symptoms`` / ``main_symptoms``, ``condition``, ``preliminary_diagnosis`` /
        ``possible_conditions``, ``department``, ``recommendations[].drug``, ``differential_diagnosis``, and the
        :attr:`patient_fields`). An agent whose patient is stated otherwise (free text) overrides it."""
        return facts_from_fields(inp, out, self.patient_fields)

    def quality_failures(self, inp: dict[str, Any], out: BaseModel) -> list[CheckFailure]:
        """The agent's quality checks, then the clinical rules (``clinical:<rule>``) on a schema-valid answer."""
        failures = list(self.checks(inp, out))
        facts = self.clinical_facts(inp, out.model_dump(mode="json"))
        failures += [CheckFailure(f"clinical:{v.rule}", v.problem) for v in check_facts(facts)]
        return failures

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
        return model.model_dump(mode="json"), self.quality_failures(inp, model)

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


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def facts_from_fields(inp: dict[str, Any], out: dict[str, Any], patient_fields: Sequence[str] = ()) -> ClinicalFacts:
    """:class:`ClinicalFacts` of a sample whose fields carry the shared names (see :meth:`Agent.clinical_facts`)."""
    age = inp.get("age")
    main = list(inp.get("main_symptoms") or [])
    diagnoses = [out.get("preliminary_diagnosis"), inp.get("condition"), *(out.get("possible_conditions") or [])]
    return ClinicalFacts(
        age=age if isinstance(age, int) else None,
        sex=inp.get("sex"),
        history=list(inp.get("history") or []),
        symptoms=list(inp.get("symptoms") or []) + main + list(inp.get("other_symptoms") or []),
        main_symptoms=main,
        diagnoses=[d for d in diagnoses if isinstance(d, str)],
        named_conditions=[x.get("disease", "") for x in out.get("differential_diagnosis") or [] if isinstance(x, dict)],
        department=out.get("department") or out.get("suggested_department"),
        body_part=inp.get("body_part"),
        current_drugs=list(inp.get("current_drugs") or []),
        recommended_drugs=[r.get("drug", "") for r in out.get("recommendations") or [] if isinstance(r, dict)],
        patient_phrases=_strings(inp.get("symptom_details"))
        + [s for f in patient_fields for s in _strings(out.get(f))],
    )


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
