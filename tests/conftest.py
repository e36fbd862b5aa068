"""Shared fixtures: tiny local models (built once per session) and the optional ../shared data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("THINKRM_SHARED", ROOT.parent / "shared" / "data"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def _no_credentials_from_environment():
    """A THINKRM_API_KEY or THINKRM_LLM_* in the developer's shell would switch on auth or point clients at a
    real server in tests that start their own; tests that need them set them explicitly."""
    with pytest.MonkeyPatch.context() as mp:
        for name in ("THINKRM_API_KEY", "THINKRM_LLM_BASE_URL", "THINKRM_LLM_API_KEY", "THINKRM_LLM_MODEL"):
            mp.delenv(name, raising=False)
        yield


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data; tests that need it are skipped when it is absent (it is never committed)."""
    if not SHARED.is_dir():
        pytest.skip(f"shared data not found at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def tiny_reward_model(tmp_path_factory) -> Path:
    from tiny_models import make_reward_model

    return make_reward_model(tmp_path_factory.mktemp("tiny-rm"))


@pytest.fixture(scope="session")
def tiny_reward_model_no_pad(tmp_path_factory) -> Path:
    from tiny_models import make_reward_model

    return make_reward_model(tmp_path_factory.mktemp("tiny-rm-nopad"), pad_token=False)


@pytest.fixture(scope="session")
def tiny_causal_lm(tmp_path_factory) -> Path:
    from tiny_models import make_causal_lm

    return make_causal_lm(tmp_path_factory.mktemp("tiny-lm"))
