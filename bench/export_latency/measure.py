"""Latency of each ResNet in five forms, measured side by side in one run on this machine's CPU.

For every model and batch size the five variants run interleaved, round-robin: one iteration of
each in turn, then again, so a noisy neighbour or a clock change hits all of them alike. The order
within a round follows a Williams design (``balanced_orders``): over every 10 rounds each variant
directly follows each other variant equally often. That matters on a small machine: a call that
comes right after the other runtime's shares the cores for a moment with that runtime's
idle-spinning threads (in one run on 2 cores, resnet20's onnxruntime calls at batch 1 took 25-50%
longer interleaved with PyTorch than among themselves), so a fixed or merely rotated order would charge
that cost to the same variants every time.

    python -m bench.export_latency.measure                  # resnet18/34/50/101/152 + resnet20, batches 1 and 8
    python -m bench.export_latency.measure --models resnet18,resnet20 --batches 1 --repeats 5 --out /tmp/bench-smoke

Writes ``report.md``, ``results.json`` and ``latency_vs_depth.png`` to ``--out``
(default ``reports/export-bench``); see ``bench.export_latency.report`` for what they hold.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from export.fold import fold_model, fold_report
from export.onnx_io import INPUT_NAME, OUTPUT_NAME, export_fp32, quantize_int8
from export.sources import Source, from_checkpoint, untrained
from export.verify import real_images
from common.cli import int_list, run_cli
from common.files import ensure_writable_dir
from common.errors import UserError
from bench.export_latency.variants import VARIANTS
from models.default import DEFAULT_CHECKPOINT
from models.registry import get_spec

log = logging.getLogger(__name__)
DEFAULT_MODELS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet20")
DEFAULT_BATCHES = (1, 8)
# On a quiet 2-core AMD EPYC, the default run's fixed cost is ~7.5 minutes (int8 calibration takes
# ~12 s per GFLOP of the model: ~2.3 minutes for resnet152; exports ~1 minute) and each round of all
# models at batches 1 and 8 ~14 s, so 10 rounds (one full cycle of ``balanced_orders``) end near
# 10-11 minutes. More repeats: ~2.3 minutes per 10.
DEFAULT_REPEATS = 10
DEFAULT_WARMUP = 2  # on top of one untimed call of each variant for the output check
# Small models need more warm-up than a round count gives: on this VM resnet20's calls ran up to 10x
# slower through the first ~0.2 s of steady work, however few rounds that was.
WARMUP_MIN_SECONDS = 1.0
CALIBRATION_IMAGES = 512  # as export.pipeline: Fashion-MNIST training images
CHECKPOINTS = {"resnet20": DEFAULT_CHECKPOINT}
# After Run() returns, onnxruntime's workers would otherwise keep spinning for a while and take the
# cores from the PyTorch iteration that follows; within a Run they spin as usual.
ORT_CONFIG = {"session.force_spinning_stop": "1"}

Runner = Callable[[np.ndarray], Any]


def machine_info() -> dict[str, Any]:
    """CPU model, core count, VNNI support and library versions, for the report's header."""
    cpu: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            cpu.setdefault(key.strip(), value.strip())  # the first processor's entry
    except OSError:
        pass
    cpu_model, flags = cpu.get("model name") or platform.processor() or "unknown", set(cpu.get("flags", "").split())
    return {
        "cpu_model": cpu_model, "cpu_count": os.cpu_count(), "avx512_vnni": "avx512_vnni" in flags,
        "avx512f": "avx512f" in flags, "platform": platform.platform(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "onnxruntime": ort.__version__, "onnx": onnx.__version__, "numpy": np.__version__},
        "torch_parallel_backend": "OpenMP" if torch.backends.openmp.is_available() else "native",
    }


def check_models(names: Sequence[str]) -> None:
    """Fails fast, before minutes of work, on a name that cannot be benchmarked."""
    for name in names:
        spec = get_spec(name)  # unknown name: one line listing the valid ones
        if spec.family != "imagenet" and name not in CHECKPOINTS:
            raise UserError(f"{name}: no checkpoint to benchmark; use ImageNet names or {', '.join(CHECKPOINTS)}")


def load_model(name: str) -> Source:
    """Deterministic untrained weights for ImageNet names; the committed checkpoint otherwise."""
    return from_checkpoint(CHECKPOINTS[name], None) if name in CHECKPOINTS else untrained(name)


def ort_cpu_session(path: Path, threads: int) -> ort.InferenceSession:
    """A CPU-provider session with ``threads`` intra-op threads and every graph optimisation.

    Fails if onnxruntime did not take the CPU provider exactly as asked: a silent fallback or
    extra provider would make the numbers mean something else.
    """
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads  # counts the calling thread, as torch.set_num_threads does
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    for key, value in ORT_CONFIG.items():
        opts.add_session_config_entry(key, value)
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    if session.get_providers() != ["CPUExecutionProvider"]:
        raise RuntimeError(f"{path.name}: onnxruntime runs on {session.get_providers()}, not the CPU provider alone")
    return session


def _torch_runner(model: torch.nn.Module) -> Runner:
    def run(x: np.ndarray) -> torch.Tensor:
        with torch.inference_mode():
            return model(torch.from_numpy(x))
    return run


def _ort_runner(session: ort.InferenceSession) -> Runner:
    def run(x: np.ndarray) -> np.ndarray:
        return session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    return run


def prepare_variants(source: Source, workdir: Path, threads: int) -> tuple[dict[str, Runner], dict[str, Any]]:
    """The five runners for one model, and what it took to build them (fold counts, seconds)."""
    card, model = source.card, source.model.float().eval()
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    merged, unmerged = fold_model(model), fold_model(model, merge_projections=False)
    report = fold_report(model, merged)
    seconds["fold"] = time.perf_counter() - t0
    paths = {k: workdir / f"{card.name}.{k}.onnx" for k in ("ort_fp32", "ort_fp32_unmerged", "ort_int8")}
    for key, folded in (("ort_fp32", merged), ("ort_fp32_unmerged", unmerged)):
        t0 = time.perf_counter()
        export_fp32(folded, card.input_shape, paths[key])
        seconds[f"export_{key}"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    calibration = real_images(card, "train", CALIBRATION_IMAGES)[0]
    quantize_int8(paths["ort_fp32"], paths["ort_int8"], calibration)
    seconds["quantize_int8"] = time.perf_counter() - t0
    del calibration
    runners = {"eager": _torch_runner(model), "folded": _torch_runner(merged)}
    runners.update({k: _ort_runner(ort_cpu_session(p, threads)) for k, p in paths.items()})
    info = {
        "family": card.family, "depth": card.depth, "input_shape": list(card.input_shape),
        "trained": card.trained, "weights": card.provenance.kind,
        "convs_before": report.convs_before, "convs_after": report.convs_after,
        "merged_projections": report.merged_projections, "separate_projections": report.separate_projections,
        "fold_report": dataclasses.asdict(report), "setup_seconds": {k: round(v, 2) for k, v in seconds.items()},
    }
    return {k: runners[k] for k in VARIANTS}, info


def _rel_diff(out: Any, ref: np.ndarray) -> float:
    out = np.asarray(out, dtype=np.float64)
    return float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-30))


def balanced_orders(n: int) -> list[list[int]]:
    """Orders of ``n`` items in which each item directly follows each other one equally often
    (a Williams design: ``n`` orders for even ``n``, ``2n`` for odd ``n``)."""
    first, low, high = [0], 1, n - 1
    while len(first) < n:
        first.append(low)
        low += 1
        if len(first) < n:
            first.append(high)
            high -= 1
    orders = [[(i + shift) % n for i in first] for shift in range(n)]
    return orders + [o[::-1] for o in orders] if n % 2 else orders


def time_interleaved(runners: dict[str, Runner], x: np.ndarray, repeats: int, warmup: int,
                     progress: tqdm | None = None) -> dict[str, list[float]]:
    """Per-iteration seconds of each runner on ``x``: untimed warm-up rounds (at least ``warmup``
    and at least ``WARMUP_MIN_SECONDS``), then ``repeats`` timed rounds; every round calls each
    runner once, in the next of ``balanced_orders``."""
    keys = list(runners)
    orders = balanced_orders(len(keys))
    samples: dict[str, list[float]] = {k: [] for k in keys}
    warm_until, r, timed = time.perf_counter() + WARMUP_MIN_SECONDS, 0, 0
    while timed < repeats:
        warming = r < warmup or time.perf_counter() < warm_until
        for k in (keys[i] for i in orders[r % len(orders)]):
            t0 = time.perf_counter()
            runners[k](x)
            elapsed = time.perf_counter() - t0
            if not warming:
                samples[k].append(elapsed)
        r += 1
        timed += not warming
        if progress is not None and (r <= warmup or not warming):
            progress.update()
    return samples


def measure_batch(runners: dict[str, Runner], x: np.ndarray, repeats: int, warmup: int,
                  progress: tqdm | None = None) -> dict[str, Any]:
    """Medians, p90s and raw samples (ms) for one input batch, plus each variant's output
    difference from eager PyTorch (a fast variant that computes something else is no result)."""
    reference = np.asarray(runners["eager"](x), dtype=np.float64)
    rel_diff = {k: _rel_diff(run(x), reference) for k, run in runners.items() if k != "eager"}
    samples = time_interleaved(runners, x, repeats, warmup, progress)
    ms = {k: 1000.0 * np.asarray(v) for k, v in samples.items()}
    return {
        "median_ms": {k: float(np.median(v)) for k, v in ms.items()},
        "p90_ms": {k: float(np.percentile(v, 90)) for k, v in ms.items()},
        "samples_ms": {k: [round(float(s), 4) for s in v] for k, v in ms.items()},
        "rel_diff_vs_eager": rel_diff,
    }


def run_bench(models: Sequence[str] = DEFAULT_MODELS, batches: Sequence[int] = DEFAULT_BATCHES,
              repeats: int = DEFAULT_REPEATS, warmup: int = DEFAULT_WARMUP, threads: int | None = None,
              workdir: Path | None = None) -> dict[str, Any]:
    """Measures every variant of every model at every batch size; returns the results as a dict.

    ``threads`` (default ``os.cpu_count()``) goes to ``torch.set_num_threads`` and to each
    onnxruntime session's ``intra_op_num_threads`` alike. ONNX files are written to ``workdir``
    (default: a temporary folder, removed afterwards). ``bench.export_latency.report.write_outputs`` turns
    the result into the report, JSON and plot.
    """
    models = list(dict.fromkeys(models))
    check_models(models)
    if not batches or min(batches) < 1 or repeats < 1 or warmup < 0:
        raise UserError("need at least one batch size >= 1, --repeats >= 1 and --warmup >= 0")
    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    if load_before > 0.5 * threads:
        log.warning("1-minute load average is %.2f: other work is using the cores, so the timings will be noisy",
                    load_before)
    results: dict[str, Any] = {
        "machine": machine_info(),
        "settings": {"threads": threads, "repeats": repeats, "warmup": warmup,
                     "warmup_min_seconds": WARMUP_MIN_SECONDS, "batches": list(batches),
                     "models": list(models), "calibration_images": CALIBRATION_IMAGES,
                     "ort_graph_optimization": "ORT_ENABLE_ALL", "ort_providers": ["CPUExecutionProvider"],
                     "ort_config": ORT_CONFIG, "torch_mode": "inference_mode, float32",
                     "orders": [[list(VARIANTS)[i] for i in o] for o in balanced_orders(len(VARIANTS))]},
        "variants": VARIANTS,
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="export-bench-", dir=workdir) as tmp, logging_redirect_tqdm():
        bar = tqdm(total=len(models) * len(batches) * (repeats + warmup), desc="bench", unit="round",
                   disable=None)
        for name in models:
            bar.set_postfix_str(f"{name}: fold, export, calibrate int8")
            source = load_model(name)
            model_dir = Path(tmp) / name
            model_dir.mkdir()
            runners, info = prepare_variants(source, model_dir, threads)
            log.info("%s: %d convs -> %d after folding; set-up %s", name, info["convs_before"],
                     info["convs_after"], ", ".join(f"{k} {v:.1f}s" for k, v in info["setup_seconds"].items()))
            info["batches"] = {}
            for batch in batches:
                bar.set_postfix_str(f"{name} batch {batch}")
                x = np.ascontiguousarray(real_images(source.card, "test", batch)[0])
                info["batches"][str(batch)] = cell = measure_batch(runners, x, repeats, warmup, bar)
                log.info("%s batch %d: %s", name, batch,
                         ", ".join(f"{VARIANTS[k]} {v:.2f} ms" for k, v in cell["median_ms"].items()))
            results["models"][name] = info
            del runners
        bar.close()
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    results["load_before"], results["load_after"] = load_before, os.getloadavg()[0]
    return results


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def _main(argv: Sequence[str] | None) -> int:
    from bench.export_latency.report import write_outputs  # matplotlib only where the CLI writes files

    p = argparse.ArgumentParser(prog="python -m bench.export_latency.measure", description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(DEFAULT_MODELS),
                   help="comma-separated: ImageNet names (untrained weights) and/or resnet20 (checkpoint)")
    p.add_argument("--batches", type=int_list, default=list(DEFAULT_BATCHES), help="comma-separated batch sizes")
    p.add_argument("--repeats", type=positive_int, default=DEFAULT_REPEATS, help="timed rounds per model and batch")
    p.add_argument("--warmup", type=int, default=DEFAULT_WARMUP,
                   help=f"untimed rounds before them (at least; and at least {WARMUP_MIN_SECONDS:g} s)")
    p.add_argument("--threads", type=positive_int, default=os.cpu_count(),
                   help="torch and onnxruntime intra-op threads (default: os.cpu_count())")
    p.add_argument("--out", type=Path, default=Path("reports/export-bench"), help="folder for the report")
    args = p.parse_args(argv)
    models = [s.strip() for s in args.models.split(",") if s.strip()]
    check_models(models)
    ensure_writable_dir(args.out)  # before minutes of measuring, not after
    results = run_bench(models, args.batches, args.repeats, args.warmup, args.threads)
    for path in write_outputs(results, args.out):
        log.info("wrote %s", path)
    log.info("benchmark took %.0f s", results["wall_seconds"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
