"""Bailian preparation: convert + count tokens for MedQA-style rows, ours vs a naive per-row loop, same run.

Ours: the streaming converter (validation, rejects policy, atomic write, manifest) followed by batched Qwen
token counting. Baseline: what a one-off script does per row — ``json.loads``, format the messages, write the
line, one ``tokenizer.encode`` call. Memory: our peak traced allocation at N and 10×N rows must stay flat.

    python -m bench.bench_bailian [--rows 100000]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
import tracemalloc
from pathlib import Path

from medtune_core.bailian import TokenCounter, convert_medqa_file, count_file_tokens
from medtune_core.formats import ZH_MCQ_TEMPLATE
from medtune_core.samples import sample_path

LETTERS = "ABCD"


def write_medqa(path: Path, rows: int, seed: int = 0) -> Path:
    """``rows`` MedQA rows made by recombining the project's sample questions (lengths stay realistic)."""
    base = [json.loads(x) for x in sample_path("medqa_mainland_train").read_text(encoding="utf-8").splitlines()]
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as fh:
        for i in range(rows):
            src = base[i % len(base)]
            options = dict(src["options"])
            letter = rng.choice(LETTERS)
            answer_text = options[src["answer_idx"]]
            options[src["answer_idx"]], options[letter] = options[letter], answer_text
            row = {
                "question": f"{src['question']}（第{i}题）",
                "options": options,
                "answer": answer_text,
                "answer_idx": letter,
            }
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def ours(src: Path, dst: Path, counter: TokenCounter) -> int:
    convert_medqa_file(src, dst)
    return count_file_tokens(dst, counter).tokens


def naive(src: Path, dst: Path, counter: TokenCounter) -> int:
    tok = counter._tok  # the same tokenizer object: only the way of calling it differs
    total = 0
    with src.open(encoding="utf-8") as fin, dst.open("w", encoding="utf-8") as fout:
        for line in fin:
            row = json.loads(line)
            opts = "\n".join(f"{k}. {v}" for k, v in row["options"].items())
            messages = [
                {"role": "system", "content": ZH_MCQ_TEMPLATE.system},
                {"role": "user", "content": f"{row['question']}\n\n选项：\n{opts}"},
                {"role": "assistant", "content": f"答案是 {row['answer_idx']}. {row['answer']}"},
            ]
            fout.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
            total += len(tok.encode(TokenCounter.render(messages)))
    return total


def peak_mib(fn, *args) -> float:
    tracemalloc.start()
    fn(*args)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args(argv)
    counter = TokenCounter()
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        src = write_medqa(tmpdir / "medqa.jsonl", args.rows)
        t0 = time.perf_counter()
        ours_tokens = ours(src, tmpdir / "ours.jsonl", counter)
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        naive_tokens = naive(src, tmpdir / "naive.jsonl", counter)
        t_naive = time.perf_counter() - t0
        assert ours_tokens == naive_tokens, (ours_tokens, naive_tokens)

        small = write_medqa(tmpdir / "small.jsonl", args.rows // 10)
        mem_small = peak_mib(ours, small, tmpdir / "small.out.jsonl", counter)
        mem_large = peak_mib(ours, src, tmpdir / "large.out.jsonl", counter)

    result = {
        "rows": args.rows,
        "tokens": ours_tokens,
        "ours_rows_per_s": args.rows / t_ours,
        "naive_rows_per_s": args.rows / t_naive,
        "speedup": t_naive / t_ours,
        "peak_mib_at_n_over_10": mem_small,
        "peak_mib_at_n": mem_large,
        "memory_growth_for_10x_rows": mem_large / mem_small,
    }
    print(f"rows={args.rows:,} tokens={ours_tokens:,}")
    print(f"ours : {result['ours_rows_per_s']:,.0f} rows/s (convert + validate + manifest + batched count)")
    print(f"naive: {result['naive_rows_per_s']:,.0f} rows/s (per-row json + format + encode)")
    print(f"ratio ours/naive = {result['speedup']:.2f}x")
    print(
        f"peak traced memory: {mem_small:.1f} MiB at {args.rows // 10:,} rows, "
        f"{mem_large:.1f} MiB at {args.rows:,} rows ({result['memory_growth_for_10x_rows']:.2f}x for 10x the rows)"
    )
    return result


if __name__ == "__main__":
    main()
