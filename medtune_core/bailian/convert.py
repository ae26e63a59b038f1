"""MedQA multiple-choice files → Bailian SFT files ``{"messages": [system, user, assistant]}``.

Parsing and checking is the ``medqa`` record format's job (options as an object or a list of ``{key, value}``,
``answer_idx`` must be one of the options, ``answer`` must equal that option's text, no empty field); this module
only decides the prompt (``auto``: Chinese or English as the text of the file reads, else as asked; both
configurable), writes the rows exactly as Bailian expects them (no extra keys) and maps a MedQA directory tree to
the output names of the original toolkit.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from medtune_core.dataio import DatasetReader, DatasetWriter, Manifest, Policy, rejects_path_for, source_entry
from medtune_core.dataio.atomic import remove_stale_temp_files
from medtune_core.errors import MedtuneError
from medtune_core.formats import (
    EN_MCQ_TEMPLATE,
    ZH_MCQ_TEMPLATE,
    Conversation,
    MCQPromptTemplate,
    MultipleChoice,
    mcq_to_conversation,
)

Language = Literal["zh", "en"]
LanguageChoice = Literal["auto", "zh", "en"]
LANGUAGES = ("auto", "zh", "en")
SPLITS = ("train", "dev", "test")
log = logging.getLogger(__name__)

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z]")


def detect_language(path: str | os.PathLike[str], sample_rows: int = 200) -> Language | None:
    """``zh`` or ``en`` as the questions and options of the first ``sample_rows`` rows read; None when they hold
    no letters at all. A Chinese character counts as much as four Latin letters (about a word each), so Chinese
    text with Latin abbreviations (CT, mg) still reads Chinese."""
    cjk = latin = 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for n, line in enumerate(fh):
            if n >= sample_rows:
                break
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(row, dict):
                continue
            options = row.get("options")
            values = options.values() if isinstance(options, dict) else options if isinstance(options, list) else []
            text = " ".join([str(row.get("question") or ""), *(json.dumps(v, ensure_ascii=False) for v in values)])
            cjk += len(_CJK.findall(text))
            latin += len(_LATIN.findall(text))
    if cjk == 0 and latin == 0:
        return None
    return "zh" if cjk >= latin / 4 else "en"


def resolve_language(path: str | os.PathLike[str], language: str, fallback: Language = "zh") -> Language:
    """``language`` itself, or for ``auto`` the language the file's text reads in (``fallback`` when it cannot
    tell); the choice is logged."""
    if language not in LANGUAGES:
        raise MedtuneError(f"unknown language {language!r}; expected one of {', '.join(LANGUAGES)}")
    if language != "auto":
        return language  # type: ignore[return-value]
    found = detect_language(path)
    if found is None:
        log.warning("%s: cannot tell the language from the text; using %s", path, fallback)
        return fallback
    log.info("%s: text reads %s", path, found)
    return found


@dataclass(frozen=True)
class BailianPrompts:
    """The prompt template per language; ``system`` replaces the system prompt of both when given."""

    zh: MCQPromptTemplate = ZH_MCQ_TEMPLATE
    en: MCQPromptTemplate = EN_MCQ_TEMPLATE

    def template(self, language: Language) -> MCQPromptTemplate:
        if language not in ("zh", "en"):
            raise MedtuneError(f"unknown language {language!r}; expected 'zh' or 'en'")
        return self.zh if language == "zh" else self.en

    def with_system(self, system: str | None) -> BailianPrompts:
        """The same prompts with one system prompt for every language (None keeps the defaults)."""
        if system is None:
            return self
        return BailianPrompts(zh=replace(self.zh, system=system), en=replace(self.en, system=system))


DEFAULT_PROMPTS = BailianPrompts()


def mcq_to_messages(mcq: MultipleChoice, template: MCQPromptTemplate = ZH_MCQ_TEMPLATE) -> dict[str, Any]:
    """One Bailian row: ``{"messages": [...]}`` and nothing else (ids, subjects, meta_info stay out)."""
    conv = mcq_to_conversation(mcq, template)
    return {"messages": [{"role": m.role, "content": m.content} for m in conv.messages]}


@dataclass(frozen=True)
class MedQASource:
    """One MedQA subset: where its split files lie under ``questions/`` and what its outputs are called."""

    name: str  # output prefix, e.g. ``mainland_4opt``
    region: str  # mainland | taiwan | us
    pattern: str  # relative to ``questions/``, ``{split}`` replaced
    language: Language

    def source_path(self, questions_dir: Path, split: str) -> Path:
        return questions_dir / self.pattern.format(split=split)

    def output_name(self, split: str) -> str:
        return f"{self.name}_{split}.jsonl"


#: The MedQA layouts converted (a table: adding a subset is one line).
MEDQA_SOURCES: tuple[MedQASource, ...] = (
    MedQASource("mainland_4opt", "mainland", "Mainland/4_options/phrases_no_exclude_{split}.jsonl", "zh"),
    MedQASource("mainland_5opt", "mainland", "Mainland/{split}.jsonl", "zh"),
    MedQASource("taiwan", "taiwan", "Taiwan/{split}.jsonl", "zh"),
    MedQASource("us_4opt", "us", "US/4_options/phrases_no_exclude_{split}.jsonl", "en"),
    MedQASource("us_5opt", "us", "US/{split}.jsonl", "en"),
)
REGIONS = ("mainland", "taiwan", "us")


def questions_dir(root: str | os.PathLike[str]) -> Path:
    """Accept the MedQA root (holding ``questions/``) or the ``questions`` folder itself."""
    p = Path(root)
    if (p / "questions").is_dir():
        return p / "questions"
    if p.is_dir():
        return p
    raise FileNotFoundError(f"{p}: no such MedQA folder")


def convert_medqa_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    language: LanguageChoice = "zh",
    prompts: BailianPrompts = DEFAULT_PROMPTS,
    policy: Policy | str = Policy.STRICT,
    extra: dict[str, Any] | None = None,
    fallback_language: Language = "zh",
) -> Manifest:
    """Convert one MedQA JSONL file; returns the manifest saved beside ``dst``.

    ``language`` ``auto`` reads the file's text (see :func:`detect_language`). ``strict``: the first bad row raises
    ``RecordError`` (``path:line: field: problem``) and nothing is written. ``skip``: bad rows go to
    ``<dst>.rejects.jsonl`` with their line and reason, and are counted in the manifest.
    """
    policy = Policy(policy)
    resolved = resolve_language(src, language, fallback_language)
    template = prompts.template(resolved)
    remove_stale_temp_files(dst)
    rejects = rejects_path_for(dst) if policy is Policy.SKIP else None
    reader = DatasetReader(src, "medqa", policy=policy, rejects_path=rejects)
    meta = {"language": resolved, "language_from": language, "system_prompt": template.system, **(extra or {})}
    with DatasetWriter(dst, "messages", extra=meta) as writer:
        for record in reader:
            assert isinstance(record, MultipleChoice)
            conv = mcq_to_conversation(record, template)
            writer.write(Conversation(conv.messages, {}))
        writer.sources = [source_entry(reader)]
        if rejects is not None:
            writer.extra["rejects"] = {"count": reader.stats.rejected, "path": str(rejects)}
    assert writer.manifest is not None
    return writer.manifest


@dataclass(frozen=True)
class PlannedConversion:
    source: MedQASource
    split: str
    src: Path
    dst: Path


def plan_medqa_tree(
    root: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    regions: Iterable[str] | None = None,
    splits: Iterable[str] | None = None,
    subsets: Iterable[str] | None = None,
) -> list[PlannedConversion]:
    """The conversions a MedQA tree offers, filtered by region, split and subset name; missing files are left out."""
    qdir = questions_dir(root)
    regions = _check_choice(regions, REGIONS, "region")
    splits = _check_choice(splits, SPLITS, "split")
    names = [s.name for s in MEDQA_SOURCES]
    subsets = _check_choice(subsets, names, "subset")
    out = Path(out_dir)
    plan = []
    for source in MEDQA_SOURCES:
        if source.region not in regions or source.name not in subsets:
            continue
        for split in splits:
            src = source.source_path(qdir, split)
            if src.is_file():
                plan.append(PlannedConversion(source, split, src, out / source.output_name(split)))
    return plan


def _check_choice(values: Iterable[str] | None, allowed: Iterable[str], what: str) -> list[str]:
    allowed = list(allowed)
    if values is None:
        return allowed
    values = [v.strip().lower() for v in values]
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise MedtuneError(f"unknown {what} {', '.join(map(repr, unknown))}; expected one of {', '.join(allowed)}")
    return values


def convert_medqa_tree(
    root: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    regions: Iterable[str] | None = None,
    splits: Iterable[str] | None = None,
    subsets: Iterable[str] | None = None,
    prompts: BailianPrompts = DEFAULT_PROMPTS,
    policy: Policy | str = Policy.STRICT,
    language: LanguageChoice = "auto",
) -> list[Manifest]:
    """Convert every (filtered) MedQA subset and split under ``root`` to ``out_dir/<subset>_<split>.jsonl``.

    ``language`` ``auto`` reads each file's text, the subset's usual language (US: English) where it cannot tell.
    """
    plan = plan_medqa_tree(root, out_dir, regions=regions, splits=splits, subsets=subsets)
    if not plan:
        raise MedtuneError(f"{root}: no MedQA file found for the chosen regions/splits (expected questions/...)")
    return [
        convert_medqa_file(
            p.src,
            p.dst,
            language=language,
            fallback_language=p.source.language,
            prompts=prompts,
            policy=policy,
            extra={"dataset": p.source.name, "region": p.source.region, "split": p.split},
        )
        for p in plan
    ]
