"""Benchmark: eval-driven recall over a 200k-row pool (384-dim, MiniLM's size), 1,000 questions, top-50.

Compared in the same run, each method in a fresh process (so its peak RSS is its own):

- ours: :func:`medtune_core.recall.search_store` over float16 memory-mapped shards (faiss exact inner product,
  shard by shard, merged top-k, leakage guard included);
- the original method: vectors read from JSONL (``{"id", "embedding": [...]}``) then, per question, cosine against
  every row and a sort in numpy. Too slow to run in full: it runs on a subsample of rows and the figures are
  extrapolated linearly (read time and memory by rows, search time by rows x questions), and the output says so;
- ``sentence_transformers.util.semantic_search`` on the pool as one in-memory float32 tensor;
- the bare ``queries @ pool.T`` float32 matrix multiply (numpy/BLAS): the physical limit of exact search here.

Then embedding overhead: our pipeline (stream the pool, split into text shards, encode, write float16 shards) vs the
model's own ``encode`` on the same texts with the same batch size.

    python -m bench.bench_recall [--rows 200000] [--questions 1000] [--seed-rows 20000] [--embed-texts 1000]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.memory import peak_mb, rss_mb

DIM = 384
TOP_K = 50


def _queries(n: int) -> np.ndarray:
    q = np.random.default_rng(1).standard_normal((n, DIM)).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def make_store(root: Path, rows: int, shard_rows: int = 50_000) -> None:
    from medtune_core.recall.store import finalize_store, write_shard

    rng = np.random.default_rng(0)
    shards = []
    for s, start in enumerate(range(0, rows, shard_rows)):
        n = min(shard_rows, rows - start)
        x = rng.standard_normal((n, DIM)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        shards.append(write_shard(root, f"shard-{s:05d}", x, [f"r:{start + i}" for i in range(n)]))
    finalize_store(root, shards, {"backend": "random"})


def make_seed_jsonl(store_root: Path, path: Path, rows: int) -> None:
    from medtune_core.recall.store import VectorStore

    store = VectorStore(store_root)
    vecs = np.asarray(store.vectors(store.manifest.shards[0])[:rows], dtype=np.float32)
    with open(path, "w") as fh:
        for i, v in enumerate(vecs):
            fh.write(json.dumps({"id": f"r:{i}", "embedding": [float(x) for x in v]}) + "\n")


# ----------------------------------------------------------------------------- methods (each in its own process)


def m_ours(store_root: str, nq: int) -> dict:
    import faiss  # noqa: F401  (imported before the clock starts, as in a long-running worker)

    from medtune_core.recall.search import RecallConfig, search_store
    from medtune_core.recall.store import VectorStore

    q = _queries(nq)
    base = rss_mb()
    best = float("inf")
    for _ in range(2):  # best of 2, as for every in-memory method
        t = time.perf_counter()
        store = VectorStore(store_root)
        _, rows, _ = search_store(q, store, RecallConfig(top_k=TOP_K, similarity_threshold=0.0))
        best = min(best, time.perf_counter() - t)
    return {"time_s": best, "peak_mb": peak_mb() - base, "check": rows[:5, :5].tolist()}


def m_seed(jsonl: str, nq: int, rows_total: int) -> dict:
    q = _queries(nq)
    base = rss_mb()
    t = time.perf_counter()
    ids, vecs = [], []
    with open(jsonl) as fh:
        for line in fh:
            item = json.loads(line)
            ids.append(item["id"])
            vecs.append(item["embedding"])
    matrix = np.array(vecs, dtype=np.float32)
    t_read = time.perf_counter() - t
    peak = peak_mb() - base
    norms = np.linalg.norm(matrix, axis=1)
    t = time.perf_counter()
    top = []
    for qi in range(nq):
        sims = matrix @ q[qi] / (norms * np.linalg.norm(q[qi]))  # cosine, one question at a time
        order = np.argsort(-sims)[:TOP_K]
        top.append([ids[j] for j in order])
    t_search = time.perf_counter() - t
    scale = rows_total / len(ids)
    return {
        "rows": len(ids),
        "read_s": t_read,
        "search_s": t_search,
        "time_s": (t_read + t_search) * scale,
        "peak_mb": peak * scale,
        "scale": scale,
    }


def m_semantic_search(store_root: str, nq: int) -> dict:
    import torch
    from sentence_transformers import util

    from medtune_core.recall.store import VectorStore

    store = VectorStore(store_root)
    corpus = torch.from_numpy(np.concatenate([np.asarray(v, np.float32) for _, _, v in store.iter_shards()]))
    q = torch.from_numpy(_queries(nq))
    base = rss_mb()
    best = float("inf")
    for _ in range(2):
        t = time.perf_counter()
        util.semantic_search(q, corpus, top_k=TOP_K)
        best = min(best, time.perf_counter() - t)
    return {"time_s": best, "peak_mb": peak_mb() - base}


def m_matmul(store_root: str, nq: int) -> dict:
    from medtune_core.recall.store import VectorStore

    store = VectorStore(store_root)
    pool = np.concatenate([np.asarray(v, np.float32) for _, _, v in store.iter_shards()])
    q = _queries(nq)
    base = rss_mb()
    best = float("inf")
    for _ in range(2):
        t = time.perf_counter()
        s = q @ pool.T
        best = min(best, time.perf_counter() - t)
        del s
    return {"time_s": best, "peak_mb": peak_mb() - base}


def m_embed(texts_file: str, n_texts: int, batch_size: int, repeats: int) -> dict:
    from sentence_transformers import SentenceTransformer

    from medtune_core.models.registry import resolve_model
    from medtune_core.recall.embedding import EmbeddingConfig, make_backend
    from medtune_core.recall.pool import read_text_shard, split_pool
    from medtune_core.recall.store import build_store

    work = Path(texts_file).parent
    backend = make_backend(EmbeddingConfig("sentence-transformers", batch_size=batch_size))
    model = SentenceTransformer(str(resolve_model("embedded:minilm-l6")), device="cpu")
    plan = split_pool([texts_file], work / "texts", shard_size=n_texts)
    _, texts = read_text_shard(work / "texts" / plan.shards[0])
    backend.embed(texts[:64])
    model.encode(texts[:64], batch_size=batch_size)  # warm both
    inner = {"s": 0.0}
    embed = backend.embed

    def timed_embed(batch):  # time spent inside the model call, to separate the pipeline's own work
        t0 = time.perf_counter()
        try:
            return embed(batch)
        finally:
            inner["s"] += time.perf_counter() - t0

    backend.embed = timed_embed
    runs: dict[str, list[float]] = {"encode": [], "pipeline": [], "ngram": [], "own_work": []}
    for _ in range(repeats):
        t = time.perf_counter()
        model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
        runs["encode"].append(time.perf_counter() - t)
        inner["s"] = 0.0
        t = time.perf_counter()
        plan = split_pool([texts_file], work / "texts2")  # one shard (default 50k rows)
        build_store(plan, work / "texts2", backend, work / "vectors", show_progress=False)
        runs["pipeline"].append(time.perf_counter() - t)
        runs["own_work"].append(runs["pipeline"][-1] - inner["s"])
        t = time.perf_counter()
        ngram = make_backend("ngram-hash")
        p2 = split_pool([texts_file], work / "texts3", shard_size=n_texts)
        build_store(p2, work / "texts3", ngram, work / "vectors3", show_progress=False)
        runs["ngram"].append(time.perf_counter() - t)
    return {k: min(v) for k, v in runs.items()} | {"texts": len(texts)}


def run(fn, *args) -> dict:
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(fn, args)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--questions", type=int, default=1000)
    ap.add_argument("--seed-rows", type=int, default=20_000)
    ap.add_argument("--embed-texts", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--embed-repeats", type=int, default=2)
    ap.add_argument("--only-embedding", action="store_true", help="skip the search comparison")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-recall-"))
    try:
        print(
            f"machine: {os.cpu_count()} CPUs; pool {args.rows:,} x {DIM} float16; "
            f"{args.questions:,} questions; top-{TOP_K}"
        )
        if args.only_embedding:
            return _embedding(args, work)
        make_store(work / "store", args.rows)
        make_seed_jsonl(work / "store", work / "seed.jsonl", args.seed_rows)
        mb = (work / "seed.jsonl").stat().st_size / 2**20
        print(
            f"seed JSONL: {mb:.0f} MB for {args.seed_rows:,} rows (~{mb * args.rows / args.seed_rows / 1024:.1f} GB"
            f" at {args.rows:,}); our store: {sum(f.stat().st_size for f in (work / 'store').iterdir()) / 2**20:.0f} MB"
        )
        res = {
            "matmul": run(m_matmul, str(work / "store"), args.questions),
            "ours": run(m_ours, str(work / "store"), args.questions),
            "semantic_search": run(m_semantic_search, str(work / "store"), args.questions),
            "seed": run(m_seed, str(work / "seed.jsonl"), args.questions, args.rows),
        }
        base = res["ours"]["time_s"]
        print(f"\n{'method':<34}{'time s':>10}{'peak MB':>10}{'vs ours':>10}")
        labels = {
            "ours": "ours (faiss flat, f16 shards)",
            "matmul": "bare matmul Q @ P.T (f32)",
            "semantic_search": "ST util.semantic_search",
            "seed": f"seed method (extrapolated x{res['seed']['scale']:.0f})",
        }
        for k in ("ours", "matmul", "semantic_search", "seed"):
            r = res[k]
            print(f"{labels[k]:<34}{r['time_s']:>10.2f}{r['peak_mb']:>10.0f}{r['time_s'] / base:>9.2f}x")
        s = res["seed"]
        print(
            f"  seed measured on {s['rows']:,} rows: read {s['read_s']:.2f} s, search {s['search_s']:.2f} s; "
            "scaled linearly by rows"
        )
        print(
            f"\nours vs seed: {s['time_s'] / base:.1f}x faster; "
            f"ours / bare matmul: {base / res['matmul']['time_s']:.2f}; "
            f"ours vs semantic_search: {res['semantic_search']['time_s'] / base:.2f}x faster"
        )
        _embedding(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _embedding(args: argparse.Namespace, work: Path) -> None:
    (work / "emb").mkdir()
    texts_file = work / "emb" / "pool.jsonl"
    peer = Path(__file__).resolve().parents[2] / "shared/data/peer/medicalgpt/medical_sft_1K_format.jsonl"
    lines = peer.read_text(encoding="utf-8").splitlines() if peer.is_file() else []
    if len(lines) < args.embed_texts:
        lines += [
            json.dumps(
                {
                    "conversations": [
                        {
                            "from": "human",
                            "value": f"What are the symptoms of condition number {i} and how is it treated in adults?",
                        },
                        {"from": "gpt", "value": "See a doctor."},
                    ]
                }
            )
            for i in range(args.embed_texts - len(lines))
        ]
    texts_file.write_text("\n".join(lines[: args.embed_texts]) + "\n", encoding="utf-8")
    e = run(m_embed, str(texts_file), args.embed_texts, args.batch_size, args.embed_repeats)
    print(
        f"\nembedding {e['texts']:,} texts ({'MedicalGPT 1K SFT' if peer.is_file() else 'synthetic'}), MiniLM,"
        f" batch {args.batch_size}: model.encode {e['encode']:.2f} s; our pipeline (stream, split, encode,"
        f" f16 shard) {e['pipeline']:.2f} s; overhead {100 * (e['pipeline'] / e['encode'] - 1):+.1f}%;"
        f" ngram-hash pipeline {e['ngram']:.2f} s\n  the pipeline's own work (parse, split, sort, float16, write;"
        f" outside the"
        f" model call): {e['own_work']:.3f} s = {100 * e['own_work'] / e['encode']:.2f}% of encode"
    )


if __name__ == "__main__":
    sys.exit(main())
