"""SFT LoRA on the embedded SmolLM2 (CPU): effective tokens/s of padding-free packing vs padded batches.

Our default SFT packs samples best-fit into ``max_length`` rows without padding (position ids keep samples
apart); MedicalGPT pads every batch to its longest sample and does not pack. Both run here, in the same
process, on the same data (realistic length variety: MedicalGPT's ``medical_sft_1K_format.jsonl`` when
``../shared/data/peer`` is present, else a synthetic mix), same LoRA, same batch size, a few steps each.
Effective tokens are non-padding tokens; the first step of each run is warm-up and not counted.

    python -m bench.bench_sft_packing [--steps 4] [--samples 256] [--max-length 512] [--batch 4] [--write]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PEER = REPO.parent / "shared" / "data" / "peer" / "medicalgpt" / "medical_sft_1K_format.jsonl"
DOC = REPO / "docs" / "BENCHMARKS.md"
BEGIN, END = "<!-- bench_sft_packing: begin -->", "<!-- bench_sft_packing: end -->"


def _data(folder: Path, samples: int, seed: int) -> tuple[Path, str]:
    rows: list[str]
    if PEER.is_file():
        rows = PEER.read_text(encoding="utf-8").splitlines()
        source = "MedicalGPT medical_sft_1K_format.jsonl"
    else:
        rng = random.Random(seed)
        rows = []
        for _ in range(1000):
            q = "患者咨询：" + "头痛伴恶心，" * rng.randint(1, 8)
            a = "建议：" + "注意休息，监测血压，必要时就医。" * int(rng.lognormvariate(1.2, 0.9) + 1)
            rows.append(json.dumps({"instruction": q, "input": "", "output": a}, ensure_ascii=False))
        source = "synthetic log-normal lengths"
    random.Random(seed).shuffle(rows)
    path = folder / "sft.jsonl"
    path.write_text("\n".join(r for r in rows[:samples] if r.strip()) + "\n", encoding="utf-8")
    return path, source


def run(steps: int, samples: int, max_length: int, batch: int, seed: int = 0) -> dict:
    from medtune_core.training import get_stage, stage_config

    out: dict = {"steps": steps, "samples": samples, "max_length": max_length, "batch": batch}
    with tempfile.TemporaryDirectory() as tmp:
        data, out["data"] = _data(Path(tmp), samples, seed)
        for name, packing in (("packed (medtune default)", True), ("padded (MedicalGPT)", False)):
            cfg = stage_config(
                "sft",
                model="embedded:smollm2-135m-instruct",
                train_files=[data],
                max_steps=steps + 1,
                batch_size=batch,
                max_length=max_length,
                packing=packing,
                save_steps=10_000,
                report_to=[],
                resume=False,
                seed=seed,
                output_dir=Path(tmp) / ("packed" if packing else "padded"),
            )
            trainer, ctx = get_stage("sft").setup(cfg)
            t0 = time.perf_counter()
            trainer.train()
            wall = time.perf_counter() - t0
            meter = ctx.extra["meter"]
            counted = meter.per_step[1:]  # first step is warm-up
            tokens = sum(t for t, _ in counted)
            seconds = sum(s for _, s in counted)
            out[name] = {
                "effective_tokens_per_s": round(tokens / seconds, 1),
                "tokens_per_step": round(tokens / len(counted), 1),
                "s_per_step": round(seconds / len(counted), 2),
                "padding_ratio": round(meter.padding_ratio, 3),
                "truncated_fraction": ctx.stats["truncation"]["truncated_fraction"],
                "mean_length": ctx.stats["truncation"]["mean_length"],
                "wall_s": round(wall, 1),
            }
            print(name, out[name], flush=True)
    packed = out["packed (medtune default)"]["effective_tokens_per_s"]
    padded = out["padded (MedicalGPT)"]["effective_tokens_per_s"]
    out["ratio"] = round(packed / padded, 2)
    print(f"effective tokens/s packed / padded = {out['ratio']}x (target >= 1.5x)")
    return out


def write_doc(res: dict) -> None:
    a, b = res["packed (medtune default)"], res["padded (MedicalGPT)"]

    def row(name: str, r: dict) -> str:
        return (
            f"| {name} | {r['effective_tokens_per_s']} | {r['tokens_per_step']} | {r['s_per_step']} "
            f"| {r['padding_ratio']:.1%} |"
        )

    text = f"""## SFT packing (`python -m bench.bench_sft_packing`, issue 5)

SFT with LoRA (r 16, all linear layers) on the embedded SmolLM2-135M-Instruct, CPU, float32, assistant-only loss.
Data: {res["data"]}, {res["samples"]} samples (mean {a["mean_length"]} tokens), batch {res["batch"]},
max_length {res["max_length"]}, {res["steps"]} measured steps per mode after one warm-up step, same process.
Effective tokens are non-padding tokens.

| mode | effective tokens/s | tokens/step | s/step | padding |
|---|---|---|---|---|
{row("padding-free packing (medtune default)", a)}
{row("padded batches, no packing (MedicalGPT)", b)}

**Ratio: {res["ratio"]}x** (target >= 1.5x).

Measured on a shared 2-core CPU machine (other jobs running at the same time, so absolute figures are noisy;
both modes ran back to back in one process).
"""
    doc = DOC.read_text(encoding="utf-8")
    if BEGIN in doc and END in doc:  # replace this benchmark's section, keep the rest of the file
        doc = doc[: doc.index(BEGIN) + len(BEGIN)] + "\n" + text + doc[doc.index(END) :]
    else:
        doc = doc.rstrip("\n") + f"\n\n{BEGIN}\n{text}{END}\n"
    DOC.write_text(doc, encoding="utf-8")
    print(f"wrote the SFT packing section of {DOC}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--write", action="store_true", help=f"write the figures into {DOC.relative_to(REPO)}")
    a = p.parse_args()
    res = run(a.steps, a.samples, a.max_length, a.batch)
    if a.write:
        write_doc(res)


if __name__ == "__main__":
    main()
