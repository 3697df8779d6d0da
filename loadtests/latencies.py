"""Exact per-request latencies of a Locust run, for percentiles finer than Locust's own.

Locust keeps response times in a histogram rounded to whole milliseconds below 100 ms, so its CSVs
cannot tell resnet20's 0.64 ms of model from resnet56's 1.75 ms. The locustfile's
``--latency-file`` records every request's time unrounded. In master/worker mode each worker's
times ride on Locust's own stats messages (``report_to_master``), so the master holds exactly the
requests its final statistics count, and writes one file per run: for each request name, every
time, the failures among them, and Locust's own count (a check that none went missing).

No locust import at module level: the sweep reads these files without gevent's monkey-patching.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

KEY = "exact_latencies_ms"  # our field in a worker's stats report


class LatencyRecorder:
    """(request name -> [ms]) of one Locust process; ``install`` hooks it to Locust's events."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.ms: dict[str, list[float]] = {}
        self.failures: dict[str, int] = {}

    def install(self, events: Any) -> None:
        events.request.add_listener(self._on_request)
        events.report_to_master.add_listener(self._on_report)
        events.worker_report.add_listener(self._on_worker_report)
        events.reset_stats.add_listener(self.reset)  # the web UI's "reset stats"
        events.quitting.add_listener(self._on_quitting)

    def _on_request(self, name: str, response_time: float, exception: Any = None, **_kw: Any) -> None:
        self.ms.setdefault(name, []).append(response_time)
        self.failures[name] = self.failures.get(name, 0) + (exception is not None)

    def _on_report(self, data: dict[str, Any], **_kw: Any) -> None:
        """A worker: hands what it gathered since its last report to the master, then forgets it."""
        data[KEY] = {"ms": self.ms, "failures": self.failures}
        self.reset()

    def _on_worker_report(self, data: dict[str, Any], **_kw: Any) -> None:
        report = data.get(KEY, {})
        for name, ms in report.get("ms", {}).items():
            self.ms.setdefault(name, []).extend(ms)
        for name, count in report.get("failures", {}).items():
            self.failures[name] = self.failures.get(name, 0) + count

    def _on_quitting(self, environment: Any, **_kw: Any) -> None:
        from locust.runners import WorkerRunner

        path = getattr(environment.parsed_options, "latency_file", "")
        if not path or isinstance(environment.runner, WorkerRunner):  # a worker's share went to the master
            return
        counted = {}
        for (name, _method), entry in environment.stats.entries.items():
            counted[name] = counted.get(name, 0) + entry.num_requests
        runs = {name: {"ms": [round(t, 4) for t in ms], "failures": self.failures.get(name, 0),
                       "locust_requests": counted.get(name, 0)} for name, ms in self.ms.items()}
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(runs))


def read(path: Path) -> dict[str, dict[str, Any]]:
    """name -> {"ms": [every request's time], "failures", "locust_requests"}, or {} without a file."""
    return json.loads(path.read_text()) if path.is_file() else {}


def summary(ms: list[float], shares: Mapping[str, float]) -> dict[str, float]:
    """Mean, min and each ``shares`` percentile (key -> percent), unrounded: the smallest time that
    at least that share of the requests took no longer than (Locust's definition)."""
    if not ms:
        return {}
    a = np.asarray(ms, dtype=np.float64)
    values = np.percentile(a, list(shares.values()), method="inverted_cdf")
    return {"mean_ms": float(a.mean()), "min_ms": float(a.min()),
            **{key: float(v) for key, v in zip(shares, values)}}
