"""``service.engine.OnnxEngine`` timed as the service builds it, beside the engine benchmark's bare sessions."""
from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from bench.gpu.environment import bench_source
from bench.gpu.runners import REFERENCE_IMAGES, TOLERANCE, ort_session, relative_error, time_calls

# (label, CUDA graphs, prefer_nhwc): the service's RESNET_CUDA_GRAPHS / RESNET_PREFER_NHWC settings
COMBOS = (("default", False, False), ("cuda_graphs", True, False), ("nhwc", False, True),
          ("cuda_graphs+nhwc", True, True))


def check_engine(name: str, export: dict[str, Any], batches: Sequence[int], timing: tuple[int, int, float],
                 device: str, until: float | None, seed: int = 0) -> dict[str, Any]:
    """``OnnxEngine`` (host arrays in and out, batches padded to buckets) with each option set, at
    batch 1 and the largest of ``batches`` <= 64; ``timing`` is (warm-up calls, repeats, max seconds)."""
    from export.verify import random_inputs
    from service.engine import EngineOptions, OnnxEngine

    precision = "fp16" if device == "cuda" and "fp16" in export["files"] else "fp32"  # the service's choice
    card = bench_source(name).card
    x8 = random_inputs(card, REFERENCE_IMAGES, seed=seed)
    path = Path(export["files"][precision])
    reference = ort_session(Path(export["files"]["fp32"]), "cpu").run(None, {"images": x8})[0]
    top = max(b for b in batches if b <= 64) if min(batches) <= 64 else 64
    rows: dict[str, Any] = {}
    for label, graphs, nhwc in COMBOS if device == "cuda" else COMBOS[:2]:
        if until is not None and time.monotonic() > until:
            rows[label] = {"status": "skipped: time budget"}
            continue
        options = EngineOptions(device=device, max_batch_size=top, threads=os.cpu_count() or 1,
                                cuda_graphs=graphs, prefer_nhwc=nhwc)
        engine = OnnxEngine(path, options)
        row: dict[str, Any] = {"status": "ok", "options": asdict(options), "provider": engine.provider,
                               "cuda_graphs_active": engine.cuda_graphs, "prefer_nhwc_active": engine.prefer_nhwc,
                               "warm_up_s": engine.warm_up(card.input_shape), "batches": {}}
        for batch in sorted({1, top}):
            x = np.ascontiguousarray(np.resize(x8, (batch, *x8.shape[1:])))
            error = relative_error(engine.infer(x), reference[np.arange(batch) % REFERENCE_IMAGES])
            ms = 1000.0 * np.asarray(time_calls(lambda: engine.infer(x), *timing))
            row["batches"][str(batch)] = {"median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)),
                                          "calls": len(ms), "images_per_s": batch / float(np.median(ms)) * 1000,
                                          "rel_err_vs_cpu_fp32": error, "numerics_ok": error <= TOLERANCE[precision]}
        rows[label] = row
    return {"model": name, "precision": precision, "engines": rows}
