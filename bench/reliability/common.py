"""What the reliability benchmarks (``bench.reliability.overload``, ``bench.reliability.soak``,
``bench.reliability.faults``) share: the server they start, the requests they send, the memory they
watch and how they summarise what came back."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from bench.aio_http import Outcome, build_request, closed_loop
from bench.reliability.hostile import MULTIPART, image_form
from loadtests.http_load import ServeProcess, machine_cpu
from common.errors import UserError
from bench.service_overhead.measure import encode_pngs, service_config
from loadtests.machine import machine_info
from service.catalog import ModelUnavailable, resolve_models

log = logging.getLogger(__name__)


def start_server(env: dict[str, str], log_dir: Path, name: str) -> ServeProcess:
    """``bentoml serve`` of the service under ``env``, ready; its models verified first, so that
    a missing model is one clear error here rather than a server that never turns ready."""
    try:
        resolve_models(service_config(env), verify_checksums=True)
    except ModelUnavailable as e:
        raise UserError(str(e)) from None
    server = ServeProcess(env, log_dir, name)
    seconds = server.wait_ready()
    log.info("%s: bentoml serve ready on %s in %.1f s", name, server.url, seconds)
    return server


def good_requests(count: int = 256) -> tuple[list[bytes], np.ndarray]:
    """Raw /classify requests for the first ``count`` Fashion-MNIST test images (top_k 1), and labels."""
    pngs, labels = encode_pngs(count)
    return [build_request("/classify", image_form(p, top_k="1"), MULTIPART) for p in pngs], labels


def classification_ok(outcome: Outcome) -> bool:
    """A 200 whose body is a well-formed classification."""
    if outcome.status != 200:
        return False
    try:
        preds = json.loads(outcome.body)["predictions"]
        return bool(preds) and all({"label", "class_index", "probability"} <= p.keys() for p in preds)
    except (ValueError, KeyError, TypeError, AttributeError):
        return False


def percentiles_ms(seconds: Sequence[float]) -> dict[str, float | None]:
    if not len(seconds):
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    p = np.percentile(np.asarray(seconds) * 1000, [50, 95, 99, 100])
    return {"p50_ms": float(p[0]), "p95_ms": float(p[1]), "p99_ms": float(p[2]), "max_ms": float(p[3])}


def summarize(outcomes: Sequence[Outcome], seconds: float) -> dict[str, Any]:
    """Counts by outcome, the rate of good answers, latency of good answers and of 503s."""
    statuses = Counter(str(o.status) for o in outcomes)
    good = [o for o in outcomes if classification_ok(o)]
    shed = [o for o in outcomes if o.status == 503]
    retry_after = [o for o in shed if o.headers.get("retry-after", "").isdigit()]
    return {"sent": len(outcomes), "by_status": dict(sorted(statuses.items())), "ok": len(good),
            "ok_per_s": len(good) / seconds if seconds > 0 else None,
            "bad_200": statuses.get("200", 0) - len(good), "shed_503": len(shed),
            "shed_with_retry_after": len(retry_after), "ok_latency": percentiles_ms([o.latency for o in good]),
            "shed_latency": percentiles_ms([o.latency for o in shed]), "shed_reasons": _shed_reasons(shed)}


def _shed_reasons(shed: Sequence[Outcome]) -> dict[str, int]:
    """503s by who shed them: the API worker's admission ("at capacity"), the engine's batching
    ("model queue is full") or an engine that is away: the JSON code and the message's start."""
    reasons: Counter = Counter()
    for o in shed:
        try:
            body = json.loads(o.body)
            reasons[f"{body.get('code')}: {str(body.get('error'))[:28]}"] += 1
        except (ValueError, AttributeError):
            reasons["not JSON"] += 1
    return dict(reasons.most_common())


def measure_saturation(port: int, pick: Any, clients: int, seconds: float) -> dict[str, Any]:
    """The saturation rate: ``clients`` closed-loop clients for ``seconds``, summarized; a one-line
    error when none of their requests was answered well."""
    saturation = summarize(asyncio.run(closed_loop("127.0.0.1", port, pick, clients, seconds)), seconds)
    if not saturation["ok_per_s"]:
        raise UserError(f"no good answer at saturation: {saturation['by_status']}")
    return saturation


class ProcessTreeSampler:
    """Every ``interval`` seconds, on a thread: the resident memory of a process and all its
    descendants (the whole ``bentoml serve`` tree), and where the machine's CPU went since the last
    sample (that tree, this process, the load generator, and everything else: other tenants, and
    time the hypervisor gave to other machines, "steal")."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, int]] = []  # (monotonic seconds, bytes)
        self.cpu: list[dict[str, float]] = []  # per interval: t (its end) and cores used by each party
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._tree_cpu: dict[int, float] = {}

    def _tree(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    @staticmethod
    def _rss(tree: list[psutil.Process]) -> int:
        total = 0
        for p in tree:
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total

    def _cpu_seconds(self, tree: list[psutil.Process]) -> tuple[float, float, tuple[float, float, float]]:
        """(CPU seconds ``tree`` used since the last call, this process's total, machine counters)."""
        used = 0.0
        for p in tree:
            try:
                t = p.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total = t.user + t.system
            used += total - self._tree_cpu.get(p.pid, total)  # a process seen for the first time counts from now
            self._tree_cpu[p.pid] = total
        me = psutil.Process().cpu_times()
        return used, me.user + me.system, machine_cpu()

    def cpu_since_last(self) -> tuple[float, float, tuple[float, float, float]]:
        """(CPU seconds the server's tree used since the last call, this process's total, machine
        counters), for a caller that samples at its own moments instead of in the thread."""
        return self._cpu_seconds(self._tree())

    def _run(self) -> None:
        _, mine, machine = self._cpu_seconds(self._tree())
        last = time.monotonic()
        while not self._stop.is_set():
            now, procs = time.monotonic(), self._tree()
            self.samples.append((now, self._rss(procs)))
            tree_s, mine_now, machine_now = self._cpu_seconds(procs)
            dt = now - last
            if dt >= self.interval / 2:  # the first pass only sets the baseline
                busy, steal, total = ((b - a) / dt for a, b in zip(machine, machine_now))  # in cores
                server, generator = tree_s / dt, (mine_now - mine) / dt
                self.cpu.append({"t": now, "server": server, "generator": generator,
                                 "others": max(0.0, busy - server - generator), "steal": steal, "cores": total})
            mine, machine, last = mine_now, machine_now, now
            self._stop.wait(self.interval)

    def __enter__(self) -> ProcessTreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def between(self, t0: float, t1: float) -> list[int]:
        return [b for t, b in self.samples if t0 <= t <= t1]


def mib(values: Sequence[int]) -> dict[str, float | None]:
    if not values:
        return {"min_mib": None, "max_mib": None, "mean_mib": None}
    return {"min_mib": min(values) / 2**20, "max_mib": max(values) / 2**20, "mean_mib": float(np.mean(values)) / 2**20}


def run_header(env: dict[str, str], what: dict[str, Any]) -> dict[str, Any]:
    """Machine, settings and the service's configuration, for a results file."""
    import dataclasses

    return {"machine": machine_info(), "settings": what, "config": dataclasses.asdict(service_config(env)),
            "bentoml_home": os.environ.get("BENTOML_HOME"), "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}


def write_results(out: Path, name: str, results: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return path


def finish(out: Path, name: str, results: dict[str, Any]) -> int:
    """The end of every reliability benchmark: its JSON, the regenerated report, each criterion
    logged, and exit status 1 when any failed."""
    from bench.reliability.report import write_report

    log.info("wrote %s and %s", write_results(out, name, results), write_report(out))
    for check, ok in results["criteria"]["checks"].items():
        log.info("%s %s", "PASS" if ok else "FAIL", check)
    return 0 if results["criteria"]["all_passed"] else 1
