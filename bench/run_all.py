"""Run every benchmark under ``bench/`` one after another and print one summary line per benchmark.

Benchmarks are found by name (``bench/bench_*.py``), so a new one is part of ``make bench`` as soon as it exists.
Each runs in its own process (its memory figures stay its own, a crash does not stop the others) with its default
arguments; arguments for one benchmark can be passed as ``--args NAME="--rows 1000"``.

    python -m bench.run_all [--only recall synthesis] [--args bailian="--rows 10000"] [--list]
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent


def discover() -> dict[str, str]:
    """Short name (``recall``) → module (``bench.bench_recall``) for every ``bench/bench_*.py``."""
    return {p.stem.removeprefix("bench_"): f"bench.{p.stem}" for p in sorted(BENCH_DIR.glob("bench_*.py"))}


def _parse_args(pairs: list[str], known: dict[str, str]) -> dict[str, list[str]]:
    extra: dict[str, list[str]] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or name not in known:
            raise SystemExit(f'--args {pair!r}: expected NAME="ARGS" with NAME one of {", ".join(known)}')
        extra[name] = shlex.split(value)
    return extra


def main(argv: list[str] | None = None) -> int:
    benches = discover()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(benches), help="run only these benchmarks")
    parser.add_argument("--args", nargs="*", default=[], metavar='NAME="ARGS"', help="extra arguments per benchmark")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    ns = parser.parse_args(argv)
    if ns.list:
        for name, module in benches.items():
            print(f"{name}\tpython -m {module}")
        return 0
    extra = _parse_args(ns.args, benches)
    chosen = ns.only or list(benches)
    results: list[tuple[str, int, float]] = []
    for name in chosen:
        cmd = [sys.executable, "-m", benches[name], *extra.get(name, [])]
        print(f"\n=== {name}: {shlex.join(cmd[1:])}", flush=True)
        start = time.perf_counter()
        rc = subprocess.call(cmd, cwd=BENCH_DIR.parent)
        results.append((name, rc, time.perf_counter() - start))
    print("\n=== summary")
    for name, rc, seconds in results:
        print(f"{name:<16} {'ok' if rc == 0 else f'FAILED (exit {rc})':<16} {seconds:8.1f} s")
    return 0 if all(rc == 0 for _, rc, _ in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
