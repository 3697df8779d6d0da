"""The locustfile's answer checks and CI gate, and the sweep's argument parsing (no service needed)."""
from __future__ import annotations

import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from loadtests.corpus import build_corpus, check_answer, load_corpus, multipart_body
from loadtests.locust_run import LocustLoad, read_stats_csv, run_locust
from loadtests.sweep import open_rate, parse_duration
from loadtests.sweep_models import resolve_served_name
from common.errors import UserError

GOOD = {"model": "resnet20-fmnist", "trained": True,
        "predictions": [{"label": "Bag", "class_index": 8, "probability": 0.9},
                        {"label": "Coat", "class_index": 4, "probability": 0.1}]}


def test_check_answer_accepts_a_well_formed_answer():
    assert check_answer(json.dumps(GOOD).encode(), "resnet20-fmnist", 2) is None


@pytest.mark.parametrize("change, reason", [
    ({"model": "resnet56-fmnist"}, "answered by"),
    ({"predictions": GOOD["predictions"][:1]}, "predictions for top_k=2"),
    ({"predictions": list(reversed(GOOD["predictions"]))}, "descending"),
    ({"predictions": [{"label": "Bag", "class_index": 8, "probability": 1.5}, GOOD["predictions"][1]]}, "descending"),
    ({"predictions": [{"label": "Bag", "class_index": "8", "probability": 0.9}, GOOD["predictions"][1]]}, "malformed"),
])
def test_check_answer_names_what_is_wrong(change, reason):
    assert reason in check_answer(json.dumps({**GOOD, **change}).encode(), "resnet20-fmnist", 2)


def test_check_answer_on_a_body_that_is_not_json():
    assert "malformed body" in check_answer(b"<html>oops</html>", "resnet20-fmnist", 2)


def test_multipart_body_carries_fields_then_the_image():
    body = multipart_body(b"\x89PNG...", "image/png", "a.png", {"model": "m", "top_k": "3"})
    assert body.index(b'name="model"') < body.index(b'name="top_k"') < body.index(b'name="image"; filename="a.png"')
    assert body.endswith(b"--\r\n") and b"\x89PNG..." in body


def test_corpus_round_trip(tmp_path):
    items = build_corpus(tmp_path / "c", "photo", 3, photo_size=(320, 240))
    kind, loaded = load_corpus(tmp_path / "c")
    assert kind == "photo" and [e for e, _ in loaded] == items
    assert all(data[:2] == b"\xff\xd8" and len(data) == e.bytes for e, data in loaded)  # JPEG
    items = build_corpus(tmp_path / "f", "fmnist", 4)
    assert [i.content_type for i in items] == ["image/png", "image/jpeg"] * 2
    assert [i.label for i in items] == [9, 2, 1, 1]  # the first Fashion-MNIST test labels


@pytest.mark.parametrize("text, seconds", [("30s", 30), ("2m", 120), ("45", 45), ("1.5s", 1.5)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0s", "-3s", "3h", "soon"])
def test_parse_duration_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(text)


def test_open_rate_relative_and_absolute():
    assert open_rate("50%", 80.0) == 40.0
    assert open_rate("12.5", None) == 12.5
    with pytest.raises(UserError):
        open_rate("50%", None)


def test_served_names():
    assert resolve_served_name("resnet50") == "resnet50-imagenet"
    assert resolve_served_name("plain56") == "plain56-fmnist"
    assert resolve_served_name("resnet20-fmnist") == "resnet20-fmnist"
    with pytest.raises(UserError, match="valid names"):
        resolve_served_name("resnet51")


class _WrongAnswers(BaseHTTPRequestHandler):
    """A server that answers every POST with 200 but a body missing the predictions."""

    def do_POST(self):  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers["Content-Length"]))
        body = json.dumps({"model": "resnet20-fmnist"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.slow
def test_locust_gate_fails_the_run_when_answers_are_wrong(tmp_path):
    """Status 200 is not enough: a malformed body is a failure, and the failure ratio sets exit code 1."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _WrongAnswers)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        build_corpus(tmp_path / "corpus", "fmnist", 8)
        run = run_locust(f"http://127.0.0.1:{httpd.server_address[1]}", "resnet20-fmnist", tmp_path / "corpus",
                         LocustLoad(users=2, seconds=3), tmp_path / "raw" / "gate", top_k=5)
    finally:
        httpd.shutdown()
    row = run["stats"]["classify"]
    assert run["exit_code"] == 1
    assert row["requests"] > 0 and row["failures"] == row["requests"]
    assert any("malformed body" in e for e in run["failures_by_error"])
    assert read_stats_csv(Path(f"{tmp_path}/raw/gate_stats.csv"))["classify"]["requests"] == row["requests"]
