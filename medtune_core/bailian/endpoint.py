"""Where a Bailian client talks to, and with which key: the ``dashscope`` SDK's own conventions first.

Order (the first that is set wins):

- **base URL**: the ``base_url`` argument → ``DASHSCOPE_HTTP_BASE_URL`` (the SDK's variable: a proxy, a test
  server) → the region's URL from :data:`REGION_URLS`.
- **region**: the ``region`` argument → ``DASHSCOPE_API_REGION`` → ``cn-beijing``.
- **workspace**: the ``workspace`` argument → ``DASHSCOPE_WORKSPACE_ID``.
- **key**: the ``api_key`` argument → ``DASHSCOPE_API_KEY`` (or ``MEDTUNE_DASHSCOPE_API_KEY``) → the key file the
  SDK's ``save_api_key`` writes (``DASHSCOPE_API_KEY_FILE_PATH``, default ``~/.dashscope/api_key``).

A user who points the SDK's variable at a proxy or a test endpoint therefore never sends real uploads with a real
key to production by accident; every resolution says where its URL came from, and the client logs it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from medtune_core.errors import MedtuneError

#: Base URLs of the DashScope HTTP API by region.
REGION_URLS: dict[str, str] = {
    "cn-beijing": "https://dashscope.aliyuncs.com/api/v1",
    "ap-southeast-1": "https://dashscope-intl.aliyuncs.com/api/v1",
    "intl": "https://dashscope-intl.aliyuncs.com/api/v1",
}
DEFAULT_REGION = "cn-beijing"
ENV_BASE_URL = "DASHSCOPE_HTTP_BASE_URL"
ENV_REGION = "DASHSCOPE_API_REGION"
ENV_WORKSPACE = "DASHSCOPE_WORKSPACE_ID"
ENV_KEY_FILE = "DASHSCOPE_API_KEY_FILE_PATH"
DEFAULT_KEY_FILE = Path("~/.dashscope/api_key")


@dataclass(frozen=True)
class Endpoint:
    """A resolved endpoint: the URL and where it came from (for the log line and the run's summary)."""

    base_url: str
    source: str
    workspace: str | None = None


def resolve_endpoint(region: str | None = None, base_url: str | None = None, workspace: str | None = None) -> Endpoint:
    """The URL and workspace to use, by the order in the module docstring."""
    ws = workspace or os.environ.get(ENV_WORKSPACE) or None
    if base_url:
        return Endpoint(base_url.rstrip("/"), "base_url", ws)
    env_url = os.environ.get(ENV_BASE_URL)
    if env_url:
        return Endpoint(env_url.rstrip("/"), ENV_BASE_URL, ws)
    name = region or os.environ.get(ENV_REGION) or DEFAULT_REGION
    try:
        url = REGION_URLS[name]
    except KeyError:
        raise MedtuneError(
            f"unknown region {name!r}; known: {', '.join(REGION_URLS)} (or set base_url / {ENV_BASE_URL})"
        ) from None
    origin = "region argument" if region else (ENV_REGION if os.environ.get(ENV_REGION) else "default region")
    return Endpoint(url, f"{origin} {name}", ws)


def resolve_api_key(api_key: SecretStr | str | None = None) -> SecretStr | None:
    """The key by the order in the module docstring; None when there is none."""
    from medtune_core.settings import get_settings

    if isinstance(api_key, str):
        api_key = SecretStr(api_key)
    if api_key is not None and api_key.get_secret_value():
        return api_key
    env = get_settings().dashscope_api_key
    if env is not None and env.get_secret_value():
        return env
    key_file = Path(os.environ.get(ENV_KEY_FILE) or DEFAULT_KEY_FILE).expanduser()
    if key_file.is_file():
        text = key_file.read_text(encoding="utf-8").strip()
        if text:
            return SecretStr(text)
    return None
