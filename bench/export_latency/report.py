"""Turns ``bench.export_latency.measure.run_bench``'s results into ``report.md``, ``results.json`` and a plot.

Everything here is computed from the results dict, so a report can be rebuilt from a saved
``results.json``:

    write_outputs(json.loads(Path("reports/export-bench/results.json").read_text()), Path("/tmp/r"))
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from bench.export_latency.variants import VARIANTS

PLOT_FILE, REPORT_FILE, RESULTS_FILE = "latency_vs_depth.png", "report.md", "results.json"
ORT_VS_EAGER_TARGET = 2.0  # onnxruntime fp32 (merged) vs PyTorch eager, batch 1, every ImageNet depth
INT8_TARGET = 1.5  # int8 vs onnxruntime fp32 (merged), batch 8, every model
INT8_TARGET_BATCH, ORT_TARGET_BATCH = 8, 1
BUSY_LOAD_PER_CORE = 0.5  # 1-minute load average per core above which the report flags the run
TIE_BAND = 0.02  # a merged/unmerged geometric mean this close to 1 is reported as a near-tie


def _ratio(model: dict[str, Any], batch: int, slower: str, faster: str) -> float | None:
    """``slower``'s median over ``faster``'s: > 1 when ``faster`` is indeed the faster one."""
    cell = model["batches"].get(str(batch))
    return None if cell is None else cell["median_ms"][slower] / cell["median_ms"][faster]


def _target(ratios: dict[str, float], threshold: float) -> dict[str, Any]:
    status = "not measured" if not ratios else "met" if min(ratios.values()) >= threshold else "missed"
    return {"status": status, "threshold": threshold, "ratios": ratios}


def targets(results: dict[str, Any]) -> dict[str, Any]:
    """The three verdicts of the report, computed from the medians."""
    models = results["models"]
    ort_vs_eager = {n: r for n, m in models.items()
                    if m["family"] == "imagenet" and (r := _ratio(m, ORT_TARGET_BATCH, "eager", "ort_fp32"))}
    int8 = {n: r for n, m in models.items() if (r := _ratio(m, INT8_TARGET_BATCH, "ort_fp32", "ort_int8"))}
    pairs, rounds_merged_faster, rounds = {}, 0, 0
    for name, model in models.items():
        for batch, cell in model["batches"].items():
            pairs[f"{name}@{batch}"] = cell["median_ms"]["ort_fp32_unmerged"] / cell["median_ms"]["ort_fp32"]
            # Same round, same input, back to back: a paired comparison that interleaving makes possible.
            for u, m in zip(cell["samples_ms"]["ort_fp32_unmerged"], cell["samples_ms"]["ort_fp32"]):
                rounds_merged_faster += m < u
                rounds += 1
    geomean = math.exp(sum(math.log(r) for r in pairs.values()) / len(pairs)) if pairs else None
    return {
        "ort_fp32_vs_eager_batch1": _target(ort_vs_eager, ORT_VS_EAGER_TARGET),
        "int8_vs_ort_fp32_batch8": _target(int8, INT8_TARGET),
        "merged_vs_unmerged": {
            "faster": None if geomean is None else "merged" if geomean > 1 else "unmerged",
            "geomean_unmerged_over_merged": geomean, "pairs": pairs,
            "rounds_merged_faster": rounds_merged_faster, "rounds": rounds,
        },
    }


def busy(results: dict[str, Any]) -> bool:
    """Whether other work held a noticeable share of the cores when the run began. (The load at
    the end counts the run's own threads, so it cannot tell.)"""
    return results["load_before"] > BUSY_LOAD_PER_CORE * results["machine"]["cpu_count"]


def _ms(v: float) -> str:
    return f"{v:.2f}" if v < 100 else f"{v:.1f}" if v < 1000 else f"{v:.0f}"


def _x(r: float | None) -> str:
    return "–" if r is None else f"{r:.2f}×"


def _batch_table(results: dict[str, Any], batch: int) -> list[str]:
    head = ["model", "depth", "input", "convs before → after"] + list(VARIANTS.values()) + [
        "ORT fp32 merged vs eager", "merged vs unmerged", "int8 vs ORT fp32 merged"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 4 + "---:|" * (len(head) - 4)]
    for name, m in results["models"].items():
        cell = m["batches"].get(str(batch))
        if cell is None:
            continue
        times = [f"{_ms(cell['median_ms'][k])} ({_ms(cell['p90_ms'][k])})" for k in VARIANTS]
        ratios = [_ratio(m, batch, "eager", "ort_fp32"), _ratio(m, batch, "ort_fp32_unmerged", "ort_fp32"),
                  _ratio(m, batch, "ort_fp32", "ort_int8")]
        shape = "×".join(map(str, m["input_shape"]))
        lines.append("| " + " | ".join([name, str(m["depth"]), shape, f"{m['convs_before']} → {m['convs_after']}",
                                        *times, *map(_x, ratios)]) + " |")
    return lines


def _target_lines(t: dict[str, Any]) -> list[str]:
    def listed(ratios: dict[str, float]) -> str:
        return ", ".join(f"{n} {_x(r)}" for n, r in ratios.items()) or "no model measured at that batch size"

    a, b, m = t["ort_fp32_vs_eager_batch1"], t["int8_vs_ort_fp32_batch8"], t["merged_vs_unmerged"]
    lines = [
        f"- **onnxruntime fp32 ≥ {a['threshold']:g}× PyTorch eager at batch {ORT_TARGET_BATCH} for every ImageNet "
        f"depth: {a['status']}** (ORT fp32 merged vs eager: {listed(a['ratios'])})",
        f"- **int8 ≥ {b['threshold']:g}× onnxruntime fp32 at batch {INT8_TARGET_BATCH}, every model: "
        f"{b['status']}** (int8 vs ORT fp32 merged: {listed(b['ratios'])})",
    ]
    if m["faster"] is None:
        return lines + ["- **merged vs unmerged: not measured**"]
    g = m["geomean_unmerged_over_merged"]
    note = (f"; the gap is under {TIE_BAND:.0%}, so treat it as a near-tie until a quiet-machine run agrees"
            if abs(g - 1) < TIE_BAND else "")
    lines.append(
        f"- **merged vs unmerged: faster = {m['faster']}** (geometric mean of unmerged/merged median over "
        f"{len(m['pairs'])} model×batch pairs: {g:.3f}; merged was the faster of the two in "
        f"{m['rounds_merged_faster']} of {m['rounds']} rounds, each pair timed back to back{note})")
    return lines


def render_report(results: dict[str, Any], t: dict[str, Any]) -> str:
    mach, s = results["machine"], results["settings"]
    v = mach["versions"]
    out = [
        "# Export benchmark: PyTorch vs onnxruntime, by depth", "",
        "Written by `python -m bench.export_latency.measure`; regenerate with the same command. All times are one forward "
        "call on the whole batch, in ms.", "",
        "## Machine", "",
        f"- CPU: {mach['cpu_model']}, {mach['cpu_count']} logical cores (`os.cpu_count()`), "
        f"avx512_vnni: {'yes' if mach['avx512_vnni'] else 'no'}, avx512f: {'yes' if mach['avx512f'] else 'no'}",
        f"- {mach['platform']}; Python {v['python']}, torch {v['torch']} ({mach['torch_parallel_backend']}), "
        f"onnxruntime {v['onnxruntime']}, onnx {v['onnx']}, numpy {v['numpy']}",
        f"- threads: {s['threads']} for both (`torch.set_num_threads`, ORT `intra_op_num_threads`; "
        "ORT `inter_op_num_threads` 1, sequential execution)", "",
        "## Method", "",
        "- Variants: " + "; ".join([
            "**PyTorch eager**: the unfolded model, float32, under `torch.inference_mode()`",
            "**PyTorch folded**: `export.fold.fold_model` (BatchNorm folded, projections merged)",
            "**ORT fp32 unmerged**: `fold_model(merge_projections=False)` exported by `export.onnx_io.export_fp32`",
            "**ORT fp32 merged**: `fold_model()` exported the same way",
            f"**ORT int8**: `export.onnx_io.quantize_int8` of the merged fp32 file (static QDQ, per-channel), "
            f"calibrated on {s['calibration_images']} Fashion-MNIST training images"]) + ".",
        f"- onnxruntime: `CPUExecutionProvider` only, checked with `session.get_providers()` (the run stops "
        f"otherwise); graph optimisation {s['ort_graph_optimization']}; session config {s['ort_config']}, so "
        "ORT's idle workers do not spin into the next variant's iteration.",
        "- Weights: ImageNet models are `export.sources.untrained` (deterministic random weights, non-trivial "
        "BatchNorm statistics, 3×224×224: latency as a trained model's, accuracy meaningless); resnet20 is the "
        "committed checkpoint `models/checkpoints/resnet20-fmnist` (1×28×28).",
        "- Inputs: the first images of the Fashion-MNIST test set, resized and repeated over RGB for ImageNet shapes.",
        f"- Timing: for each model and batch size, one untimed call of each variant (the output check below) and "
        f"untimed warm-up rounds (at least {s['warmup']}, and at least {s['warmup_min_seconds']:g} s), then "
        f"{s['repeats']} timed rounds. A round runs one iteration of each variant in turn (interleaved "
        "round-robin), so machine noise hits all variants alike; successive rounds take the next of "
        f"{len(s['orders'])} orders (a Williams design: each variant directly follows each other one equally "
        "often, so the brief contention left by the previous call's runtime is spread evenly). "
        "`time.perf_counter()` around each call; cells show **median (p90)** of the timed rounds. Ratios are "
        "ratios of medians; raw per-round samples are in `results.json`.",
        f"- Whole run: {results['wall_seconds']:.0f} s, including export and int8 calibration. "
        f"1-minute load average just before: {results['load_before']:.2f} on {mach['cpu_count']} cores (at the "
        f"end {results['load_after']:.2f}, the run's own threads included)"
        + (" — **the machine was busy; treat these numbers with care**" if busy(results) else "") + ".", "",
    ]
    for batch in s["batches"]:
        out += [f"## Batch {batch}", "", *_batch_table(results, batch), ""]
    out += ["## Targets", "", *_target_lines(t), "",
            f"![median latency against depth]({PLOT_FILE})", "",
            "## Checks and set-up", "",
            "Largest relative difference of each variant's logits from PyTorch eager over the measured batches "
            "(max |Δ| / max |eager|; fp32 variants should be ~1e-6, int8 shows its quantisation error):", "",
            "| model | " + " | ".join(list(VARIANTS.values())[1:]) + " | set-up s (fold, export ×2, int8) |",
            "|---|" + "---:|" * len(VARIANTS)]
    for name, m in results["models"].items():
        diffs = [max(c["rel_diff_vs_eager"][k] for c in m["batches"].values()) for k in list(VARIANTS)[1:]]
        setup = ", ".join(f"{x:.1f}" for x in m["setup_seconds"].values())
        out.append(f"| {name} | " + " | ".join(f"{d:.1e}" for d in diffs) + f" | {setup} |")
    return "\n".join(out) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    """Median latency against depth, one panel per batch size, one line per variant, log y.

    ImageNet models (3x224x224) form the lines; a model of another family and input size
    (resnet20, 1x28x28) is drawn as hollow squares of the same colours, off the lines.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    batches, models = results["settings"]["batches"], results["models"]
    imagenet = sorted((m["depth"], n) for n, m in models.items() if m["family"] == "imagenet")
    others = sorted((m["depth"], n) for n, m in models.items() if m["family"] != "imagenet")
    colors = dict(zip(VARIANTS, plt.get_cmap("tab10").colors))
    fig, axes = plt.subplots(1, len(batches), figsize=(max(7.0, 5.5 * len(batches)), 5), squeeze=False, sharey=True,
                             layout="constrained")
    for ax, batch in zip(axes[0], batches):
        def median(name: str, key: str) -> float:
            return models[name]["batches"][str(batch)]["median_ms"][key]

        for key in VARIANTS:
            if imagenet:
                ax.plot([d for d, _ in imagenet], [median(n, key) for _, n in imagenet], marker="o",
                        color=colors[key])
            for d, n in others:
                ax.plot(d, median(n, key), marker="s", mfc="none", color=colors[key], linestyle="none")
        for d, n in others:
            ax.annotate(n, (d, max(median(n, k) for k in VARIANTS)), xytext=(0, 6), textcoords="offset points",
                        fontsize=8, color="0.3", ha="center")
        ax.set_yscale("log")
        ax.margins(x=0.08)
        ax.set_xticks([d for d, _ in imagenet] or [d for d, _ in others])
        ax.set_xlabel("depth (layers)")
        ax.set_title(f"batch {batch}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("median latency per batch (ms, log scale)")
    handles = [Line2D([], [], color=colors[k], marker="o", label=label) for k, label in VARIANTS.items()]
    if imagenet and others:
        shapes = ", ".join(f"{n} {'×'.join(map(str, models[n]['input_shape']))}" for _, n in others)
        handles += [Line2D([], [], color="0.3", marker="o", label="ImageNet models, 3×224×224"),
                    Line2D([], [], color="0.3", marker="s", mfc="none", linestyle="none", label=shapes)]
    ncol = min(len(handles), 3 if len(batches) == 1 else 7)
    fig.legend(handles=handles, loc="outside lower center", ncol=ncol, fontsize=8, frameon=False)
    s, mach = results["settings"], results["machine"]
    fig.suptitle(f"{mach['cpu_model']}, {s['threads']} threads: median of {s['repeats']} interleaved rounds",
                 fontsize=10)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(results: dict[str, Any], out: Path) -> list[Path]:
    """Writes results.json (with the targets), the plot and report.md into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    t = targets(results)
    paths = [out / RESULTS_FILE, out / PLOT_FILE, out / REPORT_FILE]
    paths[0].write_text(json.dumps({**results, "targets": t}, indent=2) + "\n")
    plot(results, paths[1])
    paths[2].write_text(render_report(results, t))
    return paths
