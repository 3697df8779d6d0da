"""The locustfile as a Locust user runs it first: only ``--host``, headless or from the web UI,
against the real service (its default model, a corpus cached on first use)."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from loadtests.http_load import free_port
from tests.service.conftest import REPO_ROOT, start_server

pytestmark = [pytest.mark.server, pytest.mark.slow]
LOCUST = [str(Path(sys.executable).parent / "locust"), "-f", "loadtests/locustfile.py"]


@pytest.fixture(scope="module")
def server():
    from export.default_model import ensure_default_model

    ensure_default_model()
    with start_server() as srv:
        yield srv


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Locust's environment, its cache (where the default corpus goes) in a fresh folder."""
    return {**os.environ, "XDG_CACHE_HOME": str(tmp_path_factory.mktemp("cache"))}


def test_headless_with_only_host(server, env, tmp_path):
    proc = subprocess.run([*LOCUST, "--headless", "-u", "2", "-t", "5s", "--host", server.url,
                           "--csv", str(tmp_path / "run")],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {row["Name"]: row for row in csv.DictReader(open(tmp_path / "run_stats.csv"))}
    assert int(rows["classify"]["Request Count"]) > 5 and rows["classify"]["Failure Count"] == "0"
    corpus = Path(env["XDG_CACHE_HOME"]) / "resnet-serving" / "corpus-fmnist-64"
    assert (corpus / "manifest.json").is_file()  # the default model's dataset's corpus, cached


def test_web_ui_starts_and_runs_a_swarm(server, env, tmp_path):
    port = free_port()
    ui = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([*LOCUST, "--host", server.url, "--web-host", "127.0.0.1", "--web-port", str(port)],
                            cwd=REPO_ROOT, env=env, stdout=open(tmp_path / "ui.log", "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait(lambda: httpx.get(ui + "/").status_code == 200, "the web UI to answer")
        started = httpx.post(ui + "/swarm", data={"user_count": "2", "spawn_rate": "2", "host": server.url})
        assert started.json()["success"] is True, started.text

        def classified() -> dict:
            stats = httpx.get(ui + "/stats/requests").json()["stats"]
            return next((s for s in stats if s["name"] == "classify"), {"num_requests": 0})

        _wait(lambda: classified()["num_requests"] >= 10, "10 requests")
        assert classified()["num_failures"] == 0
        assert httpx.post(ui + "/stop").json()["success"] is True
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    assert "Traceback" not in (tmp_path / "ui.log").read_text()


def _wait(ready, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")
