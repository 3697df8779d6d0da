"""onnxruntime alone, by intra-op threads and batch size: wall and CPU time per image of a served
model's file, the figures behind the per-worker sessions' thread counts and the batch goal
(docs/decisions/017-serving-path.md).

    python -m bench.serving_cost.threads --models resnet20-fmnist,resnet50-imagenet

Each session is built as the service builds it (``service.engine.OnnxEngine``, the CPU provider, threads
not spinning), warmed up, then called on zeros of the model's input shape, one call after another:
wall time from ``time.perf_counter`` and this process's CPU time from ``time.process_time``, per image.
Prints a table; run it alone on the machine.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence

import numpy as np

from bench.serving_cost.store import fp32_file
from common.cli import OneLineParser, int_list, run_cli
from service.catalog import ServedModel
from service.engine import EngineOptions, OnnxEngine

log = logging.getLogger(__name__)


def measure(served: ServedModel, threads: int, batch: int, seconds: float) -> tuple[float, float]:
    """(wall ms, CPU ms) per image of ``served``'s file at ``batch`` on ``threads`` intra-op threads."""
    engine = OnnxEngine(served.onnx_path, EngineOptions(device="cpu", threads=threads, max_batch_size=batch))
    x = np.zeros((batch, *served.card.input_shape), np.float32)
    for _ in range(3):
        engine.infer(x)
    calls, wall0, cpu0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - wall0 < seconds or calls < 3:
        engine.infer(x)
        calls += 1
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return 1000 * wall / (calls * batch), 1000 * cpu / (calls * batch)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    p = OneLineParser(prog="python -m bench.serving_cost.threads", description=__doc__.split("\n")[0])
    p.add_argument("--models", default="resnet20-fmnist,resnet50-imagenet", help="served names in the BentoML store")
    p.add_argument("--threads", type=int_list, default=[1, os.cpu_count() or 1], help="intra-op thread counts")
    p.add_argument("--batches", type=int_list, default=[1, 16], help="batch sizes")
    p.add_argument("--seconds", type=float, default=3.0, help="measured seconds per row")
    args = p.parse_args(argv)
    print("| model | threads | batch | wall ms/image | CPU ms/image |\n| --- | ---: | ---: | ---: | ---: |")
    for model in (m.strip() for m in args.models.split(",") if m.strip()):
        for threads in args.threads:
            for batch in args.batches:
                wall, cpu = measure(fp32_file(model), threads, batch, args.seconds)
                print(f"| {model} | {threads} | {batch} | {wall:.3f} | {cpu:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
