"""Turns ``bench.serving_cost.measure.run_bench``'s results into issue 16's goals, ``report.md``,
``results.json`` and ``serving_cost.png``. Everything is computed from the results dict, so a report
can be rebuilt from a saved file:

    write_outputs(json.loads(Path("reports/serving-cost/results.json").read_text()), Path("/tmp/r"))
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PLOT_FILE, REPORT_FILE, RESULTS_FILE = "serving_cost.png", "report.md", "results.json"
SERVICE, NAIVE, BARE = "service", "naive BentoML", "bare ASGI"
# The service's other set-ups, measured beside it for docs/decisions/017-serving-path.md: the other
# topology, the in-process batcher off, and the service as it was before (a checkout, --before).
SHARED, UNBATCHED, BEFORE = "service, shared engine", "service, batching off", "service before"
VARIANT_ENV = {SERVICE: {}, SHARED: {"RESNET_TOPOLOGY": "shared-engine"}, UNBATCHED: {"RESNET_BATCHING": "off"},
               BEFORE: {}}
MANY = 16  # the client count of the goals that are not about one client
# (name, metric, server, path, against server, against path, clients, kind, limit): the first run's
# metric over the second's must be <= limit (kind "max") or >= limit ("min").
GOALS = (
    ("CPU/request vs naive", "cpu_ms_per_request", SERVICE, "/classify", NAIVE, "/classify", MANY, "max", 0.5),
    ("CPU/request vs bare", "cpu_ms_per_request", SERVICE, "/classify", BARE, "/classify", MANY, "max", 1.3),
    ("1-client p50 vs naive", "p50_ms", SERVICE, "/classify", NAIVE, "/classify", 1, "max", 0.7),
    ("throughput vs naive", "requests_per_s", SERVICE, "/classify", NAIVE, "/classify", MANY, "min", 2.0),
    ("batch CPU/image vs /classify", "cpu_ms_per_image", SERVICE, "/classify_batch", SERVICE, "/classify", MANY,
     "max", 0.4),
)


def find_run(results: dict[str, Any], server: str, path: str, clients: int) -> dict[str, Any] | None:
    runs = results["servers"].get(server, {}).get("runs", [])
    return next((r for r in runs if r["path"] == path and r["clients"] == clients), None)


def goals(results: dict[str, Any]) -> dict[str, Any]:
    """Each goal: the two values, their ratio, met or missed and by how much; and one line each."""
    out: dict[str, Any] = {"goals": {}, "summary": []}
    for name, metric, server, path, other, other_path, clients, kind, limit in GOALS:
        mine, theirs = find_run(results, server, path, clients), find_run(results, other, other_path, clients)
        sign = "<=" if kind == "max" else ">="
        goal: dict[str, Any] = {"metric": metric, "clients": clients, "limit": limit, "kind": kind,
                                "status": "not measured"}
        if mine and theirs and mine[metric] is not None and theirs[metric]:
            ratio = mine[metric] / theirs[metric]
            met = ratio <= limit if kind == "max" else ratio >= limit
            goal.update(value=mine[metric], against=theirs[metric], ratio=ratio,
                        status="met" if met else "missed", by=abs(ratio - limit))
            out["summary"].append(f"{name} ({clients} client(s), {metric}): {mine[metric]:.3g} / "
                                  f"{theirs[metric]:.3g} = {ratio:.2f}x, goal {sign} {limit}x: "
                                  f"{goal['status']} by {goal['by']:.2f}x")
        else:
            out["summary"].append(f"{name} ({clients} client(s)): not measured")
        out["goals"][name] = goal
    return out


def batch_floor(results: dict[str, Any]) -> dict[str, float] | None:
    """The model alone's CPU per image at the batch size of ``/classify_batch``, against the service's
    ``/classify`` at MANY clients: the lowest the batch goal's ratio could be on this machine."""
    alone = [r for r in results.get("model_alone") or [] if r["batch"] == results["settings"].get("batch_images")]
    single, batch = find_run(results, SERVICE, "/classify", MANY), find_run(results, SERVICE, "/classify_batch", MANY)
    if not alone or not single or not batch or not single["cpu_ms_per_request"] or batch["cpu_ms_per_image"] is None:
        return None
    model = alone[0]["cpu_ms_per_image"]
    return {"batch": alone[0]["batch"], "model_ms": model, "classify_ms": single["cpu_ms_per_request"],
            "ratio": model / single["cpu_ms_per_request"], "over_ms": batch["cpu_ms_per_image"] - model}


def _f(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown(results: dict[str, Any]) -> str:
    s, m = results["settings"], results["machine"]
    lines = [
        "# Serving cost: the service against a naive BentoML service and a bare ASGI app (issue 16)", "",
        f"Run {results['started']}, {results.get('wall_seconds', 0):.0f} s, on {m['cpu_model']} "
        f"({m['cpu_usable']} usable of {m['cpu_count']} cores), {m['platform']}.", "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(results["versions"].items())) + ".", "",
        "```sh", results["command"], "```", "",
        "## How it was measured", "",
        f"- One file for all three: `{s['tag']}` fp32 (`{Path(s['onnx_file']).name}` from the BentoML store), "
        "onnxruntime's CPU provider.",
        "- **service**: `bentoml serve service.service:Classifier`, `RESNET_PRECISION=fp32 RESNET_DEVICE=cpu`, every "
        "other setting at its default (each API worker holds the model behind its in-process batcher). **service, "
        "shared engine**: the same with `RESNET_TOPOLOGY=shared-engine` (one Engine process, BentoML's batchable API). "
        "**service, batching off**: `RESNET_BATCHING=off`. "
        + (f"**service before**: `{s['before']['commit']}`, run from its own checkout on the same packages. "
           if s.get("before") else "") + "**naive BentoML**: "
        "`bench/serving_cost/naive_service.py`, one Service, PIL + onnxruntime in a batchable API, 2 workers. "
        "**bare ASGI**: `bench/serving_cost/bare_asgi.py` on uvicorn, 1 worker, python-multipart, PIL, "
        "onnxruntime at batch 1, JSON, no access log. Both comparison servers share `bench/serving_cost/model.py` "
        "(one intra-op thread, not spinning).",
        f"- Every request posts the same {s['image']['png_bytes']}-byte PNG (Fashion-MNIST test image "
        f"{s['image']['fashion_mnist_test_index']}, class {s['image']['label']}: {s['image']['class']}) as multipart field `image`; "
        f"`/classify_batch` posts {s['batch_images']} copies as `images`. Only answers naming that class "
        "for every image count; each server's first answer is checked before any load.",
        f"- Closed loop (`bench.aio_http.closed_loop`, one asyncio core in the benchmark's process): "
        f"{s['warmup_s']:g} s warm-up, then {s['duration_s']:g} s measured per server, path and "
        "client count. Server CPU = user + system time of the server's whole process tree from `/proc`, "
        "read before and after the measured run, divided by right answers.",
        "- The load generator shares the machine's cores with the server; its cores are in the table.", "",
        "## Results", "",
        "| server | path | clients | right answers | not right | CPU ms/request | CPU ms/image | p50 ms | "
        "p99 ms | req/s | images/s | server cores | generator cores |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for server, data in results["servers"].items():
        for r in data["runs"]:
            lines.append(f"| {server} | `{r['path']}` | {r['clients']} | {r['answered_right']} | {r['not_right']} | "
                         f"{_f(r['cpu_ms_per_request'])} | {_f(r['cpu_ms_per_image'])} | {_f(r['p50_ms'])} | "
                         f"{_f(r['p99_ms'])} | {_f(r['requests_per_s'], 1)} | {_f(r['images_per_s'], 1)} | "
                         f"{_f(r['server_cores'])} | {_f(r['generator_cores'])} |")
    if results.get("model_alone"):
        lines += ["", "The model alone in this process (`python -m bench.serving_cost.threads`' measurement: one "
                  "intra-op thread, as each API worker's session of it has), the floor of any server's CPU per image: "
                  + "; ".join(f"batch {r['batch']}: {r['cpu_ms_per_image']:.3f} ms CPU per image"
                              for r in results["model_alone"]) + "."]
    lines += ["", "## Against issue 16's goals", "",
              "| goal | clients | service | against | ratio | goal | status |", "| --- | ---: | ---: | ---: | ---: | --- | --- |"]
    for name, g in goals(results)["goals"].items():
        sign = "<=" if g["kind"] == "max" else ">="
        status = g["status"] if g["status"] == "not measured" else f"{g['status']} by {g['by']:.2f}x"
        lines.append(f"| {name} ({g['metric']}) | {g['clients']} | {_f(g.get('value'))} | {_f(g.get('against'))} | "
                     f"{_f(g.get('ratio'))}{'x' if 'ratio' in g else ''} | {sign} {g['limit']}x | {status} |")
    floor = batch_floor(results)
    if floor is not None:
        lines += ["", f"The batch goal's floor here: the model alone costs {floor['model_ms']:.3f} ms CPU per image at batch "
                  f"{floor['batch']}, {floor['ratio']:.2f}x of the service's {floor['classify_ms']:.2f} ms per `/classify` "
                  f"at {MANY} clients, so no server can reach the goal's ratio on this machine with this model; the "
                  f"service's `/classify_batch` spends {floor['over_ms']:.3f} ms per image beyond it."]
    lines += ["", f"![CPU per request, latency and throughput by server]({PLOT_FILE})", ""]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(f"{server}\n{r['path']} x{r['clients']}", r) for server, d in results["servers"].items() for r in d["runs"]]
    labels = [label for label, _ in rows]
    fig, axes = plt.subplots(1, 3, figsize=(16, 0.45 * len(rows) + 2), sharey=True)
    panels = (("cpu_ms_per_image", "server CPU ms per image"), ("p50_ms", "p50 ms per request (whisker: p99)"),
              ("images_per_s", "images/s"))
    for ax, (metric, title) in zip(axes, panels):
        values = [r[metric] or 0.0 for _, r in rows]
        err = [max(0.0, (r["p99_ms"] or 0.0) - (r["p50_ms"] or 0.0)) for _, r in rows] if metric == "p50_ms" else None
        ax.barh(range(len(rows)), values, xerr=None if err is None else [[0] * len(err), err],
                color=["C0" if label.startswith("service\n") else "C3" if "service" in label
                       else "C1" if "naive" in label else "C2" for label in labels])
        for i, v in enumerate(values):
            ax.text(v, i, f" {v:.2f}" if v < 100 else f" {v:.0f}", va="center", fontsize=8)
        ax.set_title(title)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(rows)), labels, fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle(f"Serving cost, {results['settings']['tag']} fp32, same client and image")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(results: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    results_path, report_path, plot_path = out / RESULTS_FILE, out / REPORT_FILE, out / PLOT_FILE
    results_path.write_text(json.dumps({**results, "goals": goals(results)}, indent=2, default=str) + "\n")
    plot(results, plot_path)
    report_path.write_text(markdown(results))
    return [results_path, report_path, plot_path]
