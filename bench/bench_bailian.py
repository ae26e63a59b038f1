"""Bailian: convert + count tokens for MedQA-style rows, and the memory of uploading a part; ours vs a baseline.

Convert: the streaming converter (validation, rejects policy, atomic write, manifest) followed by batched Qwen
token counting, against what a one-off script does per row — ``json.loads``, format the messages, write the
line, one ``tokenizer.encode`` call. Memory: our peak traced allocation at N and 10×N rows must stay flat.

Upload: ``BailianClient.upload`` (streamed multipart) against the SDK's ``Files.upload`` (body built in memory),
each in a fresh process sending a small and a large part to the fake DashScope server; peak RSS growth over the
process's own baseline (sampled every 2 ms) and peak traced Python allocation. Flat means large/small ≈ 1.

    python -m bench.bench_bailian [--rows 100000] [--upload-mb 100] [--only convert|upload]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import textwrap
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


UPLOAD_CHILD = textwrap.dedent(
    """
    import sys, threading, time, tracemalloc
    from medtune_core.bailian import BailianClient
    from dashscope import Files

    def rss_mb():
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * 4096 / 1e6

    base_url, registry, path, mode = sys.argv[1:5]
    client = BailianClient(base_url=base_url, registry_path=registry)
    client.list_files()  # imports and connections before the baseline
    base, peak, done = rss_mb(), [0.0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    tracemalloc.start()
    if mode == "ours":
        client.upload(path, validate=False)
    else:
        rsp = Files.upload(file_path=path, api_key=client._key.get_secret_value(), base_address=base_url)
        assert rsp.status_code == 200, rsp
    traced = tracemalloc.get_traced_memory()[1] / 1e6
    done.set()
    sampler.join()
    print(max(peak[0], rss_mb()) - base, traced)
    """
)
UPLOAD_KEY = "sk-bench-upload-0123456789"


def write_part(path: Path, megabytes: float) -> Path:
    """A valid Bailian file of about ``megabytes`` MB (4 KB rows)."""
    line = json.dumps({"messages": [{"role": "user", "content": "q" * 4000}, {"role": "assistant", "content": "a"}]})
    with path.open("w", encoding="utf-8") as fh:
        for _ in range(int(megabytes * 1e6 / (len(line) + 1))):
            fh.write(line + "\n")
    return path


def upload_memory(upload_mb: float) -> dict[str, float]:
    """Peak RSS growth and traced peak (MB) of one upload, ours and the SDK's, at upload_mb/10 and upload_mb."""
    from tests.fakes.dashscope_server import FakeDashScope

    out: dict[str, float] = {}
    env = {**os.environ, "DASHSCOPE_API_KEY": UPLOAD_KEY}
    with tempfile.TemporaryDirectory() as tmp, FakeDashScope(api_key=UPLOAD_KEY, keep_contents=False) as server:
        for size_name, mb in (("small", upload_mb / 10), ("large", upload_mb)):
            part = write_part(Path(tmp) / f"{size_name}.jsonl", mb)
            for mode in ("ours", "sdk"):
                cmd = [sys.executable, "-c", UPLOAD_CHILD, server.base_url, f"{tmp}/r-{mode}.json", str(part), mode]
                res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
                rss, traced = (float(x) for x in res.stdout.split())
                out[f"{mode}_{size_name}_rss_mb"], out[f"{mode}_{size_name}_traced_mb"] = rss, traced
            server.files.clear()
            part.unlink()
    for mode in ("ours", "sdk"):
        out[f"{mode}_rss_ratio_large_over_small"] = out[f"{mode}_large_rss_mb"] / max(out[f"{mode}_small_rss_mb"], 1.0)
    return out


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--upload-mb", type=float, default=100.0, help="size of the large part (small: a tenth)")
    parser.add_argument("--only", choices=("convert", "upload"), default=None)
    args = parser.parse_args(argv)
    result: dict[str, float] = {}
    if args.only != "convert":
        up = upload_memory(args.upload_mb)
        result.update(up)
        small = args.upload_mb / 10
        print(f"upload memory, part of {small:g} MB → {args.upload_mb:g} MB (peak RSS growth; traced Python peak):")
        for mode, what in (("ours", "streamed multipart"), ("sdk", "dashscope Files.upload")):
            print(
                f"  {mode:<4} ({what}): {up[f'{mode}_small_rss_mb']:.1f} → {up[f'{mode}_large_rss_mb']:.1f} MB "
                f"(ratio {up[f'{mode}_rss_ratio_large_over_small']:.2f}x); traced "
                f"{up[f'{mode}_small_traced_mb']:.1f} → {up[f'{mode}_large_traced_mb']:.1f} MB"
            )
        times = up["sdk_large_rss_mb"] / max(up["ours_large_rss_mb"], 1.0)
        print(f"  at {args.upload_mb:g} MB the SDK's upload needs {times:.0f}x the memory of ours")
    if args.only == "upload":
        return result
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

    result |= {
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
