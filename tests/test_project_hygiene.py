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
