"""The project's own promises about itself: `make bench` runs real benchmarks, docs point only inside the repository."""

from __future__ import annotations

import re
from pathlib import Path

from bench import run_all

REPO = Path(__file__).resolve().parent.parent


def test_make_bench_runs_a_module_that_exists_and_finds_every_benchmark() -> None:
    recipe = re.search(r"^bench:.*\n((?:\t.*\n)+)", (REPO / "Makefile").read_text(), re.M)
    assert recipe, "Makefile has no bench target"
    module = re.search(r"-m (\S+)", recipe.group(1)).group(1)
    assert module == "bench.run_all"
    found = run_all.discover()
    on_disk = {p.stem for p in (REPO / "bench").glob("bench_*.py")}
    assert {m.removeprefix("bench.") for m in found.values()} == on_disk
    assert {"recall", "synthesis", "bailian", "sft_packing"} <= set(found)
    assert run_all.main(["--list"]) == 0


# Optional peer data (real MedicalGPT / CMMLU files) may sit beside the checkout; only the code that reads it
# (peer-data tests and benchmarks that fall back to generated data) names that folder.
PEER_READERS = {
    "tests/conftest.py",
    "pyproject.toml",
    "docs/DEVELOPING.md",
    "bench/bench_sft_packing.py",
    "bench/bench_recall.py",
    "bench/bench_recall_relevance.py",
}


def _tracked_text_files() -> list[Path]:
    import subprocess

    names = subprocess.check_output(["git", "ls-files"], cwd=REPO, text=True).split()
    keep = (".py", ".md", ".yaml", ".yml", ".toml", ".txt")
    return [REPO / n for n in names if n.endswith(keep) or n == "Makefile"]


def test_nothing_points_outside_the_repository_or_at_seed_documents() -> None:
    outside = re.compile(r"\.\./shared|shared/data/peer|SEEDS\.md|DESIGN\.md")
    seed_doc = re.compile(r"\b[Ss]eed [0-4]\b(?! and)|\bseeds'|\bseed's\b")
    problems = []
    for path in _tracked_text_files():
        rel = path.relative_to(REPO).as_posix()
        if rel == "tests/test_project_hygiene.py" or not path.is_file():
            continue
        for no, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if outside.search(line) and rel not in PEER_READERS:
                problems.append(f"{rel}:{no}: points outside the repository: {line.strip()}")
            if seed_doc.search(line) and "random seed" not in line:
                problems.append(f"{rel}:{no}: names a source document, not the method: {line.strip()}")
    assert not problems, "\n".join(problems)
