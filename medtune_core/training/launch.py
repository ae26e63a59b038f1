"""Several GPUs: run a stage under ``accelerate launch`` or ``torchrun``, one process per GPU.

A stage with ``launcher: accelerate | torchrun`` is not trained in the calling process: :func:`launch_stage`
writes ``<output_dir>/launch/stage.json``, runs::

    python -m accelerate.commands.launch --config_file .../accelerate/multi_gpu.yaml --num_processes N \\
        -m medtune_core.training.launch <output_dir>/launch/stage.json
    python -m torch.distributed.run --standalone --nproc_per_node N -m medtune_core.training.launch ...

(the same interpreter, so the same environment), streams its output into this module's log, fails with the
exit code and the last lines of output when it fails, and reads back ``<output_dir>/result.json``, which the
main process of the launch writes. ``deepspeed: zero2 | zero3 | FILE.json`` reaches the HF Trainer
(``TrainingArguments.deepspeed``); the shipped configs use ``"auto"`` for everything the Trainer fills in.

This module is also the entry point every launched process runs: ``python -m medtune_core.training.launch
CONFIG.json`` trains the stage named in the file in this process (the launcher field is not looked at), with
``CONFIG.json`` either ``{"stage", "config", "adapter"}`` or a stage's own ``stage_config.json``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medtune_core.errors import MedtuneError
from medtune_core.training.config import DEEPSPEED_DIR, RECIPES, deepspeed_config_path
from medtune_core.training.launcher import (
    ACCELERATE_CONFIG,
    ENTRY_MODULE,
    TAIL_LINES,
    check_launch_hardware,
    launch_command,
    launch_stage,
    run_streaming,
)
from medtune_core.training.runner import StageResult, train_and_save
from medtune_core.training.stages import get_stage

__all__ = [
    "ACCELERATE_CONFIG",
    "DEEPSPEED_DIR",
    "ENTRY_MODULE",
    "RECIPES",
    "TAIL_LINES",
    "check_launch_hardware",
    "deepspeed_config_path",
    "launch_command",
    "launch_stage",
    "load_spec",
    "main",
    "run_spec",
    "run_streaming",
]


def load_spec(path: str | Path) -> tuple[str, dict[str, Any], str | None]:
    """``(stage, config, adapter)`` from a launch file or a stage's ``stage_config.json``."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or "stage" not in data:
        raise MedtuneError(f"{path}: expected a JSON object with a 'stage' field")
    if "config" in data:
        return data["stage"], data["config"], data.get("adapter")
    config = {k: v for k, v in data.items() if k != "stage"}
    return data["stage"], config, None


def run_spec(path: str | Path) -> StageResult:
    """Train the stage described in ``path`` in this process (what each launched process does)."""
    name, config, adapter = load_spec(path)
    trainer, ctx = get_stage(name).setup(config, adapter=adapter)
    return train_and_save(trainer, ctx)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print(f"usage: python -m {ENTRY_MODULE} CONFIG.json", file=sys.stderr)
        return 2
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(level=logging.INFO, format=f"[rank {rank}] %(levelname)s %(name)s: %(message)s")
    try:
        result = run_spec(args[0])
    except MedtuneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if rank == "0":
        print(json.dumps({"result": result.to_dict()}, ensure_ascii=False, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
