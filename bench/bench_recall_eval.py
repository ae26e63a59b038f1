"""Benchmark: memory and time of the benchmark evaluation (multiple-choice scoring of a causal LM), same run.

Each method runs in a fresh process (its peak RSS is its own), on the same questions of the shipped benchmark sample
with the same model and batch size:

- baseline (the previous scorer): every option a separate sequence (four per question), the model's full logits at
  every position and a full-vocabulary log-softmax over all of them;
- ours, letters: :func:`medtune_core.recall.evaluate.evaluate_loglikelihood` with :class:`HFCausalLM`, all four
  letters from one forward pass, logits only at the scored positions;
- ours, option texts: the same with ``continuation="text"`` (context once, its cache shared by the options).

Printed: seconds per question, peak memory above the loaded model (MB), the ratios against the baseline, and whether
the letter predictions agree with the baseline's.

    python -m bench.bench_recall_eval [--model embedded:smollm2-135m-instruct] [--questions 40] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from typing import Any

from bench.memory import peak_mb, rss_mb


def _questions(n: int) -> list[Any]:
    from medtune_core.recall import load_benchmark
    from medtune_core.recall.benchmark_eval import balanced_subset
    from medtune_core.samples import samples_dir

    return balanced_subset(load_benchmark([samples_dir() / "benchmark"]).questions, n)


def _baseline(lm: Any, questions: list[Any], batch_size: int) -> list[str]:
    """The previous scorer: one sequence per option, full logits, log-softmax over every position."""
    import torch

    from medtune_core.recall.evaluate import loglik_prompt

    tok = lm.tokenizer
    requests = [(loglik_prompt(q), f" {k}") for q in questions for k in q.options]
    encoded = []
    for context, continuation in requests:
        ctx = tok(context, add_special_tokens=False)["input_ids"]
        whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
        encoded.append((whole, len(whole) - len(ctx)))
    scores = [0.0] * len(encoded)
    for b in range(0, len(encoded), batch_size):
        idx = list(range(b, min(b + batch_size, len(encoded))))
        width = max(len(encoded[i][0]) for i in idx)
        ids = torch.full((len(idx), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, : len(encoded[i][0])] = torch.tensor(encoded[i][0])
            mask[r, : len(encoded[i][0])] = 1
        with torch.no_grad():
            logits = lm.model(input_ids=ids, attention_mask=mask).logits
        logp = torch.log_softmax(logits.float(), dim=-1)
        for r, i in enumerate(idx):
            seq, n = encoded[i]
            pos = torch.arange(len(seq) - n, len(seq))
            scores[i] = float(logp[r, pos - 1, torch.tensor(seq)[pos]].sum())
    preds = []
    for qi, q in enumerate(questions):
        opts = list(q.options)
        s = scores[qi * len(opts) : (qi + 1) * len(opts)]
        preds.append(opts[max(range(len(opts)), key=lambda j: (s[j], -j))])
    return preds


def measure(method: str, model: str, n: int, batch_size: int, out: Any) -> None:
    import torch

    torch.set_num_threads(2)
    from medtune_core.recall.evaluate import HFCausalLM, evaluate_loglikelihood

    questions = _questions(n)
    lm = HFCausalLM(model, batch_size=batch_size)
    base_rss = rss_mb()
    start = time.perf_counter()
    if method == "baseline":
        preds = _baseline(lm, questions, batch_size)
    else:
        res = evaluate_loglikelihood(questions, lm, continuation="text" if method == "text" else "letter")
        preds = [r.pred for r in res.results]
    seconds = time.perf_counter() - start
    out.put({"method": method, "s_per_q": seconds / len(questions), "peak_mb": peak_mb() - base_rss, "preds": preds})


def run(method: str, model: str, n: int, batch_size: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=measure, args=(method, model, n, batch_size, q))
    p.start()
    result = q.get()
    p.join()
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="embedded:smollm2-135m-instruct")
    ap.add_argument("--questions", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    results = {m: run(m, args.model, args.questions, args.batch_size) for m in ("baseline", "letters", "text")}
    base = results["baseline"]
    print(f"{args.model}, {args.questions} questions of the sample benchmark, batch {args.batch_size}, 2 threads")
    print("| method | s / question | peak MB above the model | time vs baseline | memory vs baseline |")
    print("|---|---|---|---|---|")
    for name, label in (("baseline", "4 sequences, full log-softmax"), ("letters", "ours: letters, one pass"),
                        ("text", "ours: option texts, shared cache")):  # fmt: skip
        r = results[name]
        print(
            f"| {label} | {r['s_per_q']:.3f} | {r['peak_mb']:.0f} | {base['s_per_q'] / r['s_per_q']:.2f}x faster | "
            f"{base['peak_mb'] / max(r['peak_mb'], 1):.1f}x less |"
        )
    same = sum(a == b for a, b in zip(base["preds"], results["letters"]["preds"], strict=True))
    print(f"letter predictions equal to the baseline's: {same}/{len(base['preds'])}")


if __name__ == "__main__":
    main()
