"""Clinical consistency rules, driven by the vocabularies, that every synthesized sample must pass.

A sample can be valid JSON, pass its agent's quality checks and still teach a model clinical nonsense: a woman
with 前列腺增生, a man with 痛经, 妊娠期 at 71, a drug recommended against its contraindication, a diagnosis that
explains none of the symptoms, a department that does not treat the diagnosis. Each rule here catches one kind,
by name; its data (which sex has which condition, history, symptom or phrase; the ages at which a state is
plausible; a drug's contraindications and ages; a disease's symptoms and departments) comes from the vocabulary
files, so a hospital that brings its own vocabulary gets rules that match it.

The rules read :class:`ClinicalFacts`, what a sample says about one patient; each agent extracts them from its
input and answer (:meth:`medtune_core.synthesis.base.Agent.clinical_facts`). Template mode generates within these
rules (0 violations); an LLM answer that breaks one is rejected as ``quality:clinical:<rule>``; ``medtune audit``
runs them on any agent output file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from medtune_core.synthesis import vocab as V
from medtune_core.synthesis.vocab import Vocabulary


@dataclass
class ClinicalFacts:
    """What one sample states about its patient (empty fields: the sample does not say)."""

    age: int | None = None
    sex: str | None = None
    history: list[str] = field(default_factory=list)
    #: the patient's own symptoms (form, question); ``main_symptoms``: the ones a listed condition must explain
    symptoms: list[str] = field(default_factory=list)
    main_symptoms: list[str] = field(default_factory=list)
    #: conditions the answer assigns to this patient (diagnosis, possible conditions, treated condition)
    diagnoses: list[str] = field(default_factory=list)
    #: conditions only named (differentials, a candidate answer's guess): checked for sex, not for symptoms
    named_conditions: list[str] = field(default_factory=list)
    department: str | None = None
    body_part: str | None = None
    #: drugs the patient already takes; ``recommended_drugs``: drugs the answer recommends
    current_drugs: list[str] = field(default_factory=list)
    recommended_drugs: list[str] = field(default_factory=list)
    #: phrases that describe or advise this patient (details, red flags, tests, cautions, questions)
    patient_phrases: list[str] = field(default_factory=list)
    #: free text addressed to this patient that may also carry general knowledge (checked for the other sex's
    #: terms only: "孕妇易发展为重症" in a disease overview is not advice to a pregnant patient)
    patient_text: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return self.age is None and self.sex is None and not (self.diagnoses or self.recommended_drugs)


@dataclass(frozen=True)
class Violation:
    """One broken rule: ``rule`` is the rule's name, ``problem`` says what in this sample breaks it."""

    rule: str
    problem: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.problem}"


Rule = Callable[[ClinicalFacts, Vocabulary], Iterator[str]]
#: Rule name → rule; each yields one problem text per violation.
RULES: dict[str, Rule] = {}


def rule(name: str) -> Callable[[Rule], Rule]:
    def add(fn: Rule) -> Rule:
        RULES[name] = fn
        return fn

    return add


@rule("sex_specific_history")
def _sex_history(f: ClinicalFacts, v: Vocabulary) -> Iterator[str]:
    for h in f.history:
        entry = v.history_by_name.get(h)
        if entry and f.sex and entry.sex and entry.sex != f.sex:
            yield f"{h} in the history of a patient of sex {f.sex} (only {entry.sex})"


@rule("pregnancy_age")
def _state_age(f: ClinicalFacts, v: Vocabulary) -> Iterator[str]:
    states = {s.name: s for s in v.states}
    for h in f.history:
        s = states.get(h)
        if s and f.age is not None and not s.min_age <= f.age <= s.max_age:
            yield f"{h} at age {f.age} (plausible {s.min_age}-{s.max_age})"


@rule("history_age")
def _history_age(f: ClinicalFacts, v: Vocabulary) -> Iterator[str]:
    for h in f.history:
        entry = next((x for x in v.histories if x.name == h), None)
        if entry and f.age is not None and not entry.min_age <= f.age <= entry.max_age:
            yield f"{h} at age {f.age} (plausible {entry.min_age}-{entry.max_age})"


@rule("sex_specific_condition")
def _sex_condition(f: ClinicalFacts, v: Vocabulary) -> Iterator[str]:
    for c in dict.fromkeys([*f.diagnoses, *f.named_conditions]):
        sex = v.condition_sex.get(c)
        if f.sex and sex and sex != f.sex:
            yield f"{c} for a patient of sex {f.sex} (only {sex})"


@rule("sex_specific_symptom")
def _sex_symptom(f: ClinicalFacts, v: Vocabulary) -> Iterator[str]:
    if not f.sex:
        return
    other = v.terms_for_other_sex(f.sex)
    for s in dict.fromkeys([*f.symptoms, *f.main_symptoms]):
        sex = v.symptom_sex.get(s)
        if (sex and sex != f.sex) or any(t in s for t in other):
            yield f"symptom {s!r} for a patient of sex {f.sex}"


@rule("sex_specific_advice")
def _sex_phrase(f: ClinicalFacts, v: Vocabulary) -> Iterator[str]:
    if not f.sex:
        return
    other = v.terms_for_other_sex(f.sex)
    for p in [*f.patient_phrases, *f.patient_text]:
        hit = next((t for t in other if t in p), None)
        if hit:
            yield f"{p!r} names {hit}, which does not apply to a patient of sex {f.sex}"


@rule("pregnancy_advice")
def _state_phrase(f: ClinicalFacts, v: Vocabulary) -> Iterator[str]:
    for s in v.states:
        if not s.marker or s.name in f.history:
            continue
        for p in f.patient_phrases:
            if s.marker in p:
                yield f"{p!r} addresses {s.name} ({s.marker}), which the patient is not in"


@rule("current_drug_indication")
def _current_drug(f: ClinicalFacts, v: Vocabulary) -> Iterator[str]:
    for name in f.current_drugs:
        c = v.current_drug_by_name.get(name)
        if c and c.for_histories and not set(c.for_histories) & set(f.history):
            yield f"takes {name} without any history it is for ({'、'.join(c.for_histories)})"


@rule("drug_age")
def _drug_age(f: ClinicalFacts, v: Vocabulary) -> Iterator[str]:
    for name in f.recommended_drugs:
        d = v.drug_by_name.get(name)
        if d and f.age is not None and not d.min_age <= f.age <= d.max_age:
            yield f"{name} recommended at age {f.age} (dosed for {d.min_age}-{d.max_age})"


@rule("sex_specific_drug")
def _drug_sex(f: ClinicalFacts, v: Vocabulary) -> Iterator[str]:
    for name in f.recommended_drugs:
        d = v.drug_by_name.get(name)
        if d and d.sex and f.sex and d.sex != f.sex:
            yield f"{name} recommended for a patient of sex {f.sex} (only {d.sex})"


@rule("contraindicated_drug")
def _contraindicated(f: ClinicalFacts, v: Vocabulary) -> Iterator[str]:
    for name in f.recommended_drugs:
        d = v.drug_by_name.get(name)
        blocked = [h for h in f.history if d and h in d.contraindications]
        if blocked:
            yield f"{name} recommended despite {'、'.join(blocked)}"


@rule("symptom_condition")
def _explains(f: ClinicalFacts, v: Vocabulary) -> Iterator[str]:
    own = f.main_symptoms or f.symptoms
    if not own:
        return
    for c in f.diagnoses:
        d = v.disease_by_name.get(c)
        if d and not any(s in d.key_symptoms for s in own):
            yield f"{c} explains none of the symptoms {'、'.join(own)}"


@rule("department_condition")
def _department(f: ClinicalFacts, v: Vocabulary) -> Iterator[str]:
    if not f.department:
        return
    allowed = {dep for c in f.diagnoses if c in v.disease_by_name for dep in v.disease_by_name[c].departments}
    if f.body_part in v.body_parts:
        allowed |= set(v.body_parts[f.body_part].department.split("/"))
    if not allowed:
        return
    wrong = [dep for dep in f.department.split("/") if dep not in allowed]
    if wrong:
        yield f"department {f.department} does not treat {'、'.join(f.diagnoses) or f.body_part}"


def check_facts(facts: ClinicalFacts, vocab: Vocabulary | None = None) -> list[Violation]:
    """Every rule on one sample's facts; an empty list when the sample is clinically consistent."""
    v = vocab or V.current()
    return [Violation(name, problem) for name, fn in RULES.items() for problem in fn(facts, v)]
