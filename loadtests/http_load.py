"""The service side of ``bench.service_overhead.measure``: ``bentoml serve`` in a subprocess, its /metrics and log,
and closed-loop HTTP clients. Standard library only (``http.client``, threads), so the load generator
costs little of the cores it shares with the service.
"""
from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from loadtests.corpus import BOUNDARY, multipart_body
from common.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[1]
PORT_CLASH_RELAUNCHES = 2
READY_TIMEOUT_S = 180  # start-up includes onnxruntime warm-up (cuDNN's algorithm search on CUDA)
TRACE = re.compile(r"trace=(\w+)")  # in BentoML's access log lines
METRICS = ("resnet_batch_size", "resnet_inference_seconds", "resnet_preprocess_seconds")


def multipart(png: bytes) -> bytes:
    """A /classify request body: the image alone, in field ``image`` (so the default model, top 5)."""
    return multipart_body(png, "image/png", "image.png", {})

def _percentiles(ms: Sequence[float]) -> dict[str, float | None]:
    if not len(ms):
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    p = np.percentile(np.asarray(ms), [50, 95, 99])
    return {"p50_ms": float(p[0]), "p95_ms": float(p[1]), "p99_ms": float(p[2])}

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(host: str, port: int, path: str, https: bool = False) -> tuple[int, bytes]:
    """(status, body) of one GET on a fresh connection."""
    conn = (http.client.HTTPSConnection if https else http.client.HTTPConnection)(host, port, timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


class ServeProcess:
    """``bentoml serve <target>`` (the service, or a built Bento's tag) on a free loopback port, in its
    own process group; ``stop`` ends all of it."""

    def __init__(self, env: dict[str, str], log_dir: Path, name: str,
                 target: str = "service.service:Classifier", cwd: Path = REPO_ROOT) -> None:
        script = Path(sys.executable).parent / "bentoml"
        self._cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "bentoml"]
        self._env, self._target, self._cwd = env, target, cwd
        self.log_path = log_dir / f"serve-{name.replace(' ', '-')}.log"
        self._log = open(self.log_path, "w")
        self._launch()

    def _launch(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [*self._cmd, "serve", self._target, "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=self._cwd, env=self._env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> float:
        t0 = time.monotonic()
        relaunches = PORT_CLASH_RELAUNCHES
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                # free_port's port is free when picked, not when bentoml binds it: another process
                # (BentoML's own choice of the engine's port, once) can take it in between.
                if relaunches and "Errno 98] Address already in use" in self.log_tail(600):
                    relaunches -= 1
                    self._log.write(f"\n[http_load] port {self.port} was taken meanwhile; again on another\n")
                    self._log.flush()
                    self._launch()
                    continue
                raise UserError(f"bentoml serve exited with status {self.proc.returncode}: {self.log_tail()}")
            try:
                if self.get("/readyz")[0] == 200:
                    return time.monotonic() - t0
            except OSError:
                pass
            time.sleep(0.3)
        raise UserError(f"bentoml serve not ready after {timeout:.0f} s: {self.log_tail()}")

    def get(self, path: str) -> tuple[int, bytes]:
        return http_get("127.0.0.1", self.port, path)

    def log_offset(self) -> int:
        self._log.flush()
        return self.log_path.stat().st_size

    def log_since(self, offset: int) -> dict[str, Any]:
        """What the server logged after byte ``offset``: each exception (the last line of its
        traceback, counted), and how many engine calls repeated the trace id of an earlier one
        (one /classify request sent to the engine more than once), from BentoML's access lines."""
        self._log.flush()
        with open(self.log_path, errors="replace") as f:
            f.seek(offset)
            lines = f.read().splitlines()
        exceptions: dict[str, int] = {}
        engine_traces: dict[str, int] = {}
        for i, line in enumerate(lines):
            if line.startswith("Traceback"):
                end = next((j for j in range(i + 1, len(lines)) if not lines[j].startswith(" ")), None)
                if end is not None:
                    exceptions[lines[end][:200]] = exceptions.get(lines[end][:200], 0) + 1
            elif "path=/infer_" in line and (m := TRACE.search(line)):
                engine_traces[m.group(1)] = engine_traces.get(m.group(1), 0) + 1
        return {"server_exceptions": exceptions,
                "engine_calls_logged": sum(engine_traces.values()),
                "engine_calls_repeating_a_trace": sum(c - 1 for c in engine_traces.values())}

    def log_tail(self, chars: int = 1500) -> str:
        self._log.flush()
        return " | ".join(self.log_path.read_text()[-chars:].splitlines())

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()

    def __enter__(self) -> ServeProcess:
        """Ready to serve (stopped again if it never gets there); ``stop`` on leaving."""
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def scrape(server: ServeProcess, model: str) -> dict[str, float]:
    """``_sum`` and ``_count`` of each of METRICS for ``model``, as the entry's /metrics shows them."""
    from prometheus_client.parser import text_string_to_metric_families

    status, body = server.get("/metrics")
    if status != 200:
        raise UserError(f"GET /metrics answered {status}")
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            base = sample.name.rsplit("_", 1)[0]
            if base in METRICS and sample.name.endswith(("_sum", "_count")) and sample.labels.get("model") == model:
                values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return values


def machine_cpu() -> tuple[float, float, float]:
    """(busy, steal, total) CPU seconds of the whole machine since boot, from /proc/stat (busy
    excludes idle and iowait, includes steal; guest time is already counted in user, so not again)."""
    try:
        fields = [float(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0.0, 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    total = sum(fields[:8])
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    steal = fields[7] if len(fields) > 7 else 0.0
    return (total - idle) / tick, steal / tick, total / tick


def _cpu_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine."""
    busy, _, total = machine_cpu()
    return busy, total


def background_busy(seconds: float = 1.0) -> float | None:
    """Share of the machine's CPU time busy over ``seconds`` while this bench does nothing: other tenants."""
    before = _cpu_busy()
    time.sleep(seconds)
    busy, total = (b - a for a, b in zip(before, _cpu_busy()))
    return busy / total if total else None


def _check_body(body: bytes, model: str, top_k: int) -> int | None:
    """The top-1 class index of a well-formed /classify answer; None if its shape is wrong."""
    try:
        data = json.loads(body)
        preds = data["predictions"]
        ok = (data["model"] == model and len(preds) == top_k
              and all({"label", "class_index", "probability"} <= p.keys() for p in preds))
        return int(preds[0]["class_index"]) if ok else None
    except (ValueError, KeyError, TypeError, IndexError):
        return None


def drive(port: int, bodies: Sequence[bytes], labels: np.ndarray | None, clients: int, seconds: float,
          model: str, top_k: int, bar: tqdm | None = None, host: str = "127.0.0.1") -> dict[str, Any]:
    """Closed loop: ``clients`` threads, each on one keep-alive connection, each sending its next
    request when the previous one returns, until ``seconds`` have passed (the requests in flight
    then are completed and counted). Latency is send to last byte, of 200 answers of the right shape."""
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    per_client: list[dict[str, Any]] = [{"ms": [], "errors": {}, "correct": 0, "end": 0.0} for _ in range(clients)]
    start_cpu, start_busy = time.process_time(), _cpu_busy()
    started = time.perf_counter()
    deadline = started + seconds

    def client(c: int) -> None:
        rec, conn, i = per_client[c], None, c * 7919  # clients start at different images
        while time.perf_counter() < deadline:
            n = i % len(bodies)
            i += 1
            t0 = time.perf_counter()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(host, port, timeout=120)
                conn.request("POST", "/classify", body=bodies[n], headers=headers)
                resp = conn.getresponse()
                status, body = resp.status, resp.read()
            except (OSError, http.client.HTTPException) as e:
                status, body = type(e).__name__, b""
                if conn is not None:
                    conn.close()
                conn = None  # reconnect for the next request
            elapsed = time.perf_counter() - t0
            top1 = _check_body(body, model, top_k) if status == 200 else None
            if top1 is None:
                key = str(status) if status != 200 else "200 with a malformed body"
                rec["errors"][key] = rec["errors"].get(key, 0) + 1
            else:
                rec["ms"].append(1000 * elapsed)
                rec["correct"] += int(labels is not None and top1 == int(labels[n]))
        rec["end"] = time.perf_counter()
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(clients)]
    for t in threads:
        t.start()
    shown = 0
    while any(t.is_alive() for t in threads):
        threads[0].join(0.25)
        if bar is not None and (now := min(int(time.perf_counter() - started), int(seconds))) > shown:
            bar.update(now - shown)
            shown = now
    if bar is not None:
        bar.update(int(seconds) - shown)
    wall = max(r["end"] for r in per_client) - started
    busy, total = (b - a for a, b in zip(start_busy, _cpu_busy()))
    ms = [v for r in per_client for v in r["ms"]]
    errors: dict[str, int] = {}
    for r in per_client:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    return {"clients": clients, "seconds": wall, "ok": len(ms), "errors": sum(errors.values()),
            "errors_by_kind": errors, "requests_per_s": len(ms) / wall, **_percentiles(ms),
            "mean_ms": float(np.mean(ms)) if ms else None,
            "top1_correct": sum(r["correct"] for r in per_client) if labels is not None else None,
            "load_generator_cores": (time.process_time() - start_cpu) / wall,
            "machine_cpu_busy": busy / total if total else None}
