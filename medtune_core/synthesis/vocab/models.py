"""The vocabularies as validated data: pydantic models of the YAML files beside this module, and their loader.

The files are written for clinicians to review (one entry per disease, drug, history, …); every cross-reference
between them is checked when they are loaded — a drug's contraindication names an existing history or state, a
disease's department exists, its drugs are in the formulary, its differentials are known conditions — and a
problem is reported as ``file:line: section[entry].field: what is wrong``.

A hospital can bring its own entries (its formulary, its departments): :func:`load_vocabulary` reads the built-in
files, then each extra file (or every ``*.yaml`` / ``*.json`` of an extra folder) in order. An entry with the name
of an existing one replaces it, a new name adds an entry, a mapping key replaces that key, any other value replaces
the value; the result is checked as a whole.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medtune_core.errors import MedtuneError

BUILTIN_DIR = Path(__file__).parent
#: The built-in files, in load order.
BUILTIN_FILES = ("symptoms.yaml", "patients.yaml", "departments.yaml", "diseases.yaml", "drugs.yaml", "phrases.yaml")
Sex = Literal["男", "女"]
Urgency = Literal["常规", "尽快就诊", "急诊"]
Category = Literal["非处方药", "处方药"]


class VocabularyError(MedtuneError):
    """A vocabulary file that cannot be used; the message names ``file:section[entry].field``."""


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BodyPart(_Entry):
    symptoms: list[str] = Field(min_length=1)
    department: str
    red_flags: list[str] = Field(min_length=2)
    follow_ups: list[str] = Field(min_length=1)
    sex: Sex | None = None
    ages: tuple[int, int] | None = None


class Severity(_Entry):
    level: str
    phrases: list[str] = Field(min_length=1)


class Duration(_Entry):
    text: str
    onset: str
    spoken: list[str] = Field(min_length=1)


class History(_Entry):
    """A past history or allergy; ``sex`` / ages: only patients of that sex and age can have it."""

    name: str
    sex: Sex | None = None
    min_age: int = Field(default=0, ge=0, le=120)
    max_age: int = Field(default=120, ge=0, le=120)

    def fits(self, sex: str | None, age: int | None) -> bool:
        return (self.sex is None or sex is None or sex == self.sex) and (
            age is None or self.min_age <= age <= self.max_age
        )


class State(History):
    """Pregnancy or breast-feeding: a history entry that advice may address by ``marker`` (孕妇: pregnant women)."""

    marker: str | None = None


class CurrentDrug(_Entry):
    """A drug a patient may already take; ``for_histories``: it is taken for one of these (none: no condition)."""

    name: str
    drug_class: str
    for_histories: list[str] = []


class Differential(_Entry):
    name: str
    reason: str = Field(min_length=4)


class Condition(_Entry):
    """A condition named only as a differential diagnosis."""

    name: str
    sex: Sex | None = None


class Disease(_Entry):
    """A common disease: what it looks like, what else it could be, how to confirm it and when to worry."""

    name: str
    body_part: str
    department: str
    sex: Sex | None = None
    ages: tuple[int, int] = (18, 85)
    severity: tuple[int, int] = (2, 4)
    urgency: Urgency = "常规"
    durations: list[str] = Field(min_length=1)
    key_symptoms: list[str] = Field(min_length=1)
    features: list[str] = Field(min_length=1)
    differentials: list[Differential] = Field(min_length=2)
    tests: list[str] = Field(min_length=1)
    red_flags: list[str] = Field(min_length=1)
    self_care: list[str] = Field(min_length=1)
    drugs: list[str] = []
    overview: str = ""
    prevention: list[str] = []

    @property
    def departments(self) -> list[str]:
        return self.department.split("/")


class Drug(_Entry):
    """A drug as the drug agent needs it: what it is for, who must not take it and how it is usually dosed."""

    name: str
    category: Category
    drug_class: str
    indications: list[str] = Field(min_length=1)
    contraindications: list[str] = []  # names of histories or states: never recommend
    caution_histories: list[str] = []  # histories or states that need a doctor's check first
    cautions: list[str] = Field(min_length=1)
    dosing: str
    min_age: int = Field(default=0, ge=0, le=120)
    max_age: int = Field(default=120, ge=0, le=120)
    sex: Sex | None = None  # a drug for one sex only (e.g. an alpha-blocker for 前列腺增生)
    interactions: dict[str, str] = {}  # class of a current drug → what happens
    notes: list[str] = []

    @property
    def fits(self, sex: str | None, age: int | None) -> bool:
        """Whether the drug is meant for a patient of this sex and age."""
        return (self.sex is None or sex is None or sex == self.sex) and (
            age is None or self.min_age <= age <= self.max_age
        )

    @property
    def topical(self) -> bool:
        """Applied to skin, eyes, nose or airways rather than swallowed."""
        return "外用" in self.drug_class or any(k in self.name for k in ("滴眼液", "喷雾剂", "气雾剂", "洗剂", "乳膏"))


class Vocabulary(_Entry):
    """Every vocabulary in one validated object (see the YAML files for what each section holds)."""

    body_parts: dict[str, BodyPart]
    accompanying_symptoms: list[str] = Field(min_length=1)
    severities: dict[int, Severity]
    durations: dict[str, Duration]
    general_follow_ups: list[str] = Field(min_length=1)
    sexes: list[Sex]
    age_range: tuple[int, int]
    no_history: str
    histories: list[History] = Field(min_length=1)
    states: list[State] = []
    current_drugs: list[CurrentDrug] = []
    sex_specific_terms: dict[Sex, list[str]] = {}
    question_openers: list[str] = Field(min_length=1)
    departments: list[str] = Field(min_length=1)
    diseases: list[Disease] = Field(min_length=3)
    other_conditions: list[Condition] = []
    drugs: list[Drug] = []
    general_advice: list[str] = Field(min_length=1)
    disclaimers: list[str] = Field(min_length=1)
    unsafe_advice: list[str] = Field(min_length=1)
    vague_phrases: list[str] = Field(min_length=1)
    empathy_phrases: list[str] = Field(min_length=1)
    #: Which file each entry came from (``section[name]`` or ``section``), for error messages; not data.
    origins: dict[str, str] = Field(default_factory=dict, exclude=True)
    fingerprint: str = ""

    # ------------------------------------------------------------------------------------------ lookups
    @cached_property
    def disease_by_name(self) -> dict[str, Disease]:
        return {d.name: d for d in self.diseases}

    @cached_property
    def drug_by_name(self) -> dict[str, Drug]:
        return {d.name: d for d in self.drugs}

    @cached_property
    def history_by_name(self) -> dict[str, History]:
        return {h.name: h for h in [*self.histories, *self.states]}

    @cached_property
    def condition_sex(self) -> dict[str, str | None]:
        """Every known condition (disease or differential-only) → the sex that can have it (None: both)."""
        return {c.name: c.sex for c in [*self.other_conditions, *self.diseases]}

    @cached_property
    def symptom_sex(self) -> dict[str, str]:
        """Symptoms only one sex reports (those of a sex-specific body part)."""
        return {s: p.sex for p in self.body_parts.values() if p.sex for s in p.symptoms}

    def terms_for_other_sex(self, sex: str) -> list[str]:
        """Words that must not describe a patient of ``sex``: the other sex's terms, histories, states, conditions."""
        return self._other_sex_terms[sex]

    @cached_property
    def _other_sex_terms(self) -> dict[str, list[str]]:
        return {
            sex: sorted(
                {t for s, terms in self.sex_specific_terms.items() if s != sex for t in terms}
                | {h.name for h in self.history_by_name.values() if h.sex not in (None, sex)}
                | {n for n, s in self.condition_sex.items() if s not in (None, sex)}
            )
            for sex in self.sexes
        }

    def fits(self, text: str, sex: str | None, history: Sequence[str] = ()) -> bool:
        """Whether a phrase may describe this patient: no term of the other sex, no state the patient lacks."""
        if sex is not None and any(t in text for t in self.terms_for_other_sex(sex)):
            return False
        return all(s.marker not in text or s.name in history for s in self.states if s.marker)

    def only_fitting(self, texts: Sequence[str], sex: str | None, history: Sequence[str] = ()) -> list[str]:
        """The phrases of ``texts`` that fit the patient (:meth:`fits`), in order."""
        return [t for t in texts if self.fits(t, sex, history)]

    def histories_for(self, sex: str, age: int) -> list[str]:
        """Past histories a patient of this sex and age can have (states not included)."""
        return [h.name for h in self.histories if h.fits(sex, age)]

    @cached_property
    def current_drug_by_name(self) -> dict[str, CurrentDrug]:
        return {c.name: c for c in self.current_drugs}

    def states_for(self, sex: str, age: int) -> list[str]:
        return [s.name for s in self.states if s.fits(sex, age)]

    # ------------------------------------------------------------------------------------------ checks
    def reference_problems(self) -> Iterator[tuple[str, str]]:
        """``(where, problem)`` for every dangling cross-reference; ``where`` is ``section[entry].field``."""
        deps = set(self.departments)
        symptoms = {s for p in self.body_parts.values() for s in p.symptoms} | set(self.accompanying_symptoms)
        patient_terms = set(self.history_by_name)
        classes = {c.drug_class for c in self.current_drugs}
        conditions = set(self.condition_sex)
        for c in self.current_drugs:
            for h in c.for_histories:
                if h not in patient_terms:
                    yield f"current_drugs[{c.name}].for_histories", f"unknown history {h!r}"
        for name, p in self.body_parts.items():
            for dep in p.department.split("/"):
                if dep not in deps:
                    yield f"body_parts[{name}].department", f"unknown department {dep!r}"
        for d in self.diseases:
            w = f"diseases[{d.name}]"
            if d.body_part not in self.body_parts:
                yield f"{w}.body_part", f"unknown body part {d.body_part!r}"
            for dep in d.departments:
                if dep not in deps:
                    yield f"{w}.department", f"unknown department {dep!r}"
            for s in d.key_symptoms:
                if s not in symptoms:
                    yield f"{w}.key_symptoms", f"unknown symptom {s!r} (not on any body part or accompanying list)"
            for code in d.durations:
                if code not in self.durations:
                    yield f"{w}.durations", f"unknown duration {code!r}"
            for drug in d.drugs:
                if drug not in self.drug_by_name:
                    yield f"{w}.drugs", f"unknown drug {drug!r} (not in the formulary)"
            for diff in d.differentials:
                if diff.name not in conditions:
                    yield f"{w}.differentials", f"unknown condition {diff.name!r} (add it to other_conditions)"
                if diff.name == d.name:
                    yield f"{w}.differentials", "a disease cannot be its own differential"
            if not (d.ages[0] <= d.ages[1] and d.severity[0] <= d.severity[1]):
                yield w, "ages and severity are (low, high) ranges"
        for drug in self.drugs:
            w = f"drugs[{drug.name}]"
            for field in ("contraindications", "caution_histories"):
                for h in getattr(drug, field):
                    if h not in patient_terms:
                        yield f"{w}.{field}", f"unknown history or state {h!r}"
            for cls in drug.interactions:
                if cls not in classes:
                    yield f"{w}.interactions", f"unknown drug class {cls!r} (no current drug has it)"
        all_text = json.dumps(self.model_dump(mode="json"), ensure_ascii=False)
        for sex, terms in self.sex_specific_terms.items():
            for t in terms:
                if all_text.count(t) < 2:  # once: only in this list
                    yield f"sex_specific_terms[{sex}]", f"term {t!r} is used nowhere in the vocabularies"


# ---------------------------------------------------------------------------------------------- loading


_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.load(text, Loader=_LOADER)
    except (OSError, yaml.YAMLError, json.JSONDecodeError) as exc:
        raise VocabularyError(f"{path}: cannot read vocabulary: {exc}") from None
    if not isinstance(data, dict):
        raise VocabularyError(f"{path}: a vocabulary file is a mapping of sections (diseases:, drugs:, ...)")
    return data


def _files(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    out = [BUILTIN_DIR / n for n in BUILTIN_FILES]
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.suffix in (".yaml", ".yml", ".json"))
        elif p.is_file():
            out.append(p)
        else:
            raise VocabularyError(f"{p}: vocabulary file not found")
    return out


def _merge(merged: dict[str, Any], origins: dict[str, str], data: dict[str, Any], name: str) -> None:
    for section, value in data.items():
        if section not in Vocabulary.model_fields or section in ("origins", "fingerprint"):
            raise VocabularyError(
                f"{_where({section: name}, section)}: unknown section (known: {', '.join(_SECTIONS)})"
            )
        old = merged.get(section)
        if isinstance(value, list) and value and all(isinstance(v, dict) and "name" in v for v in value):
            by_name = {e["name"]: e for e in (old or []) if isinstance(e, dict)}
            for e in value:
                by_name[e["name"]] = e
                origins[f"{section}[{e['name']}]"] = name
            merged[section] = list(by_name.values())
        elif isinstance(value, dict) and isinstance(old, dict):
            merged[section] = {**old, **value}
            origins.update({f"{section}[{k}]": name for k in value})
        else:
            merged[section] = value
        origins[section] = name


_SECTIONS = [k for k in Vocabulary.model_fields if k not in ("origins", "fingerprint")]


def _lines(path: str) -> dict[str, int]:
    """Line of each section and entry (``section``, ``section[name]``, ``section[key]``) in a YAML file (read again
    only to report an error)."""
    try:
        root = yaml.compose(
            Path(path).read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        )
    except (OSError, yaml.YAMLError):
        return {}
    lines: dict[str, int] = {}
    for key, value in root.value if isinstance(root, yaml.MappingNode) else []:
        lines[key.value] = key.start_mark.line + 1
        for item in value.value if isinstance(value, yaml.SequenceNode) else []:
            name = next((v.value for k, v in getattr(item, "value", []) if getattr(k, "value", None) == "name"), None)
            if isinstance(item, yaml.MappingNode) and name is not None:
                lines[f"{key.value}[{name}]"] = item.start_mark.line + 1
        for k, _ in value.value if isinstance(value, yaml.MappingNode) else []:
            lines[f"{key.value}[{k.value}]"] = k.start_mark.line + 1
    return lines


def _where(origins: dict[str, str], where: str) -> str:
    """``file:line: where`` for a ``section[entry].field`` path (the line of the entry, else of its section)."""
    entry = where.split("].")[0] + "]" if "]" in where else where.split(".")[0]
    section = where.split("[")[0].split(".")[0]
    path = origins.get(entry) or origins.get(section, "?")
    lines = _lines(path) if path.endswith((".yaml", ".yml")) else {}
    line = lines.get(entry) or lines.get(section)
    return f"{path}:{line}: {where}" if line else f"{path}: {where}"


def load_vocabulary(paths: Sequence[str | os.PathLike[str]] = ()) -> Vocabulary:
    """The built-in vocabularies, extended or overridden by ``paths`` (files or folders), validated as a whole.

    Raises :class:`VocabularyError` naming ``file:line: section[entry].field`` for a bad value or dangling
    reference.
    """
    files = _files(paths)
    merged: dict[str, Any] = {}
    origins: dict[str, str] = {}
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.read_bytes())
        _merge(merged, origins, _read(f), str(f))
    try:
        vocab = Vocabulary.model_validate({**merged, "origins": origins, "fingerprint": digest.hexdigest()[:16]})
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = list(err["loc"])
        where = str(loc[0]) if loc else "<root>"
        if len(loc) > 1:
            entry = merged.get(loc[0])
            key = loc[1]
            if isinstance(entry, list) and isinstance(key, int) and isinstance(entry[key], dict):
                key = entry[key].get("name", key)
            where += f"[{key}]" + "".join(f".{p}" for p in loc[2:])
        raise VocabularyError(f"{_where(origins, where)}: {err['msg']}") from None
    problems = list(vocab.reference_problems())
    if problems:
        shown = "; ".join(f"{_where(origins, w)}: {p}" for w, p in problems[:10])
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise VocabularyError(f"vocabulary has {len(problems)} dangling reference(s): {shown}{more}")
    return vocab
