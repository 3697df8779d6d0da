"""What the HTTP service costs on top of the bare model: engine-only, preprocessing-only and the real
``bentoml serve`` (batching on, then off), measured side by side in one run on this machine.

    python -m bench.service_overhead.measure                                  # --duration 15 --clients 1,16
    python -m bench.service_overhead.measure --duration 3 --clients 1,4 --out /tmp/svc-bench-smoke

1. **Engine-only**: the ONNX file the service loads (``service.catalog.resolve_models`` with the
   service's config) in a ``service.engine.OnnxEngine`` with the service's thread settings, called
   in a loop: p50 per call and images/s at batch sizes 1 to 32.
2. **Preprocessing-only**: ``service.preprocess.preprocess`` on the PNG bytes the clients send.
3. **Service**: ``bentoml serve`` started here on a free loopback port, driven by closed-loop clients
   (threads, one keep-alive connection each, the next request when the previous one returns), for
   every client count, with ``RESNET_BATCHING=on`` and then ``off``. The batch sizes the engine
   formed come from ``/metrics`` deltas of ``resnet_batch_size`` (BentoML aggregates every worker
   process's metrics there, the engine's included).

The load generator (``loadtests.http_load``) runs in this process, on the same cores as the
service: its CPU share is reported with the results. Writes ``report.md``, ``results.json`` and
``service_bench.png`` to ``--out`` (see ``bench.service_overhead.report``). The service serves ``--model``
alone (``RESNET_MODELS``); every other ``RESNET_*`` setting is taken from the environment and recorded.
Run it on a quiet machine: BentoML wipes ``$BENTOML_HOME/prometheus_multiproc_dir`` at every start, so
another ``bentoml serve`` on the same store during the run would corrupt the batch-size numbers.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import io
import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from common.cli import int_list, run_cli
from common.files import ensure_writable_dir
from models.data import load_fashion_mnist
from models.default import DEFAULT_MODEL_NAME
from common.errors import UserError
from loadtests.http_load import ServeProcess, background_busy, drive, multipart, scrape
from loadtests.machine import machine_info
from bench.service_overhead.report import targets
from service.catalog import ModelUnavailable, ServedModel, resolve_models
from service.config import ServiceConfig, load_config
from service.engine import OnnxEngine, cuda_usable
from service.topology import engine_options, resolve_topology
from service.preprocess import DecodeLimits, PreprocessSpec, preprocess

log = logging.getLogger(__name__)
ENGINE_BATCHES = (1, 2, 4, 8, 16, 32)
MODES = {"batching on": {"RESNET_BATCHING": "on"}, "batching off": {"RESNET_BATCHING": "off"}}


# ---- inputs and machine ------------------------------------------------------------------------

def encode_pngs(count: int) -> tuple[list[bytes], np.ndarray]:
    """The first ``count`` Fashion-MNIST test images as PNG bytes, and their labels."""
    images, labels = load_fashion_mnist("test")
    pngs = []
    for array in images[:count]:
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    return pngs, labels[:count]

def service_config(env: dict[str, str]) -> ServiceConfig:
    """The config the service will load under ``env`` (so the bench times what it serves)."""
    try:
        return load_config(env)
    except ValueError as e:
        raise UserError(str(e)) from None

# ---- 1 and 2: engine-only and preprocessing-only -----------------------------------------------

def measure_engine(served: ServedModel, config: ServiceConfig, tensors: np.ndarray, batches: Sequence[int],
                   seconds: float, bar: tqdm | None = None) -> dict[str, Any]:
    """p50 per call and images/s at each batch size: calls in a loop for ``seconds`` each, after 3
    untimed ones, on a fresh ``OnnxEngine`` built as the service builds it."""
    on_cuda = config.device != "cpu" and cuda_usable()
    options = engine_options(config, served, resolve_topology(config.topology, on_cuda=on_cuda))
    engine = OnnxEngine(served.onnx_path, options)
    engine.warm_up(served.card.input_shape)
    out: dict[str, Any] = {"provider": engine.provider, "options": dataclasses.asdict(options), "batches": {}}
    for batch in batches:
        x = np.ascontiguousarray(np.resize(tensors, (batch, *tensors.shape[1:])))  # cycles the images
        for _ in range(3):
            engine.infer(x)
        samples, started = [], time.perf_counter()
        while (now := time.perf_counter()) - started < seconds or len(samples) < 5:
            engine.infer(x)
            samples.append(time.perf_counter() - now)
        elapsed = time.perf_counter() - started
        out["batches"][str(batch)] = {"calls": len(samples), "images_per_s": batch * len(samples) / elapsed,
                                      "p50_ms": 1000 * float(np.median(samples))}
        if bar is not None:
            bar.update()
    del engine
    gc.collect()  # the session and its threads go now, not during the service runs
    return out


def measure_preprocess(pngs: Sequence[bytes], spec: PreprocessSpec, limits: DecodeLimits,
                       seconds: float) -> dict[str, Any]:
    """p50 of one ``preprocess`` call, cycling through ``pngs`` for ``seconds`` (at least one pass)."""
    for png in pngs[:20]:
        preprocess(png, spec, limits)
    samples, started, i = [], time.perf_counter(), 0
    while time.perf_counter() - started < seconds or i < len(pngs):
        t0 = time.perf_counter()
        preprocess(pngs[i % len(pngs)], spec, limits)
        samples.append(time.perf_counter() - t0)
        i += 1
    return {"calls": len(samples), "p50_ms": 1000 * float(np.median(samples)),
            "mean_ms": 1000 * float(np.mean(samples)), "png_bytes_mean": float(np.mean([len(p) for p in pngs]))}


# ---- 3: the real service -----------------------------------------------------------------------
def _deltas(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    def mean(name: str) -> float | None:
        if f"{name}_count" not in after:
            return None
        count = after[f"{name}_count"] - before.get(f"{name}_count", 0.0)
        return (after[f"{name}_sum"] - before.get(f"{name}_sum", 0.0)) / count if count else None

    calls = after.get("resnet_batch_size_count", 0.0) - before.get("resnet_batch_size_count", 0.0)
    images = after.get("resnet_batch_size_sum", 0.0) - before.get("resnet_batch_size_sum", 0.0)
    inference, pre = mean("resnet_inference_seconds"), mean("resnet_preprocess_seconds")
    return {"metrics_seen": "resnet_batch_size_count" in after, "engine_calls": calls, "engine_images": images,
            "mean_batch_size": mean("resnet_batch_size"),
            "service_inference_mean_ms": None if inference is None else 1000 * inference,
            "service_preprocess_mean_ms": None if pre is None else 1000 * pre}


def measure_service(mode: str, env: dict[str, str], served: ServedModel, bodies: Sequence[bytes],
                    labels: np.ndarray | None, clients: Sequence[int], seconds: float, warmup: float,
                    log_dir: Path, bar: tqdm | None = None) -> dict[str, Any]:
    """Starts the service under ``env``, drives it at each client count (warm-up, then measured),
    and stops it whatever happens."""
    top_k = min(5, served.card.num_classes)
    server = ServeProcess(env, log_dir, mode)
    try:
        if bar is not None:
            bar.set_postfix_str(f"{mode}: starting bentoml serve")
        ready_s = server.wait_ready()
        status, body = server.get("/models")
        described = json.loads(body)["models"][0] if status == 200 else {}
        out: dict[str, Any] = {"env": {k: v for k, v in env.items() if k.startswith("RESNET_")},
                               "ready_seconds": ready_s, "served": described, "runs": {}}
        for n in clients:
            if bar is not None:
                bar.set_postfix_str(f"{mode}, {n} client(s)")
            drive(server.port, bodies, None, n, warmup, served.name, top_k)  # warm-up, not recorded
            before, offset = scrape(server, served.name), server.log_offset()
            run = drive(server.port, bodies, labels, n, seconds, served.name, top_k, bar)
            run.update(_deltas(before, scrape(server, served.name)))
            run.update(server.log_since(offset))
            out["runs"][str(n)] = run
            log.info("%s, %d client(s): p50 %.2f ms, p99 %.2f ms, %.0f req/s, %d errors, mean batch %s",
                     mode, n, run["p50_ms"] or float("nan"), run["p99_ms"] or float("nan"),
                     run["requests_per_s"], run["errors"],
                     "n/a" if run["mean_batch_size"] is None else f"{run['mean_batch_size']:.2f}")
        return out
    finally:
        server.stop()


# ---- the whole run -----------------------------------------------------------------------------

def run_bench(model: str = DEFAULT_MODEL_NAME, duration: float = 15.0, clients: Sequence[int] = (1, 16),
              warmup: float = 2.0, engine_seconds: float = 2.0, images: int = 256) -> dict[str, Any]:
    """Measures engine-only, preprocessing-only and the service (batching on and off) at each client
    count; returns the results as a dict, with the issue's targets under ``"targets"``.

    ``duration`` and ``warmup`` are seconds per client count and mode; ``engine_seconds`` per
    engine batch size. ``bench.service_overhead.report.write_outputs`` turns the result into the report.
    """
    if duration <= 0 or warmup < 0 or engine_seconds <= 0 or images < 1 or not clients or min(clients) < 1:
        raise UserError("need --duration > 0, --warmup >= 0, --engine-seconds > 0, --images >= 1, clients >= 1")
    if "BENTOML_HOME" not in os.environ:
        log.warning("BENTOML_HOME is not set: using BentoML's default store (~/bentoml)")
    for name in ("RESNET_MODELS", "RESNET_BATCHING"):
        if os.environ.get(name):
            log.warning("%s=%s from the environment is ignored: the bench sets it", name, os.environ[name])
    base_env = {**os.environ, "RESNET_MODELS": model}
    envs = {mode: {**base_env, **extra} for mode, extra in MODES.items()}
    config = service_config(envs["batching on"])
    try:
        served = resolve_models(config, verify_checksums=True)[0]
    except ModelUnavailable as e:
        raise UserError(str(e)) from None
    started = time.perf_counter()
    pngs, labels = encode_pngs(images)
    spec = PreprocessSpec.from_card(served.card)
    limits = DecodeLimits(max_bytes=config.max_image_bytes, max_pixels=config.max_pixels)
    tensors = np.stack([preprocess(p, spec, limits) for p in pngs])  # (N, C, H, W)
    bodies = [multipart(p) for p in pngs]
    labels = labels if served.card.dataset == "fashion-mnist" else None
    results: dict[str, Any] = {
        "machine": {**machine_info(), "cpu_busy_before": background_busy()},
        "settings": {"model": served.name, "tag": served.tag, "precision": served.precision,
                     "onnx_file": served.onnx_path.name, "duration_s": duration, "warmup_s": warmup,
                     "clients": list(clients), "engine_seconds": engine_seconds, "engine_batches": list(ENGINE_BATCHES),
                     "images": len(pngs), "top_k": min(5, served.card.num_classes),
                     "config": dataclasses.asdict(config), "bentoml_home": os.environ.get("BENTOML_HOME"),
                     "request_bytes_mean": float(np.mean([len(b) for b in bodies]))},
    }
    with tempfile.TemporaryDirectory(prefix="service-bench-") as tmp, logging_redirect_tqdm():
        bar = tqdm(total=len(ENGINE_BATCHES), desc="engine-only", unit="batch size", disable=None)
        results["engine"] = measure_engine(served, config, tensors, ENGINE_BATCHES, engine_seconds, bar)
        bar.close()
        log.info("engine-only (%s): batch 1 p50 %.3f ms; images/s %s", results["engine"]["provider"],
                 results["engine"]["batches"]["1"]["p50_ms"],
                 ", ".join(f"{b}: {v['images_per_s']:.0f}" for b, v in results["engine"]["batches"].items()))
        results["preprocess"] = measure_preprocess(pngs, spec, limits, min(engine_seconds, 2.0))
        log.info("preprocess-only: p50 %.3f ms", results["preprocess"]["p50_ms"])
        bar = tqdm(total=int(duration) * len(clients) * len(MODES), desc="service", unit="s", disable=None)
        results["service"] = {}
        for mode, env in envs.items():
            results["service"][mode] = measure_service(mode, env, served, bodies, labels, clients, duration,
                                                       warmup, Path(tmp), bar)
        bar.close()
        # A re-check after the load: on a shared machine, a drifting baseline shows here.
        results["engine_after"] = measure_engine(served, config, tensors, (1,), min(engine_seconds, 1.0))
    results["wall_seconds"] = time.perf_counter() - started
    results["targets"] = targets(results)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def _main(argv: Sequence[str] | None) -> int:
    from bench.service_overhead.report import write_outputs

    p = argparse.ArgumentParser(prog="python -m bench.service_overhead.measure", description=__doc__.split("\n")[0])
    p.add_argument("--model", default=DEFAULT_MODEL_NAME, help="served name in the BentoML store (BENTOML_HOME)")
    p.add_argument("--duration", type=_positive, default=15.0, help="measured seconds per client count and mode")
    p.add_argument("--clients", type=int_list, default=[1, 16], help="comma-separated closed-loop client counts")
    p.add_argument("--warmup", type=float, default=2.0, help="unrecorded seconds of the same load before each")
    p.add_argument("--engine-seconds", type=_positive, default=2.0, help="engine-only seconds per batch size")
    p.add_argument("--images", type=int, default=256, help="Fashion-MNIST test images the clients cycle through")
    p.add_argument("--out", type=Path, default=Path("reports/service-bench"), help="folder for the report")
    args = p.parse_args(argv)
    ensure_writable_dir(args.out)  # before minutes of measuring, not after
    results = run_bench(args.model, args.duration, args.clients, args.warmup, args.engine_seconds, args.images)
    for path in write_outputs(results, args.out):
        log.info("wrote %s", path)
    for line in results["targets"]["summary"]:
        log.info("%s", line)
    log.info("benchmark took %.0f s", results["wall_seconds"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
