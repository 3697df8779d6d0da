"""One headless Locust run of ``loadtests/locustfile.py`` in a subprocess: its CSV statistics with
exact latencies (``loadtests/latencies.py``) in place of Locust's rounded ones, and its HTML report.

Locust runs in its own process(es): it monkey-patches the standard library with gevent on import,
which must not happen inside the sweep, whose threads start and probe the service.
"""
from __future__ import annotations

import csv
import logging
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import UserError
from loadtests import latencies

log = logging.getLogger(__name__)
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
PERCENTILES = {"p50_ms": "50%", "p95_ms": "95%", "p99_ms": "99%", "p999_ms": "99.9%", "max_ms": "100%"}


@dataclass(frozen=True)
class LocustLoad:
    users: int
    seconds: float
    open_rate_per_user: float = 0.0  # 0: closed loop

    @property
    def mode(self) -> str:
        return "open" if self.open_rate_per_user > 0 else "closed"

    @property
    def offered_rate(self) -> float | None:
        return self.users * self.open_rate_per_user if self.open_rate_per_user > 0 else None


def locust_command(host: str, model: str, corpus: Path, load: LocustLoad, csv_prefix: Path, top_k: int,
                   workers: int = 0, max_fail_ratio: float = 0.01, max_p95_ms: float = 0.0) -> list[str]:
    """The ``locust`` command line for one run (``--processes N`` forks N local workers under a master)."""
    script = Path(sys.executable).parent / "locust"
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "locust"]
    cmd += ["-f", str(LOCUSTFILE), "--headless", "--host", host,
            "-u", str(load.users), "-r", str(load.users), "-t", f"{max(1, round(load.seconds))}s",
            "--stop-timeout", "30", "--csv", str(csv_prefix), "--html", f"{csv_prefix}.html",
            "--latency-file", f"{csv_prefix}_latencies.json", "--only-summary", "--loglevel", "WARNING",
            "--served-model", model, "--corpus", str(corpus), "--top-k", str(top_k),
            "--open-rate-per-user", repr(load.open_rate_per_user),
            "--max-fail-ratio", repr(max_fail_ratio), "--max-p95-ms", repr(max_p95_ms)]
    if workers > 0:
        cmd += ["--processes", str(workers)]
    return cmd


def read_stats_csv(path: Path) -> dict[str, dict[str, Any]]:
    """Rows of Locust's ``<prefix>_stats.csv`` by request name: counts, rate and percentiles in ms."""
    rows: dict[str, dict[str, Any]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            def num(key: str) -> float | None:
                value = row.get(key, "")
                return None if value in ("", "N/A", None) else float(value)

            rows[row["Name"]] = {
                "requests": int(row["Request Count"]), "failures": int(row["Failure Count"]),
                "requests_per_s": num("Requests/s"), "mean_ms": num("Average Response Time"),
                "min_ms": num("Min Response Time"),
                **{key: num(column) for key, column in PERCENTILES.items()},
            }
    return rows


def exact_stats(rows: dict[str, dict[str, Any]], csv_prefix: Path) -> dict[str, dict[str, Any]]:
    """``rows`` with counts, mean, min and percentiles from the run's exact latencies where they hold
    every request Locust counted (its CSV, written each second, can miss the last one); Locust's own
    rounded figures stay under ``locust_ms``."""
    recorded = latencies.read(Path(f"{csv_prefix}_latencies.json"))
    shares = {key: float(column.rstrip("%")) for key, column in PERCENTILES.items()}
    out = {}
    for name, row in rows.items():
        run = recorded.get(name, {"ms": []})
        if run["ms"] and len(run["ms"]) != run["locust_requests"]:
            log.warning("%s: %d exact latencies for %d requests; keeping Locust's rounded ones", name,
                        len(run["ms"]), run["locust_requests"])
        elif run["ms"]:
            rounded = {k: row[k] for k in ("requests", "failures", "mean_ms", "min_ms", *PERCENTILES)}
            row = {**row, **latencies.summary(run["ms"], shares), "requests": len(run["ms"]),
                   "failures": run["failures"], "exact": True, "locust_ms": rounded}
        out[name] = row
    return out


def read_failures_csv(path: Path) -> dict[str, int]:
    """Locust's ``<prefix>_failures.csv``: occurrences by error message."""
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        return {row["Error"][:200]: int(row["Occurrences"]) for row in csv.DictReader(f)}


def run_locust(host: str, model: str, corpus: Path, load: LocustLoad, csv_prefix: Path, top_k: int,
               workers: int = 0, max_fail_ratio: float = 0.01, max_p95_ms: float = 0.0,
               cwd: Path | None = None) -> dict[str, Any]:
    """Runs Locust to the end (``load.seconds`` plus the stop timeout at most) and returns its figures.

    ``exit_code`` is Locust's: 1 when the locustfile's gate (failure ratio, p95) tripped.
    """
    cmd = locust_command(host, model, corpus, load, csv_prefix, top_k, workers, max_fail_ratio, max_p95_ms)
    csv_prefix.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=load.seconds + 120)
    wall = time.monotonic() - started
    (csv_prefix.parent / f"{csv_prefix.name}_locust.log").write_text(proc.stdout + proc.stderr)
    stats_path = Path(f"{csv_prefix}_stats.csv")
    if not stats_path.is_file():
        tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
        raise UserError(f"locust wrote no statistics (exit code {proc.returncode}): {tail}")
    return {"mode": load.mode, "users": load.users, "seconds": load.seconds, "workers": workers,
            "open_rate_per_user": load.open_rate_per_user, "offered_rate": load.offered_rate,
            "exit_code": proc.returncode, "wall_seconds": wall,
            "stats": exact_stats(read_stats_csv(stats_path), csv_prefix),
            "failures_by_error": read_failures_csv(Path(f"{csv_prefix}_failures.csv")),
            "command": " ".join(cmd)}
