"""Shared fixtures: the real Fashion-MNIST files (the Debian package) and the committed default model."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Tests never touch the user's BentoML store: a private one for the whole session, set before
# anything imports bentoml (it reads BENTOML_HOME when its configuration is first built).
os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="bentoml-home-tests-")
# The service tests serve the default model alone (the store above holds only it), however large
# the default served set (models.default.DEFAULT_SERVED_MODELS) is; tests that need others say so.
os.environ["RESNET_MODELS"] = "resnet20-fmnist"

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = REPO_ROOT / "models" / "checkpoints" / "resnet20-fmnist"


@pytest.fixture(scope="session")
def default_checkpoint() -> Path:
    return DEFAULT_CHECKPOINT
