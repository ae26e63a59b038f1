"""Benchmark: is the recall about the question? Relevance on labelled sets, before vs after, in the same run.

Labelled sets (pool rows whose subject is known):

- ``samples-topics``: the shipped recall pool's rows carry a ``topic``; for every topic with at least 4 rows, its first
  row's question is a query and every other row of the pool is the pool (rows of the same topic are the relevant ones);
- ``cmmlu-dev`` (when ``../shared/data/peer/cmmlu_dev`` is present): CMMLU dev questions of 9 medical subjects, two
  of each subject asking, the other three of each subject as the pool (same subject = relevant).

Measured per setting, on the ranking itself (every query keeps its top-k, no threshold): the share of recalled rows
from the query's own topic/subject, the same for each query's best row, and the share of all (query, row) pairs
taken by the 10 most-recalled rows (a few generic rows answering everything is what the per-row cap prevents).

- before: ngram-hash with raw term frequencies, no per-row cap (the previous defaults);
- after: ngram-hash with the pool's n-gram IDF (``(1 + log tf) * idf`` per n-gram), per-row cap 10 (the defaults
  now).

    python -m bench.bench_recall_relevance [--top-k 5]
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medtune_core.recall import EmbeddingConfig, RecallConfig, VectorStore, make_backend, recall, split_pool
from medtune_core.recall.embedding import NgramHashBackend
from medtune_core.recall.store import build_store
from medtune_core.samples import samples_dir

PEER = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "peer" / "cmmlu_dev"


def samples_topics() -> tuple[list[str], list[str], list[tuple[str, str]]]:
    """(query texts, query labels, pool rows as (text, label))."""
    rows = []
    for path in sorted((samples_dir() / "pool").glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            item = json.loads(line)
            rows.append((item["conversations"][0]["value"], item["topic"]))
    counts = Counter(t for _, t in rows)
    seen: set[str] = set()
    queries, labels, pool = [], [], []
    for text, topic in rows:
        if counts[topic] >= 4 and topic not in seen:
            seen.add(topic)
            queries.append(text)
            labels.append(topic)
        else:
            pool.append((text, topic))
    return queries, labels, pool


def cmmlu_dev() -> tuple[list[str], list[str], list[tuple[str, str]]] | None:
    if not PEER.is_dir():
        return None
    queries, labels, pool = [], [], []
    for path in sorted(PEER.glob("*.csv")):
        with open(path, encoding="utf-8") as fh:
            for i, row in enumerate(csv.DictReader(fh)):
                if i < 2:  # two questions of each subject ask, the other three are the pool
                    queries.append(row["Question"])
                    labels.append(path.stem)
                else:
                    pool.append((row["Question"], path.stem))
    return queries, labels, pool


def evaluate(
    queries: Sequence[str], labels: Sequence[str], pool: Sequence[tuple[str, str]], *, after: bool, top_k: int
) -> dict[str, float]:
    """Recall with the before/after settings over a pool file; relevance and concentration figures."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pool_file = work / "pool.jsonl"
        with open(pool_file, "w", encoding="utf-8") as fh:
            for text, _ in pool:
                turns = [{"from": "human", "value": text}, {"from": "gpt", "value": "."}]
                fh.write(json.dumps({"conversations": turns}, ensure_ascii=False) + "\n")
        plan = split_pool([pool_file], work / "texts", shard_size=10_000)
        config = EmbeddingConfig("ngram-hash")
        if after:
            stats = NgramHashBackend.fit_statistics(config, [work / "texts" / s for s in plan.shards], work / "stats")
            config = EmbeddingConfig("ngram-hash", options=stats)
        backend = make_backend(config)
        build_store(plan, work / "texts", backend, work / "vectors", show_progress=False)
        store = VectorStore(work / "vectors")
        label_of = {rid: pool[i][1] for i, rid in enumerate(store.all_ids())}
        rc = RecallConfig(
            top_k=top_k,
            similarity_threshold=0.0,  # the ranking itself: every query keeps its top-k
            max_similarity=1.0,
            max_questions_per_row=10 if after else None,
        )
        qids = [f"q{i}" for i in range(len(queries))]
        result = recall(backend.embed(list(queries)), qids, list(labels), store, rc)
    label_q = dict(zip(qids, labels, strict=True))
    per_query: dict[str, list[tuple[float, bool]]] = defaultdict(list)
    for row in result.recalled:
        for q in row.questions:
            per_query[q].append((row.score, label_of[row.id] == label_q[q]))
    pairs = [hit for hits in per_query.values() for _, hit in hits]
    top1 = [max(hits)[1] for hits in per_query.values()]
    counts = sorted((len(r.questions) for r in result.recalled), reverse=True)
    return {
        "relevant_share": round(float(np.mean(pairs)), 3) if pairs else 0.0,
        "top1_relevant": round(float(np.mean(top1)), 3) if top1 else 0.0,
        "queries_with_rows": len(per_query),
        "queries": len(queries),
        "pairs": len(pairs),
        "top10_share": round(sum(counts[:10]) / max(1, sum(counts)), 3),
        "max_questions_per_row": counts[0] if counts else 0,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--top-k", type=int, default=5)
    args = ap.parse_args()
    sets = {"samples-topics": samples_topics()}
    peer = cmmlu_dev()
    if peer is not None:
        sets["cmmlu-dev"] = peer
    print(f"relevance: share of recalled rows from the query's own topic/subject (top-{args.top_k} of every query)")
    print("| set | setting | relevant share | best row relevant | queries with rows | pairs | top-10 rows' share |")
    print("|---|---|---|---|---|---|---|")
    for name, (queries, labels, pool) in sets.items():
        before = evaluate(queries, labels, pool, after=False, top_k=args.top_k)
        after = evaluate(queries, labels, pool, after=True, top_k=args.top_k)
        for setting, r in (("before (tf, no cap)", before), ("after (IDF, cap 10)", after)):
            print(
                f"| {name} ({r['queries']} queries, {len(pool)} rows) | {setting} | {r['relevant_share']:.1%} | "
                f"{r['top1_relevant']:.1%} | {r['queries_with_rows']} | {r['pairs']} | {r['top10_share']:.1%} |"
            )
        ratio = after["relevant_share"] / before["relevant_share"] if before["relevant_share"] else float("inf")
        print(f"| {name} | after / before | {ratio:.2f}x | | | | |")


if __name__ == "__main__":
    main()
