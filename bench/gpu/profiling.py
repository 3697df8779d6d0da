"""Where an engine call's time goes: ``torch.profiler`` around a few calls of any runner.

On CUDA the profiler records every kernel the process launches through CUPTI, onnxruntime's
included, so the same summary serves both runtimes: the GPU's busy time per call (the sum of kernel
and copy times) against the call's wall time. A call whose wall time is far above its busy time is
bound by the host (kernel launches, synchronisation, Python), which is what CUDA graphs remove; a
call that keeps the GPU busy is bound by the kernels, whose top entries are listed.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

TOP = 6
PROFILE_CALLS = 20


def _number(event: Any, *names: str) -> float:
    for name in names:  # the attribute was renamed between PyTorch versions
        value = getattr(event, name, None)
        if value is not None:
            return float(value)
    return 0.0


def profile_calls(fn: Callable[[], Any], calls: int, cuda: bool) -> dict[str, Any]:
    """Runs ``fn`` once untimed, then ``calls`` times under the profiler; per-call figures."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    fn()
    walls = []
    with profile(activities=activities) as prof:
        for _ in range(calls):
            t0 = time.perf_counter()
            fn()
            walls.append(time.perf_counter() - t0)
    rows = [(e.key, e.count, _number(e, "self_device_time_total", "self_cuda_time_total"),
             _number(e, "self_cpu_time_total")) for e in prof.key_averages()]
    device_rows = [r for r in rows if r[2] > 0]
    summary: dict[str, Any] = {"calls": calls, "profiled_wall_ms_per_call": 1000 * float(np.median(walls))}
    if cuda:
        busy_us = sum(r[2] for r in device_rows)
        summary.update(kind="device (CUDA kernels and copies)", device_busy_ms_per_call=busy_us / calls / 1000,
                       device_ops_per_call=sum(r[1] for r in device_rows) / calls)
        ranked, total = sorted(device_rows, key=lambda r: -r[2]), busy_us
        column = 2
    else:
        ranked = sorted((r for r in rows if r[3] > 0), key=lambda r: -r[3])
        total, column = sum(r[3] for r in ranked), 3
        summary.update(kind="host (CPU operators PyTorch records; onnxruntime's CPU kernels are invisible to it)",
                       device_busy_ms_per_call=None, device_ops_per_call=None)
    summary["top"] = [{"name": r[0][:100], "calls_per_call": r[1] / calls, "ms_per_call": r[column] / calls / 1000,
                       "share": r[column] / total if total else None} for r in ranked[:TOP]]
    if not ranked:
        summary["note"] = "the profiler recorded no events for this runner"
    return summary


def profile_engines(name: str, export: dict[str, Any], batches: Sequence[int], variants: Sequence[str], device: str,
                    torch_device: str | None, seed: int = 0) -> dict[str, Any]:
    """``profile_calls`` over ``PROFILE_CALLS`` calls of the fp16 engines (of ``variants``: onnxruntime
    plain and with a CUDA graph, PyTorch eager channels-last) at each of ``batches``."""
    from bench.gpu.environment import bench_source
    from bench.gpu.runners import BASELINE, REFERENCE_IMAGES, OrtRunner, TorchRunner, ort_session, torch_model
    from export.verify import random_inputs

    source = bench_source(name)
    x8 = random_inputs(source.card, REFERENCE_IMAGES, seed=seed)
    fp16 = Path(export["files"]["fp16"])
    runs: dict[str, Any] = {}
    wanted = [k for k in ("ort_fp16", "ort_fp16_graph", BASELINE) if k in variants]
    model = torch_model(source.model, torch_device, "fp16", True) if torch_device and BASELINE in wanted else None
    calls = PROFILE_CALLS if device == "cuda" else 3  # PyTorch fp16 on a CPU takes ~0.5 s a call
    for batch in batches:
        x = np.ascontiguousarray(np.resize(x8, (batch, *x8.shape[1:])))
        runners: dict[str, Callable[[], Any]] = {"ort_fp16": lambda: OrtRunner(ort_session(fp16, device), x, device)}
        if device == "cuda":
            runners["ort_fp16_graph"] = lambda: OrtRunner(ort_session(fp16, device, graph=True), x, device)
        if model is not None:
            runners[BASELINE] = lambda: TorchRunner(model, x, torch_device, True)
        for key, make in runners.items():
            if key in wanted:
                runs[f"{key}@{batch}"] = {"variant": key, "batch": batch,
                                          **profile_calls(make(), calls, cuda=device == "cuda")}
    return {"model": name, "calls": calls, "runs": runs}
