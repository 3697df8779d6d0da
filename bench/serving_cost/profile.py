"""Where one API worker's time goes under load: py-spy samples of a worker of the real service while
closed-loop clients drive ``/classify`` or ``/classify_batch``, summed over the workers into the service's own steps.

    pip install py-spy                       # a profiler, not one of the project's dependencies
    python -m bench.serving_cost.profile --path /classify_batch --clients 16
    python -m bench.serving_cost.profile --path /classify --clients 16 --seconds 10

The service is ``bentoml serve service.service:Classifier`` (resnet20-fmnist fp32 on the CPU, every
other setting at its default), the request the serving-cost benchmark sends (the same PNG; 16 copies
for ``/classify_batch``). After a warm-up, ``py-spy record --nonblocking`` samples each API worker at
``--rate`` Hz for ``--seconds`` while the load runs (every API worker, summed); the share of samples whose stack passes through
each step is printed (a sample counts in every step on its stack, so the shares overlap), and the
raw stacks are written to ``--out`` for a flame graph. py-spy counts a thread waiting for the GIL as
busy: read the shares as where the worker's threads were, not as CPU time. Run it alone on the machine.
"""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import psutil

from bench.aio_http import closed_loop
from bench.service_overhead.measure import encode_pngs
from bench.serving_cost.measure import loads_for
from bench.serving_cost.report import SERVICE
from common.cli import OneLineParser, run_cli
from common.errors import UserError
from loadtests.http_load import ServeProcess
from models.default import DEFAULT_MODEL_NAME

log = logging.getLogger(__name__)
# (step, the frame that marks it, as py-spy writes it: "Class.function (path")
STEPS = (
    ("onnxruntime (the model)", "Session.run (onnxruntime/capi/onnxruntime_inference_collection.py"),
    ("decode + preprocess", "preprocess (service/preprocess.py"),
    ("top-k of the answers", "Classify.top (service/classify.py"),
    ("JSON encoding", "dumps (json/__init__.py"),
    ("multipart parse (once)", "parse_form (service/multipart.py"),
    ("form checks", "RequestGuard._check_form (service/guard.py"),
    ("the request guard, all of it", "RequestGuard.__call__ (service/guard.py"),
    ("the answer, all of it", "ClassifyRoutes.__call__ (service/routes.py"),
    ("HTTP parsing and writing (uvicorn h11)", "(uvicorn/protocols/http/h11_impl.py"),
    ("batcher: hand-off to and from the model's thread", "BaseEventLoop.call_soon_threadsafe (asyncio/base_events.py"),
    ("event loop waiting in epoll", "EpollSelector.select (selectors.py"),
)


def shares(raw: Path) -> tuple[int, dict[str, float]]:
    """(samples, step -> share of them) from py-spy's raw output (``stack;frames count`` lines)."""
    total, hits = 0, Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        total += int(count)
        for step, marker in STEPS:
            if marker in stack:
                hits[step] += int(count)
    return total, {step: hits[step] / total if total else 0.0 for step, _ in STEPS}


def profile(path: str, clients: int, seconds: float, rate: int, out: Path) -> tuple[int, dict[str, float]]:
    spy = shutil.which("py-spy") or str(Path(os.sys.executable).parent / "py-spy")
    if not Path(spy).is_file():
        raise UserError("py-spy is not installed: pip install py-spy")
    from export.default_model import ensure_default_model

    ensure_default_model()
    request = loads_for(encode_pngs(1)[0][0])[SERVICE][path].request  # the serving-cost benchmark's
    env = {**os.environ, "RESNET_MODELS": DEFAULT_MODEL_NAME, "RESNET_PRECISION": "fp32", "RESNET_DEVICE": "cpu"}
    with tempfile.TemporaryDirectory(prefix="serving-profile-") as tmp, ServeProcess(env, Path(tmp), "profile") as server:
        asyncio.run(closed_loop("127.0.0.1", server.port, lambda i: request, clients, 3.0))
        workers = [p for p in psutil.Process(server.proc.pid).children(recursive=True)
                   if "_bentoml_impl.worker" in " ".join(p.cmdline())]
        if not workers:
            raise UserError("no API worker process found under bentoml serve")
        # every worker: the kernel may hand all of one client set's connections to one of them
        raws = [out.with_name(f"{out.stem}-{w.pid}{out.suffix}") for w in workers]
        recorders = [subprocess.Popen([spy, "record", "-p", str(w.pid), "-d", str(int(seconds)), "-r", str(rate),
                                       "-f", "raw", "-o", str(raw), "--nonblocking"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                     for w, raw in zip(workers, raws)]
        asyncio.run(closed_loop("127.0.0.1", server.port, lambda i: request, clients, seconds + 2))
        for recorder, raw in zip(recorders, raws):
            _, err = recorder.communicate(timeout=60)
            if recorder.returncode != 0 or not raw.is_file():
                raise UserError(f"py-spy failed: {err.strip()[-300:]}")
    out.write_text("".join(raw.read_text() for raw in raws))
    return shares(out)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    p = OneLineParser(prog="python -m bench.serving_cost.profile", description=__doc__.split("\n")[0])
    p.add_argument("--path", choices=("/classify", "/classify_batch"), default="/classify_batch")
    p.add_argument("--clients", type=int, default=16, help="closed-loop clients")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds sampled")
    p.add_argument("--rate", type=int, default=200, help="samples per second")
    p.add_argument("--out", type=Path, default=Path("/tmp/serving-profile.txt"), help="py-spy's raw stacks")
    args = p.parse_args(argv)
    if args.clients < 1 or args.seconds < 1:
        raise UserError("need --clients >= 1 and --seconds >= 1")
    total, by_step = profile(args.path, args.clients, args.seconds, args.rate, args.out)
    print(f"{args.path}, {args.clients} clients: {total} samples of the API workers ({args.rate} Hz, {args.seconds:g} s); "
          f"raw stacks in {args.out}")
    print("| step | share of samples |\n| --- | ---: |")
    for step, share in by_step.items():
        print(f"| {step} | {share:.1%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
