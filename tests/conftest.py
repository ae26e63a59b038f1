"""Shared fixtures: a temporary MEDTUNE_HOME per session, one Prefect test harness per session, peer data.

Environment is set at import, before any test imports Prefect, because Prefect reads its settings once.
Embedded models are materialised into a persistent folder (``.medtune/models`` in the checkout, or
``MEDTUNE_TEST_MODELS_DIR``) so that SmolLM2's ~30 s dequantisation happens once per machine, not per run.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SESSION_HOME = Path(tempfile.mkdtemp(prefix="medtune-test-home-"))
os.environ["MEDTUNE_HOME"] = str(SESSION_HOME)
os.environ.setdefault(
    "MEDTUNE_MODELS_DIR", os.environ.get("MEDTUNE_TEST_MODELS_DIR", str(REPO / ".medtune" / "models"))
)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
for key in ("OPENAI_API_KEY", "DASHSCOPE_API_KEY", "DEEPSEEK_API_KEY", "PREFECT_API_URL"):
    os.environ.pop(key, None)

from tasks.prefect_env import apply_prefect_defaults  # noqa: E402

apply_prefect_defaults()

PEER_DIR = REPO.parent / "shared" / "data" / "peer"


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One ephemeral Prefect server (SQLite) for the whole session, flow heartbeats off."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with (
        prefect_test_harness(server_startup_timeout=120),
        temporary_settings(restore_defaults={PREFECT_FLOWS_HEARTBEAT_FREQUENCY}),
    ):
        yield


@pytest.fixture
def medtune_home() -> Path:
    """The session's MEDTUNE_HOME (results, caches); models live in MEDTUNE_MODELS_DIR."""
    return SESSION_HOME


@pytest.fixture
def peer_dir() -> Path:
    """``../shared/data/peer`` beside the checkout; tests using it skip cleanly when it is absent."""
    if not PEER_DIR.is_dir():
        pytest.skip("../shared/data/peer is not present")
    return PEER_DIR
