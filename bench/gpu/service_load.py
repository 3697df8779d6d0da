"""The service under load, and the CPU each side of it used: ``/classify`` with Locust, ``/classify_batch``
with an asyncio client, against a service someone else started (``bench/gpu/check.sh``'s).

    python -m bench.gpu.service_load classify --host http://127.0.0.1:3000 --service-pid PID \\
        --model resnet50-imagenet --users 1,32,128,256 --open-rates 70% --workers 6 --duration 10 --out DIR
    python -m bench.gpu.service_load batch --host http://127.0.0.1:3000 --service-pid PID \\
        --model resnet50-imagenet --users 1,4,16,32 --duration 6 --out DIR

Both send 224x224 JPEGs (``loadtests.corpus``'s generated photos at that size). ``classify``: Locust
(``loadtests.locust_run``, ``--workers`` processes) closed loop at each ``--users``, then open loop at
each ``--open-rates`` (``70%``: of the best closed-loop rate of good answers). ``batch``: closed loop
from ``bench.aio_http`` in this process, each request ``--images-per-request`` images in field
``images``; an answer counts when it is a 200 with one result per image.

Each run records its rate of good answers (requests and images per second), p50/p95/p99, failures,
the mean batch the engine formed (``/metrics``), and the cores used over the run's steady part, sampled
from /proc twice a second: by the service's process tree (``--service-pid``: ``bentoml serve``, its API
workers and engine process), by the load generator (this process and its children: Locust's master
and workers) and by the whole machine. Writes ``OUT/<part>.json`` after every run, so a run cut short
by its deadline keeps the ones before it; Locust's files go to ``OUT/raw/``.
"""
from __future__ import annotations

import argparse
import asyncio
import csv
import json
import logging
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.aio_http import Outcome, build_request, closed_loop
from bench.reliability.common import ProcessTreeSampler, percentiles_ms
from bench.reliability.hostile import MULTIPART, form, part
from common.cli import int_list, run_cli
from common.errors import UserError
from common.files import ensure_writable_dir
from loadtests.corpus import CorpusImage, build_corpus, load_corpus
from loadtests.http_load import scrape
from loadtests.locust_run import LocustLoad, run_locust
from loadtests.sweep import RemoteService, open_rate
from loadtests.sweep_report import ok_rate

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[2]
PHOTO_SIZE = (224, 224)
LOCUST_NAME, SCHEDULED_NAME = "classify", "classify (from schedule)"  # the locustfile's request names


class CpuWatch:
    """Two ``ProcessTreeSampler`` threads: the service's process tree, and this process's (the load
    generator, Locust's processes included as its children)."""

    def __init__(self, service_pid: int, interval: float = 0.5) -> None:
        self.service = ProcessTreeSampler(service_pid, interval)
        self.generator = ProcessTreeSampler(os.getpid(), interval)

    def __enter__(self) -> CpuWatch:
        self.service.__enter__()
        self.generator.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.generator.__exit__(*exc)
        self.service.__exit__(*exc)

    def between(self, t0: float, t1: float) -> dict[str, Any]:
        """Mean cores used in (t0, t1] (``time.monotonic``) by each party, from the samples ending there."""
        return cpu_means([c for c in self.service.cpu if t0 < c["t"] <= t1],
                         [c for c in self.generator.cpu if t0 < c["t"] <= t1], t1 - t0)


def cpu_means(service: list[dict[str, float]], generator: list[dict[str, float]], window: float) -> dict[str, Any]:
    """The samplers' intervals (cores used by each party) averaged: ``server`` of the service's sampler
    is the service, of the generator's the generator; the machine's busy cores are everyone's."""
    def mean(rows: list[dict[str, float]], *keys: str) -> float | None:
        return float(np.mean([sum(r[k] for k in keys) for r in rows])) if rows else None

    return {"window_s": round(window, 2), "samples": len(service), "service_cores": mean(service, "server"),
            "generator_cores": mean(generator, "server"),
            "machine_busy_cores": mean(service, "server", "generator", "others"),
            "machine_cores": mean(service, "cores"), "steal_cores": mean(service, "steal")}


def steady_window(history_csv: Path, users: int, started: float, ended: float) -> tuple[float, float]:
    """The part of a Locust run (``time.monotonic`` from ``started`` to ``ended``) during which all its
    users ran: the rows of its ``_stats_history.csv`` (wall-clock seconds) with ``User Count`` at
    ``users``; the whole run when there are fewer than two."""
    try:
        with open(history_csv, newline="") as f:
            stamps = [int(r["Timestamp"]) for r in csv.DictReader(f) if r.get("User Count") == str(users)]
    except (OSError, KeyError, ValueError):
        stamps = []
    if len(stamps) < 2:
        return started, ended
    offset = time.time() - time.monotonic()
    return max(started, stamps[0] - offset), min(ended, stamps[-1] - offset)


def mean_batch(before: dict[str, float], after: dict[str, float]) -> float | None:
    """Images per engine call between two ``scrape``s of the model's ``resnet_batch_size``."""
    calls = after.get("resnet_batch_size_count", 0.0) - before.get("resnet_batch_size_count", 0.0)
    images = after.get("resnet_batch_size_sum", 0.0) - before.get("resnet_batch_size_sum", 0.0)
    return images / calls if calls else None


def batch_requests(images: Sequence[tuple[CorpusImage, bytes]], per_request: int, model: str,
                   top_k: int = 1) -> list[bytes]:
    """One /classify_batch request starting at each corpus image: it and the next ``per_request - 1``."""
    requests = []
    for start in range(len(images)):
        chosen = [images[(start + i) % len(images)] for i in range(per_request)]
        body = form(part("model", model.encode()), part("top_k", str(top_k).encode()),
                    *(part("images", data, e.file.encode(), e.content_type) for e, data in chosen))
        requests.append(build_request("/classify_batch", body, MULTIPART))
    return requests


def batch_answer_ok(outcome: Outcome, per_request: int) -> bool:
    if outcome.status != 200:
        return False
    try:
        results = json.loads(outcome.body)["results"]
        return len(results) == per_request and all(r["predictions"] for r in results)
    except (ValueError, KeyError, TypeError):
        return False


def run_classify(server: RemoteService, model: str, corpus: Path, args: argparse.Namespace, watch: CpuWatch,
                 raw: Path, save: Callable[[list[dict[str, Any]]], None]) -> list[dict[str, Any]]:
    """Locust closed loop at each of ``args.users``, then open loop at each of ``args.open_rates``."""
    runs: list[dict[str, Any]] = []
    best: float | None = None
    specs: list[str | None] = [None] * len(args.users) + args.open_rates
    open_users = args.open_users or 2 * max(args.users)
    for i, spec in enumerate(specs):
        try:
            load = (LocustLoad(args.users[i], args.duration) if spec is None else
                    LocustLoad(open_users, args.duration, open_rate(spec, best) / open_users))
        except UserError as e:  # a relative open rate without a closed-loop rate to take it from
            runs.append({"endpoint": "/classify", "mode": "open", "open_rate_spec": spec, "error": str(e)})
            save(runs)
            continue
        prefix = raw / (f"classify_{load.mode}_u{load.users}" + ("" if spec is None else f"_r{spec.replace('%', 'pct')}"))
        before, started = scrape(server, model), time.monotonic()
        try:
            run = run_locust(server.url, model, corpus, load, prefix, args.top_k, args.workers,
                             max_fail_ratio=1.0, cwd=REPO_ROOT)
        except UserError as e:
            runs.append({"endpoint": "/classify", "mode": load.mode, "users": load.users, "error": str(e)})
            save(runs)
            continue
        ended, after = time.monotonic(), scrape(server, model)
        row = run["stats"].get(LOCUST_NAME, {})
        requests, failures, good_rate = row.get("requests", 0), row.get("failures", 0), ok_rate(row) or 0.0
        if load.mode == "closed":
            best = max(best or 0.0, good_rate)
        runs.append({
            "endpoint": "/classify", "mode": load.mode, "users": load.users, "offered_rate": load.offered_rate,
            "open_rate_spec": spec, "seconds": load.seconds, "requests": requests, "failures": failures,
            "requests_per_s": good_rate, "images_per_s": good_rate,
            **{k: row.get(k) for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms")},
            "schedule_p99_ms": run["stats"].get(SCHEDULED_NAME, {}).get("p99_ms"),
            "mean_batch_size": mean_batch(before, after),
            "cpu": watch.between(*steady_window(Path(f"{prefix}_stats_history.csv"), load.users, started, ended)),
            "locust_exit_code": run["exit_code"], "failures_by_error": run["failures_by_error"]})
        log.info("/classify %s loop, %d users: %.0f images/s, p99 %s ms, mean batch %s, service %.1f cores, "
                 "generator %.1f cores", load.mode, load.users, good_rate, row.get("p99_ms"),
                 runs[-1]["mean_batch_size"], runs[-1]["cpu"]["service_cores"] or 0, runs[-1]["cpu"]["generator_cores"] or 0)
        save(runs)
    return runs


def run_batch(server: RemoteService, model: str, corpus: Path, args: argparse.Namespace, watch: CpuWatch,
              save: Callable[[list[dict[str, Any]]], None]) -> list[dict[str, Any]]:
    """Closed loop of /classify_batch requests at each of ``args.users`` concurrent clients."""
    _, images = load_corpus(corpus)
    requests = batch_requests(images, args.images_per_request, model)
    runs: list[dict[str, Any]] = []
    for clients in args.users:
        before, started = scrape(server, model), time.monotonic()
        outcomes = asyncio.run(closed_loop(server.host, server.port, lambda i: requests[i % len(requests)],
                                           clients, args.duration))
        ended, after = time.monotonic(), scrape(server, model)
        good = [o for o in outcomes if batch_answer_ok(o, args.images_per_request)]
        wall = max((o.sent + o.latency for o in outcomes), default=args.duration)
        runs.append({
            "endpoint": "/classify_batch", "mode": "closed", "users": clients,
            "images_per_request": args.images_per_request, "seconds": wall, "requests": len(outcomes),
            "failures": len(outcomes) - len(good), "by_status": dict(Counter(str(o.status) for o in outcomes)),
            "requests_per_s": len(good) / wall, "images_per_s": len(good) * args.images_per_request / wall,
            **percentiles_ms([o.latency for o in good]), "mean_batch_size": mean_batch(before, after),
            "cpu": watch.between(started, ended)})
        log.info("/classify_batch, %d clients: %.0f images/s, p99 %s ms, mean batch %s", clients,
                 runs[-1]["images_per_s"], runs[-1]["p99_ms"], runs[-1]["mean_batch_size"])
        save(runs)
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    from importlib.metadata import version

    from loadtests.machine import machine_info

    p = argparse.ArgumentParser(prog="python -m bench.gpu.service_load", description=__doc__.split("\n")[0])
    p.add_argument("part", choices=("classify", "batch"), help="/classify with Locust, or /classify_batch")
    p.add_argument("--host", required=True, help="the running service, http://HOST:PORT")
    p.add_argument("--service-pid", type=int, required=True, help="its root process (bentoml serve)")
    p.add_argument("--model", required=True, help="served name to send to")
    p.add_argument("--users", type=int_list, default=[1, 32, 128, 256], help="closed-loop users (batch: clients)")
    p.add_argument("--open-rates", default="", help="classify: open-loop rates after the closed loop, e.g. 70%%")
    p.add_argument("--open-users", type=int, default=0, help="classify: users offering them (default 2x max --users)")
    p.add_argument("--workers", type=int, default=0, help="classify: Locust worker processes (0: one process)")
    p.add_argument("--images-per-request", type=int, default=16, help="batch: images in each request")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    p.add_argument("--top-k", type=int, default=5, help="classify: top_k asked for")
    p.add_argument("--corpus-images", type=int, default=64, help="distinct 224x224 JPEGs sent")
    p.add_argument("--out", type=Path, required=True, help="folder for <part>.json and raw/")
    args = p.parse_args(argv)
    args.open_rates = [r.strip() for r in args.open_rates.split(",") if r.strip()]
    if args.duration <= 0 or args.images_per_request < 1:
        raise UserError("need --duration > 0 and --images-per-request >= 1")
    server = RemoteService(args.host)
    try:
        status, body = server.get("/models")
    except OSError as e:
        raise UserError(f"GET {server.url}/models: {e}") from None
    if status != 200:
        raise UserError(f"GET {server.url}/models answered {status}")
    listed = {m["name"]: m for m in json.loads(body)["models"]}
    if args.model not in listed:
        raise UserError(f"{server.url} does not serve {args.model} (it serves {', '.join(listed)})")
    ensure_writable_dir(args.out)
    results: dict[str, Any] = {
        "part": args.part, "command": "python -m bench.gpu.service_load " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {**machine_info(), "locust": version("locust")}, "served": listed[args.model],
        "service_env": {k: v for k, v in os.environ.items() if k.startswith("RESNET_")},
        "settings": {k: v for k, v in vars(args).items() if k not in ("out",)}, "runs": [], "complete": False}
    path = args.out / f"{args.part}.json"

    def save(runs: list[dict[str, Any]]) -> None:
        results["runs"] = runs
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=1, default=str) + "\n")
        os.replace(tmp, path)

    with tempfile.TemporaryDirectory(prefix="service-load-") as tmp, CpuWatch(args.service_pid) as watch:
        items = build_corpus(Path(tmp) / "corpus", "photo", args.corpus_images, photo_size=PHOTO_SIZE)
        results["corpus"] = {"images": len(items), "size": list(PHOTO_SIZE), "format": "JPEG",
                             "mean_bytes": float(np.mean([i.bytes for i in items]))}
        if args.part == "classify":
            run_classify(server, args.model, Path(tmp) / "corpus", args, watch, ensure_writable_dir(args.out / "raw"), save)
        else:
            run_batch(server, args.model, Path(tmp) / "corpus", args, watch, save)
    results["complete"] = True
    save(results["runs"])
    log.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
