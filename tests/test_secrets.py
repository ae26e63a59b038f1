"""API keys: environment first, then a Prefect Secret block; never in a repr."""

from __future__ import annotations

import pytest

from medtune_core.settings import get_settings
from tasks.secrets import resolve_secret


def test_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDTUNE_TEST_KEY", "sk-from-env-123")
    secret = resolve_secret(("MEDTUNE_TEST_KEY",))
    assert secret is not None and secret.get_secret_value() == "sk-from-env-123"
    assert "sk-from-env" not in repr(secret) and "sk-from-env" not in str(secret)


@pytest.mark.usefixtures("prefect_harness")
def test_secret_block_is_the_fallback() -> None:
    from prefect.blocks.system import Secret

    Secret(value="sk-from-block-456").save("medtune-test-key", overwrite=True)
    secret = resolve_secret(("MEDTUNE_UNSET_KEY",), "medtune-test-key")
    assert secret is not None and secret.get_secret_value() == "sk-from-block-456"
    assert resolve_secret(("MEDTUNE_UNSET_KEY",), "no-such-block") is None


def test_settings_hide_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-dashscope-789")
    settings = get_settings()
    assert settings.dashscope_api_key is not None
    assert settings.dashscope_api_key.get_secret_value() == "sk-dashscope-789"
    assert "sk-dashscope-789" not in repr(settings) and "sk-dashscope-789" not in settings.model_dump_json()


KEYS = {
    "OPENAI_API_KEY": "sk-openai-1",
    "DEEPSEEK_API_KEY": "sk-deepseek-2",
    "DASHSCOPE_API_KEY": "sk-dashscope-3",
    "ZHIPUAI_API_KEY": "zhipu-4",
}


@pytest.mark.parametrize(
    ("base_url", "expected"),
    [
        ("https://api.deepseek.com/v1", "sk-deepseek-2"),
        ("https://dashscope.aliyuncs.com/compatible-mode/v1", "sk-dashscope-3"),
        ("https://open.bigmodel.cn/api/paas/v4", "zhipu-4"),
        ("https://api.openai.com/v1", "sk-openai-1"),
        ("http://127.0.0.1:8000/v1", "sk-openai-1"),  # any other OpenAI-compatible server
    ],
)
def test_each_provider_gets_its_own_key(monkeypatch: pytest.MonkeyPatch, base_url: str, expected: str) -> None:
    from tasks.secrets import resolve_endpoint_key

    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)
    key = resolve_endpoint_key(base_url)
    assert key is not None and key.get_secret_value() == expected


def test_default_endpoint_follows_the_keys_present(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*KEYS, "OPENAI_BASE_URL", "MEDTUNE_OPENAI_BASE_URL", "MEDTUNE_OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    assert get_settings().default_base_url() is None
    monkeypatch.setenv("DEEPSEEK_API_KEY", "sk-deepseek-2")
    s = get_settings()
    assert s.default_base_url() == "https://api.deepseek.com/v1"
    assert s.api_key_for(None).get_secret_value() == "sk-deepseek-2"
    monkeypatch.setenv("MEDTUNE_OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    assert get_settings().default_base_url() == "http://127.0.0.1:9/v1"
