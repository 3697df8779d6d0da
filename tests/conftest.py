"""Shared fixtures: the real Fashion-MNIST files (the Debian package) and the committed default model."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = REPO_ROOT / "models" / "checkpoints" / "resnet20-fmnist"


@pytest.fixture(scope="session")
def default_checkpoint() -> Path:
    return DEFAULT_CHECKPOINT
