"""The latency-by-depth report: ``report.md`` with a table per load, plots, and ``results.json``."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.ticker  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

log = logging.getLogger(__name__)


def _f(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _row(run: dict[str, Any], name: str = "classify") -> dict[str, Any]:
    return run["stats"].get(name, {})


def ok_rate(row: dict[str, Any]) -> float | None:
    """Requests/s that got a valid answer (Locust's own rate counts failures too)."""
    if not row.get("requests") or row.get("requests_per_s") is None:
        return None
    return row["requests_per_s"] * (1 - row["failures"] / row["requests"])


def engine_ms(results: dict[str, Any], run: dict[str, Any], batch: int) -> float | None:
    precision = run["variant"].rsplit(", ", 1)[-1]
    entry = results["engine"].get(precision, {}).get(run["model"], {}).get(str(batch))
    return entry["p50_ms"] if entry else None


def derived(results: dict[str, Any], run: dict[str, Any]) -> dict[str, float | None]:
    """Engine-only latency beside the run, the serving overhead, and Little's law's concurrency."""
    row = _row(run)
    b = round(run["mean_batch_size"]) if run.get("mean_batch_size") else None
    at_batch = engine_ms(results, run, b) if b else None
    p50, mean, rate = row.get("p50_ms"), row.get("mean_ms"), row.get("requests_per_s")
    return {"engine_batch1_ms": engine_ms(results, run, 1), "engine_at_batch_ms": at_batch,
            "overhead_ms": None if p50 is None or at_batch is None else p50 - at_batch,
            "concurrency": None if mean is None or rate is None else rate * mean / 1000}


def _model_cells(m: dict[str, Any]) -> list[str]:
    acc = f"{m['test_accuracy']:.2f}%" if m.get("trained") and m.get("test_accuracy") is not None else "untrained"
    return [m["served"], str(m["depth"]), f"{m['gflops']:.3f}" if m["gflops"] < 1 else f"{m['gflops']:.2f}",
            f"{m['params'] / 1e6:.2f}", acc]


def closed_table(results: dict[str, Any], runs: list[dict[str, Any]]) -> list[str]:
    head = ("| model | depth | GFLOPs | params (M) | test accuracy | p50 ms | p95 ms | p99 ms | ok req/s | failures "
            "| mean batch | engine-only b=1 ms | engine-only at mean batch ms | overhead ms | req/s x mean latency |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for run in runs:
        row, d, m = _row(run), derived(results, run), results["models"][run["model"]]
        lines.append("| " + " | ".join([
            *_model_cells(m), _f(row.get("p50_ms")), _f(row.get("p95_ms")), _f(row.get("p99_ms")),
            _f(ok_rate(row)), f"{row.get('failures', 0)} / {row.get('requests', 0)}",
            _f(run.get("mean_batch_size"), 2), _f(d["engine_batch1_ms"], 2), _f(d["engine_at_batch_ms"], 2),
            _f(d["overhead_ms"]), _f(d["concurrency"], 2)]) + " |")
    return lines


def open_table(results: dict[str, Any], runs: list[dict[str, Any]]) -> list[str]:
    head = ("| model | depth | users | offered req/s | achieved ok req/s | p50 / p95 / p99 ms from send "
            "| p50 / p95 / p99 ms from schedule | failures | mean batch |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for run in runs:
        row, sched, m = _row(run), _row(run, "classify (from schedule)"), results["models"][run["model"]]
        trio = lambda r: " / ".join(_f(r.get(k)) for k in ("p50_ms", "p95_ms", "p99_ms"))  # noqa: E731
        lines.append(f"| {m['served']} | {m['depth']} | {run['users']} | {_f(run['offered_rate'])} "
                     f"({run['open_rate_spec']}) | {_f(ok_rate(row))} | {trio(row)} | {trio(sched)} "
                     f"| {row.get('failures', 0)} / {row.get('requests', 0)} | {_f(run.get('mean_batch_size'), 2)} |")
    return lines


def side_by_side(results: dict[str, Any], variants: list[str]) -> list[str]:
    head = "| model | users | " + " | ".join(f"{v}: p50 ms / ok req/s" for v in variants) + " |"
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    keys = sorted({(r["model"], r["users"]) for r in results["runs"] if r["mode"] == "closed"},
                  key=lambda k: (list(results["models"]).index(k[0]), k[1]))
    for model, users in keys:
        cells = []
        for v in variants:
            run = next((r for r in results["runs"] if r["mode"] == "closed" and r["model"] == model
                        and r["users"] == users and r["variant"] == v), None)
            row = _row(run) if run else {}
            cells.append(f"{_f(row.get('p50_ms'))} / {_f(ok_rate(row))}")
        lines.append(f"| {model} | {users} | " + " | ".join(cells) + " |")
    return lines


def consistency(results: dict[str, Any]) -> list[str]:
    """Checks a reader can redo: overhead at the lowest load, and Little's law for closed loops."""
    lines = []
    closed = [r for r in results["runs"] if r["mode"] == "closed" and _row(r).get("requests")]
    for variant in dict.fromkeys(r["variant"] for r in closed):
        runs = [r for r in closed if r["variant"] == variant]
        low = min(r["users"] for r in runs)
        over = {r["model"]: derived(results, r)["overhead_ms"] for r in runs if r["users"] == low}
        over = {k: v for k, v in over.items() if v is not None}
        if over:
            lines.append(f"- {variant}, {low} user(s): p50 = engine-only latency + serving overhead, with the overhead "
                         f"{min(over.values()):.1f} to {max(over.values()):.1f} ms across models "
                         f"({', '.join(f'{k} {v:.1f}' for k, v in over.items())}).")
        ratios = [derived(results, r)["concurrency"] / r["users"] for r in runs if derived(results, r)["concurrency"]]
        if ratios:
            lines.append(f"- {variant}: Little's law, closed loop: requests/s x mean latency / users = "
                         f"{min(ratios):.2f} to {max(ratios):.2f} over {len(ratios)} runs (1.00 = every user always "
                         "had a request in flight).")
    return lines


def _save(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_latency(results: dict[str, Any], path: Path) -> None:
    closed = [r for r in results["runs"] if r["mode"] == "closed"]
    loads = sorted({r["users"] for r in closed})
    variants = list(dict.fromkeys(r["variant"] for r in closed))
    fig, axes = plt.subplots(len(variants), len(loads), figsize=(4.2 * len(loads), 3.6 * len(variants)),
                             squeeze=False, sharex=True)
    for i, variant in enumerate(variants):
        for j, users in enumerate(loads):
            ax = axes[i][j]
            for residual, style in ((True, "-"), (False, ":")):
                runs = sorted((r for r in closed if r["variant"] == variant and r["users"] == users
                               and results["models"][r["model"]]["residual"] == residual),
                              key=lambda r: results["models"][r["model"]]["depth"])
                if not runs:
                    continue
                depth = [results["models"][r["model"]]["depth"] for r in runs]
                for key, color in (("p50_ms", "tab:blue"), ("p95_ms", "tab:orange"), ("p99_ms", "tab:red")):
                    ax.plot(depth, [_row(r).get(key) for r in runs], style, marker="o", color=color,
                            label=f"{key[:3]}{'' if residual else ' (plain)'}")
            ax.set_title(f"{variant}\nclosed loop, {users} user(s)", fontsize=9)
            ax.set_xlabel("depth (layers)")
            ax.set_ylabel("latency (ms)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    _save(fig, path)


def plot_throughput(results: dict[str, Any], path: Path) -> None:
    closed = [r for r in results["runs"] if r["mode"] == "closed"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for variant in dict.fromkeys(r["variant"] for r in closed):
        for users in sorted({r["users"] for r in closed}):
            for residual, style in ((True, "-"), (False, ":")):
                runs = sorted((r for r in closed if r["variant"] == variant and r["users"] == users
                               and results["models"][r["model"]]["residual"] == residual),
                              key=lambda r: results["models"][r["model"]]["depth"])
                if runs:
                    ax.plot([results["models"][r["model"]]["depth"] for r in runs],
                            [ok_rate(_row(r)) for r in runs], style, marker="o",
                            label=f"{variant}, {users} user(s){'' if residual else ', plain'}")
    ax.set_xlabel("depth (layers)")
    ax.set_ylabel("answered requests/s (closed loop)")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    _save(fig, path)


def plot_tradeoff(results: dict[str, Any], path: Path) -> bool:
    """Test accuracy against p50 at the lowest load, for trained models; False if there are none."""
    closed = [r for r in results["runs"] if r["mode"] == "closed" and results["models"][r["model"]].get("trained")]
    if not closed:
        return False
    low = min(r["users"] for r in closed)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for variant in dict.fromkeys(r["variant"] for r in closed):
        runs = [r for r in closed if r["variant"] == variant and r["users"] == low]
        xs = [_row(r).get("p50_ms") for r in runs]
        ys = [results["models"][r["model"]]["test_accuracy"] for r in runs]
        ax.scatter(xs, ys, label=variant)
        for r, x, y in zip(runs, xs, ys):
            ax.annotate(r["model"].replace("-fmnist", ""), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(f"p50 latency at {low} user(s), ms")
    ax.set_ylabel("Fashion-MNIST test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, path)
    return True


def _header(results: dict[str, Any]) -> list[str]:
    m, s = results["machine"], results["settings"]
    versions = {**m["versions"], **m.get("versions_extra", {})}
    return [
        "# Latency and throughput by depth", "",
        f"Produced by `{s['command']}` on {s['started']}, in {results['wall_seconds'] / 60:.1f} minutes.", "",
        f"- Machine: {m['cpu_model']}, {m['cpu_count']} cores, GPU: {m.get('gpu') or 'none'}; {m['platform']}",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        f"- Service: {'the running service at ' + s['host'] if s.get('host') else 'bentoml serve started by the sweep, serving every model below at once'}; "
        f"engine provider(s): {', '.join(sorted({v.get('provider', '?') for v in results['models'].values()}))}",
        f"- Load: Locust {'with ' + str(s['workers']) + ' worker processes' if s['workers'] else 'in one process'} "
        f"on the same machine, {s['duration']:.0f} s per model and load after {s['warmup']:.0f} s of unrecorded warm-up; "
        "every response checked (status 200, model, top-k predictions, probabilities).",
        "- Inputs: " + "; ".join(f"{k}: {v['images']} images ({', '.join(v['formats'])}), {v['mean_bytes'] / 1e3:.1f} kB mean"
                                 for k, v in results["corpora"].items()),
        "",
        "How to read it: latency is from sending a request to its last byte, to 0.1 ms: percentiles of every "
        "request's exact time as Locust measured it (its CSVs round below 100 ms to whole milliseconds). **Closed loop**: each user sends its next request when the "
        "previous one returns. **Open loop**: requests are sent on a fixed schedule whatever the server does; "
        "\"from schedule\" times each request from when it should have been sent, which closed-loop figures "
        "cannot show (coordinated omission). Engine-only: the same ONNX file in the service's `OnnxEngine`, "
        "timed in the sweep process without HTTP (p50). Overhead = p50 - engine-only at the mean batch size "
        "the service formed: HTTP, multipart parsing, decoding, preprocessing, the hop to the engine process "
        "and the wait for a batch. GFLOPs = 2 x multiply-accumulates per image. "
        "`req/s x mean latency` is the concurrency Little's law implies: it should equal the users.",
        "",
    ]


def write_report(results: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    lines = _header(results)
    variants = list(dict.fromkeys(r["variant"] for r in results["runs"]))
    for variant in variants:
        runs = [r for r in results["runs"] if r["variant"] == variant]
        lines += [f"## {variant}", ""]
        for users in sorted({r["users"] for r in runs if r["mode"] == "closed"}):
            lines += [f"### Closed loop, {users} user(s)", ""]
            lines += closed_table(results, [r for r in runs if r["mode"] == "closed" and r["users"] == users]) + [""]
        if open_runs := [r for r in runs if r["mode"] == "open"]:
            lines += ["### Open loop (fixed offered rate)", ""] + open_table(results, open_runs) + [""]
    if len(variants) > 1:
        lines += ["## Side by side (closed loop)", ""] + side_by_side(results, variants) + [""]
    lines += ["## Consistency", ""] + consistency(results) + [""]
    trained = {k: v["trained_by"] for k, v in results["models"].items() if v.get("trained") and v.get("trained_by")}
    if trained:
        lines += ["## How the trained models were trained", "",
                  "Test accuracy is each model's own, from its metadata; compare recipes before comparing accuracies.", ""]
        lines += [f"- {k}: `{v}`" for k, v in trained.items()] + [""]
    failed = [r for r in results["runs"] if r["exit_code"]]
    lines += ["## Failures", ""]
    if failed or any(r["failures_by_error"] for r in results["runs"]):
        for r in results["runs"]:
            for error, count in r["failures_by_error"].items():
                lines.append(f"- {r['variant']}, {r['model']}, {r['mode']} {r['users']} users: {count} x {error}")
        lines += [f"- Locust's gate failed for {r['model']} {r['mode']} {r['users']} users ({r['variant']})" for r in failed]
    else:
        lines.append("None: every request of every run got a valid answer.")
    written = [out / "latency_vs_depth.png", out / "throughput_vs_depth.png"]
    plot_latency(results, written[0])
    plot_throughput(results, written[1])
    lines += ["", "## Plots", "", "![latency against depth](latency_vs_depth.png)", "",
              "![throughput against depth](throughput_vs_depth.png)", ""]
    if plot_tradeoff(results, out / "accuracy_vs_latency.png"):
        written.append(out / "accuracy_vs_latency.png")
        lines += ["![accuracy against latency](accuracy_vs_latency.png)", ""]
    lines += ["## Raw data", "", "`results.json` (everything above, with each run's Locust command) and, under "
              "`raw/<variant>/<model>_<mode>_u<users>`, Locust's CSV statistics "
              "(`_{stats,stats_history,failures,exceptions}.csv`), its HTML report (`.html`), every request's exact "
              "time (`_latencies.json`) and its log.", ""]
    (out / "report.md").write_text("\n".join(lines))
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    return [out / "report.md", out / "results.json", *written]
