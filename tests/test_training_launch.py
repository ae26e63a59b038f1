"""Launchers (``launcher: accelerate | torchrun``, ``num_processes``, ``deepspeed: zero2 | zero3 | FILE.json``).

No GPU here: the multi-GPU paths are checked by their validation, the exact commands they run, the shipped
DeepSpeed / accelerate configs, and one real ``torchrun`` launch of a tiny SFT stage with one process on CPU
(gloo), whose result must match the same stage trained in-process.
"""

from __future__ import annotations

import glob
import json
import logging
import sys
import tomllib
from pathlib import Path

import pytest
import torch
import yaml

from medtune_core.errors import MedtuneError
from medtune_core.training import get_stage, stage_config
from medtune_core.training.launch import (
    ACCELERATE_CONFIG,
    DEEPSPEED_DIR,
    RECIPES,
    check_launch_hardware,
    deepspeed_config_path,
    launch_command,
    load_spec,
)
from medtune_core.training.runner import Runtime, training_args_kwargs
from tests.test_training_stages import ANS, QS, TINY

REPO = Path(__file__).resolve().parent.parent
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the errors given when no GPU is visible")


@pytest.fixture(scope="module")
def chat(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("launch-data") / "chat.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i in range(16):
            row = {"instruction": QS[i % 8], "input": "", "output": ANS[i % 8] * (1 + i % 2)}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


# ------------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"num_processes": 2}, "num_processes > 1 needs launcher accelerate or torchrun"),
        ({"deepspeed": "zero2"}, "deepspeed needs launcher accelerate or torchrun"),
        ({"launcher": "torchrun", "deepspeed": "zero2", "device": "cpu"}, "need CUDA GPUs, but device is cpu"),
        ({"launcher": "accelerate", "num_processes": 2, "device": "cpu"}, "need CUDA GPUs, but device is cpu"),
        ({"launcher": "accelerate", "deepspeed": "zero1"}, "deepspeed: zero2, zero3 or a .json config file"),
        ({"launcher": "torchrun", "deepspeed": "ds_config.yaml"}, "zero2, zero3 or a .json config file"),
        ({"launcher": "mpirun"}, "'inprocess', 'accelerate' or 'torchrun'"),
        ({"launcher": "torchrun", "num_processes": 0}, "greater than or equal to 1"),
    ],
)
def test_launch_options_that_cannot_work_are_rejected(values: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        stage_config("sft", **values)


def test_valid_launch_options() -> None:
    cfg = stage_config("dpo", launcher="accelerate", num_processes=8, deepspeed="zero3")
    assert (cfg.launcher.value, cfg.num_processes, cfg.deepspeed) == ("accelerate", 8, "zero3")
    assert stage_config("sft", launcher="torchrun", device="cpu").num_processes == 1  # one CPU process is fine
    assert stage_config("sft").launcher.value == "inprocess"


def test_launch_commands(tmp_path: Path) -> None:
    spec = tmp_path / "stage.json"
    acc = stage_config("sft", launcher="accelerate", num_processes=4, deepspeed="zero2")
    assert launch_command(acc, spec, python="/py") == [
        "/py",
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ACCELERATE_CONFIG),
        "--num_processes",
        "4",
        "-m",
        "medtune_core.training.launch",
        str(spec),
    ]
    tr = stage_config("sft", launcher="torchrun", num_processes=2)
    assert launch_command(tr, spec, python="/py") == [
        "/py",
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "medtune_core.training.launch",
        str(spec),
    ]
    assert launch_command(tr, spec)[0] == sys.executable  # the same environment
    with pytest.raises(MedtuneError, match="runs in this process"):
        launch_command(stage_config("sft"), spec)


def test_deepspeed_config_path(tmp_path: Path) -> None:
    assert deepspeed_config_path("zero2") == DEEPSPEED_DIR / "zero2.json"
    assert deepspeed_config_path("zero3").is_file()
    own = tmp_path / "ds.json"
    own.write_text("{}")
    assert deepspeed_config_path(str(own)) == own.resolve()
    with pytest.raises(MedtuneError, match=r"deepspeed config .*missing.json not found"):
        deepspeed_config_path(tmp_path / "missing.json")


def test_training_arguments_carry_deepspeed_and_ddp_settings(tmp_path: Path) -> None:
    runtime = Runtime(cuda=True, bf16=True, gradient_checkpointing=True)
    cfg = stage_config("sft", launcher="torchrun", num_processes=2, deepspeed="zero3")
    kw = training_args_kwargs(cfg, runtime, tmp_path, has_eval=False)
    assert kw["deepspeed"] == str(DEEPSPEED_DIR / "zero3.json")
    assert kw["ddp_find_unused_parameters"] is False
    plain = training_args_kwargs(stage_config("sft"), runtime, tmp_path, has_eval=False)
    assert "deepspeed" not in plain and "ddp_find_unused_parameters" not in plain


@NO_GPU
def test_no_gpu_is_said_before_anything_starts(chat: Path, tmp_path: Path) -> None:
    cfg = stage_config("sft", train_files=[chat], launcher="torchrun", num_processes=2, output_dir=tmp_path / "o")
    with pytest.raises(MedtuneError, match=r"num_processes=2 needs CUDA GPUs .* none is visible"):
        check_launch_hardware(cfg)
    with pytest.raises(MedtuneError, match="deepspeed zero2 needs CUDA GPUs"):
        get_stage("sft").run(cfg.model_copy(update={"num_processes": 1, "deepspeed": "zero2"}))
    assert not (tmp_path / "o").exists()
    check_launch_hardware(cfg.model_copy(update={"num_processes": 1}))  # one process: CPU is fine


def test_callbacks_cannot_cross_to_launched_processes(chat: Path, tmp_path: Path) -> None:
    cfg = stage_config("sft", train_files=[chat], launcher="torchrun", output_dir=tmp_path / "o")
    with pytest.raises(MedtuneError, match="callbacks and builder extras cannot cross"):
        get_stage("sft").run(cfg, callbacks=[object()])


# ---------------------------------------------------------------------------------------- shipped files


def test_deepspeed_presets_fill_batch_sizes_from_the_trainer() -> None:
    for stage in (2, 3):
        ds = json.loads((DEEPSPEED_DIR / f"zero{stage}.json").read_text())
        assert ds["zero_optimization"]["stage"] == stage
        for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
            assert ds[key] == "auto", (stage, key)
        assert ds["bf16"]["enabled"] == "auto" and ds["fp16"]["enabled"] == "auto"
        assert ds["gradient_clipping"] == "auto"
        if stage == 3:
            assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


def test_accelerate_config_is_one_machine_multi_gpu() -> None:
    acc = yaml.safe_load(ACCELERATE_CONFIG.read_text())
    assert acc["distributed_type"] == "MULTI_GPU" and acc["num_machines"] == 1 and acc["use_cpu"] is False
    assert acc["mixed_precision"] == "no"  # precision comes from the stage through the Trainer


def test_recipes_ship_in_the_wheel() -> None:
    """Every file under medtune_core/recipes matches the package-data globs (setuptools expands them with a
    recursive glob from the package folder)."""
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["medtune_core"]
    shipped = {f for g in globs for f in glob.glob(g, root_dir=RECIPES.parent, recursive=True)}
    files = {p.relative_to(RECIPES.parent).as_posix() for p in RECIPES.rglob("*") if p.is_file()}
    ours = {"recipes/deepspeed/zero2.json", "recipes/deepspeed/zero3.json", "recipes/accelerate/multi_gpu.yaml"}
    assert ours <= files
    assert files <= shipped


# ------------------------------------------------------------------------------------ a real torchrun


@pytest.mark.slow
def test_torchrun_one_process_on_cpu_matches_in_process(
    chat: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``torch.distributed.run`` starts a worker (gloo on CPU) that trains the stage; the parent reads back the
    result. Same seed and data as an in-process run, so the same losses."""
    common = dict(TINY, train_files=[chat], max_steps=2, device="cpu")
    caplog.set_level(logging.INFO, logger="medtune_core.training.launcher")
    launched = get_stage("sft").run(stage_config("sft", **common, launcher="torchrun", output_dir=tmp_path / "tr"))
    out = tmp_path / "tr"
    assert launched.stage == "sft" and launched.output_dir == out
    assert (launched.adapter_dir / "adapter_model.safetensors").is_file()
    assert (launched.adapter_dir / "chat_template.jinja").is_file()
    assert json.loads((out / "metrics.json").read_text())["steps"] == 2
    assert launched.metrics["steps"] == 2 and launched.loss_curve == out / "loss_curve.png"
    stage, config, adapter = load_spec(out / "launch" / "stage.json")
    assert (stage, config["launcher"], adapter) == ("sft", "torchrun", None)
    assert any("torch.distributed.run" in r.getMessage() for r in caplog.records)
    assert any("sft (torchrun) | " in r.getMessage() for r in caplog.records)  # the worker's output, streamed

    here = get_stage("sft").run(stage_config("sft", **common, output_dir=tmp_path / "here"))
    for key in ("loss_first", "loss_last", "effective_tokens"):
        assert launched.metrics[key] == pytest.approx(here.metrics[key], rel=1e-5), key


@pytest.mark.slow
def test_failed_launch_reports_exit_code_and_last_output(chat: Path, tmp_path: Path) -> None:
    cfg = stage_config("sft", **TINY, train_files=[chat], launcher="torchrun", device="cpu", output_dir=tmp_path / "o")
    broken = tmp_path / "broken-model"  # there (the checks before launching pass), but no loadable model
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "no-such-architecture"}')
    cfg = cfg.model_copy(update={"model": str(broken)})
    with pytest.raises(MedtuneError, match=r"(?s)exited with code \d+; last output:.*Error"):
        get_stage("sft").run(cfg)
    with pytest.raises(MedtuneError, match=r"model: model .*no-such-model.*: no such folder"):  # checked here first
        get_stage("sft").run(cfg.model_copy(update={"model": str(tmp_path / "no-such-model")}))
