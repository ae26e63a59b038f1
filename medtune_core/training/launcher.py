"""Starting a stage under ``accelerate launch`` or ``torchrun``, one process per GPU (see :mod:`.launch`).

Kept apart from :mod:`.launch` (the entry point every launched process runs, which needs the stage registry) so
that the registry can start launches without importing its own importer: config <- runner <- launcher <- stages
<- launch, no cycle.
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

from medtune_core.errors import MedtuneError
from medtune_core.training.config import RECIPES, Launcher, StageConfig, deepspeed_config_path
from medtune_core.training.runner import StageResult

log = logging.getLogger(__name__)

ACCELERATE_CONFIG = RECIPES / "accelerate" / "multi_gpu.yaml"
ENTRY_MODULE = "medtune_core.training.launch"
TAIL_LINES = 40


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


def check_launch(config: StageConfig) -> None:
    """Everything a launch needs that can be checked before anything is written or started."""
    check_launch_hardware(config)
    if config.deepspeed:
        deepspeed_config_path(config.deepspeed)  # fail here, not in every process
        if importlib.util.find_spec("deepspeed") is None:
            raise MedtuneError(f"{config.stage}: deepspeed needs the deepspeed package (pip install 'medtune[gpu]')")


def launch_stage(name: str, config: StageConfig, *, adapter: str | Path | None = None) -> StageResult:
    """Train stage ``name`` in a launched subprocess group (see :mod:`.launch`); its :class:`StageResult`."""
    check_launch(config)
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
