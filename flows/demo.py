"""``make demo``: the main job end to end on embedded defaults (no API key, no GPU, no download).

Runs each registered flow in pipeline order with its defaults, writing under one demo folder, then prints
where every output is and how to look at the runs in the Prefect UI.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from flows.cli_common import setup_logging

#: Pipeline order and the demo's overrides of each flow's defaults.
DEMO_STEPS: list[tuple[str, dict[str, Any]]] = [
    ("prepare-data", {}),
    ("data-synthesis", {"mode": "template", "agents": "all", "num_samples": 50}),
    ("eval-driven-recall", {}),
    # SFT -> DPO, a few steps each on the embedded SmolLM2, then the safety evaluation of each stage's model
    ("rlhf-training", {"safety": {"limit": 4, "max_new_tokens": 64}}),
    ("bailian-upload", {"dry_run": True}),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output-dir", type=Path, default=Path("out/demo"), help="Where every flow writes.")
    parser.add_argument("--only", nargs="*", help="Run only these flows.")
    args = parser.parse_args(argv)

    from tasks.prefect_env import apply_prefect_defaults

    apply_prefect_defaults()
    setup_logging()

    from flows.params import validate_params
    from flows.registry import FLOWS, load_flow

    summary: list[dict[str, Any]] = []
    for name, overrides in DEMO_STEPS:
        if name not in FLOWS or (args.only and name not in args.only):
            continue
        flow_obj, model = load_flow(name)
        params = validate_params(model, {**overrides, "output_dir": str(args.output_dir / name)})
        started = time.perf_counter()
        state = flow_obj(params=params, return_state=True)
        seconds = time.perf_counter() - started
        outputs = state.result(raise_on_failure=False) if state.is_completed() else {}
        summary.append({"flow": name, "state": state.type.value, "seconds": round(seconds, 1), "outputs": outputs})
        print(f"\n== {name}: {state.type.value} in {seconds:.0f} s", flush=True)
        if not state.is_completed():
            print(f"   {state.message}", flush=True)
            break
        for key, value in (outputs or {}).items():
            print(f"   {key}: {value}", flush=True)

    print("\nEvery output is listed above; the full summary is in", args.output_dir / "demo-summary.json")
    print("To browse the runs in the Prefect UI:  .venv/bin/prefect server start  → http://127.0.0.1:4200")
    print("(set PREFECT_API_URL=http://127.0.0.1:4200/api before `make demo` to record the runs there)")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "demo-summary.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    return 0 if all(s["state"] == "COMPLETED" for s in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
