"""Service fixtures: a BentoML store holding the default model, and test images made on the fly."""
from __future__ import annotations

import io
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from loadtests.http_load import ServeProcess
from models.data import load_fashion_mnist

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def default_model_tag() -> str:
    """The default model exported and registered in the tests' private store (BENTOML_HOME)."""
    from export.default_model import ensure_default_model

    return ensure_default_model()


@pytest.fixture(scope="session")
def service_module(default_model_tag):
    import service.service as module  # resolves the served models from the store at import

    return module


@pytest.fixture(scope="session")
def asgi_client(service_module):
    """Tier 2: one ASGI app for the whole session, its lifespan running. One, because BentoML
    registers its Prometheus metrics per app, and a second app in a process fails on duplicates."""
    from starlette.testclient import TestClient

    with TestClient(service_module.Classifier.to_asgi()) as client:
        yield client


def encode(array: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


@pytest.fixture(scope="session")
def fmnist_test():
    return load_fashion_mnist("test")


def bad_uploads() -> dict[str, tuple[bytes, int]]:
    """name -> (bytes, expected status) for broken or hostile images sent in the right field."""
    good_png = encode(np.full((28, 28), 128, np.uint8), "PNG")
    good_jpeg = encode(np.full((64, 64), 128, np.uint8), "JPEG")
    bomb = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(bomb, format="PNG")  # ~50 KB that inflates to 400 MP
    return {
        "empty": (b"", 400),
        "random bytes": (np.random.default_rng(0).bytes(2000), 415),
        "text": (b"hello, I am not an image\n" * 10, 415),
        "truncated png": (good_png[: len(good_png) // 2], 400),
        "truncated jpeg": (good_jpeg[: len(good_jpeg) // 2], 400),
        "decompression bomb": (bomb.getvalue(), 413),
        "html": (b"<!DOCTYPE html><html><body>hi</body></html>", 415),
    }


def start_server(target: str = "service.service:Classifier", cwd: Path = REPO_ROOT,
                 env: dict[str, str] | None = None) -> ServeProcess:
    """``bentoml serve`` in a subprocess on a free loopback port, logging into the tests' store;
    ``env`` adds settings (RESNET_*) to the environment."""
    home = Path(os.environ["BENTOML_HOME"])
    return ServeProcess({**os.environ, **(env or {})}, home, f"{target.replace(':', '-')}-{time.monotonic_ns()}",
                        target, cwd)
