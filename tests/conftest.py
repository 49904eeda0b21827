"""Shared test setup: offline by construction, artifacts in test-artifacts/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Never reach a model hub from tests: everything we load ships in pip packages or is built here.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests keep files a person may want to look at (screenshots, reports); gitignored."""
    path = REPO_ROOT / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct, loaded once per test session (float32, CPU)."""
    from autointerp.models import load_model

    return load_model("smollm2")
