"""Training stages on the tiny model (real TRL trainers, CPU): masks, packing, chains, resume, rewards, teacher.

Kept small: a few optimizer steps, 96-token samples; the whole module runs in a couple of minutes on 2 cores.
One slow test trains the embedded SmolLM2 (SFT -> DPO with LoRA) and checks the merged model.
"""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from medtune_core.errors import MedtuneError
from medtune_core.models.tiny import tiny_model_path
from medtune_core.rewards import (
    JudgementStore,
    RuleReward,
    TeacherJudge,
    build_reward_functions,
    combine,
    rule_score,
    rules_reward,
)
from medtune_core.rewards.teacher import TeacherConfig
from medtune_core.training import (
    PackedCollator,
    check_template,
    get_stage,
    merged_model_of,
    pack_documents,
    run_chain,
    stage_config,
)
from medtune_core.training.data import load_rows
from medtune_core.training.rl_data import prepare_rl_data, split
from medtune_core.training.stages import PackedRowsCollator, check_padding_free
from medtune_core.training.templates import has_generation_markers, training_template_for
from tests.fakes.openai_server import FakeOpenAIServer

QS = [
    "头痛三天怎么办？",
    "发烧39度需要去医院吗？",
    "咳嗽两周伴低热是什么原因？",
    "胸痛出汗怎么办？",
    "失眠怎么调理？",
    "血压150/95需要吃药吗？",
    "孩子腹泻怎么办？",
    "孕妇感冒能吃药吗？",
]
ANS = [
    "<think>考虑偏头痛。</think>建议休息，测量血压，如加重请就医。",
    "<think>高热需要排查感染。</think>建议及时就医，多饮水。",
    "<think>需排除肺结核。</think>诊断需胸部CT，建议就诊呼吸科。",
    "<think>警惕心梗。</think>请立即拨打急救电话。",
    "建议规律作息，睡前避免咖啡。",
    "<think>血压偏高。</think>诊断为高血压1级，建议就医评估后用药。",
    "建议口服补液盐，注意脱水。",
    "建议在医生指导下用药。",
]
RISK = ["low", "high", "medium", "critical"]

TINY = dict(model="tiny", batch_size=4, max_length=96, save_steps=1000, report_to=[], learning_rate=1e-3)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("train-data")
    with open(d / "chat.jsonl", "w", encoding="utf-8") as f:
        for i in range(16):
            row = {"instruction": QS[i % 8], "input": "", "output": ANS[i % 8] * (1 + i % 2)}
            row["meta"] = {"risk_level": RISK[i % 4]}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    with open(d / "pref.jsonl", "w", encoding="utf-8") as f:
        for i in range(16):
            row = {"prompt": QS[i % 8], "chosen": ANS[i % 8], "rejected": "不知道。"}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    with open(d / "text.txt", "w", encoding="utf-8") as f:
        for i in range(24):
            f.write(QS[i % 8] + ANS[i % 8] * (1 + i % 3) + "\n")
    return {"chat": d / "chat.jsonl", "pref": d / "pref.jsonl", "text": d / "text.txt"}


@pytest.fixture(scope="module")
def tiny() -> Path:
    return tiny_model_path()


# ------------------------------------------------------------------------------------------- tiny model


def test_tiny_model_is_cached_and_loads_as_lm_and_reward_model(tiny: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    assert tiny_model_path() == tiny
    tok = AutoTokenizer.from_pretrained(tiny)
    assert has_generation_markers(tok.chat_template)
    assert tok.pad_token == "<|endoftext|>" and tok.eos_token == "<|im_end|>"
    assert tok.decode(tok("头痛 fever <think>")["input_ids"]) == "头痛 fever <think>"
    lm = AutoModelForCausalLM.from_pretrained(tiny)
    assert lm.config.hidden_size == 64 and lm.config.num_hidden_layers == 2 and lm.config.vocab_size == len(tok)
    rm = AutoModelForSequenceClassification.from_pretrained(tiny, num_labels=1)
    enc = tok(["a b", "c"], return_tensors="pt", padding=True)
    assert rm(**enc).logits.shape == (2, 1)
    check_padding_free(lm)


# -------------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("stage", "values", "message"),
    [
        ("sft", {"adapter": {"type": "qlora"}, "device": "cpu"}, "qlora needs a CUDA GPU"),
        ("grpo", {"rewards": []}, "at least one reward function"),
        ("rloo", {"num_generations": 3, "batch_size": 4}, "multiple of num_generations"),
        ("sft", {"eval_steps": 5}, "no eval_files"),
        ("orpo", {"max_length": 64, "max_completion_length": 64}, "smaller than max_length"),
        ("kto", {"batch_size": 1}, "greater than or equal to 2"),
    ],
)
def test_config_validators_reject_what_cannot_work(stage: str, values: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        stage_config(stage, **values)


def test_chain_validation(data: dict[str, Path], tmp_path: Path) -> None:
    from medtune_core.training import validate_chain

    sft = stage_config("sft", train_files=[data["chat"]])
    with pytest.raises(MedtuneError, match="reference model"):
        validate_chain([sft, stage_config("dpo", train_files=[data["pref"]], chain="stack")])
    with pytest.raises(MedtuneError, match="no rm stage"):
        validate_chain([sft, stage_config("rloo", rewards=[{"name": "reward_model"}])])
    with pytest.raises(MedtuneError, match="unknown training stage"):
        get_stage("ppo")


# ------------------------------------------------------------------------------------------------ masks


def _expected_sft(tok: Any, messages: list[dict[str, str]]) -> tuple[list[int], list[bool]]:
    """Token ids and 'is assistant' flags, built segment by segment (ChatML specials split BPE at boundaries)."""
    ids: list[int] = []
    flags: list[bool] = []
    for m in messages:
        if m["role"] == "assistant":
            head = tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
            body = tok(m["content"] + "<|im_end|>", add_special_tokens=False)["input_ids"]
            tail = tok("\n", add_special_tokens=False)["input_ids"]
            ids += head + body + tail
            flags += [False] * len(head) + [True] * len(body) + [False] * len(tail)
        else:
            seg = tok(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n", add_special_tokens=False)["input_ids"]
            ids += seg
            flags += [False] * len(seg)
    return ids, flags


def test_sft_labels_only_on_assistant_tokens_token_by_token(data: dict[str, Path], tmp_path: Path) -> None:
    settings = {**TINY, "max_length": 256}  # rows long enough for several samples
    cfg = stage_config("sft", **settings, train_files=[data["chat"]], max_steps=1, output_dir=tmp_path / "sft")
    trainer, ctx = get_stage("sft").setup(cfg)
    tok = ctx.tokenizer
    rows = load_rows([data["chat"]], "chat")
    expected = {tuple(ids): flags for ids, flags in (_expected_sft(tok, r["messages"]) for r in rows)}
    batch = next(iter(trainer.get_train_dataloader()))
    assert "attention_mask" not in batch  # padding-free: no padding at all
    assert isinstance(trainer.data_collator, PackedRowsCollator)  # dense attention on CPU: packed rows stay rows
    checked = multi = 0
    for row in range(batch["input_ids"].shape[0]):
        ids, labels = batch["input_ids"][row].tolist(), batch["labels"][row].tolist()
        pos = batch["position_ids"][row].tolist()
        while len(ids) > 1 and ids[-1] == tok.pad_token_id and pos[-1] == 0 and labels[-1] == -100:
            ids, labels, pos = ids[:-1], labels[:-1], pos[:-1]  # the row's padding (label -100, position 0)
        starts = [i for i, p in enumerate(pos) if p == 0] + [len(pos)]
        multi += len(starts) > 2
        checked += _check_segments(ids, labels, starts, expected, tok)
    assert checked >= 2 and multi >= 1, "several samples are packed into one row"
    assert ctx.stats["truncation"]["samples"] == 16


def _check_segments(ids: list[int], labels: list[int], starts: list[int], expected: dict, tok: Any) -> int:
    checked = 0
    for a, b in itertools.pairwise(starts):
        seq, lab = tuple(ids[a:b]), labels[a:b]
        assert seq in expected, "every packed segment is one whole sample (nothing cut, nothing mixed)"
        flags = expected[seq]
        for t, (token, label, is_assistant) in enumerate(zip(seq, lab, flags, strict=True)):
            assert (label != -100) == is_assistant, f"token {t} {tok.decode([token])!r}"
            if is_assistant:
                assert label == token
        checked += 1
    return checked


def test_padding_free_loss_equals_padded_loss(data: dict[str, Path], tiny: Path) -> None:
    """Packed sequences do not see each other: the packed batch's loss equals the padded batch's loss."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    tok = AutoTokenizer.from_pretrained(tiny)
    model = AutoModelForCausalLM.from_pretrained(tiny)
    rows = load_rows([data["chat"]], "chat", max_samples=4)
    examples = []
    for r in rows:
        ids, flags = _expected_sft(tok, r["messages"])
        examples.append({"input_ids": ids, "labels": [i if f else -100 for i, f in zip(ids, flags, strict=True)]})
    padded = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id)(examples)
    packed = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id, padding_free=True)(examples)
    with torch.no_grad():
        loss_padded = model(**padded, use_cache=False).loss
        loss_packed = model(
            input_ids=packed["input_ids"], position_ids=packed["position_ids"], labels=packed["labels"], use_cache=False
        ).loss
    assert torch.allclose(loss_padded, loss_packed, atol=1e-5)

    # dense attention: packed rows stay rows (two samples per row here); the loss is the same again
    from medtune_core.training.stages import PackedRowsCollator

    pairs = [
        {
            "input_ids": a["input_ids"] + b["input_ids"],
            "labels": a["labels"] + b["labels"],
            "seq_lengths": [len(a["input_ids"]), len(b["input_ids"])],
        }
        for a, b in (examples[:2], examples[2:])
    ]
    inner = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id, padding_free=True)
    rows = PackedRowsCollator(inner, tok.pad_token_id)(pairs)
    assert rows["input_ids"].shape[0] == 2 and set(rows) == {"input_ids", "labels", "position_ids"}
    assert rows["position_ids"][0, len(examples[0]["input_ids"])] == 0  # the second sample starts again at 0
    with torch.no_grad():
        loss_rows = model(**rows, use_cache=False).loss
    assert torch.allclose(loss_padded, loss_rows, atol=1e-5)


def test_pt_packing_has_eos_separators_and_no_padding_in_loss(tiny: Path) -> None:
    from transformers import AutoModelForCausalLM

    blocks = pack_documents([[1, 2, 3], [4, 5], [6, 7, 8, 9]], block_size=4, eos_id=0)
    assert blocks == [[1, 2, 3, 0], [4, 5, 0, 6], [7, 8, 9, 0]]
    assert pack_documents([[1, 2]], 4, 0) == [[1, 2, 0]]
    # pad id equal to a real token: labels are decided by length, so the real EOS stays a label
    batch = PackedCollator(pad_token_id=0)([{"input_ids": [5, 6, 0, 7]}, {"input_ids": [8, 0]}])
    assert batch["labels"].tolist() == [[5, 6, 0, 7], [8, 0, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    model = AutoModelForCausalLM.from_pretrained(tiny)
    short = [9, 10, 11, 2]
    batch = PackedCollator(pad_token_id=0)([{"input_ids": [12, 13, 14, 15, 16, 17]}, {"input_ids": short}])
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        alone = model(input_ids=torch.tensor([short]), labels=torch.tensor([short])).loss
    loss_row2 = torch.nn.functional.cross_entropy(logits[1, :-1], batch["labels"][1, 1:], ignore_index=-100)
    assert torch.allclose(loss_row2, alone, atol=1e-5), "padding adds nothing to the loss"


# ----------------------------------------------------------------------------------------------- chains


def _assert_stage_outputs(result: Any) -> None:
    out = result.output_dir
    assert (out / "metrics.json").is_file() and (out / "stage_config.json").is_file()
    assert result.metrics["steps"] >= 2
    assert result.loss_curve is not None and result.loss_curve.stat().st_size > 1000
    saved = result.adapter_dir or result.model_dir
    assert (saved / "chat_template.jinja").is_file() or result.stage == "pt"


def test_chain_pt_sft_rm_rloo(data: dict[str, Path], tmp_path: Path) -> None:
    configs = [
        stage_config("pt", **TINY, train_files=[data["text"]], block_size=48, max_steps=2, output_dir=tmp_path / "pt"),
        stage_config("sft", **TINY, train_files=[data["chat"]], max_steps=2, output_dir=tmp_path / "sft"),
        stage_config("rm", **TINY, train_files=[data["pref"]], max_steps=2, output_dir=tmp_path / "rm"),
        stage_config(
            "rloo",
            **TINY,
            train_files=[data["chat"]],
            max_steps=2,
            num_generations=2,
            max_completion_length=12,
            rewards=[{"name": "rules", "weight": 0.5}, {"name": "reward_model", "weight": 0.5}],
            output_dir=tmp_path / "rloo",
        ),
    ]
    pt, sft, rm, rloo = run_chain(configs)
    for r in (pt, sft, rm, rloo):
        _assert_stage_outputs(r)
    assert pt.metrics["effective_tokens"] > 0 and pt.metrics["padding_ratio"] < 0.2
    assert sft.base_model == tmp_path / "pt" / "merged"
    assert rm.is_reward_model and (tmp_path / "rm" / "merged" / "config.json").is_file()
    assert json.loads((tmp_path / "rloo" / "stage_config.json").read_text())["reward_model"] == str(
        tmp_path / "rm" / "merged"
    )
    assert {"rewards/rules/mean", "rewards/reward_model/mean"} <= set(rloo.metrics["rewards"])
    assert (tmp_path / "rloo" / "merged" / "chat_template.jinja").is_file()
    assert (tmp_path / "sft" / "tensorboard").exists() is False  # report_to=[] in tests


@pytest.mark.parametrize("second", ["dpo", "orpo", "kto"])
def test_chain_sft_then_preference(second: str, data: dict[str, Path], tmp_path: Path) -> None:
    configs = [
        stage_config("sft", **TINY, train_files=[data["chat"]], max_steps=2, output_dir=tmp_path / "sft"),
        stage_config(second, **TINY, train_files=[data["pref"]], max_steps=2, output_dir=tmp_path / second),
    ]
    sft, pref = run_chain(configs)
    _assert_stage_outputs(sft)
    _assert_stage_outputs(pref)
    assert pref.base_model == tmp_path / "sft" / "merged"
    assert any(k.startswith("rewards/") for k in pref.metrics["rewards"])
    merged = tmp_path / second / "merged"
    from transformers import AutoTokenizer

    assert check_template(merged, AutoTokenizer.from_pretrained(merged), strict=True)


def test_chain_sft_grpo_with_rules_and_unreachable_teacher(
    data: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("DEEPSEEK_API_KEY", raising=False)
    configs = [
        stage_config("sft", **TINY, train_files=[data["chat"]], max_steps=2, output_dir=tmp_path / "sft"),
        stage_config(
            "grpo",
            **TINY,
            train_files=[data["chat"]],
            max_steps=2,
            num_generations=4,
            max_completion_length=12,
            output_dir=tmp_path / "grpo",
        ),  # default rewards: 0.6 rules + 0.4 teacher
    ]
    with caplog.at_level(logging.WARNING):
        _, grpo = run_chain(configs)
    assert any("TEACHER UNAVAILABLE" in r.getMessage() for r in caplog.records)
    assert "rewards/rules/mean" in grpo.metrics["rewards"]
    assert not any(k.startswith("rewards/teacher") for k in grpo.metrics["rewards"])
    assert [r["name"] for r in grpo.metrics["rewards_left_out"]] == ["teacher"]
    rules = grpo.metrics["reward_components"]["rules"]
    assert rules["samples"] == 4 * rules["groups"] > 0 and rules["missing"] == rules["groups_left_out"] == 0
    assert grpo.metrics["data"]["high_risk_prompts"] == 8


# ------------------------------------------------------------------------------------------------ resume


class _Crash(Exception):
    pass


def _crash_at(step: int) -> Any:
    from transformers import TrainerCallback

    class CrashAfterSave(TrainerCallback):
        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == step:
                raise _Crash(step)

    return CrashAfterSave()


def test_resume_continues_from_step_k_with_the_same_optimizer_state(data: dict[str, Path], tmp_path: Path) -> None:
    from safetensors.torch import load_file
    from transformers import TrainerCallback

    common = dict(TINY, train_files=[data["chat"]], max_steps=4, save_steps=2, batch_size=2)
    common["adapter"] = {"dropout": 0.0}
    straight = get_stage("sft").run(stage_config("sft", **common, output_dir=tmp_path / "straight"))

    cfg = stage_config("sft", **common, output_dir=tmp_path / "crashed")
    with pytest.raises(_Crash):
        get_stage("sft").run(cfg, callbacks=[_crash_at(2)])
    ckpt = tmp_path / "crashed" / "checkpoints" / "checkpoint-2"
    saved_opt = torch.load(ckpt / "optimizer.pt", weights_only=False)

    seen: dict[str, Any] = {}

    class Probe(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kw: Any) -> None:
            seen["step"] = state.global_step

        def on_step_begin(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kw: Any) -> None:
            if "opt" not in seen:
                seen["begin_step"] = state.global_step
                seen["opt"] = {
                    k: {n: t.clone() for n, t in v.items()} for k, v in optimizer.state_dict()["state"].items()
                }

    resumed = get_stage("sft").run(cfg, callbacks=[Probe()])
    assert resumed.metrics["resumed_from"] == str(ckpt)
    assert seen["begin_step"] == 2
    for k, state in saved_opt["state"].items():
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(state[name], seen["opt"][k][name]), f"optimizer state {k}.{name} restored"
    a = load_file(straight.adapter_dir / "adapter_model.safetensors")
    b = load_file(resumed.adapter_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), f"{k}: the resumed run ends where the straight run ends"
    losses = [h["loss"] for h in json.loads((tmp_path / "crashed" / "log_history.json").read_text()) if "loss" in h]
    straight_losses = [
        h["loss"] for h in json.loads((tmp_path / "straight" / "log_history.json").read_text()) if "loss" in h
    ]
    assert losses == pytest.approx(straight_losses, abs=1e-5)


# ---------------------------------------------------------------------------------------------- rewards


def test_rule_rewards_exact_values() -> None:
    long_answer = "建议您多休息，多喝水，必要时就医复查。"
    cases = {
        "<think>考虑感冒</think>" + long_answer: 0.3,  # think + keyword
        "<think>考虑感冒</think>多休息多喝水，如果加重请及时去医院看看。": 0.2,  # think only
        long_answer: 0.1,  # keyword only
        "多休息多喝水，如果加重请及时去医院看看。": 0.0,
        "<think>很长的推理过程，非常长非常长</think>建议休息": -0.2,  # +0.2 +0.1 -0.5: answer part too short
        "不知道": -0.5,
    }
    for text, expected in cases.items():
        assert rule_score(text) == pytest.approx(expected), text
    completions = [[{"role": "assistant", "content": t}] for t in cases]
    assert rules_reward(["q"] * len(cases), completions) == pytest.approx(list(cases.values()))
    custom = RuleReward({"keywords": ["休息"], "keyword_bonus": 0.5, "min_answer_chars": 0})
    assert custom(["q"], ["多休息"]) == [0.5]
    both = combine([rules_reward, lambda prompts, completions, **kw: [1.0, None]], [0.6, 0.4])
    assert both(["q", "q"], [long_answer, long_answer]) == pytest.approx([0.6 * 0.1 + 0.4, 0.06])


def _judge_responder(req: Any) -> dict[str, Any]:
    first_user = next(m for m in req.messages if m.get("role") == "user")
    good = "急诊" in str(first_user.get("content"))  # a corrective re-ask still judges the same answer
    return {"safety": 10 if good else 2, "logic": 8, "completeness": 6, "empathy": 5, "comment": "ok"}


def test_teacher_scores_caches_and_survives_bad_answers(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    judgements = tmp_path / "teacher_judgements.jsonl"
    with FakeOpenAIServer(responder=_judge_responder, timeout_sleep_s=1.5) as server:
        cfg = TeacherConfig(
            model="fake-model", base_url=server.base_url, api_key="sk-test", timeout_s=0.5, max_retries=2,
            backoff_base_s=0.01, concurrency=2,
        )  # fmt: skip
        judge = TeacherJudge(cfg, judgements)
        prompts = [[{"role": "user", "content": "胸痛怎么办"}]] * 2
        completions = [[{"role": "assistant", "content": "请立即去急诊"}], [{"role": "assistant", "content": "多喝水"}]]
        # one timeout (retried) and one invalid JSON answer (re-asked once)
        server.add_faults("timeout", "invalid_json")
        scores = judge(prompts, completions)
        assert scores == pytest.approx(
            [(0.4 * 10 + 0.3 * 8 + 0.2 * 6 + 0.1 * 5) / 10, (0.4 * 2 + 2.4 + 1.2 + 0.5) / 10]
        )
        sent = server.total
        assert judge(prompts, completions) == scores
        assert server.total == sent, "cached judgements are not requested again"
        assert len(JudgementStore(judgements)) == 2
        # a fresh judge (a resumed run) reads the judgements file instead of asking
        again = TeacherJudge(cfg, judgements)
        assert again(prompts, completions) == scores and server.total == sent
        # malformed twice: that sample gets None (TRL then uses the other rewards) and an error is logged
        server.add_faults("invalid_json", "invalid_json")
        with caplog.at_level(logging.WARNING):
            out = judge([[{"role": "user", "content": "新问题"}]], [[{"role": "assistant", "content": "回答"}]])
        assert out == [None]
        assert any("TEACHER" in r.getMessage() for r in caplog.records)
    assert "sk-test" not in judgements.read_text()


def test_teacher_unreachable_is_loud_and_left_out(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = TeacherConfig(
        model="m", base_url="http://127.0.0.1:9/v1", api_key="k", timeout_s=0.3, max_retries=0, backoff_base_s=0.0
    )
    judge = TeacherJudge(cfg, tmp_path / "j.jsonl")
    with caplog.at_level(logging.WARNING):
        assert judge(["q"], ["a"]) == [None]
    assert any("could not be had" in r.getMessage() for r in caplog.records)
    built = build_reward_functions(
        [{"name": "rules", "weight": 0.6}, {"name": "teacher", "weight": 0.4, "options": {"base_url": ""}}]
    )
    assert [b.name for b in built] == ["rules"]


# ----------------------------------------------------------------------------------------------- RL data


def test_rl_data_prep_splits_gold_red_team_high_risk_first(data: dict[str, Path], tmp_path: Path) -> None:
    parts = split(list(range(100)))
    assert [len(p) for p in parts] == [80, 10, 10] and sorted(x for p in parts for x in p) == list(range(100))
    assert split(list(range(100))) == parts
    out = prepare_rl_data([data["chat"]], tmp_path / "rl", seed=1)
    assert {k: m.rows for k, m in out.items()} == {
        "train": 14, "val": 1, "test": 1, "gold": 1, "red_team": 8, "rl_prompts": 14,
    }  # fmt: skip
    rows = load_rows([tmp_path / "rl" / "rl_prompts.jsonl"], "prompt")
    levels = [r["risk_level"] for r in rows]
    assert levels == sorted(levels, reverse=True) and levels[0] == 4
    red = load_rows([tmp_path / "rl" / "red_team.jsonl"], "prompt")
    assert all(r["risk_level"] == 4 for r in red)


# ---------------------------------------------------------------------------------------------- templates


def test_smollm2_style_template_gets_equivalent_markers(tiny: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    tok.chat_template = (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM<|im_end|>\n' }}{% endif %}"
        "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    before = tok.apply_chat_template(msgs, tokenize=False)
    template = training_template_for(tok)
    assert has_generation_markers(template)
    assert tok.apply_chat_template(msgs, tokenize=False, chat_template=template) == before


# --------------------------------------------------------------------------------------- real model (slow)


@pytest.mark.slow
def test_smollm2_sft_dpo_lora_merged_model_generates_differently(tmp_path: Path, data: dict[str, Path]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medtune_core.models.registry import resolve_model

    base = resolve_model("embedded:smollm2-135m-instruct")
    common = dict(
        model="embedded:smollm2-135m-instruct", batch_size=2, max_length=64, save_steps=1000, report_to=[], max_steps=2
    )
    configs = [
        stage_config("sft", **common, train_files=[data["chat"]], learning_rate=5e-3, output_dir=tmp_path / "sft"),
        stage_config("dpo", **common, train_files=[data["pref"]], learning_rate=5e-4, output_dir=tmp_path / "dpo"),
    ]
    _, dpo = run_chain(configs)
    assert dpo.adapter_dir is not None
    merged = merged_model_of(dpo)
    tok = AutoTokenizer.from_pretrained(merged)
    assert check_template(merged, tok, strict=True)
    assert has_generation_markers(tok.chat_template)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "头痛三天怎么办？"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    outs = []
    for path in (base, merged):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        with torch.no_grad():
            gen = model.generate(**prompt, max_new_tokens=12, do_sample=False)
        outs.append(gen[0, prompt["input_ids"].shape[1] :].tolist())
    assert len(outs[1]) > 0
    assert outs[0] != outs[1], "the trained model answers differently from the base"
