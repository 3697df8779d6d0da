"""Issue 16's side-by-side serving cost: the service, a naive BentoML service and a bare ASGI app on the
same ONNX file, driven by the same client, with the server CPU each answered request cost.

    python -m bench.serving_cost.measure                                    # --duration 15 --clients 1,16
    python -m bench.serving_cost.measure --duration 1 --clients 1 --out /tmp/serving-cost-smoke

The file is the BentoML store's resnet20-fmnist fp32 ONNX (exported first if the store lacks it). In
turn, each server is started on a free loopback port in its own process group, waited for, checked
(one request must name the right class of a known Fashion-MNIST test image), then, at each client
count, warmed up and driven by ``bench.aio_http.closed_loop``: every client posts the same 28x28 PNG
as multipart field ``image`` and sends its next request when its last was answered. The CPU of the
server's whole process tree (``/proc``, through psutil) is read before and after each measured run
and divided by the answers that named the right class; a wrong or failed answer counts as none. The
service is also driven on ``/classify_batch`` with 16 copies of the image per request.

1. **service**: ``bentoml serve service.service:Classifier``, fp32 on the CPU provider, every other
   ``RESNET_*`` setting at its default (per-worker models on the CPU); beside it the same with
   ``RESNET_TOPOLOGY=shared-engine`` and with ``RESNET_BATCHING=off``, and with ``--before`` the
   service of an earlier checkout (docs/decisions/017-serving-path.md).
2. **naive BentoML**: ``bench.serving_cost.naive_service``: one Service, PIL + onnxruntime inside a
   batchable API, 2 workers (BentoML's own examples' pattern).
3. **bare ASGI**: ``bench.serving_cost.bare_asgi`` on uvicorn, 1 worker, no access log.

The load generator runs here, on the cores the servers use; its CPU is recorded. Run it alone on
the machine. Writes ``results.json``, ``report.md`` and ``serving_cost.png`` to ``--out``.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from bench.aio_http import Outcome, build_request, closed_loop, send_one
from bench.reliability.common import ProcessTreeSampler, percentiles_ms
from bench.reliability.hostile import MULTIPART, form, image_form, part
from bench.service_overhead.measure import encode_pngs
from bench.serving_cost.model import ONNX_ENV
from bench.serving_cost.store import checkout_commit, fp32_file
from bench.serving_cost.threads import measure as model_alone
from bench.serving_cost.report import BARE, BEFORE, NAIVE, SERVICE, SHARED, UNBATCHED, VARIANT_ENV, goals, write_outputs
from common.cli import OneLineParser, int_list, run_cli
from common.errors import UserError
from common.files import ensure_writable_dir
from loadtests.http_load import REPO_ROOT, ServeProcess, free_port
from loadtests.machine import machine_info
from models.default import DEFAULT_MODEL_NAME
from service.catalog import ServedModel

log = logging.getLogger(__name__)
SERVERS = (SERVICE, SHARED, UNBATCHED, NAIVE, BARE)  # and BEFORE with --before
BATCH_IMAGES = 16  # images per /classify_batch request (the service's RESNET_MAX_BATCH_IMAGES)
IMAGE_INDEX = 0  # the Fashion-MNIST test image every request sends (an ankle boot)


class UvicornProcess(ServeProcess):
    """The bare app on uvicorn, started, waited for and stopped as ``ServeProcess`` does ``bentoml serve``."""

    def _launch(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", self._target, "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1", "--no-access-log"],
            cwd=self._cwd, env=self._env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)


@dataclass(frozen=True)
class Load:
    """What one measured run sends: a path, its request bytes, the images each carries, and the check
    of an answer (the top-1 class of every image in it)."""

    path: str
    request: bytes
    images: int
    top1: Callable[[Any], list[int]]


def loads_for(png: bytes) -> dict[str, dict[str, Load]]:
    """Each server's loads, by name."""
    classify = build_request("/classify", image_form(png, b"image.png"), MULTIPART)
    batch = build_request("/classify_batch", form(*[part("images", png, b"image.png", "image/png")] * BATCH_IMAGES),
                          MULTIPART)
    one = Load("/classify", classify, 1, lambda a: [a["predictions"][0]["class_index"]])
    return {SERVICE: {"/classify": one,
                      "/classify_batch": Load("/classify_batch", batch, BATCH_IMAGES,
                                              lambda a: [r["predictions"][0]["class_index"] for r in a["results"]])},
            SHARED: {"/classify": one}, UNBATCHED: {"/classify": one}, BEFORE: {"/classify": one},
            NAIVE: {"/classify": Load("/classify", classify, 1, lambda a: [a[0][0]["class_index"]])},
            BARE: {"/classify": Load("/classify", classify, 1, lambda a: [a["predictions"][0]["class_index"]])}}


def answered_right(outcome: Outcome, load: Load, label: int) -> bool:
    """A 200 naming ``label`` as the top class of every image the request carried."""
    if outcome.status != 200:
        return False
    try:
        return load.top1(json.loads(outcome.body)) == [label] * load.images
    except (ValueError, KeyError, TypeError, IndexError):
        return False


def start(server: str, served: ServedModel, log_dir: Path, before: Path | None = None) -> ServeProcess:
    env = {**os.environ, ONNX_ENV: str(served.onnx_path)}
    if server in VARIANT_ENV:
        env.update(RESNET_MODELS=served.tag, RESNET_PRECISION="fp32", RESNET_DEVICE="cpu", **VARIANT_ENV[server])
        # the earlier service runs from its own checkout, on this environment's packages
        return ServeProcess(env, log_dir, server, cwd=before if server == BEFORE and before else REPO_ROOT)
    if server == NAIVE:
        return ServeProcess(env, log_dir, server, target="bench.serving_cost.naive_service:NaiveClassifier")
    return UvicornProcess(env, log_dir, server, target="bench.serving_cost.bare_asgi:app")


def _tree_cpu(probe: ProcessTreeSampler) -> tuple[float, float, float]:
    """(server tree, this process) CPU seconds since the probe's last call, and the machine's busy seconds."""
    server, mine, (busy, _, _) = probe.cpu_since_last()
    return server, mine, busy


def measure_run(server: ServeProcess, load: Load, label: int, clients: int, seconds: float,
                warmup: float) -> dict[str, Any]:
    """``clients`` closed-loop clients on ``load`` for ``warmup`` s (not recorded), then ``seconds``;
    the server's CPU per right answer, latency of right answers, throughput."""
    def pick(_: int) -> bytes:
        return load.request

    if warmup > 0:
        asyncio.run(closed_loop("127.0.0.1", server.port, pick, clients, warmup))
    probe = ProcessTreeSampler(server.proc.pid)
    _, mine0, busy0 = _tree_cpu(probe)  # the baseline
    started = time.perf_counter()
    outcomes = asyncio.run(closed_loop("127.0.0.1", server.port, pick, clients, seconds))
    wall = time.perf_counter() - started
    server_s, mine, busy = _tree_cpu(probe)
    right = [o for o in outcomes if answered_right(o, load, label)]
    n = len(right)
    return {"path": load.path, "clients": clients, "images_per_request": load.images, "seconds": wall,
            "requests": len(outcomes), "answered_right": n, "not_right": len(outcomes) - n,
            "by_status": dict(Counter(str(o.status) for o in outcomes)),
            "requests_per_s": n / wall, "images_per_s": n * load.images / wall,
            **percentiles_ms([o.latency for o in right]), "server_cpu_s": server_s,
            "cpu_ms_per_request": 1000 * server_s / n if n else None,
            "cpu_ms_per_image": 1000 * server_s / (n * load.images) if n else None,
            "server_cores": server_s / wall, "generator_cores": (mine - mine0) / wall,
            "machine_busy_cores": (busy - busy0) / wall}


def check_answer(server: ServeProcess, load: Load, label: int) -> None:
    """One request before any load: a server that answers wrongly fails the run here."""
    async def one() -> Outcome:
        outcome, conn = await send_one("127.0.0.1", server.port, load.request, timeout=60)
        if conn is not None:
            conn.close()
        return outcome

    outcome = asyncio.run(one())
    if not answered_right(outcome, load, label):
        raise UserError(f"{server.log_path.stem} {load.path} answered {outcome.status} {outcome.body[:200]!r}, "
                        f"not class {label} for every image: {server.log_tail(600)}")


def measure_server(name: str, served: ServedModel, loads: dict[str, Load], label: int, clients: Sequence[int],
                   seconds: float, warmup: float, log_dir: Path, bar: tqdm, before: Path | None = None) -> dict[str, Any]:
    """Starts ``name``, checks its answer, measures each load at each client count, and stops it."""
    bar.set_postfix_str(f"{name}: starting")
    server = start(name, served, log_dir, before)
    try:
        out: dict[str, Any] = {"ready_seconds": server.wait_ready(), "runs": []}
        for load in loads.values():
            check_answer(server, load, label)
        for load in loads.values():
            for n in clients:
                bar.set_postfix_str(f"{name} {load.path}, {n} client(s)")
                run = measure_run(server, load, label, n, seconds, warmup)
                out["runs"].append(run)
                bar.update(1)
                log.info("%s %s, %d client(s): %.2f ms CPU/request, p50 %.2f ms, p99 %.2f ms, %.0f req/s, "
                         "%d not right", name, load.path, n, run["cpu_ms_per_request"] or float("nan"),
                         run["p50_ms"] or float("nan"), run["p99_ms"] or float("nan"), run["requests_per_s"],
                         run["not_right"])
        out["log_exceptions"] = server.log_since(0)["server_exceptions"]
        return out
    finally:
        server.stop()


def versions() -> dict[str, str]:
    return {**machine_info()["versions"], **{p: version(p) for p in ("uvicorn", "python-multipart", "pillow")}}


def run_bench(model: str = DEFAULT_MODEL_NAME, duration: float = 15.0, clients: Sequence[int] = (1, 16),
              warmup: float = 3.0, servers: Sequence[str] = SERVERS, argv: Sequence[str] | None = None,
              before: Path | None = None) -> dict[str, Any]:
    """Every server of ``servers`` at every client count (and the service of the checkout ``before``);
    the results dict ``report.write_outputs`` reads."""
    if duration <= 0 or warmup < 0 or not clients or min(clients) < 1:
        raise UserError("need --duration > 0, --warmup >= 0 and client counts >= 1")
    unknown = [s for s in servers if s not in SERVERS]
    if unknown:
        raise UserError(f"unknown server(s) {unknown}; choose from {', '.join(SERVERS)}")
    if before is not None:
        if not (before / "service" / "service.py").is_file():
            raise UserError(f"--before {before}: not a checkout of this project (no service/service.py)")
        servers = [*servers, BEFORE]
    served = fp32_file(model)
    pngs, labels = encode_pngs(IMAGE_INDEX + 1)
    png, label = pngs[IMAGE_INDEX], int(labels[IMAGE_INDEX])
    loads = loads_for(png)
    command = "python -m bench.serving_cost.measure " + shlex.join(argv if argv is not None else sys.argv[1:])
    results: dict[str, Any] = {
        "machine": machine_info(), "versions": versions(), "command": command.strip(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "settings": {"before": before and {"path": str(before), "commit": checkout_commit(before)}, "model": served.name, "tag": served.tag, "onnx_file": str(served.onnx_path),
                     "duration_s": duration, "warmup_s": warmup, "clients": list(clients),
                     "image": {"fashion_mnist_test_index": IMAGE_INDEX, "label": label,
                               "class": served.card.class_names[label], "png_bytes": len(png)},
                     "batch_images": BATCH_IMAGES},
        "servers": {}}
    started = time.perf_counter()
    # The model alone (one intra-op thread, as each API worker's session of this model has on the
    # CPU): the floor of any server's CPU per image.
    results["model_alone"] = [{"batch": b, **dict(zip(("wall_ms_per_image", "cpu_ms_per_image"),
                                                      model_alone(served, 1, b, min(3.0, duration))))}
                             for b in (1, BATCH_IMAGES)]
    total = sum(len(loads[s]) for s in servers) * len(clients)
    with tempfile.TemporaryDirectory(prefix="serving-cost-") as tmp, logging_redirect_tqdm():
        bar = tqdm(total=total, desc="serving cost", unit="run", disable=None)
        for name in servers:
            results["servers"][name] = measure_server(name, served, loads[name], label, clients, duration, warmup,
                                                      Path(tmp), bar, before)
        bar.close()
    results["wall_seconds"] = time.perf_counter() - started
    return results


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    p = OneLineParser(prog="python -m bench.serving_cost.measure", description=__doc__.split("\n")[0])
    p.add_argument("--model", default=DEFAULT_MODEL_NAME, help="served name in the BentoML store (BENTOML_HOME)")
    p.add_argument("--duration", type=float, default=15.0, help="measured seconds per server, path and client count")
    p.add_argument("--clients", type=int_list, default=[1, 16], help="comma-separated closed-loop client counts")
    p.add_argument("--warmup", type=float, default=3.0, help="unrecorded seconds of the same load before each")
    p.add_argument("--out", type=Path, default=Path("reports/serving-cost"), help="folder for the report")
    p.add_argument("--servers", type=lambda t: [s.strip() for s in t.split(",") if s.strip()], default=list(SERVERS),
                   help=f"comma-separated, from: {', '.join(SERVERS)}")
    p.add_argument("--before", type=Path, default=None,
                   help="a checkout of an earlier version of this project: its service is measured too")
    args = p.parse_args(argv)
    ensure_writable_dir(args.out)  # before minutes of measuring, not after
    results = run_bench(args.model, args.duration, args.clients, args.warmup, args.servers, argv=argv,
                        before=args.before)
    for path in write_outputs(results, args.out):
        log.info("wrote %s", path)
    for line in goals(results)["summary"]:
        log.info("%s", line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
