"""The short report ``bench/gpu/check.sh`` prints last: the machine, its stages, every target of
issue 17 met or missed and by how much, then the engine's ratios, the service under load, the two
topologies (RESNET_TOPOLOGY) side by side and the depth sweep.

    python -m bench.gpu.summary --stages STAGES.tsv --engine ENGINE/results.json \\
        --classify SERVICE/classify.json --batch SERVICE/batch.json --sweep SWEEP/results.json \\
        --classify-other SERVICE-TOPOLOGY/classify.json

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

# Issue 17's service targets: /classify (one 224x224 JPEG per request) and /classify_batch (16).
CLASSIFY_MIN_IMAGES_PER_S, CLASSIFY_MAX_P99_MS = 6000.0, 50.0
BATCH_MIN_IMAGES_PER_S = 10000.0
ONE_CLIENT_MARGIN_MS = 1.5  # 1-client p50 over the engine's batch-1 latency
# The service's RESNET_CUDA_GRAPHS / RESNET_PREFER_NHWC -> the OnnxEngine row of the engine check it matches.
ENGINE_ROWS = {(False, False): "default", (True, False): "cuda_graphs", (False, True): "nhwc",
               (True, True): "cuda_graphs+nhwc"}
OTHER_TOPOLOGY = {"per-worker": "shared-engine", "shared-engine": "per-worker"}  # service/topology.py's two


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
    from loadtests.locust_run import read_stats_csv

    if raw is None or not raw.is_dir():
        return None
    runs = []
    for path in sorted(raw.rglob("*_stats.csv")):
        m = RAW_STATS.fullmatch(path.name)
        stats = {name: row for name, row in read_stats_csv(path).items() if name != "Aggregated"} if m else {}
        if stats:
            runs.append({"model": m["model"], "mode": m["mode"], "users": int(m["users"]), "mean_batch_size": None,
                         "stats": stats})
    return {"runs": runs, "from_raw_csv": True} if runs else None


def _f(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _users(n: int, what: str = "user") -> str:
    return f"{n} {what}{'s' * (n != 1)}"


def _by(value: float, target: float) -> str:
    return f"{100 * (value / target - 1):+.0f}%"


def _header(engine: dict[str, Any] | None, classify: dict[str, Any] | None, sweep: dict[str, Any] | None,
            other: dict[str, Any] | None = None) -> list[str]:
    m = (engine or {}).get("machine") or {}
    service = (classify or {}).get("machine") or (sweep or {}).get("machine") or {}
    v, sv = m.get("versions", {}), service.get("versions", {})
    card = m.get("nvidia_smi") or (sweep or {}).get("machine", {}).get("gpu") or "none (nvidia-smi found no card)"
    env = (classify or {}).get("service_env") or {}
    lines = [f"- Card: {card} (name, memory, driver, max SM clock, power limit)",
             f"- Host: {m.get('cpu_model') or service.get('cpu_model', '?')}, "
             f"{m.get('cpu_count') or service.get('cpu_count', '?')} cores",
             f"- Versions: onnxruntime {v.get('onnxruntime') or sv.get('onnxruntime', '?')} "
             f"({', '.join(m.get('ort_providers', [])) or '?'}), torch {v.get('torch', '?')} (CUDA {v.get('torch_cuda')}, "
             f"cuDNN {v.get('cudnn')}), bentoml {sv.get('bentoml', '?')}, locust {service.get('locust', '?')}, "
             f"Python {v.get('python') or sv.get('python', '?')}"]
    if env:
        lines.append("- Service settings: " + ", ".join(f"{k}={val}" for k, val in sorted(env.items())))
    first, second = topology_of(classify), topology_of(other)
    if first or second:
        lines.append(f"- Topology (RESNET_TOPOLOGY): {first or 'not recorded'} for every stage but `topology`, "
                     + (f"which ran {second} (side by side below)" if second else "the other topology not measured"))
    else:
        lines.append("- Topology (RESNET_TOPOLOGY): not recorded (auto: shared-engine on CUDA, per-worker on the CPU)")
    return lines


def topology_of(part: dict[str, Any] | None) -> str | None:
    """The RESNET_TOPOLOGY a load stage ran against (check.sh gives it explicitly; None if not recorded)."""
    return ((part or {}).get("service_env") or {}).get("RESNET_TOPOLOGY")


def _rate(run: dict[str, Any]) -> float | None:
    """Good answers per second (/classify: one image each)."""
    return run.get("requests_per_s", run.get("images_per_s"))


def cpu_ms_per_request(run: dict[str, Any]) -> float | None:
    """The service's CPU per good answer: its mean cores over the steady part divided by the rate."""
    cores, rate = (run.get("cpu") or {}).get("service_cores"), _rate(run)
    return 1000 * cores / rate if cores is not None and rate else None


def _pair(a: float | None, b: float | None, digits: int = 1) -> str:
    return f"{_f(a, digits)} / {_f(b, digits)}"


def _topologies(first: dict[str, Any] | None, second: dict[str, Any] | None, dry_run: bool) -> list[str]:
    """/classify closed loop at each users count against the first service and the topology stage's."""
    a, b = _closed(first), _closed(second)
    name_a = topology_of(first) or "first service"
    name_b = topology_of(second) or OTHER_TOPOLOGY.get(name_a, "topology stage")
    if not a and not b:
        return ["Not measured: no closed-loop /classify run from either service"]
    lines = []
    if not b:
        lines.append(f"{name_b}: not measured (no closed-loop run from the topology stage)")
    elif not a:
        lines.append(f"{name_a}: not measured (no closed-loop run in classify.json)")
    seconds = {f"{_f((p or {}).get('settings', {}).get('duration'), 0)} s" for p in (first, second) if p}
    lines += [f"Each cell: **{name_a}** / **{name_b}**; {' and '.join(sorted(seconds))} per run; the topology stage "
              "serves the model alone. CPU: the service's mean cores over the run's steady part, and per good "
              "answer.", "",
              f"| users | req/s (= images/s) | {name_b} against {name_a} | p50 ms | p99 ms | service cores "
              "| service CPU ms / request |", "|---:|---:|---:|---:|---:|---:|---:|"]
    by_a, by_b = {r["users"]: r for r in a}, {r["users"]: r for r in b}
    for users in sorted(by_a.keys() | by_b.keys()):
        ra, rb = by_a.get(users, {}), by_b.get(users, {})
        rate_a, rate_b = _rate(ra), _rate(rb)
        lines.append(f"| {users} | {_pair(rate_a, rate_b)} | {_by(rate_b, rate_a) if rate_a and rate_b else '–'} | "
                     f"{_pair(ra.get('p50_ms'), rb.get('p50_ms'), 2)} | {_pair(ra.get('p99_ms'), rb.get('p99_ms'), 2)} | "
                     f"{_pair((ra.get('cpu') or {}).get('service_cores'), (rb.get('cpu') or {}).get('service_cores'))} | "
                     f"{_pair(cpu_ms_per_request(ra), cpu_ms_per_request(rb), 2)} |")
    lines.append("")
    if a and b:
        best_a, best_b = (max(runs, key=lambda r: _rate(r) or 0.0) for runs in (a, b))
        (win, w), (lose, lo) = sorted(((name_a, best_a), (name_b, best_b)), key=lambda x: -(_rate(x[1]) or 0.0))
        lines.append(f"- Higher best throughput: **{win}**, {_f(_rate(w))} req/s ({_users(w['users'])}) "
                     f"against {lose}'s {_f(_rate(lo))} ({_users(lo['users'])})"
                     + (f": {_by(_rate(w), _rate(lo))}" if _rate(lo) and _rate(w) else "")
                     + (" (CPU dry run: says nothing of the GPU's choice)" if dry_run else ""))
        within = []
        for name, runs in ((name_a, a), (name_b, b)):
            ok = [r for r in runs if r.get("p99_ms") is not None and r["p99_ms"] <= CLASSIFY_MAX_P99_MS]
            best = max(ok, key=lambda r: _rate(r) or 0.0) if ok else None
            within.append(f"{name} {_f(_rate(best))} req/s ({_users(best['users'])})" if best else f"{name} none")
        lines.append(f"- Best within /classify's p99 <= {CLASSIFY_MAX_P99_MS:.0f} ms: {'; '.join(within)}")
    return lines


def _stages(path: Path | None) -> list[str]:
    lines = ["| stage | status | seconds |", "|---|---|---:|"]
    if path is not None and path.is_file():
        for row in path.read_text().splitlines():
            name, status, seconds = (row.split("\t") + ["", ""])[:3]
            lines.append(f"| {name} | {status} | {seconds} |")
    return lines


def _engine_targets(engine: dict[str, Any] | None) -> list[tuple[str, str, str]]:
    from bench.gpu.bench_report import TARGET_MODEL, TARGETS, evaluate_targets, peak_share, peak_text

    rows = []
    judged = {(r["batch"], r["model"]): r for r in evaluate_targets(engine)} if engine else {}
    for t in TARGETS:
        what = f"ORT fp16 >= {t['min_ratio']}x PyTorch eager fp16 channels-last, {TARGET_MODEL}, batch {t['batch']}"
        r = judged.get((t["batch"], TARGET_MODEL))
        if r is None:
            rows.append((what, "–", "not measured" + ("" if engine else ": no engine results")))
        elif "ratio" in r:
            by = _by(r["ratio"], t["min_ratio"]) + ("" if r["verdict"] == "met" else
                                                   f"; needs ORT <= {r['ort_ms_needed']:.3f} ms")
            rows.append((what, f"{r['ratio']:.2f}x ({r['best']} {r['ort_ms']:.3f} ms, PyTorch {r['baseline_ms']:.3f} ms)",
                         f"**{r['verdict']}** ({by})"))
        else:
            rows.append((what, "–", r["verdict"]))
    share = peak_share(engine, TARGET_MODEL) if engine else None
    rows.append((f"{TARGET_MODEL}'s best throughput as a share of the card's dense fp16 peak",
                 peak_text(share) if share else "–",
                 "reported (no threshold)" if share else "not evaluated: no CUDA figure"))
    return rows


def _closed(part: dict[str, Any] | None) -> list[dict[str, Any]]:
    return [r for r in (part or {}).get("runs", []) if r.get("mode") == "closed" and "error" not in r]


def _throughput_target(what: str, runs: list[dict[str, Any]], minimum: float, max_p99_ms: float | None, who: str,
                       dry_run: bool) -> tuple[str, str, str]:
    """(what, measured, verdict) of "at least ``minimum`` images/s [with p99 <= ``max_p99_ms``]": judged
    on the fastest run within the p99 bound, the fastest of all shown beside it."""
    if not runs:
        return what, "–", "not measured"
    best = max(runs, key=lambda r: r["images_per_s"])
    within = [r for r in runs if max_p99_ms is None or (r.get("p99_ms") is not None and r["p99_ms"] <= max_p99_ms)]
    good = max(within, key=lambda r: r["images_per_s"]) if within else None
    measured = f"best {best['images_per_s']:,.0f} images/s at p99 {_f(best.get('p99_ms'))} ms ({_users(best['users'], who)})"
    if good is not None and good is not best:
        measured += f"; within the p99: {good['images_per_s']:,.0f} ({_users(good['users'], who)})"
    if good is None:
        verdict = f"**missed** (no run within p99 {max_p99_ms:.0f} ms)"
    else:
        verdict = (f"**{'met' if good['images_per_s'] >= minimum else 'missed'}** "
                   f"({_by(good['images_per_s'], minimum)})")
    return what, measured + " (only the loads tried)", "not evaluated: CPU dry run" if dry_run else verdict


def _service_targets(classify: dict[str, Any] | None, batch: dict[str, Any] | None, engine: dict[str, Any] | None,
                     sweep: dict[str, Any] | None, dry_run: bool) -> list[tuple[str, str, str]]:
    per_request = (batch or {}).get("settings", {}).get("images_per_request", 16)
    rows = [_throughput_target(f"/classify >= {CLASSIFY_MIN_IMAGES_PER_S:,.0f} images/s with p99 <= "
                               f"{CLASSIFY_MAX_P99_MS:.0f} ms", _closed(classify), CLASSIFY_MIN_IMAGES_PER_S,
                               CLASSIFY_MAX_P99_MS, "user", dry_run),
            _throughput_target(f"/classify_batch ({per_request} images per request) >= "
                               f"{BATCH_MIN_IMAGES_PER_S:,.0f} images/s", _closed(batch), BATCH_MIN_IMAGES_PER_S,
                               None, "client", dry_run)]
    what = f"1-client /classify p50 <= engine batch-1 latency + {ONE_CLIENT_MARGIN_MS} ms"
    one = next((r for r in _closed(classify) if r["users"] == 1 and r.get("p50_ms") is not None), None)
    engine_ms, source = engine_batch1(classify, engine, sweep)
    if one is None or engine_ms is None:
        rows.append((what, "–", "not measured (no 1-user run or no engine batch-1 figure)"))
    else:
        over = one["p50_ms"] - engine_ms
        verdict = (f"**met** ({ONE_CLIENT_MARGIN_MS - over:.2f} ms to spare)" if over <= ONE_CLIENT_MARGIN_MS
                   else f"**missed** (by {over - ONE_CLIENT_MARGIN_MS:.2f} ms)")
        rows.append((what, f"p50 {one['p50_ms']:.2f} ms, engine {engine_ms:.2f} ms ({source}): {over:+.2f} ms",
                     "not evaluated: CPU dry run" if dry_run else verdict))
    return rows


def engine_batch1(classify: dict[str, Any] | None, engine: dict[str, Any] | None,
                  sweep: dict[str, Any] | None) -> tuple[float | None, str]:
    """The engine's batch-1 latency to hold the service's to: the engine check's ``OnnxEngine`` with the
    service's own CUDA-graph / NHWC settings, else the sweep's engine-only figure for that model."""
    env = (classify or {}).get("service_env") or {}
    label = ENGINE_ROWS[(env.get("RESNET_CUDA_GRAPHS") == "on", env.get("RESNET_PREFER_NHWC") == "on")]
    check = (engine or {}).get("engine_check") or {}
    row = check.get("engines", {}).get(label, {}).get("batches", {}).get("1", {})
    if row.get("median_ms") is not None:
        return row["median_ms"], f"engine check OnnxEngine {label}, {check.get('precision')}, median"
    model = ((classify or {}).get("served") or {}).get("name", "resnet50-imagenet")
    for precision, models in (sweep or {}).get("engine", {}).items():
        figure = models.get(model, {}).get("1", {}).get("p50_ms")
        if figure is not None:
            return figure, f"the sweep's OnnxEngine, {precision}, p50"
    return None, ""


def _service_table(classify: dict[str, Any] | None, batch: dict[str, Any] | None) -> list[str]:
    runs = [*(classify or {}).get("runs", []), *(batch or {}).get("runs", [])]
    if not runs:
        return ["Service: no classify.json or batch.json"]
    served = (classify or batch or {}).get("served") or {}
    corpus = (classify or batch or {}).get("corpus") or {}
    lines = [f"{served.get('name', '?')} ({served.get('precision', '?')} on {served.get('provider', '?')}); "
             f"{corpus.get('images', '?')} distinct {'x'.join(map(str, corpus.get('size', [])))} JPEGs, "
             f"{_f((corpus.get('mean_bytes') or 0) / 1e3)} kB mean. Cores: mean over the run's steady part.", "",
             "| endpoint | loop | users | offered req/s | images/s | p50 ms | p95 ms | p99 ms | failures | mean batch "
             "| service cores | generator cores | machine busy / cores |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        if "error" in r:
            lines.append(f"| {r['endpoint']} | {r.get('mode')} | {r.get('users', '–')} | {r.get('open_rate_spec') or ''} "
                         f"| {r['error']} |" + " |" * 8)
            continue
        c = r.get("cpu") or {}
        offered = f"{r['offered_rate']:,.0f} ({r['open_rate_spec']})" if r.get("offered_rate") else "closed"
        lines.append(f"| {r['endpoint']} | {r['mode']} | {r['users']} | {offered} | {r['images_per_s']:,.0f} | "
                     f"{_f(r.get('p50_ms'), 2)} | {_f(r.get('p95_ms'), 2)} | {_f(r.get('p99_ms'), 2)} | "
                     f"{r['failures']} / {r['requests']} | {_f(r.get('mean_batch_size'))} | "
                     f"{_f(c.get('service_cores'))} | {_f(c.get('generator_cores'))} | "
                     f"{_f(c.get('machine_busy_cores'))} / {_f(c.get('machine_cores'), 0)} |")
    return lines


def _engine(engine: dict[str, Any] | None) -> list[str]:
    from bench.gpu.bench_report import evaluate_targets, target_summary

    if engine is None:
        return ["engine: no results.json"]
    rows = evaluate_targets(engine)
    lines = ["| batch | model | best ORT fp16 / PyTorch fp16 CL | target | verdict |", "|---:|---|---:|---:|---|"]
    for r in rows:
        ratio = f"{r['ratio']:.2f}x ({r['ort_ms']:.3f} / {r['baseline_ms']:.3f} ms)" if "ratio" in r else "–"
        lines.append(f"| {r['batch']} | {r['model']} | {ratio} | {r['target_ratio']}x | {r['verdict']} |")
    return lines + [""] + [f"- {s}" for s in target_summary(rows)]


def _sweep(sweep: dict[str, Any] | None) -> list[str]:
    if sweep is None:
        return ["sweep: no results.json and no Locust CSVs"]
    lines = ["sweep: read back from the raw Locust CSVs (the sweep stopped before writing its results)", ""] \
        if sweep.get("from_raw_csv") else []
    lines += ["| model | provider | loop | users | req/s (= images/s) | p50 ms | p95 ms | p99 ms | failures | mean batch |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    served = sweep.get("models", {})
    for run in sweep.get("runs", []):
        s = run.get("stats", {}).get("classify") or next(iter(run.get("stats", {}).values()), {})
        provider = served.get(run.get("model"), {}).get("provider", "?")
        lines.append(f"| {run.get('model')} | {provider} | {run.get('mode', 'closed')} | {run.get('users')} | "
                     f"{_f(s.get('requests_per_s'))} | {_f(s.get('p50_ms'))} | {_f(s.get('p95_ms'))} | "
                     f"{_f(s.get('p99_ms'))} | {s.get('failures')} | {_f(run.get('mean_batch_size'))} |")
    return lines


def summarize(stages: Path | None, engine_path: Path | None, sweep_path: Path | None, dry_run: bool = False,
              sweep_raw: Path | None = None, classify_path: Path | None = None,
              batch_path: Path | None = None, classify_other_path: Path | None = None) -> str:
    engine, sweep = _load(engine_path), _load(sweep_path) or sweep_from_raw(sweep_raw)
    classify, batch, other = _load(classify_path), _load(batch_path), _load(classify_other_path)
    title = "## GPU check summary" + (": CPU DRY RUN, every figure a CPU figure, none from a GPU" if dry_run else "")
    targets = _engine_targets(engine) + _service_targets(classify, batch, engine, sweep, dry_run)
    parts = [title, "", *_header(engine, classify, sweep, other), "", *_stages(stages), "",
             "### Issue 17's targets", "", "| target | measured | verdict |", "|---|---|---|",
             *[f"| {what} | {measured} | {verdict} |" for what, measured, verdict in targets], "",
             "### Engine: onnxruntime fp16 against PyTorch eager fp16 channels-last, every depth", "", *_engine(engine), "",
             "### The service under load", "", *_service_table(classify, batch), "",
             "### Topologies side by side: /classify closed loop", "", *_topologies(classify, other, dry_run), "",
             "### Depth sweep (`loadtests.sweep`, Locust)", "", *_sweep(sweep)]
    return "\n".join(parts) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu.summary", description=__doc__.split("\n")[0])
    p.add_argument("--stages", type=Path, help="check.sh's stages.tsv (name, status, seconds)")
    p.add_argument("--engine", type=Path, help="the engine bench's results.json")
    p.add_argument("--classify", type=Path, help="bench.gpu.service_load's classify.json")
    p.add_argument("--batch", type=Path, help="bench.gpu.service_load's batch.json")
    p.add_argument("--classify-other", type=Path,
                   help="classify.json of the topology stage (the service with the other RESNET_TOPOLOGY)")
    p.add_argument("--sweep", type=Path, help="the sweep's results.json")
    p.add_argument("--sweep-raw", type=Path, help="the sweep's folder of Locust CSVs, read if results.json is missing")
    p.add_argument("--dry-run", action="store_true", help="say in the title that these are CPU figures")
    args = p.parse_args(argv)
    print(summarize(args.stages, args.engine, args.sweep, args.dry_run, args.sweep_raw, args.classify, args.batch,
                    args.classify_other), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
