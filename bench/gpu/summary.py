"""The short table ``bench/gpu/check.sh`` prints last: its stages, the engine targets, the sweep.

    python -m bench.gpu.summary --stages STAGES.tsv --engine ENGINE/results.json --sweep SWEEP/results.json

Every input is optional: a stage that failed leaves its part of the table saying so.
"""
from __future__ import annotations

import argparse
import csv
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.cli import run_cli

SERVICE_MODEL = "resnet50-imagenet"
SERVICE_MIN_IMAGES_PER_S, SERVICE_MAX_P99_MS, SERVICE_ONE_CLIENT_MARGIN_MS = 3000.0, 100.0, 3.0


def _load(path: Path | None) -> dict[str, Any] | None:
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


RAW_STATS = re.compile(r"(?P<model>.+)_(?P<mode>closed|open)_u(?P<users>\d+)(_r[^_]*)?_stats\.csv")


def sweep_from_raw(raw: Path | None) -> dict[str, Any] | None:
    """The runs of a sweep that never wrote its results.json (stopped by its deadline), read back from
    the Locust CSVs it had written so far: each finished run left ``<model>_<mode>_u<users>_stats.csv``."""
    if raw is None or not raw.is_dir():
        return None
    runs = []
    for path in sorted(raw.rglob("*_stats.csv")):
        m = RAW_STATS.fullmatch(path.name)
        if not m:
            continue
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r.get("Name") != "Aggregated"]
        if not rows:
            continue
        row = rows[0]

        def num(column: str, row: dict[str, str] = row) -> float | None:
            return None if row.get(column) in (None, "", "N/A") else float(row[column])

        runs.append({"model": m["model"], "mode": m["mode"], "users": int(m["users"]), "mean_batch_size": None,
                     "stats": {row["Name"]: {"requests_per_s": num("Requests/s"), "p50_ms": num("50%"),
                                             "p99_ms": num("99%"), "failures": int(num("Failure Count") or 0)}}})
    return {"runs": runs, "from_raw_csv": True} if runs else None


def _stages(path: Path | None) -> list[str]:
    lines = ["| stage | status | seconds |", "|---|---|---:|"]
    if path is not None and path.is_file():
        for row in path.read_text().splitlines():
            name, status, seconds = (row.split("\t") + ["", ""])[:3]
            lines.append(f"| {name} | {status} | {seconds} |")
    return lines


def _engine(engine: dict[str, Any] | None) -> list[str]:
    from bench.gpu.bench_report import evaluate_targets, target_summary

    if engine is None:
        return ["engine: no results.json"]
    rows = evaluate_targets(engine)
    lines = [f"engine on {engine['machine'].get('card') or 'no GPU'}"
             + (" (CPU DRY RUN: not GPU figures)" if engine.get("dry_run") else ""), ""]
    lines += ["| batch | model | best ORT fp16 / PyTorch fp16 CL | target | verdict |", "|---:|---|---:|---:|---|"]
    for r in rows:
        ratio = f"{r['ratio']:.2f}x ({r['ort_ms']:.3f} / {r['baseline_ms']:.3f} ms)" if "ratio" in r else "–"
        lines.append(f"| {r['batch']} | {r['model']} | {ratio} | {r['target_ratio']}x | {r['verdict']} |")
    return lines + [""] + [f"- {s}" for s in target_summary(rows)]


def _classify(run: dict[str, Any]) -> dict[str, Any]:
    stats = run.get("stats", {})
    return stats.get("classify") or next(iter(stats.values()), {})


def _sweep(sweep: dict[str, Any] | None, engine: dict[str, Any] | None) -> list[str]:
    if sweep is None:
        return ["sweep: no results.json and no Locust CSVs"]
    lines = ["sweep: read back from the raw Locust CSVs (the sweep stopped before writing its results)", ""] \
        if sweep.get("from_raw_csv") else []
    lines += ["| model | provider | users | req/s (= images/s) | p50 ms | p99 ms | failures | mean batch |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    served = sweep.get("models", {})
    for run in sweep.get("runs", []):
        s = _classify(run)
        batch = run.get("mean_batch_size")
        provider = served.get(run.get("model"), {}).get("provider", "?")
        lines.append(f"| {run.get('model')} | {provider} | {run.get('users')} | {s.get('requests_per_s') or 0:.1f} | "
                     f"{s.get('p50_ms')} | {s.get('p99_ms')} | {s.get('failures')} | "
                     f"{'–' if batch is None else f'{batch:.1f}'} |")
    return lines + [""] + _service_targets(sweep, engine)


def _service_targets(sweep: dict[str, Any], engine: dict[str, Any] | None) -> list[str]:
    runs = [r for r in sweep.get("runs", []) if r.get("model") == SERVICE_MODEL and r.get("mode", "closed") == "closed"]
    if not runs:
        return [f"- service targets: no {SERVICE_MODEL} run"]
    best = max(runs, key=lambda r: _classify(r).get("requests_per_s") or 0)
    s = _classify(best)
    rate, p99 = s.get("requests_per_s") or 0.0, s.get("p99_ms")
    met = rate >= SERVICE_MIN_IMAGES_PER_S and p99 is not None and p99 <= SERVICE_MAX_P99_MS
    lines = [f"- service throughput ({SERVICE_MODEL}, one JPEG per request): best {rate:.0f} images/s at p99 {p99} ms "
             f"with {best.get('users')} users; target >= {SERVICE_MIN_IMAGES_PER_S:.0f} at p99 <= "
             f"{SERVICE_MAX_P99_MS:.0f} ms: **{'met' if met else 'missed'}** (only the user counts swept were tried)"]
    one = next((r for r in runs if r.get("users") == 1), None)
    engine_ms, source = _engine_batch1(sweep, engine)
    if one is None or engine_ms is None:
        return lines + ["- service at 1 client: not measured (no 1-user run or no engine batch-1 figure)"]
    p50 = _classify(one).get("p50_ms")
    if p50 is None:
        return lines + ["- service at 1 client: no p50"]
    over = p50 - engine_ms
    verdict = "met" if over <= SERVICE_ONE_CLIENT_MARGIN_MS else "missed"
    return lines + [f"- service at 1 client: p50 {p50:.1f} ms, engine batch 1 {engine_ms:.2f} ms ({source}): "
                    f"{over:+.1f} ms over; target <= +{SERVICE_ONE_CLIENT_MARGIN_MS:.0f} ms: **{verdict}**"]


def _engine_batch1(sweep: dict[str, Any], engine: dict[str, Any] | None) -> tuple[float | None, str]:
    for precision, models in sweep.get("engine", {}).items():
        figure = models.get(SERVICE_MODEL, {}).get("1", {}).get("p50_ms")
        if figure is not None:
            return figure, f"the sweep's OnnxEngine, {precision}"
    check = (engine or {}).get("engine_check") or {}
    default = check.get("engines", {}).get("default", {}).get("batches", {}).get("1", {})
    if default.get("median_ms") is not None:
        return default["median_ms"], f"engine bench OnnxEngine, {check.get('precision')}"
    return None, ""


def summarize(stages: Path | None, engine_path: Path | None, sweep_path: Path | None, dry_run: bool = False,
              sweep_raw: Path | None = None) -> str:
    engine, sweep = _load(engine_path), _load(sweep_path) or sweep_from_raw(sweep_raw)
    title = "## GPU check summary" + (": CPU DRY RUN, every figure a CPU figure, none from a GPU" if dry_run else "")
    parts = [title, "", *_stages(stages), "", *_engine(engine), "", *_sweep(sweep, engine)]
    return "\n".join(parts) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu.summary", description=__doc__.split("\n")[0])
    p.add_argument("--stages", type=Path, help="check.sh's stages.tsv (name, status, seconds)")
    p.add_argument("--engine", type=Path, help="the engine bench's results.json")
    p.add_argument("--sweep", type=Path, help="the sweep's results.json")
    p.add_argument("--sweep-raw", type=Path, help="the sweep's folder of Locust CSVs, read if results.json is missing")
    p.add_argument("--dry-run", action="store_true", help="say in the title that these are CPU figures")
    args = p.parse_args(argv)
    print(summarize(args.stages, args.engine, args.sweep, args.dry_run, args.sweep_raw), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
