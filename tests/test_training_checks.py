"""Checks a stage makes before and around training (tiny model, CPU): data of the wrong kind, samples that cannot
train at max_length, missing inputs, rewards that cannot be computed, a teacher that cannot be reached, a reward
without signal, the merged model's dtype and freshness, the stage identity, and the training modules' imports."""

from __future__ import annotations

import ast
import json
import logging
import socket
from pathlib import Path
from typing import Any

import pytest

from medtune_core.errors import MedtuneError, RecordError
from medtune_core.models.tiny import tiny_model_path
from medtune_core.rewards import GroupMaskedReward, build_reward_functions
from medtune_core.training import get_stage, merged_model_of, stage_config
from medtune_core.training.identity import StageState, stage_identity
from medtune_core.training.merge import merged_is_current
from medtune_core.training.runner import load_tokenizer
from medtune_core.training.stages import length_to_keep, prepare_chat, prepare_preference
from medtune_core.training.templates import prepare_training_template

TINY = dict(model="tiny", batch_size=2, max_length=96, save_steps=1000, report_to=[], learning_rate=1e-3)


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("checks")
    chat = [{"instruction": f"头痛第{i}天怎么办？", "output": "建议休息，必要时就医。"} for i in range(10)]
    pref = [{"prompt": f"发烧{i}天怎么办？", "chosen": "建议及时就医。", "rejected": "不用管。"} for i in range(10)]
    return {"chat": _write(d / "chat.jsonl", chat), "pref": _write(d / "pref.jsonl", pref)}


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    tok = load_tokenizer(tiny_model_path())
    prepare_training_template(tok, None)
    return tok


# ------------------------------------------------------------------------------------------------ data


def test_wrong_kind_of_file_is_refused_with_file_and_line_unless_converted(files: dict[str, Path], tokenizer: Any):
    sft = stage_config("sft", **TINY, train_files=[files["pref"]])
    with pytest.raises(RecordError, match=rf"{files['pref']}:1: kind: a preference record.*convert_data"):
        prepare_chat(sft, tokenizer)
    converted, _, _ = prepare_chat(sft.model_copy(update={"convert_data": True}), tokenizer)
    assert len(converted) == 10
    dpo = stage_config("dpo", **TINY, train_files=[files["chat"]])
    with pytest.raises(RecordError, match=rf"{files['chat']}:1: kind: a chat record, but this stage trains on pref"):
        prepare_preference(dpo, tokenizer)


def test_length_drops_are_counted_limited_and_come_with_a_max_length(tmp_path: Path, tokenizer: Any) -> None:
    long = "很长的回答" * 40
    rows = [{"prompt": f"问题{i}", "chosen": long if i < 3 else "短", "rejected": "不"} for i in range(10)]
    pref = _write(tmp_path / "pref.jsonl", rows)
    rm = stage_config("rm", **TINY, train_files=[pref])
    with pytest.raises(
        MedtuneError, match=r"rm: 3 of 10 samples \(30%\) are longer than max_length.*max_length=\d+ keeps 95%"
    ):
        prepare_preference(rm, tokenizer)
    ds, _, stats = prepare_preference(rm.model_copy(update={"max_dropped_share": 0.5}), tokenizer)
    assert len(ds) == 7 and stats["truncation"]["dropped"] == 3 and stats["truncation"]["dropped_share"] == 0.3
    assert stats["truncation"]["max_length_keeping_95pct"] == stats["truncation"]["longest"]
    assert length_to_keep([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 100]) == 19
    with pytest.raises(MedtuneError, match="10 of 10 samples"):  # none fits: said plainly, not TRL's num_samples=0
        prepare_preference(rm.model_copy(update={"max_length": 8, "max_dropped_share": 1.0}), tokenizer)


def test_sft_samples_without_an_answer_token_after_truncation_are_dropped(tmp_path: Path, tokenizer: Any) -> None:
    rows = [{"instruction": "很长的问题" * 30 if i == 0 else f"问题{i}", "output": "回答。"} for i in range(8)]
    chat = _write(tmp_path / "chat.jsonl", rows)
    ds, _, stats = prepare_chat(stage_config("sft", **TINY, train_files=[chat]), tokenizer)
    assert len(ds) == 7 and stats["truncation"]["samples_without_answer_after_truncation"] == 1
    assert all("很长的问题" not in r["messages"][0]["content"] for r in ds)


def test_missing_inputs_fail_before_anything_is_written(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "never"
    cfg = stage_config("sft", **TINY, train_files=[files["chat"], tmp_path / "gone.jsonl"], output_dir=out)
    with pytest.raises(MedtuneError, match=r"train_files: .*gone.jsonl: no such file"):
        get_stage("sft").run(cfg)
    rloo = stage_config(
        "rloo", **TINY, train_files=[files["chat"]], num_generations=2, max_completion_length=8, output_dir=out,
        rewards=[{"name": "reward_model", "options": {"path": str(tmp_path / "no-rm")}}],
    )  # fmt: skip
    with pytest.raises(MedtuneError, match="not a model folder"):
        get_stage("rloo").run(rloo)
    assert not out.exists()


# --------------------------------------------------------------------------------------------- rewards


def test_a_reward_that_cannot_be_computed_leaves_its_group_not_scores_zero() -> None:
    calls = iter([[0.2, None, 0.6, 0.9], [0.1, 0.2, 0.3, 0.4]])
    masked = GroupMaskedReward(lambda prompts, completions, **kw: next(calls), "teacher", group_size=2)
    assert masked(["p"] * 4, ["c"] * 4) == [None, None, 0.6, 0.9]
    assert masked(["p"] * 4, ["c"] * 4) == [0.1, 0.2, 0.3, 0.4]
    assert masked.report() == {"samples": 8, "missing": 1, "groups": 4, "groups_left_out": 1}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_teacher_fails_fast_when_required_else_is_left_out(caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    teacher = {"name": "teacher", "weight": 0.4, "options": {"base_url": url, "api_key": "k"}}
    left_out: list[dict[str, Any]] = []
    with caplog.at_level(logging.WARNING):
        built = build_reward_functions([{"name": "rules", "weight": 0.6}, teacher], left_out=left_out)
    assert [b.name for b in built] == ["rules"]
    assert left_out[0]["name"] == "teacher" and "unreachable" in left_out[0]["reason"]
    assert any(r.levelno == logging.WARNING and "LEFT OUT" in r.getMessage() for r in caplog.records)
    required = {**teacher, "options": {**teacher["options"], "required": True}}
    with pytest.raises(MedtuneError, match=r"required but unavailable.*unreachable"):
        build_reward_functions([{"name": "rules"}, required])
    with pytest.raises(MedtuneError, match="no API key"):  # a remote endpoint without a key: not even probed
        build_reward_functions([{**required, "options": {"base_url": "https://judge.example/v1", "required": True}}])


def test_online_rl_without_reward_variance_warns_or_fails(files: dict[str, Path], tmp_path: Path) -> None:
    constant = [{"name": "length", "options": {"target": 1}}]  # every non-empty completion scores 1
    cfg = stage_config(
        "grpo", **TINY, train_files=[files["chat"]], max_steps=2, num_generations=2, max_completion_length=6,
        rewards=constant, output_dir=tmp_path / "grpo",
    )  # fmt: skip
    result = get_stage("grpo").run(cfg)
    signal = result.metrics["reward_signal"]
    assert signal == {"steps": 2, "steps_without_signal": 2, "mean_frac_reward_zero_std": 1.0, "no_signal": True}
    with pytest.raises(MedtuneError, match=r"no learning signal.*2 of 2 steps"):
        get_stage("grpo").run(cfg.model_copy(update={"fail_on_no_signal": True}))  # reused, and now failed


# ---------------------------------------------------------------------------------------- merge, identity


def test_merged_model_in_the_asked_dtype_and_rebuilt_when_its_adapter_changes(
    files: dict[str, Path], tmp_path: Path
) -> None:
    import torch
    from safetensors.torch import load_file

    cfg = stage_config("sft", **TINY, train_files=[files["chat"]], max_steps=1, output_dir=tmp_path / "sft")
    result = get_stage("sft").run(cfg)
    assert result.merge_dtype == "float32" and result.device == "cpu (float32)"
    assert result.metrics["device"] == "cpu (float32)"
    assert not list((tmp_path / "sft").glob(".*.partial")), "the adapter is saved through a staging folder"
    merged = merged_model_of(result)
    assert merged_is_current(result.adapter_dir, merged)
    assert {t.dtype for t in load_file(merged / "model.safetensors").values()} == {torch.float32}
    bf16 = get_stage("sft").run(cfg.model_copy(update={"merge_dtype": "bfloat16", "output_dir": tmp_path / "b"}))
    assert {t.dtype for t in load_file(merged_model_of(bf16) / "model.safetensors").values()} == {torch.bfloat16}
    info = json.loads((merged / "medtune_merge.json").read_text())
    assert info["dtype"] == "float32" and len(info["adapter_sha256"]) == 64
    (result.adapter_dir / "adapter_config.json").write_text(
        (result.adapter_dir / "adapter_config.json").read_text() + "\n"
    )  # the adapter changed (here: one byte)
    assert not merged_is_current(result.adapter_dir, merged)
    stamp = (merged / "model.safetensors").stat().st_mtime_ns
    merged_model_of(result)
    assert (merged / "model.safetensors").stat().st_mtime_ns != stamp and merged_is_current(result.adapter_dir, merged)


def test_stage_identity_reuses_finished_and_moves_foreign_state_aside(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "sft"
    cfg = stage_config("sft", **{**TINY, "save_steps": 1}, train_files=[files["chat"]], max_steps=2, output_dir=out)
    first = get_stage("sft").run(cfg)
    assert first.identity == stage_identity(cfg, tiny_model_path())
    stamp = (out / "metrics.json").stat().st_mtime_ns
    again = get_stage("sft").run(cfg)
    assert again.identity == first.identity and (out / "metrics.json").stat().st_mtime_ns == stamp  # reused
    changed = cfg.model_copy(update={"learning_rate": 5e-4})
    assert stage_identity(changed, tiny_model_path()) != first.identity
    second = get_stage("sft").run(changed)
    assert second.metrics["resumed_from"] is None, "a checkpoint of other inputs is never resumed"
    assert (out / "superseded" / first.identity[:16] / "adapter").is_dir()
    assert StageState(out).read()["identity"] == second.identity
    forced = get_stage("sft").run(changed, force=True)
    assert forced.metrics["resumed_from"] is None and (out / "superseded" / second.identity[:16]).is_dir()


# ---------------------------------------------------------------------------------------------- imports


def test_training_modules_import_each_other_without_cycles() -> None:
    """launch <-> runner <-> stages were a cycle hidden in function-level imports: every import counts here."""
    root = Path(__file__).resolve().parent.parent / "medtune_core" / "training"
    graph: dict[str, set[str]] = {}
    for py in root.glob("*.py"):
        deps: set[str] = set()
        for node in ast.walk(ast.parse(py.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("medtune_core.training."):
                deps.add(node.module.rsplit(".", 1)[1])
        graph[py.stem] = deps - {py.stem}
    seen: dict[str, int] = {}

    def visit(name: str, path: list[str]) -> None:
        if seen.get(name) == 1:
            raise AssertionError(f"import cycle: {' -> '.join([*path, name])}")
        if seen.get(name) == 2:
            return
        seen[name] = 1
        for dep in sorted(graph.get(name, ())):
            visit(dep, [*path, name])
        seen[name] = 2

    for name in graph:
        visit(name, [])


def test_a_teacher_lost_mid_run_stops_being_asked(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from medtune_core.rewards import TeacherJudge
    from medtune_core.rewards.teacher import TeacherConfig

    cfg = TeacherConfig(
        model="m", base_url=f"http://127.0.0.1:{_closed_port()}/v1", api_key="k", timeout_s=0.3, max_retries=0,
        backoff_base_s=0.0, max_failed_calls=2,
    )  # fmt: skip
    judge = TeacherJudge(cfg, tmp_path / "j.jsonl")  # built directly: no probe, as if it went away after the start
    with caplog.at_level(logging.WARNING):
        assert judge(["q1"], ["a"]) == [None] and judge(["q2"], ["a"]) == [None]
        assert judge.given_up and judge.requested == 2
        assert judge(["q3"], ["a"]) == [None] and judge.requested == 2, "not asked again"
    assert judge.report() == {"requested": 2, "failed": 2, "given_up": True}
    assert any("not asked again" in r.getMessage() for r in caplog.records)
