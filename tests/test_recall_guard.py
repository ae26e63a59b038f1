"""No test question reaches training in any form: planted copies of the shipped benchmark sample's questions
(verbatim, 1-2 characters edited, options appended in another order; short and long questions) are added to the
shipped pool and the whole recall runs with each offline backend's defaults. None may reach the training set, its
random mix or the control, and at most 1 % of the clean pool rows may be dropped. Plus the per-row cap and the
[UNK] refusal."""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from medtune_core.errors import MedtuneError
from medtune_core.formats import MultipleChoice
from medtune_core.hashing import file_sha256
from medtune_core.recall import (
    Benchmark,
    EmbeddingConfig,
    RecallConfig,
    RecallPipelineConfig,
    load_benchmark,
    make_backend,
    run_recall_pipeline,
)
from medtune_core.recall.decontam import Decontaminator, normalize_strict
from medtune_core.recall.pool import full_text, iter_pool, row_id
from medtune_core.recall.search import assign_capped
from medtune_core.samples import samples_dir

BENCH_ZH = samples_dir() / "benchmark"
BENCH_EN = samples_dir() / "medqa" / "questions" / "US"
POOL = samples_dir() / "pool"
POOL_EN = POOL / "medical_pool_en.jsonl"


def _edit(text: str, edits: int, rng: np.random.Generator, filler: str) -> str:
    """``edits`` single-character edits (substitute, delete, insert in turn) at random inner positions."""
    chars = list(text)
    for k in range(edits):
        i = int(rng.integers(1, len(chars)))  # any position but the first, the last included
        if k % 3 == 0:
            chars[i] = filler if chars[i] != filler else filler.upper() if filler.isascii() else "甲"
        elif k % 3 == 1:
            del chars[i]
        else:
            chars.insert(i, filler)
    return "".join(chars)


def planted_rows(bench: Benchmark, filler: str, n: int = 30, seed: int = 0) -> list[tuple[str, MultipleChoice, str]]:
    """``n`` questions spread over the length range (shortest to longest), each planted one way: verbatim, with
    1 (short) or 2 (long) characters edited, or followed by its options in reverse order (some also edited)."""
    rng = np.random.default_rng(seed)
    by_length = sorted(bench.questions, key=lambda q: len(q.question))
    rows = []
    for j, i in enumerate(np.linspace(0, len(by_length) - 1, n).astype(int).tolist()):
        q = by_length[i]
        edits = 1 if len(q.question) < 15 else 2
        kind = ("verbatim", "edited", "reordered")[j % 3]
        if kind == "verbatim":
            text = q.question
        elif kind == "edited":
            text = _edit(q.question, edits, rng, filler)
        else:
            stem = q.question if j % 2 else _edit(q.question, edits, rng, filler)
            text = stem + "\n" + "\n".join(f"{k}. {v}" for k, v in reversed(q.options.items()))
        rows.append((kind, q, text))
    return rows


def _sharegpt(user: str, reply: str) -> str:
    turns = [{"from": "human", "value": user}, {"from": "gpt", "value": reply}]
    return json.dumps({"conversations": turns}, ensure_ascii=False) + "\n"


def _lcs(a: str | list[str], b: str | list[str]) -> int:
    m = difflib.SequenceMatcher(None, a, b, autojunk=False).find_longest_match(0, len(a), 0, len(b))
    return m.size


def _tokens(text: str) -> list[str]:
    """Characters for Chinese, words for English (the oracle's own split)."""
    norm = normalize_strict(text)
    return list(norm) if sum(ord(c) > 0x2E80 for c in norm) > len(norm) / 2 else re.findall(r"\w+", text.lower())


def _carries_test_text(text: str, questions: list[str], answers: list[list[str]]) -> bool:
    """Independent oracle (difflib, not the code under test): the row holds a test question nearly whole (all but 2
    of its characters in one run) or 13 consecutive tokens of an option or explanation (an answer copied in)."""
    norm = normalize_strict(text)
    if any(len(q) >= 6 and _lcs(q, norm) >= len(q) - 2 for q in questions if set(q[:4]) & set(norm)):
        return True
    tokens = _tokens(text)
    return any(_lcs(a, tokens) >= 13 for a in answers if set(a) & set(tokens))


def _run_planted(tmp_path: Path, bench_path: Path, pool: Path, backend: str, filler: str) -> None:
    bench = load_benchmark([bench_path])
    rows = planted_rows(bench, filler)
    kinds = {k for k, _, _ in rows}
    assert kinds == {"verbatim", "edited", "reordered"}
    lengths = sorted(len(q.question) for q in bench.questions)
    planted_lengths = [len(q.question) for _, q, _ in rows]
    assert min(planted_lengths) == lengths[0] and max(planted_lengths) == lengths[-1]  # the shortest and the longest
    planted_file = tmp_path / "planted.jsonl"
    planted_file.write_text("".join(_sharegpt(t, q.answer_text or "") for _, q, t in rows), encoding="utf-8")
    sha = file_sha256(planted_file)
    planted = {row_id(sha, i + 1): (kind, text) for i, (kind, _, text) in enumerate(rows)}

    out = tmp_path / "run"
    result = run_recall_pipeline(
        RecallPipelineConfig(
            benchmark=[bench_path], pool=[pool, planted_file], out_dir=out, embedding=EmbeddingConfig(backend)
        )
    )
    used: dict[str, str] = {}
    for name in ("train.jsonl", "control.jsonl"):
        for line in (out / f"{name}.selection.jsonl").read_text(encoding="utf-8").splitlines():
            item = json.loads(line)
            used[item["id"]] = item["origin"]  # recalled, random or control
    assert all(r.score <= 1.0 for r in [*result.recall.leaked, *result.recall.recalled])  # float16 clipped
    reached = {planted[i] for i in planted if i in used}
    assert not reached, f"{backend}: planted rows reached training: {reached}"
    train_text = (out / "train.jsonl").read_text(encoding="utf-8") + (out / "control.jsonl").read_text("utf-8")
    for kind, text in planted.values():
        assert json.dumps(text, ensure_ascii=False)[1:-1] not in train_text, kind

    # every shipped row, recalled or not, as the guard and decontamination see it: at most 1 % of the clean ones go
    decontaminator = Decontaminator(bench.questions)
    questions = [normalize_strict(q.question) for q in bench.questions]
    answers = [_tokens(t) for q in bench.questions for t in (*q.options.values(), q.explanation or "")]
    answers = [a for a in answers if len(a) >= 13]
    leaked = {r.id for r in result.recall.leaked}
    dropped, clean, n_rows = set(), set(), 0
    for path in sorted(pool.glob("*.jsonl")) if pool.is_dir() else [pool]:
        for row in iter_pool([path]):
            text = full_text(row.record)
            n_rows += 1
            if row.id in leaked or decontaminator.match(text) is not None:
                dropped.add(row.id)
            if not _carries_test_text(text, questions, answers):
                clean.add(row.id)
    assert len(clean) >= 0.9 * n_rows
    assert len(dropped & clean) <= 0.01 * len(clean), sorted(dropped & clean)


def test_planted_copies_never_reach_training_ngram_hash(tmp_path: Path) -> None:
    _run_planted(tmp_path, BENCH_ZH, POOL, "ngram-hash", "某")


def test_planted_copies_never_reach_training_ngram_hash_english(tmp_path: Path) -> None:
    _run_planted(tmp_path, BENCH_EN, POOL_EN, "ngram-hash", "x")


def test_planted_copies_never_reach_training_minilm(tmp_path: Path) -> None:
    _run_planted(tmp_path, BENCH_EN, POOL_EN, "sentence-transformers", "x")


def test_minilm_on_chinese_is_refused_with_the_reason_and_alternatives(tmp_path: Path) -> None:
    minilm = EmbeddingConfig("sentence-transformers")
    config = RecallPipelineConfig(benchmark=[BENCH_ZH], pool=[POOL_EN], out_dir=tmp_path / "out", embedding=minilm)
    with pytest.raises(MedtuneError, match=r"\[UNK\]") as err:
        run_recall_pipeline(config)
    msg = str(err.value)
    assert "ngram-hash" in msg and "multilingual" in msg and "max_unk_share" in msg
    share = float(msg.split("% of its tokens")[0].rsplit(" ", 1)[-1])
    assert share > 50  # the English MiniLM cannot read most of the Chinese questions
    assert not (tmp_path / "out").exists()  # a refused run leaves nothing behind
    # overridable: the run goes ahead when the user says so
    config.max_unk_share = 1.0
    assert run_recall_pipeline(config).recall is not None
    # an English benchmark passes the check
    backend = make_backend("sentence-transformers")
    assert backend.unk_share(load_benchmark([BENCH_EN]).texts()) < 0.01


def test_per_row_cap_hands_places_to_the_next_rows() -> None:
    # 4 questions; row 7 is every question's best row, rows 10+q are their own second rows
    scores = np.array([[0.9, 0.8, 0.7]] * 4, dtype=np.float32)
    rows = np.array([[7, 10 + q, 20 + q] for q in range(4)], dtype=np.int64)
    keep = np.ones_like(scores, dtype=bool)
    capped = assign_capped(scores, rows, keep, top_k=1, cap=2)
    chosen = [int(rows[q][capped[q]][0]) for q in range(4)]
    assert chosen == [7, 7, 12, 13]  # row 7 serves two questions, the others get their own row
    assert assign_capped(scores, rows, keep, top_k=1, cap=None)[:, 0].all()  # no cap: row 7 for all


def test_per_row_cap_in_the_recall_report(tmp_path: Path) -> None:
    """A generic row similar to every question: without the cap it answers all of them, with it at most 2."""
    bench_csv = tmp_path / "anatomy.csv"
    qs = ["胃的分部包括哪些", "肝的血液供应来自", "肾的被膜由内向外", "心的传导系统包括", "肺的血液循环特点"]
    bench_csv.write_text(
        "id,question,A,B,C,D,answer\n" + "".join(f"{i},{q},甲,乙,丙,丁,A\n" for i, q in enumerate(qs)),
        encoding="utf-8",
    )
    generic = "".join(qs)  # about everything, so every question's best row (cosine ~0.5 against ~0.2)
    own = [q[:2] + "怎么样" for q in qs]
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(_sharegpt(t, "答。") for t in [generic, *own]), encoding="utf-8")
    report = {}
    for cap in (None, 2):
        out = tmp_path / f"cap{cap}"
        rc = RecallConfig(top_k=1, similarity_threshold=0.1, max_similarity=0.99, max_questions_per_row=cap)
        res = run_recall_pipeline(
            RecallPipelineConfig(benchmark=[bench_csv], pool=[pool], out_dir=out, recall=rc, fit_statistics=False)
        )
        counts = {r.id: len(r.questions) for r in res.recall.recalled}
        report[cap] = (max(counts.values()), (out / "recall_report.md").read_text(encoding="utf-8"))
        summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
        assert summary["recall"]["most_recalled"]["top"][0]["questions"] == max(counts.values())
    assert report[None][0] == 5 and report[2][0] == 2  # capped: three questions get their own rows instead
    assert "| 5 | 100.0% |" in report[None][1] and "most-recalled rows" in report[2][1]


@pytest.mark.peer
def test_planted_copies_of_cmmlu_dev_never_reach_training(peer_dir: Path, tmp_path: Path) -> None:
    """Real CMMLU dev questions (many under 6 characters) planted into MedicalGPT's SFT sample."""
    bench, pool = peer_dir / "cmmlu_dev", peer_dir / "medicalgpt" / "medical_sft_1K_format.jsonl"
    if not bench.is_dir() or not pool.is_file():
        pytest.skip("peer CMMLU dev / MedicalGPT SFT file absent")
    _run_planted(tmp_path, bench, pool, "ngram-hash", "某")
