"""Fuzzing with schemathesis: requests generated from the service's own OpenAPI description
(``/docs.json``), those that fit it and those that do not, sent to every operation; no answer may
be a server error, and every 4xx must be the ``{"error", "code"}`` JSON the service documents.

    python -m bench.reliability.fuzz                          # a real bentoml serve, 1000 examples per operation
    python -m bench.reliability.fuzz --examples 50 --out /tmp/fuzz-smoke

``make test`` runs a short version against a real server (tests/service/test_faults.py). Not
in-process: schemathesis runs an ASGI app's lifespan itself, which leaves the tests' own app
without its service instance. schemathesis's pytest integration is not used either: its lazy
schema loader breaks on pytest 9 (``Function`` has no ``_nodeid``), so each operation's hypothesis
strategy is driven directly.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.cli import run_cli
from common.errors import UserError
from common.files import ensure_writable_dir

log = logging.getLogger(__name__)


def _shaped(status: int, text: str) -> bool:
    try:
        body = json.loads(text)
    except ValueError:
        return False
    return isinstance(body, dict) and isinstance(body.get("error"), str) and isinstance(body.get("code"), str)


def fuzz(schema: Any, examples: int, skip_paths: Sequence[str] = (), seed: int | None = None) -> dict[str, Any]:
    """Sends up to ``examples`` generated requests to each operation of ``schema`` (a schemathesis
    schema). Returns counts by operation and answer, and every server
    error and unshaped 4xx with a curl command that repeats it."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as fixed_seed

    by_operation: dict[str, Counter] = defaultdict(Counter)
    server_errors: list[dict[str, Any]] = []
    unshaped: list[dict[str, Any]] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path in skip_paths:
            continue
        label = operation.label

        @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def run(case: Any) -> None:
            try:
                response = case.call()
            except Exception as e:  # noqa: BLE001 - a request that could not complete is a finding too
                by_operation[label][f"no answer: {type(e).__name__}"] += 1
                server_errors.append({"operation": label, "error": repr(e)[:300], "curl": case.as_curl_command()})
                return
            status = response.status_code
            by_operation[label][str(status)] += 1
            if status >= 500:
                server_errors.append({"operation": label, "status": status, "body": response.text[:300],
                                      "curl": case.as_curl_command()})
            elif 400 <= status < 500 and not _shaped(status, response.text):
                unshaped.append({"operation": label, "status": status, "body": response.text[:300],
                                 "curl": case.as_curl_command()})

        if seed is not None:
            run = fixed_seed(seed)(run)
        run()
    return {"schemathesis": schemathesis.__version__,
            "by_operation": {op: dict(c) for op, c in by_operation.items()},
            "cases": sum(sum(c.values()) for c in by_operation.values()),
            "server_errors": len(server_errors), "unshaped_4xx": len(unshaped),
            "server_error_examples": server_errors[:20], "unshaped_examples": unshaped[:20]}


def fuzz_url(base_url: str, examples: int, seed: int | None = None) -> dict[str, Any]:
    import schemathesis

    return fuzz(schemathesis.openapi.from_url(f"{base_url}/docs.json"), examples, seed=seed)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    from bench.reliability.common import run_header, start_server, write_results
    from bench.reliability.report import write_report

    p = argparse.ArgumentParser(prog="python -m bench.reliability.fuzz", description=__doc__.split("\n")[0])
    p.add_argument("--examples", type=int, default=1000, help="generated requests per operation (at most)")
    p.add_argument("--seed", type=int, default=None, help="hypothesis seed, to repeat a run")
    p.add_argument("--url", default=None, help="fuzz this running service instead of starting one")
    p.add_argument("--out", type=Path, default=Path("reports/reliability"))
    args = p.parse_args(argv)
    if args.examples < 1:
        raise UserError("--examples must be at least 1")
    ensure_writable_dir(args.out)
    env = dict(os.environ)
    results = run_header(env, {"examples": args.examples, "seed": args.seed, "url": args.url})
    if args.url:
        results.update(fuzz_url(args.url.rstrip("/"), args.examples, args.seed))
    else:
        with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
            server = start_server(env, Path(tmp), "fuzz")
            try:
                results.update(fuzz_url(server.url, args.examples, args.seed))
                results["server_exceptions"] = server.log_since(0)["server_exceptions"]
                results["ready_after"] = server.get("/readyz")[0] == 200
            finally:
                server.stop()
    log.info("wrote %s and %s", write_results(args.out, "fuzz", results), write_report(args.out))
    log.info("%d requests; server errors: %d; unshaped 4xx: %d", results["cases"], results["server_errors"],
             results["unshaped_4xx"])
    for example in results["server_error_examples"][:5] + results["unshaped_examples"][:5]:
        log.info("%s", example)
    return 0 if results["server_errors"] == 0 and results["unshaped_4xx"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
