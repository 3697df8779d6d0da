"""Soak: a long run at a steady share of the saturation rate; no request may fail and resident
memory may not creep.

    python -m bench.reliability.soak                                    # 10 min at 70% (~11 min in all)
    python -m bench.reliability.soak --minutes 1.5 --warmup-seconds 15 --out /tmp/soak-smoke   # dry run

1. **Saturation**, as in ``bench.reliability.overload``: ``--clients`` closed-loop clients for
   ``--saturation-seconds`` (skipped with ``--rate``).
2. **Soak**: an open loop (requests on a fixed schedule) at ``--fraction`` of that rate for
   ``--minutes``, cycling through Fashion-MNIST test images. Every answer other than a well-formed
   200 is a failure (a 503 included: at 70% nothing should be shed). The resident memory of the
   whole ``bentoml serve`` process tree is sampled every second, and where the machine's CPU went
   (the service, the load generator, other processes, steal), so that the worst seconds of the run
   can be told apart from a busy neighbour.
3. **Saturation again**, measured as in 1 right after the soak (not when ``--rate`` is given): the
   report gives the soak's rate as a share of both, since a shared machine's speed drifts.

Pass criteria, recorded with the figures: no failed request; resident memory at the end (mean of
the last 30 s) less than 5% above its level after ``--warmup-seconds`` (mean of the 30 s after), and
its trend from then on (a least-squares line through every sample) rising less than 5 MiB per hour.
Per-minute figures show any drift. Writes ``soak.json`` to ``--out`` and rewrites ``report.md``
there (``bench.reliability.report``). Run it on a quiet machine, one benchmark at a time.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.aio_http import Outcome, closed_loop, open_loop
from loadtests.http_load import background_busy
from common.cli import run_cli
from common.errors import UserError
from common.files import ensure_writable_dir
from bench.reliability.common import (ProcessTreeSampler, classification_ok, finish, good_requests, measure_saturation,
                                        percentiles_ms, run_header, start_server, summarize)

log = logging.getLogger(__name__)
GROWTH_LIMIT = 0.05
SLOPE_LIMIT_MIB_PER_H = 5.0  # a service that runs for weeks: 5 MiB/h is 0.84 GiB in a week
WINDOW_S = 30.0  # memory is compared as means over windows this long, not single samples


def per_minute(outcomes: Sequence[Outcome], samples: Sequence[tuple[float, int]], t0: float) -> list[dict[str, Any]]:
    minutes: dict[int, list[Outcome]] = {}
    for o in outcomes:
        minutes.setdefault(int(o.sent // 60), []).append(o)
    rows = []
    for m, group in sorted(minutes.items()):
        rss = [b for t, b in samples if m * 60 <= t - t0 < (m + 1) * 60]
        good = [o.latency for o in group if classification_ok(o)]
        rows.append({"minute": m + 1, "sent": len(group), "ok": len(good), "p99_ms": percentiles_ms(good)["p99_ms"],
                     "rss_mib": float(np.mean(rss)) / 2**20 if rss else None})
    return rows


def worst_seconds(outcomes: Sequence[Outcome], cpu: Sequence[dict[str, float]], t0: float,
                  count: int = 5) -> list[dict[str, Any]]:
    """The ``count`` seconds of the run with the most failed requests (then the slowest answer):
    what was sent in each, how it fared, and where the machine's CPU went in it (the sampler's
    interval ending nearest after it), so that a failure can be told apart from a busy neighbour."""
    seconds: dict[int, list[Outcome]] = {}
    for o in outcomes:
        seconds.setdefault(int(o.sent), []).append(o)
    rows = []
    for s, group in seconds.items():
        latency = sorted(o.latency for o in group)
        rows.append({"second": s, "sent": len(group), "failed": sum(not classification_ok(o) for o in group),
                     "p50_ms": 1000 * latency[len(latency) // 2], "max_ms": 1000 * latency[-1]})
    rows.sort(key=lambda r: (r["failed"], r["max_ms"]), reverse=True)
    for row in rows[:count]:
        after = [c for c in cpu if c["t"] - t0 >= row["second"] + 1]
        if after:
            row["cpu_cores"] = {k: round(v, 2) for k, v in after[0].items() if k != "t"}
    return rows[:count]


def rss_slope_mib_per_hour(samples: Sequence[tuple[float, int]], start: float) -> float | None:
    """The least-squares slope of resident memory over the samples from ``start`` on, in MiB per hour:
    the trend of the whole run after warm-up, not the difference of two noisy moments."""
    kept = [(t, b) for t, b in samples if t >= start]
    if len(kept) < 10:
        return None
    t = np.asarray([k[0] for k in kept], float)
    mib = np.asarray([k[1] for k in kept], float) / 2**20
    return float(np.polyfit(t - t[0], mib, 1)[0] * 3600)


def cpu_means(cpu: Sequence[dict[str, float]]) -> dict[str, float]:
    """Mean cores used over the run by each party (server, generator, others, steal; of ``cores``)."""
    if not cpu:
        return {}
    return {k: float(np.mean([c[k] for c in cpu])) for k in cpu[0] if k != "t"}


def _saturation_again(port: int, pick: Any, clients: int, seconds: float) -> dict[str, Any]:
    """The saturation rate measured again after the soak, the same way: on a shared machine whose
    speed drifts, the soak's rate was a share of what the machine gave then, not of what it gives
    now, and this says how far apart the two are."""
    try:
        return measure_saturation(port, pick, clients, seconds)
    except UserError as e:  # a server that no longer answers: recorded, the soak's figures kept
        return {"ok_per_s": None, "error": str(e)}


def run_soak(minutes: float = 10.0, fraction: float = 0.7, clients: int = 16, saturation_seconds: float = 20.0,
             warmup_seconds: float = 120.0, rate: float | None = None) -> dict[str, Any]:
    env = dict(os.environ)
    requests, _ = good_requests()
    pick = lambda i: requests[i % len(requests)]  # noqa: E731
    seconds = minutes * 60
    if warmup_seconds + 2 * WINDOW_S > seconds:
        raise UserError(f"--minutes too short for {warmup_seconds:g} s of warm-up and two {WINDOW_S:g}-s windows")
    results = run_header(env, {"minutes": minutes, "fraction": fraction, "clients": clients,
                               "saturation_seconds": saturation_seconds, "warmup_seconds": warmup_seconds,
                               "rate_given": rate})
    results["machine"]["cpu_busy_before"] = background_busy()
    with tempfile.TemporaryDirectory(prefix="soak-bench-") as tmp:
        server = start_server(env, Path(tmp), "soak")
        try:
            asyncio.run(closed_loop("127.0.0.1", server.port, pick, clients, 3.0))
            if rate is None:
                results["saturation"] = measure_saturation(server.port, pick, clients, saturation_seconds)
                rate = results["saturation"]["ok_per_s"]
            else:
                results["saturation"] = {"ok_per_s": rate, "given": True}
            target = fraction * rate
            log.info("soak: %.1f requests/s (%.0f%% of %.1f) for %.1f min", target, 100 * fraction, rate, minutes)
            offset = server.log_offset()
            with ProcessTreeSampler(server.proc.pid, interval=1.0) as sampler:
                t0 = time.monotonic()
                cpu0 = time.process_time()
                outcomes = asyncio.run(open_loop("127.0.0.1", server.port, pick, target, seconds))
                generator_cores = (time.process_time() - cpu0) / (time.monotonic() - t0)
            server_log = server.log_since(offset)
            if not results["saturation"].get("given"):
                results["saturation_after"] = _saturation_again(server.port, pick, clients, saturation_seconds)
        finally:
            server.stop()
    after_warmup = sampler.between(t0 + warmup_seconds, t0 + warmup_seconds + WINDOW_S)
    end = sampler.between(t0 + seconds - WINDOW_S, t0 + seconds)
    summary = summarize(outcomes, seconds)
    rss_warm, rss_end = float(np.mean(after_warmup)), float(np.mean(end))
    results["soak"] = {**summary, "rate_per_s": target, "seconds": seconds, "failed": summary["sent"] - summary["ok"],
                       "rss_after_warmup_mib": rss_warm / 2**20, "rss_end_mib": rss_end / 2**20,
                       "rss_max_mib": max(b for _, b in sampler.samples) / 2**20, "rss_growth": rss_end / rss_warm - 1,
                       "rss_slope_mib_per_hour": rss_slope_mib_per_hour(sampler.samples, t0 + warmup_seconds),
                       "per_minute": per_minute(outcomes, sampler.samples, t0),
                       "cpu_cores_mean": cpu_means(sampler.cpu), "worst_seconds": worst_seconds(outcomes, sampler.cpu, t0),
                       "server_exceptions": server_log["server_exceptions"], "load_generator_cores": generator_cores}
    checks = {"no failed request": results["soak"]["failed"] == 0,
              f"resident memory growth after warm-up under {GROWTH_LIMIT:.0%}": results["soak"]["rss_growth"] < GROWTH_LIMIT,
              "no exception in the server log": not server_log["server_exceptions"],
              f"resident memory after warm-up rising under {SLOPE_LIMIT_MIB_PER_H:g} MiB per hour":
                  (results["soak"]["rss_slope_mib_per_hour"] or 0.0) < SLOPE_LIMIT_MIB_PER_H}
    results["criteria"] = {"checks": checks, "all_passed": all(checks.values())}
    return results


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


def _main(argv: Sequence[str] | None) -> int:

    p = argparse.ArgumentParser(prog="python -m bench.reliability.soak", description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--fraction", type=float, default=0.7, help="share of the saturation rate to hold")
    p.add_argument("--clients", type=int, default=16, help="closed-loop clients that find the saturation rate")
    p.add_argument("--saturation-seconds", type=float, default=20.0)
    # 120 s: in a 200-s run at 80 requests/s, the process tree's memory grew for ~80 s (470 to 561
    # MiB) and then stayed within 1% (562 to 566 MiB).
    p.add_argument("--warmup-seconds", type=float, default=120.0, help="memory growth is measured from here on")
    p.add_argument("--rate", type=float, default=None, help="saturation rate to use instead of measuring it")
    p.add_argument("--out", type=Path, default=Path("reports/reliability"))
    args = p.parse_args(argv)
    if min(args.minutes, args.fraction, args.clients, args.saturation_seconds) <= 0 or args.warmup_seconds < 0:
        raise UserError("durations, --fraction and --clients must be > 0")
    ensure_writable_dir(args.out)
    results = run_soak(args.minutes, args.fraction, args.clients, args.saturation_seconds, args.warmup_seconds, args.rate)
    return finish(args.out, "soak", results)


if __name__ == "__main__":
    raise SystemExit(main())
