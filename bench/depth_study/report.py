"""The depth study's report: Figure-6-style curves, gradient norms by layer, and the trade-off table."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

# The nets whose per-layer gradient norms are drawn side by side (the paper's plain/residual pair).
GRADIENT_PAIR = ("plain56", "resnet56")



def _by_depth(models: dict[str, Any], residual: bool) -> list[tuple[str, dict[str, Any]]]:
    return sorted(((k, v) for k, v in models.items() if v["residual"] == residual), key=lambda kv: kv[1]["depth"])


def plot_curves(models: dict[str, Any], path: Path) -> None:
    """Training error (dashed) and test error (solid) per epoch: plain nets left, ResNets right."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, residual in zip(axes, (False, True)):
        for i, (name, m) in enumerate(_by_depth(models, residual)):
            epochs = [h["epoch"] for h in m["history"]]
            color = f"C{i}"
            ax.plot(epochs, [h["train_error"] for h in m["history"]], "--", color=color, alpha=0.8)
            ax.plot(epochs, [h["test_error"] for h in m["history"]], "-", color=color, linewidth=2,
                    label=f"{name} ({m['depth']} layers)")
        ax.set_title(("ResNet" if residual else "plain") + ": dashed = training error, bold = test error", fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("error (%)")
    axes[0].set_ylim(0, min(60, max(h["test_error"] for m in models.values() for h in m["history"][1:]) + 5)
                     if any(len(m["history"]) > 1 for m in models.values()) else None)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_gradients(models: dict[str, Any], path: Path) -> bool:
    """Per-layer gradient norm (input to output) of plain-56 and resnet-56, at init and per epoch."""
    pair = [n for n in GRADIENT_PAIR if n in models and models[n].get("grad_norms")]
    if not pair:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, (title, which) in zip(axes, (("at initialisation (no update taken)", "init"),
                                         ("mean over each training epoch (first and last)", "epochs"))):
        for name, style in zip(pair, ("-", "-")):
            g = models[name]["grad_norms"]
            color = "tab:red" if not models[name]["residual"] else "tab:blue"
            if which == "init":
                ax.plot(range(len(g["init"])), g["init"], style, color=color, label=name)
            else:
                ax.plot(range(len(g["epochs"][0])), g["epochs"][0], ":", color=color, label=f"{name}, epoch 1")
                ax.plot(range(len(g["epochs"][-1])), g["epochs"][-1], "-", color=color,
                        label=f"{name}, epoch {len(g['epochs'])}")
        ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("weight layer, input (0) to output")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("gradient L2 norm")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def gradient_ratios(models: dict[str, Any]) -> list[str]:
    """First-layer over last-conv-layer gradient norm: how much gradient reaches the input end."""
    lines = []
    for name in GRADIENT_PAIR:
        g = models.get(name, {}).get("grad_norms")
        if not g:
            continue
        convs = [i for i, layer in enumerate(g["layers"]) if not layer.startswith("fc")]
        first, last = convs[0], convs[-1]
        at = lambda v: v[first] / v[last]  # noqa: E731
        lines.append(f"- {name}: gradient norm of the first conv over the last conv = {at(g['init']):.3g} at "
                     f"initialisation, {at(g['epochs'][0]):.3g} over epoch 1, {at(g['epochs'][-1]):.3g} over "
                     f"epoch {len(g['epochs'])}.")
    return lines


def degradation(models: dict[str, Any]) -> list[str]:
    lines = []
    for residual, label in ((False, "plain"), (True, "ResNet")):
        rows = _by_depth(models, residual)
        if len(rows) < 2:
            continue
        (shallow, s), (deep, d) = rows[0], rows[-1]
        st, dt = s["history"][-1]["train_error"], d["history"][-1]["train_error"]
        se, de = 100 - s["test_accuracy"], 100 - d["test_accuracy"]
        verdict = "higher" if dt > st else "lower"
        lines.append(f"- {label}: {deep} ends with {verdict} training error than {shallow} ({dt:.2f}% against "
                     f"{st:.2f}%, {dt - st:+.2f} points) and test error {de:.2f}% against {se:.2f}% "
                     f"({de - se:+.2f} points).")
    for depth in sorted({m["depth"] for m in models.values()}):
        p, r = f"plain{depth}", f"resnet{depth}"
        if p in models and r in models:
            lines.append(f"- depth {depth}: plain test error {100 - models[p]['test_accuracy']:.2f}%, ResNet "
                         f"{100 - models[r]['test_accuracy']:.2f}% (the shortcut is worth "
                         f"{models[r]['test_accuracy'] - models[p]['test_accuracy']:+.2f} points).")
    return lines


def tradeoff_table(models: dict[str, Any]) -> list[str]:
    head = ("| model | depth | params (M) | GFLOPs | test accuracy | served p50 at low load (ms) "
            "| engine-only b=1 (ms) | best answered req/s |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for residual in (True, False):
        for name, m in _by_depth(models, residual):
            s = m.get("served") or {}
            p50 = f"{s['p50_ms_low_load']:.0f} ({s['low_load_users']} user)" if s.get("p50_ms_low_load") else "not swept"
            eng = f"{s['engine_batch1_ms']:.2f}" if s.get("engine_batch1_ms") else "n/a"
            best = f"{s['best_req_per_s']:.1f} ({s['best_at_users']} users)" if s.get("best_req_per_s") else "n/a"
            lines.append(f"| {name} | {m['depth']} | {m['params'] / 1e6:.2f} | {m['gflops']:.3f} | "
                         f"{m['test_accuracy']:.2f}% | {p50} | {eng} | {best} |")
    return lines


def _recipe(r: dict[str, Any]) -> str:
    warmup = f"{r['warmup_epochs']:g} warm-up epoch(s) then"
    if r.get("warmup_lr"):  # models.train_family's: He et al.'s warm-up of the 110-layer nets
        warmup = (f"nets of {r['warmup_min_depth']} layers or more first at {r['warmup_lr']} until their training "
                  f"error fell below {r['warmup_until_train_error']:g}%, then")
    return (f"SGD, momentum {r['momentum']}, weight decay {r['weight_decay']}, batch {r['batch_size']}, peak learning "
            f"rate {r['lr']}, {warmup} {r['schedule']} decay, {r['crop_pad']}-pixel random crops"
            f"{' and horizontal flips' if r['hflip'] else ''}, shortcut option {r['shortcut']}, seed {r['seed']}"
            + (f", {r['precision']}" if r.get("precision") else ""))


def write_report(results: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    models, cfg = results["models"], results["config"]
    any_model = next(iter(models.values()))
    env = any_model.get("environment") or {}
    lat = results.get("latency_report")
    lines = [
        "# The depth study: plain against residual networks on Fashion-MNIST", "",
        f"Produced by `{results['command']}`. Every net was trained by `{any_model.get('trainer', 'models.train')}`"
        + (" (all the nets at once, on shared batches)" if any_model.get("trainer") == "models.train_family" else "")
        + " with one recipe "
        f"({_recipe(any_model['recipe'])}), **{any_model['epochs']} epochs on the first "
        f"{any_model['train_images']:,} training images**, errors on the first {any_model['test_images']:,} test "
        f"images, trained on {env.get('device', '?')} with torch {env.get('torch', '?')}. "
        + (f"That is a {'CPU' if env.get('device', 'cpu').startswith('cpu') else 'short'} budget: the paper trains for 64k iterations (~180 epochs) on the full data, so these "
           "curves show the early part of training only." if any_model["epochs"] < 60 else ""), "",
        "## Training and test error against epoch (the paper's Figure 6 layout)", "",
        "![training curves](training_curves.png)", "", *degradation(models), "",
        "## Gradient flow: plain-56 against resnet-56", "",
    ]
    if plot_gradients(models, out / "gradient_norms.png"):
        lines += ["![gradient norms](gradient_norms.png)", "", *gradient_ratios(models), "",
                  "Each point is the L2 norm of one weight layer's gradient, averaged over the batches of an "
                  "epoch (at initialisation: over 8 batches, before any update).", ""]
    else:
        lines += ["(plain56 and resnet56 were not both part of this run.)", ""]
    lines += ["## The trade-off: accuracy against what depth costs to serve", ""]
    lines += tradeoff_table(models) + [""]
    if lat:
        lines += [f"Served latency from [{lat['path']}](../../{lat['path'].replace('results.json', 'report.md')}) "
                  f"({lat['machine']}, {lat['cores']} cores, GPU: {lat['gpu'] or 'none'}), the sweep's first variant. "
                  "Latency depends on the architecture, not on the weights: resnet20 was served with the committed "
                  "default weights (30 epochs, full data), the others with the weights trained here.", ""]
    else:
        lines += ["No latency-by-depth report of the Fashion-MNIST family was found: run "
                  "`python -m loadtests.sweep --models fmnist` and then this study again.", ""]
    plot_curves(models, out / "training_curves.png")
    lean = {**results, "models": {k: {kk: vv for kk, vv in v.items() if kk != "grad_norms"} for k, v in models.items()}}
    (out / "results.json").write_text(json.dumps(lean, indent=1, default=str) + "\n")
    (out / "report.md").write_text("\n".join(lines))
    written = [out / "report.md", out / "results.json", out / "training_curves.png"]
    return written + ([out / "gradient_norms.png"] if (out / "gradient_norms.png").is_file() else [])
