"""Issue 16's check that the new serving path costs large images nothing: an ImageNet-shape model
(resnet50-imagenet by default) with the load tests' 640x480 JPEGs, the service against the service of
an earlier checkout, side by side in one run, at 1 and 16 closed-loop clients.

    python -m bench.serving_cost.photos --before /tmp/before      # a worktree of the earlier commit
    python -m bench.serving_cost.photos --before /tmp/before --duration 5 --clients 1 --out /tmp/photos-smoke

Both servers are ``bentoml serve service.service:Classifier`` on the same store file (fp32, the CPU
provider, every other setting at its default), the earlier one run from its checkout on this
environment's packages. Before any load, every corpus image is sent once to each server and its
top-5 classes and probabilities are compared with the model run in-process (service/preprocess.py +
onnxruntime on the same file); a server that answers differently fails the run. Under load, an answer
counts when it is a 200 naming the model with five predictions. Server CPU is the whole process
tree's (``/proc``), per counted answer. Run it alone on the machine. Writes ``results.json``,
``report.md`` and ``photos.png`` to ``--out``.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import shlex
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from bench.aio_http import Outcome, build_request, closed_loop, send_one
from bench.reliability.common import ProcessTreeSampler, percentiles_ms
from bench.reliability.hostile import MULTIPART, image_form
from bench.serving_cost.store import checkout_commit, fp32_file
from bench.serving_cost.photos_report import write_outputs
from common.cli import OneLineParser, int_list, run_cli
from common.errors import UserError
from common.files import ensure_writable_dir
from loadtests.corpus import MANIFEST, cached_corpus
from loadtests.http_load import REPO_ROOT, ServeProcess
from loadtests.machine import machine_info
from service.catalog import ServedModel
from service.engine import EngineOptions, OnnxEngine
from service.preprocess import DecodeLimits, PreprocessSpec, preprocess

log = logging.getLogger(__name__)
NOW, BEFORE = "service", "service before"
TOP_K = 5
PROBABILITY_TOLERANCE = 1e-4  # the same file and preprocessing; batching only reorders float sums


def corpus_requests(count: int) -> tuple[list[bytes], list[bytes]]:
    """(image bytes, request bytes) of the first ``count`` photos of the load tests' cached corpus."""
    folder = cached_corpus("photo", max(count, 64))
    items = json.loads((folder / MANIFEST).read_text())["images"][:count]
    images = [(folder / item["file"]).read_bytes() for item in items]
    return images, [build_request("/classify", image_form(img, b"photo.jpg"), MULTIPART) for img in images]


def reference_top(served: ServedModel, images: list[bytes]) -> list[list[tuple[int, float]]]:
    """Each image's top-5 (class, probability), computed in this process on the same file."""
    engine = OnnxEngine(served.onnx_path, EngineOptions(device="cpu", threads=os.cpu_count() or 1))
    spec, limits = PreprocessSpec.from_card(served.card), DecodeLimits(max_bytes=1 << 26, max_pixels=1 << 28)
    out = []
    for data in images:
        logits = engine.infer(preprocess(data, spec, limits)[None])[0].astype(np.float64)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        order = np.argsort(-probs, kind="stable")[:TOP_K]
        out.append([(int(i), float(probs[i])) for i in order])
    return out


def check_answers(server: ServeProcess, requests: list[bytes], expected: list[list[tuple[int, float]]]) -> float:
    """Every image once; UserError unless each answer's top 5 is the in-process one. Returns the largest
    probability difference seen."""
    async def all_once() -> list[Outcome]:
        conn, outcomes = None, []
        for request in requests:
            outcome, conn = await send_one("127.0.0.1", server.port, request, 120, conn)
            outcomes.append(outcome)
        if conn is not None:
            conn.close()
        return outcomes

    worst = 0.0
    for i, (outcome, want) in enumerate(zip(asyncio.run(all_once()), expected)):
        if outcome.status != 200:
            raise UserError(f"{server.log_path.stem}: image {i} answered {outcome.status} {outcome.body[:200]!r}")
        got = [(p["class_index"], p["probability"]) for p in json.loads(outcome.body)["predictions"]]
        if [c for c, _ in got] != [c for c, _ in want]:
            raise UserError(f"{server.log_path.stem}: image {i}: top-5 classes {got} differ from in-process {want}")
        worst = max(worst, max(abs(p - q) for (_, p), (_, q) in zip(got, want)))
    if worst > PROBABILITY_TOLERANCE:
        raise UserError(f"{server.log_path.stem}: probabilities differ from in-process by {worst:.2e}")
    return worst


def counted(outcome: Outcome, model: str) -> bool:
    if outcome.status != 200:
        return False
    try:
        answer = json.loads(outcome.body)
        return answer["model"] == model and len(answer["predictions"]) == TOP_K
    except (ValueError, KeyError, TypeError):
        return False


def measure_run(server: ServeProcess, requests: list[bytes], model: str, clients: int, seconds: float,
                warmup: float) -> dict[str, Any]:
    def pick(i: int) -> bytes:
        return requests[i % len(requests)]

    if warmup > 0:
        asyncio.run(closed_loop("127.0.0.1", server.port, pick, clients, warmup, timeout=120))
    probe = ProcessTreeSampler(server.proc.pid)
    probe.cpu_since_last()  # the baseline
    started = time.perf_counter()
    outcomes = asyncio.run(closed_loop("127.0.0.1", server.port, pick, clients, seconds, timeout=120))
    wall = time.perf_counter() - started
    server_s, generator_s, _ = probe.cpu_since_last()
    good = [o for o in outcomes if counted(o, model)]
    n = len(good)
    return {"clients": clients, "seconds": wall, "requests": len(outcomes), "answered": n,
            "not_counted": len(outcomes) - n, "by_status": dict(Counter(str(o.status) for o in outcomes)),
            "requests_per_s": n / wall, **percentiles_ms([o.latency for o in good]),
            "server_cpu_s": server_s, "cpu_ms_per_request": 1000 * server_s / n if n else None,
            "server_cores": server_s / wall, "generator_cores": generator_s / wall}


def run_bench(before: Path, model: str, duration: float, clients: Sequence[int], warmup: float, images: int,
              argv: Sequence[str] | None = None) -> dict[str, Any]:
    if duration <= 0 or warmup < 0 or not clients or min(clients) < 1 or images < 1:
        raise UserError("need --duration > 0, --warmup >= 0, client counts >= 1 and --images >= 1")
    if not (before / "service" / "service.py").is_file():
        raise UserError(f"--before {before}: not a checkout of this project (no service/service.py)")
    try:
        served = fp32_file(model)
    except UserError as e:
        raise UserError(f"{e} (python -m export --model {model.split('-')[0]} --precision fp32 --register)") from None
    env = {**os.environ, "RESNET_MODELS": model, "RESNET_PRECISION": "fp32", "RESNET_DEVICE": "cpu"}
    if served.card.channel_mode != "RGB":
        raise UserError(f"{model} takes {served.card.channel_mode} images; this benchmark is for photo-shaped (RGB) models")
    data, requests = corpus_requests(images)
    expected = reference_top(served, data)
    command = "python -m bench.serving_cost.photos " + shlex.join(argv if argv is not None else sys.argv[1:])
    results: dict[str, Any] = {
        "machine": machine_info(), "command": command.strip(), "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "settings": {"model": served.name, "tag": served.tag, "duration_s": duration, "warmup_s": warmup,
                     "clients": list(clients), "images": len(data), "mean_image_bytes": sum(map(len, data)) / len(data),
                     "before": {"path": str(before), "commit": checkout_commit(before)}},
        "servers": {}}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="serving-cost-photos-") as tmp, logging_redirect_tqdm():
        bar = tqdm(total=2 * len(clients), desc="photos", unit="run", disable=None)
        for name, cwd in ((NOW, REPO_ROOT), (BEFORE, before)):
            bar.set_postfix_str(f"{name}: starting")
            with ServeProcess(env, Path(tmp), name, cwd=cwd) as server:
                out: dict[str, Any] = {"max_probability_difference": check_answers(server, requests, expected), "runs": []}
                for n in clients:
                    bar.set_postfix_str(f"{name}, {n} client(s)")
                    run = measure_run(server, requests, served.name, n, duration, warmup)
                    out["runs"].append(run)
                    bar.update(1)
                    log.info("%s, %d client(s): %.1f ms CPU/request, p50 %.1f ms, p99 %.1f ms, %.1f req/s, %d not counted",
                             name, n, run["cpu_ms_per_request"] or float("nan"), run["p50_ms"] or float("nan"),
                             run["p99_ms"] or float("nan"), run["requests_per_s"], run["not_counted"])
                results["servers"][name] = out
        bar.close()
    results["wall_seconds"] = time.perf_counter() - started
    return results


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    p = OneLineParser(prog="python -m bench.serving_cost.photos", description=__doc__.split("\n")[0])
    p.add_argument("--before", type=Path, required=True, help="a checkout of the earlier version (git worktree add)")
    p.add_argument("--model", default="resnet50-imagenet", help="an RGB model in the BentoML store (BENTOML_HOME)")
    p.add_argument("--duration", type=float, default=30.0, help="measured seconds per server and client count")
    p.add_argument("--clients", type=int_list, default=[1, 16], help="comma-separated closed-loop client counts")
    p.add_argument("--warmup", type=float, default=5.0, help="unrecorded seconds of the same load before each")
    p.add_argument("--images", type=int, default=16, help="photos of the cached corpus to cycle through")
    p.add_argument("--out", type=Path, default=Path("reports/serving-cost/photos"), help="folder for the report")
    args = p.parse_args(argv)
    ensure_writable_dir(args.out)
    results = run_bench(args.before, args.model, args.duration, args.clients, args.warmup, args.images, argv=argv)
    for path in write_outputs(results, args.out):
        log.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
