"""Latency and throughput by depth: Locust against the real service, one model and one load at a time.

    python -m loadtests.sweep --models resnet18,resnet34,resnet50,resnet101,resnet152 --users 1,8,32 --duration 30s
    python -m loadtests.sweep --models fmnist --users 1,8,32 --duration 30s --batching on,off --precision fp32,int8
    python -m loadtests.sweep --models resnet50 --users 32 --open-rates 50%,90%        # open loop too
    python -m loadtests.sweep --models resnet50-imagenet --host http://10.0.0.5:3000 --workers 4

For each variant (batching on/off x precision) the sweep starts ``bentoml serve`` serving every
requested model (exporting and registering missing ones first), unless ``--host`` names a running
service. For each model it then runs, one after the other:

1. a short warm-up at the same concurrency (not recorded);
2. Locust headless (``loadtests/locustfile.py``) for ``--duration`` at each ``--users`` count, closed
   loop; then, for each ``--open-rates`` entry, open loop at that offered rate (``70%`` = 70% of the
   model's best closed-loop rate in this sweep);
3. ``/metrics`` before and after, for the mean batch size the engine formed.

Engine-only latency is the same ONNX file in an ``OnnxEngine`` built as the service builds it, timed
in this process without HTTP: at batch 1 before the service starts, and at each load's mean formed
batch size after it stops. Writes ``report.md``, PNG plots, ``results.json`` and each run's Locust
CSVs, HTML report and exact per-request latencies (the report's percentiles, to 0.1 ms) to
``--out/<timestamp>/``. Exit status 1 when any Locust run failed its gate (failure ratio, p95).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from itertools import product
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from loadtests.corpus import build_corpus, load_corpus, multipart_body
from loadtests.http_load import ServeProcess, drive, http_get, scrape
from loadtests.locust_run import LocustLoad, run_locust
from loadtests.sweep_models import SweepModel, describe, ensure_registered, expand
from common.cli import int_list, run_cli
from common.errors import UserError
from common.files import ensure_writable_dir
from models.card import ModelCard

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "reports" / "latency-by-depth"
# Closed-loop load bounds the queue by the user count, so the sweep lets BentoML's batcher wait
# instead of shedding: on the CPU, resnet152 at 32 users legitimately takes seconds per request.
SWEEP_MAX_LATENCY_MS = 60_000


@dataclass
class SweepConfig:
    models: list[str]
    users: list[int] = field(default_factory=lambda: [1, 8, 32])
    duration: float = 30.0
    host: str | None = None
    open_rates: list[str] = field(default_factory=list)  # "70%" of the best closed-loop rate, or req/s
    open_users: int = 0  # users offering the open-loop rate; 0: twice the largest --users
    batching: list[str] = field(default_factory=lambda: ["on"])
    precisions: list[str] = field(default_factory=lambda: ["fp32"])
    workers: int = 0  # Locust worker processes under a master; 0: one process
    warmup: float = 2.0
    engine_seconds: float = 1.0
    corpus_images: int = 64
    max_fail_ratio: float = 0.01
    max_p95_ms: float = 0.0
    checkpoints: list[Path] = field(default_factory=list)
    out: Path = DEFAULT_OUT


class RemoteService:
    """A service someone else started: what the sweep needs of it (GET, and its address)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UserError(f"--host {url!r}: expected http://HOST:PORT")
        self.url, self.host, self.https = url.rstrip("/"), parts.hostname, parts.scheme == "https"
        self.port = parts.port or (443 if self.https else 80)

    def get(self, path: str) -> tuple[int, bytes]:
        return http_get(self.host, self.port, path, self.https)


def parse_duration(text: str) -> float:
    """``30s``, ``2m``, ``90`` -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|min)?\s*", text)
    if not m or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"expected a duration like 30s or 2m, got {text!r}")
    return float(m.group(1)) * (60 if m.group(2) in ("m", "min") else 1)


def open_rate(spec: str, best_closed_rate: float | None) -> float:
    """``70%`` of the best closed-loop rate, or an absolute ``12.5`` req/s."""
    if spec.endswith("%"):
        if not best_closed_rate:
            raise UserError(f"open rate {spec} is relative to a closed-loop run, and there was none")
        return float(spec[:-1]) / 100 * best_closed_rate
    return float(spec)


def _engine_latency(served_models: dict[str, Any], config: Any, name: str, tensors: np.ndarray,
                    batch: int, seconds: float) -> dict[str, Any]:
    """p50 ms of one engine call at ``batch`` (1 untimed call, then >= 3 or ``seconds`` of calls)."""
    from service.engine import OnnxEngine, cuda_usable
    from service.topology import engine_options, resolve_topology

    served = served_models[name]
    topology = resolve_topology(config.topology, on_cuda=config.device != "cpu" and cuda_usable())
    options = replace(engine_options(config, served, topology), max_batch_size=max(batch, config.max_batch_size))
    engine = OnnxEngine(served.onnx_path, options)
    x = np.ascontiguousarray(np.resize(tensors, (batch, *tensors.shape[1:])))
    engine.infer(x)
    samples, started = [], time.perf_counter()
    while (now := time.perf_counter()) - started < seconds or len(samples) < 3:
        engine.infer(x)
        samples.append(time.perf_counter() - now)
    return {"provider": engine.provider, "batch": batch, "calls": len(samples),
            "p50_ms": 1000 * float(np.median(samples))}


def _local_models(env: dict[str, str]) -> tuple[dict[str, Any], Any]:
    """(served name -> ``ServedModel`` from the local store as the service would load them, or {} if
    absent; the service's config under ``env``)."""
    from service.catalog import ModelUnavailable, resolve_models
    from service.config import load_config

    try:
        config = load_config(env)
    except ValueError as e:
        raise UserError(str(e)) from None
    try:
        return {m.name: m for m in resolve_models(config, verify_checksums=True)}, config
    except ModelUnavailable as e:
        log.warning("engine-only latency not measured: %s", e)
        return {}, config


def _tensors(corpus_dir: Path, card: ModelCard, count: int = 8) -> np.ndarray:
    from service.preprocess import DecodeLimits, PreprocessSpec, preprocess

    spec, limits = PreprocessSpec.from_card(card), DecodeLimits()
    _, images = load_corpus(corpus_dir)
    return np.stack([preprocess(data, spec, limits) for _, data in images[:count]])


def run_sweep(cfg: SweepConfig, stamp_dir: Path) -> dict[str, Any]:
    """Runs every (variant, model, load) and returns the results; Locust's CSVs go to ``stamp_dir/raw``."""
    from loadtests.machine import machine_info

    names = expand(cfg.models, tuple(cfg.checkpoints))
    if not names:
        raise UserError("no model to sweep")
    variants = [{"batching": b, "precision": p} for b, p in product(cfg.batching, cfg.precisions)]
    if cfg.host and len(variants) > 1:
        raise UserError("--host serves one configuration: --batching and --precision take one value each with it")
    if not cfg.host:
        for name in names:
            ensure_registered(name, sorted({p for p in cfg.precisions if p != "auto"}) or ["fp32"],
                              tuple(cfg.checkpoints))
    started = time.perf_counter()
    results: dict[str, Any] = {
        "machine": {**machine_info(), **_extra_machine_info()},
        "settings": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
                     "checkpoints": [str(p) for p in cfg.checkpoints], "served_names": names,
                     "command": "python -m loadtests.sweep " + " ".join(sys.argv[1:]),
                     "started": datetime.now(timezone.utc).isoformat(timespec="seconds")},
        "models": {}, "engine": {}, "runs": [], "corpora": {}}
    runs_per_model = len(cfg.users) + len(cfg.open_rates)
    max_users = max([*cfg.users, cfg.open_users or 2 * max(cfg.users)])
    bar = tqdm(total=int(cfg.duration * runs_per_model * len(names) * len(variants)), unit="s",
               desc="sweep", disable=None)
    with tempfile.TemporaryDirectory(prefix="sweep-") as tmp, logging_redirect_tqdm():
        corpora: dict[str, Path] = {}
        for variant in variants:
            label = f"batching {variant['batching']}, {variant['precision']}"
            env = {**os.environ, "RESNET_MODELS": ",".join(names), "RESNET_BATCHING": variant["batching"],
                   "RESNET_PRECISION": variant["precision"], "RESNET_MAX_LATENCY_MS": str(SWEEP_MAX_LATENCY_MS),
                   # Admission control (per API worker) must not shed the sweep's own bounded load,
                   # however the kernel spreads its connections over the workers.
                   "RESNET_MAX_INFLIGHT": str(max_users)}
            local, config = _local_models(env)
            engine = results["engine"].setdefault(variant["precision"], {})
            server = RemoteService(cfg.host) if cfg.host else ServeProcess(env, Path(tmp), label)
            try:
                if isinstance(server, ServeProcess):
                    bar.set_postfix_str(f"{label}: starting bentoml serve")
                    results.setdefault("ready_seconds", {})[label] = server.wait_ready()
                status, body = server.get("/models")
                if status != 200:
                    raise UserError(f"GET {server.url}/models answered {status}")
                listed = {m["name"]: m for m in json.loads(body)["models"]}
                missing = [n for n in names if n not in listed]
                if missing:
                    raise UserError(f"{server.url} does not serve {', '.join(missing)} (it serves {', '.join(listed)})")
                for name in names:
                    model = describe(name, listed[name])
                    results["models"][name] = asdict(model)
                    results["models"][name].update(provider=listed[name]["provider"], corpus_kind=model.corpus_kind,
                                                   precision=listed[name]["precision"])
                    kind = model.corpus_kind
                    if kind not in corpora:
                        corpora[kind] = Path(tmp) / f"corpus-{kind}"
                        items = build_corpus(corpora[kind], kind, cfg.corpus_images)
                        results["corpora"][kind] = {"images": len(items),
                                                    "mean_bytes": float(np.mean([i.bytes for i in items])),
                                                    "formats": sorted({i.content_type for i in items})}
                    if name in local:  # how its weights came to be, for the accuracy column
                        results["models"][name]["trained_by"] = local[name].card.provenance.command
                    if name in local and name not in engine:
                        tensors = _tensors(corpora[kind], local[name].card)
                        engine[name] = {"1": _engine_latency(local, config, name, tensors, 1, cfg.engine_seconds)}
                    _sweep_model(cfg, server, model, corpora[kind], label, stamp_dir, results, bar)
            finally:
                if isinstance(server, ServeProcess):
                    server.stop()
            for name in names:  # engine-only at the batch sizes the service formed
                if name not in local:
                    continue
                tensors = _tensors(corpora[results["models"][name]["corpus_kind"]], local[name].card)
                for run in results["runs"]:
                    b = run.get("mean_batch_size")
                    if run["variant"] == label and run["model"] == name and b and str(round(b)) not in engine[name]:
                        engine[name][str(round(b))] = _engine_latency(local, config, name, tensors, round(b),
                                                                      cfg.engine_seconds)
    bar.close()
    results["wall_seconds"] = time.perf_counter() - started
    return results


def _sweep_model(cfg: SweepConfig, server: Any, model: SweepModel, corpus: Path, label: str,
                 stamp_dir: Path, results: dict[str, Any], bar: tqdm) -> None:
    _, images = load_corpus(corpus)
    warm_bodies = [multipart_body(data, e.content_type, e.file, {"model": model.served, "top_k": str(model.top_k)})
                   for e, data in images]
    slug = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
    loads = [LocustLoad(u, cfg.duration) for u in cfg.users]
    best_closed: float | None = None
    open_specs = list(cfg.open_rates)
    while loads or open_specs:
        if loads:
            load, spec = loads.pop(0), None
        else:
            spec = open_specs.pop(0)
            users = cfg.open_users or 2 * max(cfg.users)
            load = LocustLoad(users, cfg.duration, open_rate(spec, best_closed) / users)
        bar.set_postfix_str(f"{label}: {model.served}, {load.mode} loop, {load.users} users")
        if cfg.warmup > 0:
            drive(server.port, warm_bodies, None, min(load.users, 32), cfg.warmup, model.served, model.top_k,
                  host=server.host if isinstance(server, RemoteService) else "127.0.0.1")
        before = scrape(server, model.served)
        prefix = stamp_dir / "raw" / slug / f"{model.served}_{load.mode}_u{load.users}" \
            f"{'' if spec is None else '_r' + spec.replace('%', 'pct')}"
        run = run_locust(server.url, model.served, corpus, load, prefix, model.top_k, cfg.workers,
                         cfg.max_fail_ratio, cfg.max_p95_ms, cwd=REPO_ROOT)
        after = scrape(server, model.served)
        calls = after.get("resnet_batch_size_count", 0.0) - before.get("resnet_batch_size_count", 0.0)
        images_in = after.get("resnet_batch_size_sum", 0.0) - before.get("resnet_batch_size_sum", 0.0)
        inference = after.get("resnet_inference_seconds_sum", 0.0) - before.get("resnet_inference_seconds_sum", 0.0)
        run.update(variant=label, model=model.served, open_rate_spec=spec, csv_prefix=str(prefix.relative_to(stamp_dir)),
                   engine_calls=calls, mean_batch_size=images_in / calls if calls else None,
                   service_inference_mean_ms=1000 * inference / calls if calls else None)
        results["runs"].append(run)
        row = run["stats"].get("classify", {})
        if load.mode == "closed" and row.get("requests_per_s"):  # answered, not failed, requests
            best_closed = max(best_closed or 0.0, row["requests_per_s"] * (1 - row["failures"] / row["requests"]))
        log.info("%s | %s | %s loop, %d users%s: p50 %s ms, p99 %s ms, %.1f req/s, %d failures, mean batch %s",
                 label, model.served, load.mode, load.users,
                 f", offered {load.offered_rate:.1f} req/s" if load.offered_rate else "",
                 row.get("p50_ms"), row.get("p99_ms"), row.get("requests_per_s") or 0.0, row.get("failures", -1),
                 "n/a" if run["mean_batch_size"] is None else f"{run['mean_batch_size']:.2f}")
        bar.update(int(cfg.duration))


def _extra_machine_info() -> dict[str, Any]:
    import subprocess
    from importlib.metadata import version

    info: dict[str, Any] = {"gpu": None}
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        if out.returncode == 0 and out.stdout.strip():
            info["gpu"] = out.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    # Versions from package metadata: importing locust here would monkey-patch this process with gevent.
    info["versions_extra"] = {p: version(p) for p in ("locust", "torch")}
    return info


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    from loadtests.sweep_report import write_report

    p = argparse.ArgumentParser(prog="python -m loadtests.sweep", description=__doc__.split("\n")[0])
    p.add_argument("--models", required=True,
                   help="comma-separated: resnet18 ... (ImageNet shape), resnet20 ... (Fashion-MNIST), served "
                        "names, or 'fmnist' for the trained Fashion-MNIST family")
    p.add_argument("--users", type=int_list, default=[1, 8, 32], help="closed-loop user counts")
    p.add_argument("--duration", type=parse_duration, default=30.0, help="per model and load, e.g. 30s")
    p.add_argument("--host", help="a running service (http://HOST:PORT); default: start one here")
    p.add_argument("--open-rates", default="", help="open-loop offered rates: '70%%' of the best closed-loop "
                                                    "rate, or req/s; comma-separated")
    p.add_argument("--open-users", type=int, default=0, help="users offering the open-loop rate (default 2x max --users)")
    p.add_argument("--batching", default="on", help="on, off or on,off (side by side)")
    p.add_argument("--precision", default="fp32", help="fp32, int8, fp16, auto or a comma-separated list")
    p.add_argument("--workers", type=int, default=0, help="Locust worker processes (master/worker mode); 0: one process")
    p.add_argument("--warmup", type=parse_duration, default=2.0, help="unrecorded load before each run")
    p.add_argument("--checkpoints", type=Path, action="append", default=[],
                   help="folder of trained Fashion-MNIST checkpoints to export from (repeatable)")
    p.add_argument("--max-fail-ratio", type=float, default=0.01, help="a run fails above this failure ratio")
    p.add_argument("--max-p95-ms", type=float, default=0.0, help="a run fails above this p95 (0: no limit)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the report goes to OUT/<timestamp>/")
    args = p.parse_args(argv)
    cfg = SweepConfig(
        models=[m.strip() for m in args.models.split(",") if m.strip()], users=args.users, duration=args.duration,
        host=args.host, open_rates=[r.strip() for r in args.open_rates.split(",") if r.strip()],
        open_users=args.open_users, batching=_choices(args.batching, ("on", "off"), "--batching"),
        precisions=_choices(args.precision, ("fp32", "fp16", "int8", "auto"), "--precision"),
        workers=args.workers, warmup=args.warmup, max_fail_ratio=args.max_fail_ratio, max_p95_ms=args.max_p95_ms,
        checkpoints=args.checkpoints, out=args.out)
    for r in cfg.open_rates:
        if not re.fullmatch(r"\d+(\.\d+)?%?", r) or float(r.rstrip("%")) <= 0:
            raise UserError(f"--open-rates {r!r}: expected e.g. 70% or 12.5")
    stamp_dir = cfg.out / datetime.now().strftime("%Y%m%d-%H%M%S")
    ensure_writable_dir(stamp_dir)  # before minutes of measuring, not after
    results = run_sweep(cfg, stamp_dir)
    for path in write_report(results, stamp_dir):
        log.info("wrote %s", path)
    failed = [f"{r['model']} {r['mode']} u{r['users']} ({r['variant']})" for r in results["runs"] if r["exit_code"]]
    log.info("sweep took %.0f s; report in %s", results["wall_seconds"], stamp_dir)
    if failed:
        log.error("runs that failed their gate (failure ratio > %s or p95 over the limit): %s",
                  cfg.max_fail_ratio, "; ".join(failed))
        return 1
    return 0


def _choices(text: str, allowed: tuple[str, ...], flag: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        raise UserError(f"{flag} {text!r}: choose from {', '.join(allowed)}")
    return values


if __name__ == "__main__":
    raise SystemExit(main())
