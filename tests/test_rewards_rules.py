"""The rule reward pays for what the safety evaluation measures: a closed, non-empty reasoning block that is not an
echo of the prompt, and key words (per language, from the packaged data file) in the answer only."""

from __future__ import annotations

from pathlib import Path

import pytest

from medtune_core.errors import MedtuneError
from medtune_core.evaluation.safety import judge_output
from medtune_core.rewards.rules import KEYWORDS_FILE, RuleConfig, RuleReward, load_keywords, rule_score, rules_reward

ANSWER = "多休息多喝水，如果加重请及时去医院看看。"  # no key word, long enough


def test_think_bonus_needs_a_closed_non_empty_block() -> None:
    assert rule_score("<think>考虑病毒性上呼吸道感染</think>" + ANSWER) == pytest.approx(0.2)
    assert rule_score("<think></think>" + ANSWER) == 0.0
    assert rule_score("<think>  \n </think>" + ANSWER) == 0.0
    assert rule_score("<think>考虑病毒性上呼吸道感染，建议" + ANSWER) == pytest.approx(-0.5)  # never closed: no answer
    assert rule_score("<think></think>" + ANSWER, RuleConfig(require_think_content=False)) == pytest.approx(0.2)


def test_an_echo_of_the_prompt_is_not_reasoning() -> None:
    prompt = "请先在<think>中分析病情和风险，再给出安全、明确的建议。头痛三天。"
    echo = "<think>请先在中分析病情和风险，再给出安全、明确的建议。</think>" + ANSWER
    assert rule_score(echo) == pytest.approx(0.2)  # without the prompt it looks like reasoning
    assert rule_score(echo, prompt=prompt) == 0.0
    conversational = [[{"role": "system", "content": prompt}, {"role": "user", "content": "头痛"}]]
    assert rules_reward(conversational, [echo]) == [0.0]
    assert judge_output(echo, context=prompt).has_reasoning is False  # the metric agrees with the reward


def test_keywords_count_in_the_answer_only_and_in_english() -> None:
    assert rule_score("<think>建议做头颅CT以排除诊断</think>" + ANSWER) == pytest.approx(0.2)
    assert rule_score("<think>头痛</think>建议多休息多喝水，加重请就医。") == pytest.approx(0.3)
    assert rule_score("I recommend rest and plenty of fluids.") == pytest.approx(0.1)
    assert rule_score("The DIAGNOSIS is most likely a tension headache.") == pytest.approx(0.1)
    assert rule_score("Rest and plenty of fluids, see a doctor if worse.") == 0.0
    assert rule_score("They were unadvisedly resting at home all day.") == 0.0  # word starts only
    assert rule_score("I recommend rest and plenty of fluids.", RuleConfig(languages=["zh"])) == 0.0


def test_keyword_lists_come_from_data_files(tmp_path: Path) -> None:
    lists = load_keywords()
    assert {"zh", "en"} <= set(lists) and "建议" in lists["zh"] and "recommend" in lists["en"]
    assert KEYWORDS_FILE.is_file() and KEYWORDS_FILE.parent.name == "data"
    custom = tmp_path / "kw.yaml"
    custom.write_text("zh: [休息]\nfr: [conseille]\n", encoding="utf-8")
    reward = RuleReward({"keywords_file": str(custom), "languages": ["zh", "fr"]})
    assert reward(["q", "q"], ["多休息多喝水，注意观察", "Je conseille du repos et de l'eau"]) == [0.1, 0.1]
    assert reward(["q"], ["建议多喝水，注意观察病情"]) == [0.0]  # the packaged words are replaced
    with pytest.raises(MedtuneError, match="no key words for"):
        RuleReward({"keywords_file": str(custom), "languages": ["en"]})
    bad = tmp_path / "bad.yaml"
    bad.write_text("zh: 建议\n", encoding="utf-8")
    with pytest.raises(MedtuneError, match=r"bad\.yaml"):
        RuleReward({"keywords_file": str(bad)})
    with pytest.raises(ValueError, match="extra"):
        RuleConfig(keyword="x")  # type: ignore[call-arg]


def test_explicit_keywords_keep_the_old_interface() -> None:
    custom = RuleReward({"keywords": ["休息"], "keyword_bonus": 0.5, "min_answer_chars": 0})
    assert custom(["q"], ["多休息"]) == [0.5]
    assert custom(["q"], [[{"role": "assistant", "content": "<think>多休息</think>好"}]]) == [0.2]
