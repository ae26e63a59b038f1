"""Settings from the environment (prefix ``MEDTUNE_``) and the providers' usual key variables.

API keys are :class:`~pydantic.SecretStr`: their repr is ``**********``, so a settings object can be logged,
pickled into a cache or shown in an error without leaking a key.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEEPSEEK_BASE_URL = "https://api.deepseek.com/v1"
OPENAI_BASE_URL = "https://api.openai.com/v1"


class MedtuneSettings(BaseSettings):
    """Where medtune keeps its files, and the credentials and endpoints of remote services."""

    model_config = SettingsConfigDict(env_prefix="MEDTUNE_", extra="ignore")

    home: Path = Field(
        default_factory=lambda: Path.home() / ".medtune",
        description="Materialised models, results, caches. Shared by the workers of one machine.",
    )
    result_storage: str | None = Field(
        default=None,
        description="Prefect result storage block slug (e.g. 's3-bucket/medtune-results') shared by all workers; "
        "unset: a local folder under MEDTUNE_HOME.",
    )
    shared_dir: Path | None = Field(
        default=None,
        description="The shared location: a folder mounted at the same path on every worker machine (NFS, a "
        "compose volume). Flow runs started by a worker work there, and relative paths (outputs, model folders, "
        "result.json handed to a CUDA-pool child) resolve against it. Unset: the current folder.",
    )
    models_dir_override: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("MEDTUNE_MODELS_DIR"),
        description="Where embedded models are materialised (default MEDTUNE_HOME/models).",
    )
    openai_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("MEDTUNE_OPENAI_BASE_URL", "OPENAI_BASE_URL")
    )
    openai_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("MEDTUNE_OPENAI_API_KEY", "OPENAI_API_KEY")
    )
    deepseek_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("MEDTUNE_DEEPSEEK_API_KEY", "DEEPSEEK_API_KEY")
    )
    dashscope_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("MEDTUNE_DASHSCOPE_API_KEY", "DASHSCOPE_API_KEY")
    )
    zhipu_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("MEDTUNE_ZHIPU_API_KEY", "ZHIPUAI_API_KEY", "ZHIPU_API_KEY")
    )

    def api_key_for(self, base_url: str | None) -> SecretStr | None:
        """The key of the provider an OpenAI-compatible ``base_url`` belongs to (by its host): DeepSeek, DashScope,
        Zhipu, else OpenAI's (which also serves any other endpoint: vLLM, proxies). No URL and no OpenAI key but a
        DeepSeek key: DeepSeek's (its endpoint is the default then, see :meth:`default_base_url`)."""
        host = (base_url or "").lower()
        for marks, key in (
            (("deepseek",), self.deepseek_api_key),
            (("dashscope", "aliyuncs"), self.dashscope_api_key),
            (("bigmodel", "zhipu"), self.zhipu_api_key),
        ):
            if any(m in host for m in marks):
                return key
        if not base_url and self.openai_api_key is None and self.deepseek_api_key is not None:
            return self.deepseek_api_key
        return self.openai_api_key

    def default_base_url(self) -> str | None:
        """``OPENAI_BASE_URL`` when set; else DeepSeek's endpoint when only a DeepSeek key is set (the original default
        provider), OpenAI's when an OpenAI key is set; else None (nowhere to send a request)."""
        if self.openai_base_url:
            return self.openai_base_url
        if self.openai_api_key is None and self.deepseek_api_key is not None:
            return DEEPSEEK_BASE_URL
        if self.openai_api_key is not None:
            return OPENAI_BASE_URL
        return None

    @property
    def models_dir(self) -> Path:
        return self.models_dir_override or self.home / "models"

    @property
    def results_dir(self) -> Path:
        return self.home / "results"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"


def get_settings() -> MedtuneSettings:
    """The settings as the environment says now (cheap; read anew so tests and workers see changes)."""
    return MedtuneSettings()


def shared_path(path: str | Path) -> Path:
    """``path`` as an absolute path: unchanged when absolute, else under ``MEDTUNE_SHARED_DIR`` (the current folder
    when unset). What a flow hands to a run on another machine must not depend on that machine's current folder."""
    path = Path(path).expanduser()
    if path.is_absolute():
        return path
    root = get_settings().shared_dir
    return ((root.expanduser() if root else Path.cwd()) / path).absolute()
