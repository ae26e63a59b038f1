"""Eval-driven recall core: benchmarks, pool, backends, vector store, recall, leakage guard, decontamination,
mixing, evaluation and the paired comparison. Mostly the model-free n-gram backend; MiniLM once; SmolLM2 once (slow).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from medtune_core.dataio import DatasetReader
from medtune_core.errors import RecordError
from medtune_core.formats import Conversation, Message, MultipleChoice
from medtune_core.hashing import file_sha256
from medtune_core.recall import (
    EmbeddingConfig,
    MixConfig,
    NgramIndex,
    RecallConfig,
    RecallPipelineConfig,
    TextMode,
    VectorStore,
    build_store,
    build_training_sets,
    load_benchmark,
    make_backend,
    record_text,
    row_id,
    run_recall_pipeline,
    split_pool,
)
from medtune_core.recall.evaluate import (
    EvalResults,
    HFCausalLM,
    QuestionResult,
    accuracy_by_subject,
    accuracy_chart,
    bootstrap_ci,
    compare_results,
    comparison_markdown,
    evaluate_generation,
    evaluate_loglikelihood,
    parse_answer,
)
from medtune_core.recall.search import RecalledRow

LONG_ANSWER = "血管紧张素转换酶抑制剂可以减少尿蛋白排泄"  # 20 characters: any 13 of them in a row contaminate

CEVAL_ROWS = [
    ("0", "高血压患者首选的降压药物不包括下列哪一项", "利尿剂", "钙通道阻滞剂", "β受体阻滞剂", "抗生素", "D"),
    ("1", "糖尿病肾病患者减少尿蛋白应优先选用哪类药物", "阿司匹林", LONG_ANSWER, "胰岛素", "维生素C", "B"),
    ("2", "急性心肌梗死最典型的症状是什么", "胸骨后压榨性疼痛", "头痛", "腹泻", "皮疹", "A"),
    ("3", "缺铁性贫血最常见的病因是什么", "慢性失血", "维生素B12缺乏", "叶酸缺乏", "溶血", "A"),
    ("4", "肺炎链球菌肺炎首选的抗菌药物是什么", "青霉素", "庆大霉素", "甲硝唑", "氟康唑", "A"),
    ("5", "甲状腺功能亢进症最常见的病因是哪一种", "桥本甲状腺炎", "Graves病", "甲状腺癌", "碘缺乏", "B"),
]
DISEASES = ["高血压", "糖尿病", "冠心病", "胃炎", "哮喘", "肺炎", "贫血", "痛风", "肝炎", "偏头痛", "湿疹", "失眠"]
ASKS = ["的病因是什么", "应该吃什么药", "饮食上要注意什么", "有哪些典型症状", "需要做哪些检查", "能根治吗"]
NEAR_COPY = CEVAL_ROWS[2][1] + "？"  # the eval question with one more character
CONTAMINATED_Q = "糖尿病肾病尿蛋白高怎么办"
CONTAMINATED_A = f"一般来说{LONG_ANSWER}，请遵医嘱。"


def _sharegpt(q: str, a: str) -> str:
    return json.dumps(
        {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}, ensure_ascii=False
    )


@pytest.fixture
def bench_dir(tmp_path: Path) -> Path:
    d = tmp_path / "bench"
    d.mkdir()
    with open(d / "clinical_medicine_val.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "question", "A", "B", "C", "D", "answer", "explanation"])
        for row in CEVAL_ROWS:
            w.writerow([*row, ""])
    (d / "us").mkdir()
    medqa = {
        "question": "Which vitamin deficiency causes scurvy in sailors?",
        "options": {"A": "Vitamin C", "B": "Vitamin D", "C": "Vitamin K", "D": "Vitamin A"},
        "answer": "Vitamin C",
        "answer_idx": "A",
    }
    (d / "us" / "test.jsonl").write_text(json.dumps(medqa) + "\n", encoding="utf-8")
    return d


@pytest.fixture
def pool_file(tmp_path: Path) -> Path:
    lines = [_sharegpt(f"{d}{a}", f"关于{d}{a}，建议咨询医生并规律随访。") for d in DISEASES for a in ASKS]
    lines.insert(7, _sharegpt(NEAR_COPY, "胸痛。"))
    lines.insert(30, _sharegpt(CONTAMINATED_Q, CONTAMINATED_A))
    lines.insert(40, _sharegpt("糖尿病肾病应优先选用哪类药物减少尿蛋白", "可以考虑普利类药物。"))
    lines.insert(50, "{not json")  # a bad row: skipped, counted, kept in the rejects file
    p = tmp_path / "pool.jsonl"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def _pipeline(bench_dir: Path, pool_file: Path, out: Path, **kw) -> object:
    config = RecallPipelineConfig(
        benchmark=[bench_dir],
        pool=[pool_file],
        out_dir=out,
        recall=kw.pop("recall", RecallConfig(top_k=5, similarity_threshold=0.3, max_similarity=0.95)),
        mix=kw.pop("mix", MixConfig(mix_ratio=0.25, seed=7)),
        shard_size=kw.pop("shard_size", 20),
        **kw,
    )
    return run_recall_pipeline(config)


# ------------------------------------------------------------------------------------------------- benchmarks, pool


def test_benchmark_loads_ceval_csv_and_medqa_with_subjects(bench_dir: Path) -> None:
    bench = load_benchmark([bench_dir])
    assert bench.subject_counts() == {"clinical_medicine": 6, "us": 1}
    assert bench.ids[0] == "clinical_medicine/0" and bench.ids[-1].startswith("us/")
    assert len(set(bench.ids)) == len(bench)
    assert bench.questions[1].answer_text == LONG_ANSWER


def test_benchmark_bad_row_names_path_and_line(tmp_path: Path) -> None:
    p = tmp_path / "anatomy.csv"
    p.write_text("id,question,A,B,C,D,answer\n0,q,a,b,c,d,E\n", encoding="utf-8")
    with pytest.raises(RecordError, match=r"anatomy.csv:2: answer"):
        load_benchmark([p])


def test_pool_split_ids_text_modes_and_rejects(pool_file: Path, tmp_path: Path) -> None:
    plan = split_pool([pool_file], tmp_path / "texts", text_mode=TextMode.FIRST_USER, shard_size=25)
    assert plan.rows == 12 * 6 + 3 and plan.shard_rows == [25, 25, 25]
    assert plan.sources[0]["rejected"] == 1
    first = json.loads((tmp_path / "texts" / plan.shards[0]).read_text(encoding="utf-8").splitlines()[0])
    assert first["id"].endswith(":1") and len(first["id"].split(":")[0]) == 12
    conv = Conversation([Message("system", "s"), Message("user", "u1"), Message("assistant", "a1")])
    assert record_text(conv, "first_user") == "u1" and record_text(conv, "conversation") == "u1\na1"
    mcq = MultipleChoice("q?", {"A": "x", "B": "y"}, "B")
    assert record_text(mcq, "question") == "q?" and record_text(mcq, "question_options") == "q?\nA. x\nB. y"


# ------------------------------------------------------------------------------------------------- recall pipeline


def test_recall_thresholds_guard_decontamination_and_outputs(bench_dir: Path, pool_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = RecallConfig(top_k=5, similarity_threshold=0.3, max_similarity=0.95)
    res = _pipeline(bench_dir, pool_file, out, recall=cfg)

    # shards and manifest
    store = VectorStore(out / "pool_vectors")
    assert len(store.manifest.shards) == 4 and store.rows == 75 and store.dim == 4096
    vecs = store.vectors(store.manifest.shards[0])
    assert isinstance(vecs, np.memmap) and vecs.dtype == np.float16

    # brute force over the whole store: what the recall must have kept
    pool = np.concatenate([np.asarray(store.vectors(s), np.float32) for s in store.manifest.shards])
    ids = store.all_ids()
    q = np.asarray(np.load(out / "eval_vectors" / "eval-00000.npy"), np.float32)
    sims = q @ pool.T
    views = [np.asarray(np.load(p), np.float32) for p in sorted((out / "eval_vectors").glob("guard-*.npy"))]
    assert len(views) == 3  # question, question + options, question + answer
    leaked = {ids[j] for v in views for j in np.nonzero((v @ pool.T > cfg.max_similarity).any(axis=0))[0]}
    expected = set()
    for i in range(len(q)):
        top = np.argsort(-sims[i], kind="stable")[: cfg.top_k]
        expected |= {ids[j] for j in top if sims[i, j] >= cfg.similarity_threshold} - leaked
    assert {r.id for r in res.recall.recalled} == expected
    for r in res.recall.recalled:
        assert cfg.similarity_threshold <= r.score <= cfg.max_similarity
    assert all(n <= cfg.top_k for n in res.recall.per_question.values())

    # the planted near-copy is caught by the leakage guard and appears in no output
    near_id = next(i for i, t in _texts(out).items() if t == NEAR_COPY)
    assert near_id in {r.id for r in res.recall.leaked} and near_id in leaked
    # the planted row sharing 13+ characters with an eval answer is dropped by decontamination
    dirty = [json.loads(line) for line in (out / "decontaminated.jsonl").read_text(encoding="utf-8").splitlines()]
    dirty_id = next(i for i, t in _texts(out).items() if t == CONTAMINATED_Q)
    assert dirty_id in {r.id for r in res.recall.recalled}  # it was recalled ...
    assert any(d["id"] == dirty_id and d["ngram"] in LONG_ANSWER and len(d["ngram"]) == 13 for d in dirty)
    for name in ("train.jsonl", "control.jsonl"):  # ... and is in no training file, nor is the near-copy
        used = {json.loads(x)["id"] for x in (out / f"{name}.selection.jsonl").read_text(encoding="utf-8").splitlines()}
        assert dirty_id not in used and near_id not in used
        text = (out / name).read_text(encoding="utf-8")
        assert LONG_ANSWER[:13] not in text and NEAR_COPY not in text

    # mix: random rows are exactly round(R * r / (1 - r)); control has the same size; outputs are readable ShareGPT
    s = res.mix.summary()
    assert s["random_added"] == round(s["recalled_kept"] * 0.25 / 0.75)
    assert s["control_rows"] == s["train_rows"] == s["recalled_kept"] + s["random_added"]
    assert sum(1 for _ in DatasetReader(out / "train.jsonl", "sharegpt")) == s["train_rows"]
    assert json.loads((out / "train.jsonl.manifest.json").read_text())["rows"] == s["train_rows"]
    assert (out / "recall_scores.png").read_bytes()[:4] == b"\x89PNG"
    stats = json.loads((out / "recall_stats.json").read_text())["subjects"]
    assert [r["subject"] for r in stats] == ["clinical_medicine", "us", "ALL"]


def _texts(out: Path) -> dict[str, str]:
    texts = {}
    for f in sorted((out / "pool_texts").glob("texts-*.jsonl")):
        for line in f.read_text(encoding="utf-8").splitlines():
            item = json.loads(line)
            texts[item["id"]] = item["text"]
    return texts


def test_same_seed_same_bytes_other_seed_differs(bench_dir: Path, pool_file: Path, tmp_path: Path) -> None:
    names = ["train.jsonl", "control.jsonl", "train.jsonl.selection.jsonl", "recalled.jsonl", "recall_scores.png"]
    _pipeline(bench_dir, pool_file, tmp_path / "a")
    _pipeline(bench_dir, pool_file, tmp_path / "b", shard_size=7)  # sharding does not change the result
    _pipeline(bench_dir, pool_file, tmp_path / "c", mix=MixConfig(mix_ratio=0.25, seed=8))
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert (tmp_path / "a" / "control.jsonl").read_bytes() != (tmp_path / "c" / "control.jsonl").read_bytes()


def test_mix_ratio_exact(pool_file: Path, tmp_path: Path) -> None:
    plan = split_pool([pool_file], tmp_path / "texts", shard_size=100)
    store = build_store(plan, tmp_path / "texts", make_backend("ngram-hash"), tmp_path / "vec", show_progress=False)
    ids = VectorStore(tmp_path / "vec").all_ids()
    assert store.rows == len(ids)
    recalled = [RecalledRow(i, 0.8, ["q"]) for i in ids[:30]]
    for ratio, expected in ((0.25, 10), (0.5, 30), (0.0, 0)):
        bench = load_benchmark([_tiny_bench(tmp_path)])
        out = build_training_sets(
            [pool_file],
            ids,
            recalled,
            set(),
            NgramIndex(bench.questions),
            tmp_path / f"m{ratio}",
            MixConfig(mix_ratio=ratio, seed=1, output_format="messages"),
        )
        assert out.recalled_kept == 30 and out.random_added == expected
        assert out.train.rows == 30 + expected and out.control is not None and out.control.rows == out.train.rows
        assert out.train.format == "messages"
        if expected:
            assert out.random_added / out.train.rows == pytest.approx(ratio)


def _tiny_bench(tmp_path: Path) -> Path:
    p = tmp_path / "anatomy.csv"
    p.write_text(
        "id,question,A,B,C,D,answer\n0,壁胸膜的分部不包括哪一项结构,肋胸膜,肺胸膜,膈胸膜,胸膜顶,B\n", encoding="utf-8"
    )
    return p


def test_decontamination_ngram_index() -> None:
    q = MultipleChoice("糖尿病肾病患者减少尿蛋白应优先选用哪类药物", {"A": "胰岛素", "B": LONG_ANSWER}, "B", id="q1")
    idx = NgramIndex([q], n=13)
    assert idx.match("完全无关的一段文字，讲的是感冒") is None
    hit = idx.match("医生说 血管紧张素 转换酶抑制剂可以减少尿蛋白")  # whitespace does not hide a copy
    assert hit is not None and hit[1] == "q1" and len(hit[0]) == 13
    assert NgramIndex([q], n=30).match(LONG_ANSWER) is None  # shorter than n: nothing to match
    assert idx.match("胰岛素") is None  # a short option alone never contaminates


# ------------------------------------------------------------------------------------------------- backends


def test_ngram_backend_chinese_and_deterministic() -> None:
    b = make_backend(EmbeddingConfig("ngram-hash", options={"bits": 10}))
    v = b.embed(["高血压的治疗方法有哪些", "高血压治疗方法有哪些？", "糖尿病患者的饮食", "高血压的治疗方法有哪些"])
    assert v.shape == (4, 1024) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    sims = v @ v.T
    assert sims[0, 1] > 0.7 > sims[0, 2] and sims[0, 3] == pytest.approx(1.0)
    assert np.array_equal(
        v,
        make_backend(EmbeddingConfig("ngram-hash", options={"bits": 10})).embed(
            ["高血压的治疗方法有哪些", "高血压治疗方法有哪些？", "糖尿病患者的饮食", "高血压的治疗方法有哪些"]
        ),
    )


def test_sentence_transformers_backend_minilm(tmp_path: Path) -> None:
    b = make_backend(EmbeddingConfig("sentence-transformers", batch_size=4))
    v = b.embed(["What causes high blood pressure?", "Causes of hypertension", "How to bake bread"])
    assert v.shape == (3, 384) and b.fingerprint()["model"] == "embedded:minilm-l6"
    assert float(v[0] @ v[1]) > float(v[0] @ v[2]) + 0.2


@pytest.fixture
def embeddings_server():
    """The project's fake OpenAI server: (base_url, embeddings request counter, add one 503 fault, add one 400)."""
    from tests.fakes.openai_server import FakeOpenAIServer

    with FakeOpenAIServer(embedding_dim=8) as server:
        yield (
            server.base_url,
            lambda: server.by_path.get("/v1/embeddings", 0),
            lambda fault="503": server.add_faults(fault),
        )


def test_openai_api_backend_batches_retries_and_caches(embeddings_server, tmp_path: Path) -> None:
    base_url, count, add_fault = embeddings_server
    texts = [f"text {i}" for i in range(10)] + ["text 0"]
    options = {
        "base_url": base_url,
        "api_key": "sk-test-secret",
        "concurrency": 2,
        "backoff_s": 0.01,
        "cache_path": str(tmp_path / "emb.sqlite"),
    }
    b = make_backend(EmbeddingConfig("openai-api", model="fake-embedding", batch_size=4, options=options))
    add_fault()  # one 503: a network error, retried
    v = b.embed(texts)
    assert v.shape == (11, 8) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert np.array_equal(v[0], v[10])  # order kept, duplicates embedded once
    assert count() == 3 + 1  # 10 unique texts in batches of 4, plus the retried one
    assert "sk-test-secret" not in json.dumps(b.fingerprint())
    again = make_backend(EmbeddingConfig("openai-api", model="fake-embedding", batch_size=4, options=options))
    assert np.array_equal(again.embed(texts), v) and count() == 4  # all from the cache


def test_openai_api_backend_does_not_retry_a_bad_request(embeddings_server, tmp_path: Path) -> None:
    base_url, count, add_fault = embeddings_server
    options = {"base_url": base_url, "api_key": "sk-test-secret", "backoff_s": 0.01}
    b = make_backend(EmbeddingConfig("openai-api", model="fake-embedding", batch_size=4, options=options))
    add_fault("400")  # the request itself is wrong: one try, a clear error without the key
    with pytest.raises(Exception) as err:
        b.embed(["a", "b"])
    assert count() == 1 and "sk-test-secret" not in str(err.value)


# ------------------------------------------------------------------------------------------------- evaluation


def _questions(answers: str) -> list[MultipleChoice]:
    return [
        MultipleChoice(
            f"问题{i}", {k: f"选项{k}{i}" for k in "ABCD"}, a, "anatomy" if i % 2 else "virology", id=f"q{i}"
        )
        for i, a in enumerate(answers)
    ]


class AlwaysA:
    """A scripted model that always answers A: by generation and by likelihood."""

    def generate(self, conversations):
        return ["答案是 A" for _ in conversations]

    def loglikelihood(self, requests):
        return [-0.1 if cont.strip().startswith("A") else -5.0 for _, cont in requests]


def test_always_a_scores_share_of_a_answers() -> None:
    answers = "AABCDAABCB"
    qs = _questions(answers)
    share = answers.count("A") / len(answers)
    gen = evaluate_generation(qs, AlwaysA(), model_name="always-a")
    ll = evaluate_loglikelihood(qs, AlwaysA(), model_name="always-a")
    assert gen.accuracy == share and ll.accuracy == share
    table = {r["subject"]: r for r in accuracy_by_subject(gen)}
    assert table["ALL"]["accuracy"] == share and table["ALL"]["n"] == 10
    assert table["ALL"]["ci95_low"] <= share <= table["ALL"]["ci95_high"]
    assert bootstrap_ci([True] * 5) == (1.0, 1.0)


def test_parse_answer_letters() -> None:
    assert parse_answer("答案是 B。") == "B"
    assert parse_answer("The answer is (C).") == "C"
    assert parse_answer("D. 胸膜顶") == "D"
    assert parse_answer("我选 E", "ABCD") is None and parse_answer("无法判断") is None


def test_paired_comparison_known_p_value(tmp_path: Path) -> None:
    # 20 questions: both right on 6, both wrong on 2, only A right on 2, only B right on 10
    pattern = [(1, 1)] * 6 + [(0, 0)] * 2 + [(1, 0)] * 2 + [(0, 1)] * 10

    def results(col: int, name: str) -> EvalResults:
        rs = [
            QuestionResult(f"q{i}", "anatomy" if i < 10 else "virology", "A", "A" if p[col] else "B", bool(p[col]))
            for i, p in enumerate(pattern)
        ]
        return EvalResults(name, "generation", rs)

    pa = results(0, "control").save(tmp_path / "a.json")
    pb = results(1, "recalled").save(tmp_path / "b.json")
    comp = compare_results(EvalResults.load(pa), EvalResults.load(pb))
    assert (comp.a_only, comp.b_only, comp.n) == (2, 10, 20)
    assert comp.p_value == pytest.approx(0.03857421875)  # 2 * P(X <= 2), X ~ Binomial(12, 1/2) = 2 * 79 / 4096
    assert comp.delta == pytest.approx(0.4)
    md = comparison_markdown(comp)
    assert "| ALL | 20 | 40.0% | 80.0% | +40.0% | 0.03857 |" in md
    png = accuracy_chart([("control", EvalResults.load(pa)), ("recalled", EvalResults.load(pb))], tmp_path / "c.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_hf_loglikelihood_batched_equals_unbatched() -> None:
    from medtune_core.models.tiny import tiny_model_path

    path = tiny_model_path()
    reqs = [("题目：高血压首选什么药？\n答案：", " A"), ("短", " B"), ("题目：贫血的病因\n答案：", " 慢性失血")]
    one = HFCausalLM(path, batch_size=1).loglikelihood(reqs)
    many = HFCausalLM(path, batch_size=3).loglikelihood(reqs)
    assert np.allclose(one, many, atol=1e-4) and all(x < 0 for x in one)


@pytest.mark.slow
def test_smollm2_evaluates_by_likelihood_and_generation() -> None:
    model = HFCausalLM("embedded:smollm2-135m-instruct", batch_size=8, max_new_tokens=8)
    qs = [
        MultipleChoice("What is 2 + 2?", {"A": "3", "B": "4", "C": "5", "D": "22"}, "B", "math", id="m1"),
        MultipleChoice(
            "Which organ pumps blood?", {"A": "Lung", "B": "Liver", "C": "Heart", "D": "Skin"}, "C", "anatomy", id="m2"
        ),
    ]
    ll = evaluate_loglikelihood(qs, model, continuation="text", normalize=True, header="", model_name="smollm2")
    assert all(r.pred in "ABCD" and len(r.scores) == 4 for r in ll.results)
    gen = evaluate_generation(qs, model, model_name="smollm2")
    assert all(isinstance(r.reply, str) for r in gen.results)


# ------------------------------------------------------------------------------------------------- peer data


@pytest.mark.peer
def test_peer_cmmlu_benchmark_and_medicalgpt_pool(peer_dir: Path, tmp_path: Path) -> None:
    bench_path = peer_dir / "cmmlu_dev"
    pool_src = peer_dir / "medicalgpt" / "medical_sft_1K_format.jsonl"
    if not bench_path.is_dir() or not pool_src.is_file():
        pytest.skip("peer CMMLU dev / MedicalGPT SFT file absent")
    bench = load_benchmark([bench_path])
    assert len(bench.subject_counts()) == 9 and len(bench) == 45
    q0 = bench.questions[0]
    opt = max(bench.questions, key=lambda q: max(len(v) for v in q.options.values()))
    long_opt = max(opt.options.values(), key=len)
    pool = tmp_path / "pool.jsonl"
    extra = [_sharegpt(q0.question, "见教材。")]  # an exact copy of an eval question
    if len(long_opt) >= 13:
        extra.append(_sharegpt(opt.question + "，请解释", f"参考：{long_opt}"))
    pool.write_text(pool_src.read_text(encoding="utf-8") + "\n".join(extra) + "\n", encoding="utf-8")
    res = _pipeline(
        bench_path,
        pool,
        tmp_path / "out",
        recall=RecallConfig(top_k=10, similarity_threshold=0.25, max_similarity=0.95),
        shard_size=400,
    )
    assert res.recall.leaked and all(r.score > 0.95 for r in res.recall.leaked)
    assert all(0.25 <= r.score <= 0.95 for r in res.recall.recalled)
    n_src = sum(1 for line in pool_src.read_text(encoding="utf-8").splitlines() if line.strip())
    planted = {row_id(file_sha256(pool), n_src + 1 + i) for i in range(len(extra))}
    assert row_id(file_sha256(pool), n_src + 1) in {r.id for r in res.recall.leaked}
    for name in ("train.jsonl", "control.jsonl"):
        sel = (tmp_path / "out" / f"{name}.selection.jsonl").read_text(encoding="utf-8").splitlines()
        assert not planted & {json.loads(x)["id"] for x in sel}
    if len(long_opt) >= 13:
        assert long_opt not in (tmp_path / "out" / "train.jsonl").read_text(encoding="utf-8")
