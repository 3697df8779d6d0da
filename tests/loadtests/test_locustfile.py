"""The locustfile's answer checks and CI gate, and the sweep's argument parsing (no service needed)."""
from __future__ import annotations

import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from loadtests import latencies
from loadtests.corpus import build_corpus, check_answer, load_corpus, multipart_body
from loadtests.locust_run import LocustLoad, read_stats_csv, run_locust
from loadtests.sweep import open_rate, parse_duration
from loadtests.sweep_models import resolve_served_name
from loadtests.sweep_report import closed_table
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

    answer = {"model": "resnet20-fmnist"}

    def do_POST(self):  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers["Content-Length"]))
        body = json.dumps(self.answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class _RightAnswers(_WrongAnswers):
    """A server that answers every POST at once with a valid top-2 answer: latencies of about a millisecond."""

    answer = GOOD


def _locust_against(handler, tmp_path, workers=0, top_k=5):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        build_corpus(tmp_path / "corpus", "fmnist", 8)
        return run_locust(f"http://127.0.0.1:{httpd.server_address[1]}", "resnet20-fmnist", tmp_path / "corpus",
                          LocustLoad(users=2, seconds=3), tmp_path / "raw" / "gate", top_k=top_k, workers=workers)
    finally:
        httpd.shutdown()


@pytest.mark.slow
def test_locust_gate_fails_the_run_when_answers_are_wrong(tmp_path):
    """Status 200 is not enough: a malformed body is a failure, and the failure ratio sets exit code 1."""
    run = _locust_against(_WrongAnswers, tmp_path)
    row = run["stats"]["classify"]
    assert run["exit_code"] == 1
    assert row["requests"] > 0 and row["failures"] == row["requests"]
    assert any("malformed body" in e for e in run["failures_by_error"])
    csv_row = read_stats_csv(Path(f"{tmp_path}/raw/gate_stats.csv"))["classify"]
    assert csv_row["requests"] == row["locust_ms"]["requests"]


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_run_percentiles_resolve_below_a_millisecond(tmp_path, workers):
    """Percentiles from every request's exact time, one process or workers under a master, where
    Locust's CSV rounds to whole milliseconds; and its HTML report beside the CSVs."""
    run = _locust_against(_RightAnswers, tmp_path, workers, top_k=2)
    row = run["stats"]["classify"]
    assert run["exit_code"] == 0 and row["failures"] == 0 and row["exact"]
    exact = json.loads((tmp_path / "raw" / "gate_latencies.json").read_text())["classify"]
    assert len(exact["ms"]) == exact["locust_requests"] == row["requests"] > 20  # none lost on the way
    assert row["locust_ms"]["p50_ms"] == round(row["locust_ms"]["p50_ms"])  # Locust's: whole ms
    assert row["p50_ms"] != round(row["p50_ms"]) and abs(row["p50_ms"] - row["locust_ms"]["p50_ms"]) <= 1
    assert row["min_ms"] <= row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] <= row["max_ms"]
    assert "<html" in (tmp_path / "raw" / "gate.html").read_text()[:500].lower()


def test_sweep_table_tells_apart_latencies_a_millisecond_rounds_together():
    """resnet20 and resnet56 at 0.64 and 1.75 ms: one step apart in Locust's CSV, told apart here."""
    shares = {"p50_ms": 50.0, "p95_ms": 95.0, "p99_ms": 99.0, "max_ms": 100.0}
    fast, slow = latencies.summary([0.64] * 99 + [3.0], shares), latencies.summary([1.75] * 99 + [3.0], shares)
    assert (fast["p50_ms"], fast["p99_ms"], fast["max_ms"], fast["min_ms"]) == (0.64, 0.64, 3.0, 0.64)
    results = {"engine": {}, "models": {}}
    runs = []
    for name, row in (("resnet20-fmnist", fast), ("resnet56-fmnist", slow)):
        results["models"][name] = {"served": name, "depth": 20, "gflops": 0.08, "params": 270_000, "trained": False}
        runs.append({"model": name, "variant": "batching on, fp32", "mean_batch_size": None,
                     "stats": {"classify": {**row, "requests": 100, "failures": 0, "requests_per_s": 50.0}}})
    table = "\n".join(closed_table(results, runs))
    assert "| 0.6 | 0.6 | 0.6 |" in table and "| 1.8 | 1.8 | 1.8 |" in table
