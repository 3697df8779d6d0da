"""``bench.serving_cost.photos``' results as ``report.md``, ``results.json`` and ``photos.png``; rebuilt
from a saved results.json with ``write_outputs(json.loads(path.read_text()), out)``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PLOT_FILE, REPORT_FILE, RESULTS_FILE = "photos.png", "report.md", "results.json"
METRICS = (("cpu_ms_per_request", "CPU ms/request", "max"), ("p50_ms", "p50 ms", "max"),
           ("p99_ms", "p99 ms", "max"), ("requests_per_s", "req/s", "min"))


def _f(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def comparisons(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each client count and metric: now over before, and whether now is no worse (lower is better for
    CPU and latency, higher for throughput)."""
    now, before = (results["servers"].get(k, {}).get("runs", []) for k in ("service", "service before"))
    out = []
    for a in now:
        b = next((r for r in before if r["clients"] == a["clients"]), None)
        for metric, label, better in METRICS:
            if b is None or a[metric] is None or not b[metric]:
                continue
            ratio = a[metric] / b[metric]
            out.append({"clients": a["clients"], "metric": label, "now": a[metric], "before": b[metric],
                        "ratio": ratio, "no_worse": ratio <= 1.0 if better == "max" else ratio >= 1.0})
    return out


def markdown(results: dict[str, Any]) -> str:
    s, m = results["settings"], results["machine"]
    lines = [f"# Photos: {s['model']} with 640x480 JPEGs, the service now against before (issue 16)", "",
             f"Run {results['started']}, {results.get('wall_seconds', 0):.0f} s, on {m['cpu_model']} "
             f"({m['cpu_usable']} usable of {m['cpu_count']} cores).", "",
             "```sh", results["command"], "```", "",
             f"- `{s['tag']}` fp32 on onnxruntime's CPU provider, `RESNET_PRECISION=fp32 RESNET_DEVICE=cpu`, every "
             "other setting at its default, for both. **service**: this checkout. **service before**: "
             f"`{s['before']['commit']}`, run from its own checkout on the same packages.",
             f"- {s['images']} photos of the load tests' cached corpus (`loadtests.corpus`, kind photo, mean "
             f"{s['mean_image_bytes'] / 1000:.0f} kB), cycled; closed loop, {s['warmup_s']:g} s warm-up then "
             f"{s['duration_s']:g} s per server and client count. Before the load each photo was sent once and its "
             "top 5 compared with the model run in-process on the same file (largest probability difference: "
             + ", ".join(f"{k} {v['max_probability_difference']:.1e}" for k, v in results["servers"].items()) + ").",
             "- Server CPU: the whole `bentoml serve` process tree from `/proc`, per 200 answer.", "",
             "| server | clients | answers | other | CPU ms/request | p50 ms | p99 ms | req/s | server cores | generator cores |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, data in results["servers"].items():
        for r in data["runs"]:
            lines.append(f"| {name} | {r['clients']} | {r['answered']} | {r['not_counted']} | "
                         f"{_f(r['cpu_ms_per_request'])} | {_f(r['p50_ms'])} | {_f(r['p99_ms'])} | "
                         f"{_f(r['requests_per_s'], 2)} | {_f(r['server_cores'], 2)} | {_f(r['generator_cores'], 2)} |")
    lines += ["", "| clients | metric | now | before | now / before | no worse |", "| ---: | --- | ---: | ---: | ---: | --- |"]
    for c in comparisons(results):
        lines.append(f"| {c['clients']} | {c['metric']} | {_f(c['now'])} | {_f(c['before'])} | {c['ratio']:.2f}x | "
                     f"{'yes' if c['no_worse'] else '**no**'} |")
    lines += ["", f"![now against before]({PLOT_FILE})", ""]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, (metric, label) in zip(axes, (("cpu_ms_per_request", "server CPU ms per request"),
                                          ("p50_ms", "p50 ms (whisker: p99)"), ("requests_per_s", "requests/s"))):
        for i, (name, data) in enumerate(results["servers"].items()):
            runs = data["runs"]
            xs = [j + 0.38 * i for j in range(len(runs))]
            values = [r[metric] or 0.0 for r in runs]
            err = [[0] * len(runs), [max(0.0, (r["p99_ms"] or 0) - (r["p50_ms"] or 0)) for r in runs]] \
                if metric == "p50_ms" else None
            ax.bar(xs, values, width=0.36, yerr=err, label=name, color=f"C{i}")
            ax.set_xticks([j + 0.19 for j in range(len(runs))], [f"{r['clients']} client(s)" for r in runs])
        ax.set_title(label)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"{results['settings']['model']}, 640x480 JPEGs: now against before")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(results: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = out / RESULTS_FILE, out / REPORT_FILE, out / PLOT_FILE
    paths[0].write_text(json.dumps({**results, "comparisons": comparisons(results)}, indent=2, default=str) + "\n")
    paths[1].write_text(markdown(results))
    plot(results, paths[2])
    return list(paths)
