"""Faults survived, counted: the hostile-request corpus many times over beside good traffic,
stalled uploads, start-up with a broken model, and SIGTERM under load (bench/reliability/scenarios.py).

    python -m bench.reliability.faults                              # ~1 min: 20 rounds of the corpus
    python -m bench.reliability.faults --rounds 2 --out /tmp/faults-smoke

1. ``bentoml serve`` with ``RESNET_BODY_TIMEOUT_S=--body-timeout``. Each good request (Fashion-MNIST
   test images) is first sent alone for its top-1.
2. Every kind of hostile request (``bench/reliability/hostile.py``) ``--rounds`` times, shuffled with as many
   rounds of the good requests, ``--concurrency`` clients at once: each bad one must get exactly its
   documented status and JSON code, each good one its top-1 from step 1. Then ``/readyz``, and the
   server log is searched for tracebacks.
3. ``--slow-clients`` uploads that stall (half stop, half trickle a byte every 0.5 s) while good
   requests keep coming: each must be answered 408 and closed, the good ones 200.
4. ``--clients`` closed-loop clients, and SIGTERM to ``bentoml serve`` after 3 s: no truncated answer,
   every answer a complete 200, requests in flight finished, exit status 0.
5. Start-up with the model's ONNX file corrupted, deleted, or the model absent from the store: each
   must exit non-zero with one line and no traceback.

Writes ``faults.json`` to ``--out`` and rewrites ``report.md`` there (``bench.reliability.report``).
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.reliability.hostile import Limits, hostile_requests
from common.cli import run_cli
from common.errors import UserError
from common.files import ensure_writable_dir
from bench.service_overhead.measure import service_config
from service.catalog import ModelUnavailable, resolve_models
from bench.reliability.scenarios import alone, hostile_beside_good, sigterm_under_load, slow_uploads, start_with_broken_model
from bench.reliability.common import finish, good_requests, run_header, start_server

log = logging.getLogger(__name__)


def run_faults(rounds: int = 20, concurrency: int = 12, slow_clients: int = 8, body_timeout: int = 5,
               clients: int = 12, good_count: int = 64) -> dict[str, Any]:
    env = {**os.environ, "RESNET_BODY_TIMEOUT_S": str(body_timeout)}
    config = service_config(env)
    try:
        served = resolve_models(config)[0]
    except ModelUnavailable as e:
        raise UserError(str(e)) from None
    corpus = hostile_requests(Limits(config.max_body_bytes, config.max_image_bytes, config.max_pixels,
                                     config.max_batch_images, served.card.num_classes))
    good, _ = good_requests(good_count)
    results = run_header(env, {"rounds": rounds, "concurrency": concurrency, "slow_clients": slow_clients,
                               "body_timeout_s": body_timeout, "clients": clients, "good_requests": good_count})
    with tempfile.TemporaryDirectory(prefix="fault-bench-") as tmp:
        server = start_server(env, Path(tmp), "faults")
        try:
            expected = asyncio.run(alone(server.port, good))
            if None in expected:
                raise UserError("a good request was not classified when sent alone")
            log.info("hostile corpus: %d kinds x %d rounds beside %d good requests", len(corpus), rounds,
                     len(good) * rounds)
            hostile = asyncio.run(hostile_beside_good(server.port, corpus, good, expected, rounds, concurrency))
            results["hostile"] = hostile
            results["ready_after"] = server.get("/readyz")[0] == 200
            log.info("slow uploads: %d clients", slow_clients)
            results["slow"] = asyncio.run(slow_uploads(server.port, slow_clients, good, timeout=body_timeout + 60))
            results["server_tracebacks"] = sum(server.log_since(0)["server_exceptions"].values())
            log.info("SIGTERM under load: %d clients", clients)
            results["shutdown"] = sigterm_under_load(server, good, clients=clients)
        finally:
            server.stop()
        results["startup"] = [start_with_broken_model(Path(tmp) / damage, served.name, served.precision, damage)
                              for damage in ("corrupt", "missing", "absent")]
    h, sl, sd = results["hostile"], results["slow"], results["shutdown"]
    checks = {
        "every hostile request answered as documented": h["as_documented"] == h["sent"],
        "every good request beside them answered as when alone": h["good_same_as_alone"] == h["good_sent"],
        "ready after the corpus": results["ready_after"],
        "no traceback in the server log": results["server_tracebacks"] == 0,
        "every stalled upload answered 408 and closed":
            sl["answers"] == {"408 body_timeout": sl["clients"]} and sl["closed_after"] == sl["clients"],
        "good requests served during the stalls": sl["good_sent"] > 0 and sl["good_ok"] == sl["good_sent"],
        "SIGTERM: no truncated answer": sd["truncated"] == 0,
        "SIGTERM: every answer a complete 200": sd["all_answers_200"],
        "SIGTERM: requests in flight finished": sd["completed_after_signal"] > 0,
        "SIGTERM: exit status 0": sd["exit_status"] == 0,
        "broken model: one line, no traceback, non-zero exit": all(
            s["exit_status"] not in (0, None) and s["tracebacks"] == 0 and s["line_count"] <= 3
            for s in results["startup"]),
    }
    results["criteria"] = {"checks": checks, "all_passed": all(checks.values())}
    return results


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


def _main(argv: Sequence[str] | None) -> int:

    p = argparse.ArgumentParser(prog="python -m bench.reliability.faults", description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=20, help="times each hostile request is sent")
    p.add_argument("--concurrency", type=int, default=12, help="clients sending the corpus and good requests")
    p.add_argument("--slow-clients", type=int, default=8)
    p.add_argument("--body-timeout", type=int, default=5, help="RESNET_BODY_TIMEOUT_S of the server")
    p.add_argument("--clients", type=int, default=12, help="closed-loop clients during SIGTERM")
    p.add_argument("--out", type=Path, default=Path("reports/reliability"))
    args = p.parse_args(argv)
    if min(args.rounds, args.concurrency, args.slow_clients, args.body_timeout, args.clients) < 1:
        raise UserError("every count must be at least 1")
    ensure_writable_dir(args.out)
    results = run_faults(args.rounds, args.concurrency, args.slow_clients, args.body_timeout, args.clients)
    return finish(args.out, "faults", results)


if __name__ == "__main__":
    raise SystemExit(main())
