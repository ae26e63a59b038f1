"""API keys from the environment or a Prefect Secret block, always as ``SecretStr``.

A secret is never logged, never a task input that reaches a cache key (see ``tasks.caching.fingerprint``)
and never part of a result: tasks resolve it themselves at run time.
"""

from __future__ import annotations

import os

from pydantic import SecretStr


def resolve_endpoint_key(base_url: str | None, block_name: str | None = None) -> SecretStr | None:
    """The key for an OpenAI-compatible endpoint: its provider's environment variable (``DEEPSEEK_API_KEY`` for
    api.deepseek.com, ``DASHSCOPE_API_KEY`` for DashScope, ``ZHIPUAI_API_KEY`` for Zhipu, else ``OPENAI_API_KEY``;
    each also as ``MEDTUNE_...``), else the Secret block ``block_name``."""
    from medtune_core.settings import get_settings

    key = get_settings().api_key_for(base_url)
    if key is not None and key.get_secret_value():
        return key
    return resolve_secret((), block_name)


def resolve_secret(env_names: tuple[str, ...], block_name: str | None = None) -> SecretStr | None:
    """The first non-empty environment variable of ``env_names``, else the Secret block ``block_name``."""
    for name in env_names:
        value = os.environ.get(name)
        if value:
            return SecretStr(value)
    if block_name:
        from prefect.blocks.system import Secret

        try:
            return SecretStr(str(Secret.load(block_name).get()))
        except ValueError:
            return None
    return None
