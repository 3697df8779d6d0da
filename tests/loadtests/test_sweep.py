"""The smoke run of the latency sweep (part of make test): one model, one load, a real service."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.server
@pytest.mark.slow
def test_smoke_sweep_starts_the_service_and_reports(tmp_path):
    """`python -m loadtests.sweep` end to end with Locust in master/worker mode: it starts the service
    (exporting the default model into the tests' store if needed), loads it for 8 s, and every
    request gets a valid answer (a failed request fails the sweep, so this test)."""
    proc = subprocess.run(
        [sys.executable, "-m", "loadtests.sweep", "--models", "resnet20-fmnist", "--users", "4",
         "--duration", "8s", "--warmup", "1s", "--workers", "2", "--out", str(tmp_path)],
        cwd=REPO_ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (stamp,) = tmp_path.iterdir()
    results = json.loads((stamp / "results.json").read_text())
    (run,) = results["runs"]
    row = run["stats"]["classify"]
    assert run["mode"] == "closed" and run["users"] == 4 and run["workers"] == 2
    assert row["requests"] > 20 and row["failures"] == 0
    assert row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
    assert run["mean_batch_size"] >= 1  # the engine's own metric, scraped from /metrics
    assert results["engine"]["fp32"]["resnet20-fmnist"]["1"]["provider"] == "CPUExecutionProvider"
    assert results["models"]["resnet20-fmnist"]["test_accuracy"] == pytest.approx(94.55, abs=0.01)
    report = (stamp / "report.md").read_text()
    assert "### Closed loop, 4 user(s)" in report and "| resnet20-fmnist | 20 |" in report
    raw = stamp / "raw" / "batching-on-fp32"
    assert (raw / "resnet20-fmnist_closed_u4_stats.csv").is_file()
    assert "<html" in (raw / "resnet20-fmnist_closed_u4.html").read_text()[:500].lower()  # Locust's report
    # percentiles from every request's exact time, to 0.1 ms in the report (Locust's CSV: whole ms)
    assert row["exact"] and row["p50_ms"] != round(row["p50_ms"]) and row["locust_ms"]["p50_ms"] % 1 == 0
    assert f"| {row['p50_ms']:.1f} | {row['p95_ms']:.1f} | {row['p99_ms']:.1f} |" in report
    for png in ("latency_vs_depth.png", "throughput_vs_depth.png", "accuracy_vs_latency.png"):
        assert (stamp / png).read_bytes()[:4] == b"\x89PNG"
