"""``bench.gpu.engine_bench``'s results as ``results.json``, ``report.md`` and ``engine_bench.png``.

Everything is computed from the results dict, so a report can be rebuilt from a saved results.json
(``python -m bench.gpu.engine_bench --report-only --out DIR``).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from bench.gpu.runners import BASELINE, VARIANTS

RESULTS_FILE, REPORT_FILE, PLOT_FILE = "results.json", "report.md", "engine_bench.png"
# The engine targets: onnxruntime fp16 over PyTorch eager fp16 channels-last, judged on
# TARGET_MODEL, every other depth reported beside it.
TARGETS = ({"batch": 64, "min_ratio": 1.2}, {"batch": 256, "min_ratio": 1.2}, {"batch": 1, "min_ratio": 2.5})
TARGET_MODEL = "resnet50"
# The card's dense fp16 tensor-core peak, from the datasheet (H200 SXM, as the H100 SXM): the ceiling
# that a model's images/s is set against (resnet50: 8.2 GFLOP per image, so ~120,000 images/s).
DENSE_FP16_TFLOPS = 989.0


def write_json(results: dict[str, Any], path: Path) -> Path:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, default=str) + "\n")
    os.replace(tmp, path)  # a reader (or a kill) never sees half a file
    return path


def load_results(path: Path) -> dict[str, Any]:
    from common.errors import UserError

    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {e}") from None


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (target batch, model): the fastest onnxruntime fp16 variant whose output passed
    the numerics check, against PyTorch eager fp16 channels-last; met or missed and by how much.
    Only CUDA figures are judged: a CPU dry run's rows say "not evaluated"."""
    rows = []
    for target in TARGETS:
        batch, need = target["batch"], target["min_ratio"]
        for name, model in results.get("models", {}).items():
            row: dict[str, Any] = {"model": name, "batch": batch, "target_ratio": need}
            cells = model.get("batches", {}).get(str(batch))
            base = (cells or {}).get(BASELINE, {})
            ort = {k: c for k, c in (cells or {}).items()
                   if VARIANTS[k].runtime == "ort" and VARIANTS[k].precision == "fp16" and c.get("status") == "ok"}
            if cells is None:
                row["verdict"] = f"not measured: batch {batch} not in this run"
            elif base.get("status") != "ok" or not ort:
                row["verdict"] = "not measured: " + (base.get("status", "no baseline") if base.get("status") != "ok"
                                                     else "no onnxruntime fp16 figure")
            elif base.get("device") != "cuda" or any(c.get("device") != "cuda" for c in ort.values()):
                row["verdict"] = "not evaluated: no CUDA figures (CPU dry run)"
            elif not (passing := {k: c for k, c in ort.items() if c.get("numerics_ok")}):
                row["verdict"] = "not evaluated: every onnxruntime fp16 output over the numerics tolerance"
            else:
                best = min(passing, key=lambda k: passing[k]["median_ms"])
                ratio = base["median_ms"] / passing[best]["median_ms"]
                plain = ort.get("ort_fp16")
                row.update(best=best, ort_ms=passing[best]["median_ms"], ort_images_per_s=passing[best]["images_per_s"],
                           baseline_ms=base["median_ms"], baseline_images_per_s=base["images_per_s"], ratio=ratio,
                           plain_ratio=base["median_ms"] / plain["median_ms"] if plain else None,
                           margin_pct=100.0 * (ratio / need - 1.0), ort_ms_needed=base["median_ms"] / need,
                           verdict="met" if ratio >= need else "missed")
            rows.append(row)
    return rows


def target_summary(rows: list[dict[str, Any]]) -> list[str]:
    """One line per target: its verdict on TARGET_MODEL (by how much), and how many depths met it."""
    lines = []
    for target in TARGETS:
        mine = [r for r in rows if r["batch"] == target["batch"]]
        judged = [r for r in mine if r["verdict"] in ("met", "missed")]
        met = [r for r in judged if r["verdict"] == "met"]
        focus = next((r for r in mine if r["model"] == TARGET_MODEL), None)
        if focus is None:
            status = f"not measured ({TARGET_MODEL} not in this run)"
        elif focus["verdict"] in ("met", "missed"):
            status = f"**{focus['verdict']}** ({focus['ratio']:.2f}x, {focus['margin_pct']:+.0f}%)"
        else:
            status = f"**{focus['verdict'].split(':')[0]}** ({focus['verdict'].partition(': ')[2]})"
        lines.append(f"ORT fp16 >= {target['min_ratio']}x PyTorch eager fp16 channels-last at batch {target['batch']}, "
                     f"{TARGET_MODEL}: {status}; every depth: {len(met)} of {len(mine)} met, {len(judged)} judged")
    return lines


def peak_share(results: dict[str, Any], name: str) -> dict[str, Any] | None:
    """A model's fastest CUDA figure whose output passed the numerics check (any variant, any batch),
    as a share of DENSE_FP16_TFLOPS; None when it has no such figure (a CPU dry run)."""
    model = results.get("models", {}).get(name)
    if not model or not model.get("gflops_per_image"):
        return None
    cells = [(c["images_per_s"], key, int(batch)) for batch, row in model.get("batches", {}).items()
             for key, c in row.items() if c.get("status") == "ok" and c.get("device") == "cuda" and c.get("numerics_ok")]
    if not cells:
        return None
    rate, key, batch = max(cells)
    ceiling = DENSE_FP16_TFLOPS * 1e3 / model["gflops_per_image"]
    return {"model": name, "variant": key, "batch": batch, "images_per_s": rate, "ceiling_images_per_s": ceiling,
            "gflops_per_image": model["gflops_per_image"], "peak_tflops": DENSE_FP16_TFLOPS,
            "achieved_tflops": rate * model["gflops_per_image"] / 1e3, "share": rate / ceiling}


def peak_text(share: dict[str, Any]) -> str:
    return (f"{_num(share['images_per_s'])} images/s ({VARIANTS[share['variant']].label}, batch {share['batch']}) = "
            f"{share['achieved_tflops']:.0f} TFLOPS, {100 * share['share']:.1f}% of {share['peak_tflops']:.0f} TFLOPS "
            f"({share['gflops_per_image']:.2f} GFLOP per image: {_num(share['ceiling_images_per_s'])} images/s)")


def _num(v: float | None, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.{digits}f}"


def _cell(c: dict[str, Any] | None) -> str:
    if not c:
        return "–"
    if c.get("status") != "ok":
        return c.get("status", "–")
    flag = "" if c.get("numerics_ok", True) else " ⚠"
    return f"{_num(c['images_per_s'])} img/s, {_num(c['median_ms'])} ms{flag}"


def _batches(results: dict[str, Any]) -> list[int]:
    return sorted({int(b) for m in results.get("models", {}).values() for b in m.get("batches", {})})


def _model_table(model: dict[str, Any], batches: list[int]) -> list[str]:
    lines = ["| variant | " + " | ".join(f"batch {b}" for b in batches) + " | max rel. error vs CPU fp32 |",
             "|---|" + "---:|" * (len(batches) + 1)]
    for key, v in VARIANTS.items():
        cells = [model.get("batches", {}).get(str(b), {}).get(key) for b in batches]
        if not any(cells):
            continue  # not selected in this run
        errors = [c["rel_err_vs_cpu_fp32"] for c in cells if c and c.get("status") == "ok"]
        lines.append(f"| {v.label} | " + " | ".join(_cell(c) for c in cells)
                     + f" | {f'{max(errors):.1e}' if errors else '–'} |")
    return lines


def _targets_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| batch | model | best ORT fp16 variant | ORT ms | PyTorch fp16 CL ms | ratio (plain ORT fp16) "
             "| target | verdict |", "|---:|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        if r["verdict"] in ("met", "missed"):
            by = (f"{r['margin_pct']:+.0f}%" + ("" if r["verdict"] == "met" else
                                               f"; needs ORT <= {_num(r['ort_ms_needed'], 3)} ms"))
            lines.append(f"| {r['batch']} | {r['model']} | {VARIANTS[r['best']].label} | {_num(r['ort_ms'], 3)} | "
                         f"{_num(r['baseline_ms'], 3)} | {r['ratio']:.2f}x ({_num(r['plain_ratio'])}x) | "
                         f"{r['target_ratio']}x | **{r['verdict']}** ({by}) |")
        else:
            lines.append(f"| {r['batch']} | {r['model']} | – | – | – | – | {r['target_ratio']}x | {r['verdict']} |")
    return lines


def _numerics_table(results: dict[str, Any]) -> list[str]:
    lines = ["| model | precision | export check vs float64 PyTorch (CPU; random, real) | engine provider | "
             "rel. error vs ORT CPU fp32 | top-1 agreement | within tolerance |", "|---|---|---:|---|---:|---:|---|"]
    for key, model in results.get("models", {}).items():
        export, name = results.get("exports", {}).get(key, {}).get("verification", {}), model.get("served", key)
        for precision, row in model.get("numerics", {}).items():
            ver = export.get(precision, {})
            checked = f"{ver.get('rel_error_random', 0):.1e}, {ver.get('rel_error_real', 0):.1e}" if ver else "–"
            if row.get("status") != "ok":
                lines.append(f"| {name} | {precision} | {checked} | {row.get('status')} | – | – | – |")
                continue
            lines.append(f"| {name} | {precision} | {checked} | {row['provider']} | {row['rel_err_vs_cpu_fp32']:.1e} | "
                         f"{row['top1_agreement_pct']:.0f}% | {'yes' if row['ok'] else '**no**'} "
                         f"(<= {row['tolerance']:.0e}) |")
    return lines


def _peak_table(results: dict[str, Any]) -> list[str]:
    lines = ["| model | best images/s | variant, batch | TFLOPS | share of the dense fp16 peak |", "|---|---:|---|---:|---:|"]
    for name in results.get("models", {}):
        share = peak_share(results, name)
        if share:
            lines.append(f"| {name} | {_num(share['images_per_s'])} | {VARIANTS[share['variant']].label}, "
                         f"{share['batch']} | {share['achieved_tflops']:.1f} | {100 * share['share']:.1f}% |")
    return [f"Against {DENSE_FP16_TFLOPS:.0f} TFLOPS (the datasheet's dense fp16 figure for the H200 SXM), with "
            "each model's GFLOP per image counted by `models.flops` (2 x multiply-adds).", "", *lines] \
        if len(lines) > 2 else ["Not evaluated: no CUDA figure."]


def _engine_check_lines(check: dict[str, Any] | None) -> list[str]:
    if not check:
        return ["Not run."]
    if check.get("status") != "ok":
        return [check.get("status", "not run")]
    engines = check["engines"]
    batches = sorted({int(b) for e in engines.values() for b in e.get("batches", {})})
    lines = [f"`service.engine.OnnxEngine` as the service builds it ({check['model']}, {check['precision']}; host "
             "arrays in and out, batches padded to power-of-two buckets), each option set in turn:", "",
             "| options | provider | CUDA graphs active | NHWC active | warm-up s | "
             + " | ".join(f"batch {b}" for b in batches) + " |", "|---|---|---|---|---:|" + "---:|" * len(batches)]
    for label, e in engines.items():
        if e.get("status", "ok") != "ok":
            lines.append(f"| {label} | {e['status']} | | | | " + " | ".join("–" for _ in batches) + " |")
            continue
        cells = [_cell({"status": "ok", **e["batches"][str(b)]}) if str(b) in e["batches"] else "–" for b in batches]
        lines.append(f"| {label} | {e['provider']} | {e['cuda_graphs_active']} | {e['prefer_nhwc_active']} | "
                     f"{e['warm_up_s']:.1f} | " + " | ".join(cells) + " |")
    return lines


def _profile_lines(profile: dict[str, Any] | None, results: dict[str, Any]) -> list[str]:
    if not profile:
        return ["Not run."]
    if profile.get("status") != "ok":
        return [profile.get("status", "not run")]
    lines = [f"`torch.profiler` over {profile['calls']} calls of each engine ({profile['model']}). On CUDA it records "
             "every kernel of the process, onnxruntime's included: *busy* is the GPU's kernel + copy time per call; "
             "a timed wall time far above it means the call is bound by the host (launches, synchronisation), "
             "which CUDA graphs remove.", "",
             "| engine | batch | timed median ms | GPU busy ms per call | busy share | device ops per call | top entries |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for run in profile["runs"].values():
        timed = results["models"].get(profile["model"], {}).get("batches", {}).get(str(run["batch"]), {}) \
            .get(run["variant"], {})
        wall = timed.get("median_ms") if timed.get("status") == "ok" else None
        busy = run.get("device_busy_ms_per_call")
        top = "; ".join(f"{t['name'][:48]} {_num(t['ms_per_call'], 3)} ms" for t in run["top"][:3]) or run.get("note", "")
        lines.append(f"| {VARIANTS[run['variant']].label} | {run['batch']} | {_num(wall, 3)} | {_num(busy, 3)} | "
                     f"{_num(100 * busy / wall, 0) + '%' if busy and wall else '–'} | "
                     f"{_num(run.get('device_ops_per_call'), 0)} | {top} |")
    return lines


def render_report(results: dict[str, Any]) -> str:
    m = results["machine"]
    card = m.get("card") or "no GPU"
    if results.get("dry_run"):
        card = f"this machine's CPU ({m['cpu_model']}, dry run)"
    rows = evaluate_targets(results)
    batches = _batches(results)
    out = [f"# The engine on {card}: onnxruntime CUDA against PyTorch eager, ResNet-18 ... 152 (224x224) and the "
           "Fashion-MNIST family (28x28)", ""]
    if results.get("dry_run"):
        out += ["> **CPU DRY RUN.** Every figure below was measured on this machine's CPU (onnxruntime's CPU "
                "provider, PyTorch on the CPU) as a rehearsal of the script; none is a GPU measurement, and the "
                "CUDA-only variants are recorded as skipped.", ""]
    if results.get("interrupted") or not results.get("complete"):
        out += ["> **Incomplete run**: stopped before the end; what was measured is below.", ""]
    v = m["versions"]
    out += [f"Produced by `{results['settings'].get('command', 'python -m bench.gpu.engine_bench')}` "
            f"in {results.get('wall_seconds', '?')} s.", "",
            f"- Card: {m.get('nvidia_smi') or card} (PyTorch: {m.get('torch_device_name') or 'no CUDA device'})",
            f"- Host: {m['cpu_model']}, {m['cpu_count']} cores; {m['platform']}",
            f"- Versions: onnxruntime {v['onnxruntime']} ({', '.join(m['ort_providers'])}), torch {v['torch']} "
            f"(CUDA {v.get('torch_cuda')}, cuDNN {v.get('cudnn')}), onnx {v['onnx']}, numpy {v['numpy']}, "
            f"Python {v['python']}",
            f"- Timing: {results['settings']['timing']}; {results['settings']['repeats']} timed calls "
            f"(fewer, at least {min(10, results['settings']['repeats'])}, where they would take over "
            f"{results['settings']['max_cell_seconds']} s) after "
            f"{results['settings']['warmup']} untimed ones and one call for cuDNN's algorithm search / the graph "
            f"capture. Inputs: {results['settings']['inputs']}.",
            f"- onnxruntime: {results['settings']['ort']}; CUDA provider options as applied, per variant, in "
            "results.json (`sessions`). PyTorch: " + str(results['settings']['torch']), "",
            "## Targets", "", *[f"- {line}" for line in target_summary(rows)], "", *_targets_table(rows), "",
            "## Share of the card's peak", "", *_peak_table(results), "",
            "## Numerics", "", *_numerics_table(results), ""]
    for name, model in results.get("models", {}).items():
        size = "x".join(str(d) for d in model.get("input_shape", [])[1:]) or "?"
        out += [f"## {model.get('served', name)} ({size}, {_num(model.get('gflops_per_image'), 3)} GFLOP per image)", "",
                *_model_table(model, batches), ""]
        if model.get("nhwc_graph_domains"):
            out += [f"Nodes by domain in the graph onnxruntime runs with prefer_nhwc (fp16): "
                    f"{model['nhwc_graph_domains']}", ""]
    failed = {n: e["status"] for n, e in results.get("exports", {}).items() if e.get("status") != "ok"}
    failed.update({n: "; ".join(e["missing"].values()) for n, e in results.get("exports", {}).items() if e.get("missing")})
    if failed:
        out += ["## Exports that failed", "", *[f"- {n}: {s}" for n, s in failed.items()], ""]
    out += ["## The service's engine (`service.engine.OnnxEngine`)", "", *_engine_check_lines(results.get("engine_check")),
            "", "## Where the time goes", "", *_profile_lines(results.get("profile"), results), "",
            "⚠ = output over the numerics tolerance: timed, but not counted for the targets.", ""]
    return "\n".join(out)


def plot(results: dict[str, Any], path: Path) -> Path:
    """Images/s at the largest batch <= 64 and ms per call at the smallest, by depth: one row of
    panels per input size, residual and plain nets apart (ImageNet ResNets, the family's ResNets and
    its plain nets)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[dict[str, Any]]] = {}
    for m in results.get("models", {}).values():
        size = "x".join(str(d) for d in m.get("input_shape", [])[1:]) or "?"
        groups.setdefault(size + ("" if m.get("residual", True) else " plain"), []).append(m)
    batches = _batches(results)
    fig, axes = plt.subplots(len(groups), 2, figsize=(12, 4.8 * len(groups)), squeeze=False)
    panels = [(max(b for b in batches if b <= 64) if batches else None, "images_per_s", "images/s"),
              (min(batches) if batches else None, "median_ms", "ms per call")]
    for row, (size, models) in zip(axes, sorted(groups.items(), key=lambda g: (-g[1][0].get("input_shape", [0])[-1], g[0]))):
        for ax, (batch, field, unit) in zip(row, panels):
            for key, v in VARIANTS.items():
                pts = [(m["depth"], c[field]) for m in models
                       if (c := m.get("batches", {}).get(str(batch), {}).get(key)) and c.get("status") == "ok"]
                if pts:
                    ax.plot(*zip(*sorted(pts)), marker="o", label=v.label,
                            linestyle="-" if v.runtime == "ort" else "--", linewidth=2.2 if key == BASELINE else 1.2)
            ax.set_xticks(sorted({m["depth"] for m in models}))
            ax.set_xlabel("depth")
            ax.set_ylabel(unit)
            ax.set_title(f"{size}, batch {batch}: {unit}")
            ax.set_yscale("log")
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=7)
    card = "this CPU" if results.get("dry_run") else results["machine"].get("card") or "no GPU"
    fig.suptitle(f"ResNet engine by depth on {card}" + (" — CPU DRY RUN, not GPU figures" if results.get("dry_run") else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_outputs(results: dict[str, Any], out: Path) -> list[Path]:
    results["targets"] = evaluate_targets(results)
    paths = [write_json(results, out / RESULTS_FILE)]
    (out / REPORT_FILE).write_text(render_report(results))
    paths.append(out / REPORT_FILE)
    if results.get("models"):
        paths.append(plot(results, out / PLOT_FILE))
    return paths
