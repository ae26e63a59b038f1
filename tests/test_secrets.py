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
