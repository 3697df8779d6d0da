"""bench.serving_cost (issue 16): the answer check and the goals on values, and the whole benchmark at
tiny settings against the three real servers."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.aio_http import Outcome
from bench.serving_cost.measure import Load, answered_right
from bench.serving_cost.report import BARE, NAIVE, SERVICE, SHARED, UNBATCHED, goals

REPO_ROOT = Path(__file__).resolve().parents[2]


def _answer(*classes: int) -> bytes:
    return json.dumps({"results": [{"predictions": [{"class_index": c}]} for c in classes]}).encode()


def test_only_a_200_naming_the_label_for_every_image_counts():
    load = Load("/classify_batch", b"", 3, lambda a: [r["predictions"][0]["class_index"] for r in a["results"]])
    assert answered_right(Outcome(0, 0.01, 200, body=_answer(9, 9, 9)), load, 9)
    assert not answered_right(Outcome(0, 0.01, 200, body=_answer(9, 7, 9)), load, 9)  # one wrong image
    assert not answered_right(Outcome(0, 0.01, 200, body=_answer(9, 9)), load, 9)  # one missing
    assert not answered_right(Outcome(0, 0.01, 503, body=_answer(9, 9, 9)), load, 9)
    assert not answered_right(Outcome(0, 0.01, 200, body=b"<html>"), load, 9)


def _run(path: str, clients: int, **values: float) -> dict:
    return {"path": path, "clients": clients, **values}


def test_goals_are_ratios_against_their_limits():
    results = {"servers": {
        SERVICE: {"runs": [_run("/classify", 16, cpu_ms_per_request=2.0, cpu_ms_per_image=2.0, requests_per_s=500.0),
                           _run("/classify", 1, p50_ms=3.0),
                           _run("/classify_batch", 16, cpu_ms_per_image=0.5)]},
        NAIVE: {"runs": [_run("/classify", 16, cpu_ms_per_request=5.0, requests_per_s=200.0),
                         _run("/classify", 1, p50_ms=4.0)]},
        BARE: {"runs": [_run("/classify", 16, cpu_ms_per_request=1.0)]}}}
    g = goals(results)["goals"]
    assert g["CPU/request vs naive"]["ratio"] == 0.4 and g["CPU/request vs naive"]["status"] == "met"
    assert g["CPU/request vs bare"]["status"] == "missed" and g["CPU/request vs bare"]["by"] == pytest.approx(0.7)
    assert g["1-client p50 vs naive"]["status"] == "missed" and g["1-client p50 vs naive"]["ratio"] == 0.75
    assert g["throughput vs naive"]["status"] == "met" and g["throughput vs naive"]["ratio"] == 2.5
    assert g["batch CPU/image vs /classify"]["ratio"] == 0.25
    del results["servers"][BARE]
    assert goals(results)["goals"]["CPU/request vs bare"]["status"] == "not measured"


@pytest.mark.server
@pytest.mark.slow
def test_tiny_benchmark_drives_every_server_and_each_answers_right(tmp_path):
    """``python -m bench.serving_cost.measure --duration 1 --clients 1`` end to end (exporting the default
    model into the tests' store if needed): every server (the service in both topologies and unbatched, the
    naive BentoML app, the bare ASGI app) answered, and only with the right class."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.serving_cost.measure", "--duration", "1", "--clients", "1", "--warmup", "0",
         "--out", str(tmp_path)], cwd=REPO_ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert list(results["servers"]) == [SERVICE, SHARED, UNBATCHED, NAIVE, BARE]
    runs = {(server, r["path"]): r for server, d in results["servers"].items() for r in d["runs"]}
    assert set(runs) == {(SERVICE, "/classify"), (SERVICE, "/classify_batch"), (SHARED, "/classify"),
                         (UNBATCHED, "/classify"), (NAIVE, "/classify"), (BARE, "/classify")}
    assert [r["batch"] for r in results["model_alone"]] == [1, 16]
    assert all(r["cpu_ms_per_image"] > 0 for r in results["model_alone"])
    for key, r in runs.items():
        assert r["clients"] == 1 and r["answered_right"] > 0 and r["not_right"] == 0, (key, r["by_status"])
        assert r["answered_right"] == r["requests"] and r["server_cpu_s"] > 0
        assert r["p50_ms"] <= r["p99_ms"] and r["cpu_ms_per_image"] * r["images_per_request"] == pytest.approx(
            r["cpu_ms_per_request"])
    assert runs[(SERVICE, "/classify_batch")]["images_per_request"] == 16
    assert results["settings"]["image"]["class"] == "Ankle boot" and results["settings"]["tag"].startswith(
        "resnet20-fmnist:")
    assert results["goals"]["goals"]["1-client p50 vs naive"]["status"] in ("met", "missed")
    assert results["goals"]["goals"]["CPU/request vs naive"]["status"] == "not measured"  # no 16 clients
    report = (tmp_path / "report.md").read_text()
    assert "| bare ASGI | `/classify` | 1 |" in report and "--duration 1 --clients 1" in report
    assert "| service, shared engine | `/classify` | 1 |" in report and "batch 16:" in report
    assert (tmp_path / "serving_cost.png").read_bytes()[:4] == b"\x89PNG"


def test_the_batch_floor_is_the_model_alone_against_classify():
    from bench.serving_cost.report import batch_floor

    results = {"settings": {"batch_images": 16}, "model_alone": [{"batch": 1, "cpu_ms_per_image": 0.6},
                                                                 {"batch": 16, "cpu_ms_per_image": 0.5}],
               "servers": {SERVICE: {"runs": [_run("/classify", 16, cpu_ms_per_request=1.25),
                                              _run("/classify_batch", 16, cpu_ms_per_image=0.75)]}}}
    floor = batch_floor(results)
    assert floor["ratio"] == 0.4 and floor["over_ms"] == 0.25 and floor["batch"] == 16
    del results["model_alone"]
    assert batch_floor(results) is None


def test_photos_compare_now_with_before_per_client_count_and_metric():
    from bench.serving_cost.photos_report import comparisons

    def run(clients, cpu, p50, p99, rate):
        return {"clients": clients, "cpu_ms_per_request": cpu, "p50_ms": p50, "p99_ms": p99, "requests_per_s": rate}

    results = {"servers": {"service": {"runs": [run(1, 80.0, 40.0, 90.0, 21.0)]},
                           "service before": {"runs": [run(1, 100.0, 50.0, 80.0, 20.0)]}}}
    by_metric = {c["metric"]: c for c in comparisons(results)}
    assert by_metric["CPU ms/request"]["ratio"] == 0.8 and by_metric["CPU ms/request"]["no_worse"]
    assert not by_metric["p99 ms"]["no_worse"]  # higher latency is worse
    assert by_metric["req/s"]["no_worse"] and by_metric["req/s"]["ratio"] == 1.05  # higher throughput is better


def test_photos_refuse_a_before_that_is_not_a_checkout(tmp_path, capsys):
    from bench.serving_cost.photos import main

    assert main(["--before", str(tmp_path), "--out", str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err
    assert "not a checkout of this project" in err and "Traceback" not in err


def test_the_model_alone_is_timed_per_image():
    from bench.serving_cost.threads import measure
    from export.default_model import ensure_default_model

    ensure_default_model()  # into the tests' store
    from bench.serving_cost.store import fp32_file

    wall_ms, cpu_ms = measure(fp32_file("resnet20-fmnist"), threads=1, batch=2, seconds=0.05)
    assert 0 < wall_ms < 1000 and 0 < cpu_ms < 1000


def test_profile_shares_count_each_step_once_per_sample(tmp_path):
    from bench.serving_cost.profile import shares

    raw = tmp_path / "raw.txt"
    raw.write_text(
        "main (service.py:1);RequestGuard.__call__ (service/guard.py:90);ClassifyRoutes.__call__ (service/routes.py:40);"
        "Classify.top (service/classify.py:99) 3\n"
        "_worker (concurrent/futures/thread.py:1);Session.run (onnxruntime/capi/onnxruntime_inference_collection.py:2) 6\n"
        "BaseEventLoop._run_once (asyncio/base_events.py:1);EpollSelector.select (selectors.py:468) 1\n"
        "not a sample line\n")
    total, by_step = shares(raw)
    assert total == 10
    assert by_step["onnxruntime (the model)"] == 0.6 and by_step["top-k of the answers"] == 0.3
    assert by_step["the request guard, all of it"] == 0.3 and by_step["event loop waiting in epoll"] == 0.1
    assert by_step["JSON encoding"] == 0.0
