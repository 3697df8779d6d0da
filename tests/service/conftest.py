"""Service fixtures: a BentoML store holding the default model, and test images made on the fly."""
from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``bentoml serve`` in a subprocess on a free loopback port, stopped when the test ends."""

    def __init__(self, target: str = "service.service:Classifier", env: dict[str, str] | None = None,
                 cwd: Path = REPO_ROOT) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        bentoml = Path(sys.executable).parent / "bentoml"
        self.log = open(Path(os.environ["BENTOML_HOME"]) / f"serve-{self.port}.log", "w+")
        self.proc = subprocess.Popen([str(bentoml), "serve", target, "--host", "127.0.0.1", "--port", str(self.port)],
                                     cwd=cwd, env={**os.environ, **(env or {})}, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bentoml serve exited: {self.read_log()[-3000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"not ready after {timeout}s: {self.read_log()[-3000:]}")

    def read_log(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        import signal

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()
