"""API keys from the environment or a Prefect Secret block, always as ``SecretStr``.

A secret is never logged, never a task input that reaches a cache key (see ``tasks.caching.fingerprint``)
and never part of a result: tasks resolve it themselves at run time.
"""

from __future__ import annotations

import os

from pydantic import SecretStr


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
