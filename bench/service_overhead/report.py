"""Turns ``bench.service_overhead.measure.run_bench``'s results into the targets, ``report.md``, ``results.json`` and a plot.

Everything here is computed from the results dict, so a report can be rebuilt from a saved file:

    write_outputs(json.loads(Path("reports/service-bench/results.json").read_text()), Path("/tmp/r"))
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

PLOT_FILE, REPORT_FILE, RESULTS_FILE = "service_bench.png", "report.md", "results.json"
LATENCY_OVERHEAD_MS = 3.0  # (a) at 1 client: HTTP p50 <= engine-only p50 at batch 1 + this
THROUGHPUT_SHARE = 0.85  # (b) at 16 clients: service req/s >= this share of engine-only images/s ...
THROUGHPUT_CLIENTS = 16  # ... at the mean batch size the service formed
TARGET_MODE = "batching on"  # the service as deployed (RESNET_BATCHING's default)


def engine_throughput_at(results: dict[str, Any], batch: float) -> tuple[float, bool]:
    """Engine-only images/s at a (fractional) batch size, linear between the measured sizes; and
    whether ``batch`` lay outside them (then the nearest measured size's value is used)."""
    measured = sorted((int(b), v["images_per_s"]) for b, v in results["engine"]["batches"].items())
    xs, ys = zip(*measured)
    return float(np.interp(batch, xs, ys)), not xs[0] <= batch <= xs[-1]


def efficiency(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """For every mode and client count: service req/s over engine-only images/s at the batch it formed."""
    out: dict[str, dict[str, Any]] = {}
    for mode, data in results["service"].items():
        for n, run in data["runs"].items():
            b = run["mean_batch_size"]
            if b is None:
                out.setdefault(mode, {})[n] = None
                continue
            engine, clamped = engine_throughput_at(results, b)
            out.setdefault(mode, {})[n] = {"mean_batch_size": b, "engine_images_per_s": engine,
                                           "clamped": clamped, "ratio": run["requests_per_s"] / engine}
    return out


def breakdown(results: dict[str, Any], mode: str) -> dict[str, Any] | None:
    """Where a 1-client request's time goes: HTTP p50 = engine p50 + preprocess p50 + the rest."""
    run = results["service"].get(mode, {}).get("runs", {}).get("1")
    if run is None or run["p50_ms"] is None:
        return None
    engine, pre = results["engine"]["batches"]["1"]["p50_ms"], results["preprocess"]["p50_ms"]
    return {"http_p50_ms": run["p50_ms"], "engine_p50_ms": engine, "preprocess_p50_ms": pre,
            "rest_ms": run["p50_ms"] - engine - pre,
            "service_inference_mean_ms": run["service_inference_mean_ms"],
            "service_preprocess_mean_ms": run["service_preprocess_mean_ms"]}


def targets(results: dict[str, Any]) -> dict[str, Any]:
    """The issue's two targets, met or missed and by how much, from the measured numbers."""
    runs = results["service"].get(TARGET_MODE, {}).get("runs", {})
    engine_p50 = results["engine"]["batches"]["1"]["p50_ms"]
    summary = []

    a: dict[str, Any] = {"status": "not measured", "limit_ms": engine_p50 + LATENCY_OVERHEAD_MS}
    if runs.get("1", {}).get("p50_ms") is not None:
        http = runs["1"]["p50_ms"]
        a.update(status="met" if http <= a["limit_ms"] else "missed", http_p50_ms=http,
                 engine_p50_ms=engine_p50, margin_ms=a["limit_ms"] - http)
        summary.append(f"(a) 1 client, {TARGET_MODE}: HTTP p50 {http:.2f} ms vs limit {a['limit_ms']:.2f} ms "
                       f"(engine-only p50 {engine_p50:.2f} + {LATENCY_OVERHEAD_MS:g}): {a['status']} by "
                       f"{abs(a['margin_ms']):.2f} ms")
    else:
        summary.append("(a) not measured: 1 client not in --clients")

    b: dict[str, Any] = {"status": "not measured", "share": THROUGHPUT_SHARE}
    run = runs.get(str(THROUGHPUT_CLIENTS))
    if run is None:
        summary.append(f"(b) not measured: {THROUGHPUT_CLIENTS} clients not in --clients")
    elif run["mean_batch_size"] is None:
        summary.append("(b) not measured: resnet_batch_size is not visible in /metrics")
    else:
        engine, clamped = engine_throughput_at(results, run["mean_batch_size"])
        need = THROUGHPUT_SHARE * engine
        rps = run["requests_per_s"]
        b.update(status="met" if rps >= need else "missed", requests_per_s=rps,
                 mean_batch_size=run["mean_batch_size"], engine_images_per_s=engine, clamped=clamped,
                 required_per_s=need, ratio=rps / engine, margin_per_s=rps - need)
        summary.append(f"(b) {THROUGHPUT_CLIENTS} clients, {TARGET_MODE}: {rps:.0f} req/s vs "
                       f"{THROUGHPUT_SHARE:.0%} of engine-only {engine:.0f} images/s at the mean batch "
                       f"{run['mean_batch_size']:.2f} = {need:.0f}: {b['status']} by {abs(rps - need):.0f} req/s "
                       f"(service/engine = {rps / engine:.1%})")
    return {"latency_1_client": a, f"throughput_{THROUGHPUT_CLIENTS}_clients": b, "summary": summary,
            "efficiency": efficiency(results),
            "breakdown_1_client": {mode: breakdown(results, mode) for mode in results["service"]}}


# ---- report -------------------------------------------------------------------------------------

def _f(v: float | None, digits: int = 2) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _service_table(results: dict[str, Any], eff: dict[str, Any]) -> list[str]:
    head = ["mode", "clients", "ok", "errors", "req/s", "p50 ms", "p95 ms", "p99 ms", "mean batch",
            "engine calls", "engine images / requests", "engine-only img/s at that batch", "service / engine",
            "top-1 correct", "load-gen cores", "machine CPU busy"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for mode, data in results["service"].items():
        for n, r in data["runs"].items():
            e = eff[mode][n]
            errors = str(r["errors"]) + (f" ({', '.join(f'{k}: {v}' for k, v in r['errors_by_kind'].items())})"
                                         if r["errors"] else "")
            correct = "–" if r["top1_correct"] is None else f"{r['top1_correct'] / max(r['ok'], 1):.1%}"
            lines.append("| " + " | ".join([
                mode, n, str(r["ok"]), errors, _f(r["requests_per_s"], 1), _f(r["p50_ms"]), _f(r["p95_ms"]),
                _f(r["p99_ms"]), _f(r["mean_batch_size"]), f"{r['engine_calls']:.0f}",
                f"{r['engine_images']:.0f} / {r['ok'] + r['errors']}",
                "–" if e is None else f"{e['engine_images_per_s']:.0f}" + (" (clamped)" if e["clamped"] else ""),
                "–" if e is None else f"{e['ratio']:.1%}", correct, _f(r["load_generator_cores"]),
                "–" if r["machine_cpu_busy"] is None else f"{r['machine_cpu_busy']:.0%}"]) + " |")
    return lines


def _mismatch_lines(results: dict[str, Any]) -> list[str]:
    """Runs where the engine ran a different number of images than clients sent requests."""
    odd = [f"{mode} at {n} client(s): {r['engine_images']:.0f} images for {r['ok'] + r['errors']} requests"
           for mode, data in results["service"].items() for n, r in data["runs"].items()
           if r["metrics_seen"] and round(r["engine_images"]) != r["ok"] + r["errors"]]
    if not odd:
        return []
    repeats = [f"{mode} at {n}: {r['engine_calls_repeating_a_trace']} of {r['engine_calls_logged']}"
               for mode, data in results["service"].items() for n, r in data["runs"].items()
               if r.get("engine_calls_repeating_a_trace")]
    why = ("; engine calls (HTTP requests to the engine's `/infer_*`) whose trace id an earlier one of the same "
           "run already had, i.e. one `/classify` request sent to the engine twice, from the server's access log: "
           + "; ".join(repeats)) if repeats else ""
    return ["**Engine images ≠ requests** in " + "; ".join(odd) + ". Every request carries one image, so the "
            f"engine ran some images more than once or for requests not counted here{why}. The mean batch size "
            "above is of what the engine actually ran.", ""]


def _exception_lines(results: dict[str, Any]) -> list[str]:
    """The exceptions the server logged during the measured runs (the cause of its 5xx answers)."""
    rows = [f"| {mode} | {n} | {count} | `{text}` |" for mode, data in results["service"].items()
            for n, run in data["runs"].items() for text, count in run.get("server_exceptions", {}).items()]
    if not rows:
        return ["The server logged no exception during the measured runs.", ""]
    return ["Exceptions in the server's log during the measured runs (last line of each traceback):", "",
            "| mode | clients | count | exception |", "|---|---:|---:|---|", *rows, ""]


def _breakdown_lines(t: dict[str, Any]) -> list[str]:
    lines = ["| mode | HTTP p50 | engine-only p50 (batch 1) | preprocess-only p50 | rest: HTTP, multipart, "
             "JSON, engine hop, batching wait | inside the service: inference mean | preprocess mean |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for mode, d in t["breakdown_1_client"].items():
        if d is None:
            continue
        share = d["rest_ms"] / d["http_p50_ms"]
        lines.append(f"| {mode} | {d['http_p50_ms']:.2f} | {d['engine_p50_ms']:.2f} | {d['preprocess_p50_ms']:.3f} | "
                     f"{d['rest_ms']:.2f} ({share:.0%}) | {_f(d['service_inference_mean_ms'])} | "
                     f"{_f(d['service_preprocess_mean_ms'], 3)} |")
    return lines if len(lines) > 2 else ["1 client was not measured."]


def render_report(results: dict[str, Any]) -> str:
    mach, s, t = results["machine"], results["settings"], results["targets"]
    v, eng, pre = mach["versions"], results["engine"], results["preprocess"]
    cfg = s["config"]
    first_run = next(iter(next(iter(results["service"].values()))["runs"].values()))
    out = [
        "# Service benchmark: bentoml serve against the bare engine", "",
        "Written by `python -m bench.service_overhead.measure`; regenerate with the same command. Times in ms.", "",
        "## Machine", "",
        f"- CPU: {mach['cpu_model']}, {mach['cpu_count']} logical cores (`os.cpu_count()`); {mach['platform']}",
        f"- CPU busy before the run, with the bench idle (other tenants): "
        f"{'–' if mach.get('cpu_busy_before') is None else format(mach['cpu_busy_before'], '.0%')}",
        f"- Python {v['python']}, onnxruntime {v['onnxruntime']}, bentoml {v['bentoml']}, numpy {v['numpy']}",
        f"- onnxruntime provider: {eng['provider']} (engine-only); service: "
        + ", ".join(f"{m}: {d['served'].get('provider', '?')}" for m, d in results["service"].items()), "",
        "## Settings", "",
        f"- model `{s['tag']}`, precision {s['precision']} (`{s['onnx_file']}`), top_k {s['top_k']} (the default)",
        "- service config (`service.config`, shared by engine-only and both service runs; only "
        "`RESNET_BATCHING` differs): " + ", ".join(f"{k}={val}" for k, val in cfg.items()),
        f"- per client count and mode: {s['warmup_s']:g} s warm-up (same load, not recorded), then "
        f"{s['duration_s']:g} s measured; clients {', '.join(map(str, s['clients']))}",
        f"- engine-only: {s['engine_seconds']:g} s per batch size; {s['images']} Fashion-MNIST test images as PNG "
        f"(mean {pre['png_bytes_mean']:.0f} bytes; request body mean {s['request_bytes_mean']:.0f} bytes)",
        f"- BENTOML_HOME: {s['bentoml_home']}; whole run {results['wall_seconds']:.0f} s", "",
        "## Method", "",
        "- **Engine-only**: `service.catalog.resolve_models` with the service's config gives the ONNX file the "
        "service loads; `service.engine.OnnxEngine` with the service's `EngineOptions` (device, threads "
        f"{eng['options']['threads']}, max batch {eng['options']['max_batch_size']}) runs it, warmed up as the "
        "service warms it. At each batch size: 3 untimed calls, then calls in a loop; p50 per call and "
        "images/s = batch × calls / elapsed. Inputs are the preprocessed PNGs, cycled to fill the batch.",
        f"- **Preprocessing-only**: `service.preprocess.preprocess` on the same PNG bytes, {pre['calls']} calls.",
        "- **Service**: `bentoml serve service.service:Classifier` started by the bench on a free 127.0.0.1 port "
        "(its own process group, stopped at the end), ready when `/readyz` answers 200; first with "
        "`RESNET_BATCHING=on` (the default), then `off`. Closed loop: one thread per client, one keep-alive "
        "`http.client` connection each, the next POST /classify sent when the previous answer is read, new "
        "requests until the measured time is up (those in flight then are completed and counted). Multipart "
        "bodies are built once up front. Latency: send to last byte, of 200 answers whose JSON has the model "
        f"name and {s['top_k']} predictions; anything else is an error. req/s = ok answers / (last answer − start).",
        "- **Batch sizes formed**: deltas of `resnet_batch_size` `_sum`/`_count` (and of the inference and "
        "preprocess histograms) in the entry service's `GET /metrics`, scraped just before and after each "
        "measured run. BentoML runs prometheus_client in multiprocess mode (files under "
        "`$BENTOML_HOME/prometheus_multiproc_dir`, wiped at each `bentoml serve` start), so that page sums "
        "every worker's metrics, the engine process's included. 'engine images / requests' checks it: every request "
        "carries one image, so the two should match.",
        "- **Server log**: the lines `bentoml serve` logged during each measured run are scanned for tracebacks "
        "(the cause of any 5xx) and for engine calls that repeat an earlier call's trace id (BentoML's access "
        "lines carry one trace id per `/classify` request and its engine call).",
        "- The load generator shares the machine's cores with the service: 'load-gen cores' is this process's "
        "CPU time over the run's wall time; 'machine CPU busy' is /proc/stat over the run (other tenants included).",
        "",
        "## Engine-only", "",
        "| batch | p50 ms per call | ms per image | images/s | calls |", "|---:|---:|---:|---:|---:|",
    ]
    for b, r in eng["batches"].items():
        out.append(f"| {b} | {r['p50_ms']:.3f} | {r['p50_ms'] / int(b):.3f} | {r['images_per_s']:.0f} | {r['calls']} |")
    after = results.get("engine_after", {}).get("batches", {}).get("1")
    if after:
        out += ["", f"Re-check after the service runs: batch 1 p50 {after['p50_ms']:.3f} ms, "
                f"{after['images_per_s']:.0f} images/s (before: {eng['batches']['1']['p50_ms']:.3f} ms). "
                "A large gap means the machine's load changed during the run."]
    out += ["", f"Preprocessing-only: p50 **{pre['p50_ms']:.3f} ms**, mean {pre['mean_ms']:.3f} ms per image.", "",
            "## Service", "", *_service_table(results, t["efficiency"]), "",
            "'engine-only img/s at that batch' interpolates the engine-only table linearly at the mean batch size "
            "the service formed; 'service / engine' is req/s over it.", "", *_mismatch_lines(results),
            *_exception_lines(results),
            "## Targets", "", *[f"- **{line}**" for line in t["summary"]], "",
            "## Where the time goes at 1 client", "", *_breakdown_lines(t), "",
            "The first three columns are p50s of separate measurements, so 'rest' is an estimate; the last two "
            "are means inside the service from /metrics (preprocess there includes reading the upload's temp file "
            "and the hop to a thread).", "",
            f"![latency and throughput, batching on vs off]({PLOT_FILE})", ""]
    if first_run and not first_run["metrics_seen"]:
        out += ["Note: `resnet_batch_size` did not appear in /metrics, so batch sizes are unknown.", ""]
    return "\n".join(out)


def plot(results: dict[str, Any], path: Path) -> None:
    """Left: p50/p95/p99 latency per client count, batching on vs off; right: req/s, with engine-only
    images/s at the batch size each run formed as a black tick."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(results["service"])
    clients = results["settings"]["clients"]
    eff = results["targets"]["efficiency"]
    colors = dict(zip(modes, ("tab:blue", "tab:orange")))
    x = np.arange(len(clients))
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for mode in modes:
        runs = results["service"][mode]["runs"]
        for pct, style in (("p50", "-"), ("p95", "--"), ("p99", ":")):
            ys = [runs[str(n)][f"{pct}_ms"] for n in clients]
            left.plot(x, [np.nan if y is None else y for y in ys], style, marker="o", color=colors[mode],
                      label=f"{mode} {pct}")
    left.axhline(results["engine"]["batches"]["1"]["p50_ms"], color="k", lw=1, ls="-.",
                 label="engine-only p50, batch 1")
    left.set_yscale("log")
    left.set_ylabel("latency per request (ms, log)")
    left.set_title("HTTP latency, closed loop", fontsize=10)
    width = 0.8 / len(modes)
    for i, mode in enumerate(modes):
        runs = results["service"][mode]["runs"]
        pos = x - 0.4 + width * (i + 0.5)
        right.bar(pos, [runs[str(n)]["requests_per_s"] for n in clients], width, color=colors[mode], label=mode)
        for p, n in zip(pos, clients):
            e = eff[mode][str(n)]
            if e is not None:
                right.plot([p - width / 2, p + width / 2], [e["engine_images_per_s"]] * 2, color="k", lw=2)
                right.annotate(f"b={e['mean_batch_size']:.1f}\n{e['ratio']:.0%}", (p, e["engine_images_per_s"]),
                               xytext=(0, 3), textcoords="offset points", ha="center", fontsize=7)
    right.plot([], [], color="k", lw=2, label="engine-only img/s at the batch formed")
    right.set_ylabel("requests/s")
    right.set_title("throughput (label: mean batch formed, service/engine)", fontsize=10)
    for ax in (left, right):
        ax.set_xticks(x, [str(n) for n in clients])
        ax.set_xlabel("concurrent clients")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    right.set_ylim(top=right.get_ylim()[1] * 1.12)
    mach, s = results["machine"], results["settings"]
    fig.suptitle(f"{s['tag']} {s['precision']} on {mach['cpu_model']} ({mach['cpu_count']} cores), "
                 f"{s['duration_s']:g} s per point", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(results: dict[str, Any], out: Path) -> list[Path]:
    """Writes results.json, the plot and report.md into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / RESULTS_FILE, out / PLOT_FILE, out / REPORT_FILE]
    paths[0].write_text(json.dumps(results, indent=2) + "\n")
    plot(results, paths[1])
    paths[2].write_text(render_report(results))
    return paths
