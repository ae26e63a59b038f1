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

import collections
import importlib.util
import json
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medtune_core.errors import MedtuneError
from medtune_core.training.config import DEEPSPEED_PRESETS, Launcher, StageConfig

log = logging.getLogger(__name__)

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
DEEPSPEED_DIR = RECIPES / "deepspeed"
ACCELERATE_CONFIG = RECIPES / "accelerate" / "multi_gpu.yaml"
ENTRY_MODULE = "medtune_core.training.launch"
TAIL_LINES = 40


def deepspeed_config_path(value: str | Path) -> Path:
    """``zero2`` / ``zero3`` (shipped) or a DeepSpeed JSON file that must exist."""
    if str(value) in DEEPSPEED_PRESETS:
        return DEEPSPEED_DIR / f"{value}.json"
    path = Path(value).expanduser().resolve()
    if not path.is_file():
        raise MedtuneError(f"deepspeed config {value} not found (use zero2, zero3 or a .json file)")
    return path


def launch_command(config: StageConfig, config_json: str | Path, *, python: str | None = None) -> list[str]:
    """The argv that starts ``config.num_processes`` processes running the stage described in ``config_json``."""
    python = python or sys.executable
    n = str(config.num_processes)
    entry = ["-m", ENTRY_MODULE, str(config_json)]
    if config.launcher is Launcher.ACCELERATE:
        return [
            python,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(ACCELERATE_CONFIG),
            "--num_processes",
            n,
            *entry,
        ]
    if config.launcher is Launcher.TORCHRUN:
        return [python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", n, *entry]
    raise MedtuneError(f"launcher {config.launcher.value} runs in this process; there is no command to build")


def check_launch_hardware(config: StageConfig) -> None:
    """DeepSpeed and several processes need as many CUDA GPUs; say so before starting anything."""
    if not (config.deepspeed or config.num_processes > 1):
        return
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    what = f"deepspeed {config.deepspeed}" if config.deepspeed else f"num_processes={config.num_processes}"
    if not gpus:
        raise MedtuneError(
            f"{config.stage}: {what} needs CUDA GPUs (one per process) and none is visible; "
            "on CPU use launcher: inprocess with num_processes: 1 and no deepspeed"
        )
    if gpus < config.num_processes:
        raise MedtuneError(f"{config.stage}: num_processes={config.num_processes} but only {gpus} GPU(s) visible")


def run_streaming(argv: Sequence[str], *, prefix: str, env: dict[str, str] | None = None) -> None:
    """Run ``argv``, logging each output line (stdout and stderr) as it comes; raise on a non-zero exit."""
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    log.info("%s: %s", prefix, " ".join(argv))
    with subprocess.Popen(
        list(argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        encoding="utf-8",
        errors="replace",
        bufsize=1,
        env=env,
    ) as proc:
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                line = line.rstrip("\n")
                tail.append(line)
                log.info("%s | %s", prefix, line)
            code = proc.wait()
        except BaseException:  # cancelled (Ctrl-C, a cancelled flow run): stop the launcher and its workers
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    if code:
        last = "\n".join(tail)
        raise MedtuneError(f"{prefix}: `{' '.join(argv)}` exited with code {code}; last output:\n{last}")


def launch_stage(name: str, config: StageConfig, *, adapter: str | Path | None = None) -> Any:
    """Train stage ``name`` in a launched subprocess group (see the module docstring); its :class:`StageResult`."""
    from medtune_core.training.runner import StageResult

    check_launch_hardware(config)
    if config.deepspeed:
        deepspeed_config_path(config.deepspeed)  # fail here, not in every process
        if importlib.util.find_spec("deepspeed") is None:
            raise MedtuneError(f"{name}: deepspeed needs the deepspeed package (pip install 'medtune[gpu]')")
    out = Path(config.output_dir).resolve()
    spec = out / "launch" / "stage.json"
    spec.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "stage": name,
        "config": config.model_copy(update={"output_dir": out}).model_dump(mode="json"),
        "adapter": str(Path(adapter).resolve()) if adapter is not None else None,
    }
    spec.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    result_file = out / "result.json"
    result_file.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    run_streaming(launch_command(config, spec), prefix=f"{name} ({config.launcher.value})", env=env)
    if not result_file.is_file():
        raise MedtuneError(f"{name}: the launched processes exited cleanly but wrote no {result_file}")
    return StageResult.from_dict(json.loads(result_file.read_text(encoding="utf-8")))


def load_spec(path: str | Path) -> tuple[str, dict[str, Any], str | None]:
    """``(stage, config, adapter)`` from a launch file or a stage's ``stage_config.json``."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or "stage" not in data:
        raise MedtuneError(f"{path}: expected a JSON object with a 'stage' field")
    if "config" in data:
        return data["stage"], data["config"], data.get("adapter")
    config = {k: v for k, v in data.items() if k != "stage"}
    return data["stage"], config, None


def run_spec(path: str | Path) -> Any:
    """Train the stage described in ``path`` in this process (what each launched process does)."""
    from medtune_core.training.runner import train_and_save
    from medtune_core.training.stages import get_stage

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
