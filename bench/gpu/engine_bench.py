"""The engine on the GPU: onnxruntime's CUDA provider against PyTorch eager, ResNet-18 ... 152 at
224x224 and the Fashion-MNIST family at 28x28.

    python -m bench.gpu.engine_bench --out /tmp/engine --register --onnx-dir /tmp/onnx   # GPU machine
    python -m bench.gpu.engine_bench --dry-run --out /tmp/engine-dry                     # CPU rehearsal
    python -m bench.gpu.engine_bench --report-only --out /tmp/engine                     # redo the report

For each model (ImageNet ResNets: deterministic random weights, ``export.sources.untrained``; the
family, resnet20 ... plain56: its committed checkpoint in ``models/checkpoints``):

1. fp32 and fp16 ONNX from ``export.pipeline`` (verified there against float64 PyTorch, as every
   export is; ``--register`` also puts them in the BentoML store for the service);
2. numerics: onnxruntime CUDA fp32 and fp16 against onnxruntime CPU fp32 on the same 8 images;
3. timings at each batch size: onnxruntime fp32 and fp16 with IO binding (input and output in device
   memory), each with and without ``prefer_nhwc`` and with and without a CUDA graph (one session per
   batch size), fp16 also with ``cudnn_conv_use_max_workspace=0`` (onnxruntime issue #20712), against
   PyTorch eager fp16 channels-last and eager fp32: the median of ``--repeats`` calls after
   ``--warmup`` untimed ones, each call synchronised (the family: ``--family-variants``, fewer). Every
   timed variant's output is also checked against the CPU reference, and every CUDA figure comes from
   a session whose ``get_providers()`` starts with the CUDA provider: onnxruntime's silent fallback to
   the CPU is refused, never reported.

Then ``service.engine.OnnxEngine`` itself (the service's path, host arrays in and out) with its CUDA
graph and NHWC options, and a ``torch.profiler`` summary of where a call's time goes. ``--deadline-s``
bounds the whole run: each model gets a share of the time left (by its size), its target batch sizes
(1, 64, 256) first; what does not fit is recorded as skipped. Without CUDA, ``--dry-run`` runs it all on
the CPU provider with tiny settings, every CUDA-only variant recorded as skipped, and says so.
Writes ``results.json`` (also after each model), ``report.md`` and ``engine_bench.png`` to ``--out``.
"""
from __future__ import annotations

import argparse
import gc
import logging
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from bench.gpu import environment
from bench.gpu.engine_check import check_engine
from bench.gpu.profiling import profile_engines
from bench.gpu.runners import (BASELINE, FAMILY_VARIANTS, REFERENCE_IMAGES, TOLERANCE, VARIANTS, FellBack, OrtRunner,
                               TorchRunner, Variant, nhwc_nodes, ort_session, relative_error, session_facts,
                               time_calls, top1_agreement, torch_model)
from common.cli import int_list, run_cli
from common.errors import UserError
from common.files import ensure_writable_dir

log = logging.getLogger(__name__)
DEFAULT_MODELS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
DEFAULT_FAMILY = ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "plain20", "plain32", "plain44", "plain56")
DEFAULT_BATCHES = (1, 8, 64, 256)
TARGET_BATCHES = (1, 64, 256)  # measured first within each model: the targets are set there
PROFILE_BATCHES = (1, 64)
DRY_RUN = {"models": ["resnet18", "resnet20"], "batches": [1, 2], "repeats": 3, "warmup": 1}
TAIL_SECONDS = 40  # of --deadline-s kept for the OnnxEngine check, the profile and the report


@dataclass
class BenchConfig:
    models: list[str] = field(default_factory=lambda: [*DEFAULT_MODELS, *DEFAULT_FAMILY])
    batches: list[int] = field(default_factory=lambda: list(DEFAULT_BATCHES))
    repeats: int = 30
    warmup: int = 5
    max_cell_seconds: float = 1.5  # fewer timed calls (>= 10) where 30 would take longer
    deadline_s: float | None = None
    dry_run: bool = False
    onnx_dir: Path | None = None  # default: a temporary folder
    register: bool = False
    profile: bool = True
    engine_check: bool = True
    profile_model: str = "resnet50"  # or the first model when it is not measured
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    family_variants: list[str] = field(default_factory=lambda: list(FAMILY_VARIANTS))  # of ``variants``
    seed: int = 0

    def variants_for(self, name: str) -> list[str]:
        return [v for v in self.variants if not environment.is_family(name) or v in self.family_variants]


def new_results(cfg: BenchConfig) -> dict[str, Any]:
    device = "cpu" if cfg.dry_run else "cuda"
    return {
        "dry_run": cfg.dry_run, "device": device, "machine": environment.machine_info(),
        "settings": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
                     "command": "python -m bench.gpu.engine_bench " + " ".join(sys.argv[1:]),
                     "tolerance": TOLERANCE, "reference_images": REFERENCE_IMAGES,
                     "inputs": f"{REFERENCE_IMAGES} standard-normal images (seed {cfg.seed}) of each model's input "
                               "shape tiled to each batch "
                               "size; onnxruntime takes float32 `images` in both precisions (the fp16 files cast "
                               "inside the graph), PyTorch fp16 takes float16 tensors",
                     "timing": "host wall clock per call (time.perf_counter), each call synchronised; "
                               "median of the timed calls",
                     "torch": {"inference_mode": True, "cudnn_benchmark": True,
                               "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32},
                     "ort": {"graph_optimization_level": "ORT_ENABLE_ALL", "io_binding": "OrtValue input and "
                             "output on the session's device", "cuda_graph": "one session per batch size",
                             "cudnn_conv_use_max_workspace": "the provider's default unless the variant sets it"}},
        "variants": {k: asdict(v) for k, v in VARIANTS.items()}, "baseline": BASELINE,
        "models": {}, "engine_check": None, "profile": None, "complete": False,
    }


def run_bench(cfg: BenchConfig, results: dict[str, Any], save: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Fills ``results`` (from ``new_results``) model by model; ``save`` is called after each."""
    started = time.monotonic()
    deadline = started + cfg.deadline_s if cfg.deadline_s else None
    device = results["device"]
    reason = environment.cuda_missing_reason()
    if device == "cuda" and reason:
        raise UserError(f"no usable CUDA for onnxruntime ({reason}): use --dry-run for the CPU rehearsal")
    torch_device = device if device == "cpu" or torch.cuda.is_available() else None
    skip_cuda = f"skipped: {'no CUDA' if reason else 'CPU dry run'}"
    torch.backends.cudnn.benchmark = True
    with tempfile.TemporaryDirectory(prefix="engine-bench-") as tmp, logging_redirect_tqdm():
        onnx_dir = ensure_writable_dir(cfg.onnx_dir or Path(tmp) / "onnx")
        results["exports"] = environment.export_models(cfg.models, onnx_dir, cfg.register)
        measured = [m for m in cfg.models if results["exports"][m]["status"] == "ok"]
        tail = TAIL_SECONDS * (cfg.engine_check or cfg.profile)
        cells = len(cfg.batches) * sum(len(cfg.variants_for(m)) for m in measured)
        bar = tqdm(total=cells, desc="engine", unit="cell", disable=None)
        for i, name in enumerate(measured):
            share = None
            if deadline is not None:
                now = time.monotonic()
                weights = [environment.model_weight(m) for m in measured[i:]]
                share = now + max(0.0, deadline - tail - now) * weights[0] / sum(weights)
            results["models"][name] = _bench_model(name, results["exports"][name], cfg, device, torch_device,
                                                   skip_cuda, share, Path(tmp), bar, layout_check=i == 0)
            gc.collect()
            if torch_device == "cuda":
                torch.cuda.empty_cache()
            if save:
                save(results)
        bar.close()
        focus = cfg.profile_model if cfg.profile_model in measured else (measured or [None])[0]
        # the tail: the engine check may use it up to the profile's share (a third of it)
        check_until = None if deadline is None else deadline - tail / 3
        if focus and cfg.engine_check:
            results["engine_check"] = _guarded(check_until, lambda: check_engine(
                focus, results["exports"][focus], cfg.batches, (cfg.warmup, cfg.repeats, cfg.max_cell_seconds),
                device, check_until, cfg.seed))
        if focus and cfg.profile:
            batches = [b for b in PROFILE_BATCHES if b in cfg.batches] or cfg.batches[:2]
            results["profile"] = _guarded(deadline, lambda: profile_engines(
                focus, results["exports"][focus], batches, cfg.variants, device, torch_device, cfg.seed))
    results["wall_seconds"] = round(time.monotonic() - started, 1)
    results["complete"] = True


def _guarded(deadline: float | None, job: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    if deadline is not None and time.monotonic() > deadline - 5:
        return {"status": "skipped: time budget"}
    try:
        return {"status": "ok", **job()}
    except Exception as e:  # noqa: BLE001 - recorded; the figures measured so far stand
        log.exception("failed")
        return {"status": f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}


def _bench_model(name: str, export: dict[str, Any], cfg: BenchConfig, device: str, torch_device: str | None,
                 skip_cuda: str, share_deadline: float | None, tmp: Path, bar: tqdm,
                 layout_check: bool = False) -> dict[str, Any]:
    from export.verify import random_inputs
    from models.flops import count_cost

    paths = {p: Path(f) for p, f in export["files"].items()}
    source = environment.bench_source(name)
    x8 = random_inputs(source.card, REFERENCE_IMAGES, seed=cfg.seed)
    reference = ort_session(paths["fp32"], "cpu").run(None, {"images": x8})[0]
    info: dict[str, Any] = {"served": source.card.name, "dataset": source.card.dataset, "depth": source.card.depth,
                            "residual": source.card.residual, "input_shape": list(source.card.input_shape),
                            "gflops_per_image": count_cost(source.model, source.card.input_shape).gflops,
                            "sessions": {}, "batches": {}}
    if device == "cuda" and layout_check and "fp16" in paths:
        info["nhwc_graph_domains"] = _try(lambda: nhwc_nodes(paths["fp16"], tmp))
    selected = {k: v for k, v in VARIANTS.items() if k in cfg.variants_for(name)}
    sessions: dict[str, Any] = {}  # variant key -> session or the reason there is none
    for key, v in selected.items():
        if v.runtime == "ort" and v.precision not in paths:
            sessions[key] = export.get("missing", {}).get(v.precision, f"no {v.precision} export")
        elif v.runtime == "ort" and not v.graph:
            sessions[key] = (skip_cuda if device == "cpu" and v.cuda_only else _try(
                lambda v=v: ort_session(paths[v.precision], device, nhwc=v.nhwc, workspace=v.workspace)))
            if not isinstance(sessions[key], str):
                info["sessions"][key] = session_facts(sessions[key])
        elif v.runtime == "torch":
            sessions[key] = ("skipped: PyTorch has no CUDA" if torch_device is None else
                             _try(lambda v=v: torch_model(source.model, torch_device, v.precision, v.nhwc)))
    info["numerics"] = _numerics(paths, x8, reference, device, sessions)
    order = [b for b in TARGET_BATCHES if b in cfg.batches] + [b for b in cfg.batches if b not in TARGET_BATCHES]
    for batch in order:
        cells = info["batches"][str(batch)] = {}
        x = np.ascontiguousarray(np.resize(x8, (batch, *x8.shape[1:])))
        ref = reference[np.arange(batch) % REFERENCE_IMAGES]
        for key, v in selected.items():
            bar.set_postfix_str(f"{name} b{batch} {key}")
            if share_deadline is not None and time.monotonic() > share_deadline:
                cells[key] = {"status": "skipped: time budget"}
            elif device == "cpu" and v.cuda_only:
                cells[key] = {"status": skip_cuda}
            elif isinstance(sessions.get(key), str):
                cells[key] = {"status": sessions[key]}
            elif v.graph:
                cells[key] = _graph_cell(paths[v.precision], v, x, ref, cfg, device, info, key)
            elif v.runtime == "ort":
                cells[key] = _cell(lambda: OrtRunner(sessions[key], x, device), v, ref, cfg, device)
            else:
                cells[key] = _cell(lambda: TorchRunner(sessions[key], x, torch_device, v.nhwc), v, ref, cfg,
                                   torch_device)
            bar.update()
        log.info("%s batch %d: %s", name, batch, ", ".join(
            f"{k} {c['images_per_s']:.0f} img/s" for k, c in cells.items() if c["status"] == "ok"))
    sessions.clear()  # frees the sessions and models before the next model loads
    return info


def _try(job: Callable[[], Any]) -> Any:
    """``job()``, or the one-line reason it failed (``refused: ...`` for a CPU fallback)."""
    try:
        return job()
    except FellBack as e:
        return f"refused: {e}"
    except Exception as e:  # noqa: BLE001 - a variant that cannot run is a finding, not a crash
        return f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def _graph_cell(path: Path, v: Variant, x: np.ndarray, ref: np.ndarray, cfg: BenchConfig, device: str,
                info: dict[str, Any], key: str) -> dict[str, Any]:
    session = _try(lambda: ort_session(path, device, nhwc=v.nhwc, graph=True, workspace=v.workspace))
    if isinstance(session, str):
        return {"status": session}
    info["sessions"].setdefault(key, session_facts(session))
    return _cell(lambda: OrtRunner(session, x, device), v, ref, cfg, device)


def _cell(make: Callable[[], Any], v: Variant, ref: np.ndarray, cfg: BenchConfig, device: str) -> dict[str, Any]:
    """Times one runner; its output (after the timed calls: a CUDA graph's replay) against ``ref``."""
    try:
        runner = make()
        runner()  # cuDNN's algorithm search for this shape; a CUDA graph's capture
        samples = time_calls(runner, cfg.warmup, cfg.repeats, cfg.max_cell_seconds)
        error = relative_error(runner.output(), ref)
    except FellBack as e:
        return {"status": f"refused: {e}"}
    except Exception as e:  # noqa: BLE001
        return {"status": f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    ms = 1000.0 * np.asarray(samples)
    median = float(np.median(ms))
    return {"status": "ok", "device": device, "median_ms": median, "p90_ms": float(np.percentile(ms, 90)),
            "min_ms": float(ms.min()), "calls": len(samples), "images_per_s": len(ref) / (median / 1000.0),
            "rel_err_vs_cpu_fp32": error, "numerics_ok": error <= TOLERANCE[v.precision]}


def _numerics(paths: dict[str, Path], x8: np.ndarray, reference: np.ndarray, device: str,
              sessions: dict[str, Any]) -> dict[str, Any]:
    """onnxruntime on ``device`` (plain session: the timing's own when there is one) in each precision
    against the CPU fp32 output."""
    rows = {}
    for precision, path in paths.items():
        session = sessions.get(f"ort_{precision}")
        if session is None or isinstance(session, str):
            session = _try(lambda path=path: ort_session(path, device))
        if isinstance(session, str):
            rows[precision] = {"status": session}
            continue
        out = session.run(None, {"images": x8})[0]
        error = relative_error(out, reference)
        rows[precision] = {"status": "ok", "provider": session.get_providers()[0], "rel_err_vs_cpu_fp32": error,
                           "top1_agreement_pct": top1_agreement(out, reference), "tolerance": TOLERANCE[precision],
                           "ok": error <= TOLERANCE[precision]}
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # `timeout` sends SIGTERM: write what was measured, then stop


def _main(argv: Sequence[str] | None) -> int:
    from bench.gpu.bench_report import load_results, write_json, write_outputs

    p = argparse.ArgumentParser(prog="python -m bench.gpu.engine_bench", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for results.json, report.md, engine_bench.png")
    p.add_argument("--models", help="comma-separated ImageNet ResNets and Fashion-MNIST nets with a committed "
                   f"checkpoint (default {','.join(DEFAULT_MODELS + DEFAULT_FAMILY)})")
    p.add_argument("--batches", type=int_list, help="comma-separated batch sizes (default 1,8,64,256)")
    p.add_argument("--repeats", type=int, help="timed calls per cell (default 30)")
    p.add_argument("--warmup", type=int, help="untimed calls before them (default 5)")
    p.add_argument("--max-cell-seconds", type=float, default=1.5,
                   help="fewer timed calls (at least 10) where --repeats would take longer")
    p.add_argument("--deadline-s", type=float, default=0, help="wall-clock budget of the whole run (0: none)")
    p.add_argument("--dry-run", action="store_true", help="CPU provider, resnet18 and resnet20, batches 1,2, 3 calls; "
                   "CUDA-only variants recorded as skipped")
    p.add_argument("--onnx-dir", type=Path, help="where the ONNX files go (reused when present); default: temporary")
    p.add_argument("--register", action="store_true", help="also register the exports in the BentoML store")
    p.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True, help="torch.profiler summary")
    p.add_argument("--engine-check", action=argparse.BooleanOptionalAction, default=True,
                   help="time service.engine.OnnxEngine with its CUDA graph / NHWC options")
    p.add_argument("--profile-model", default="resnet50", help="the model for the engine check and the profile")
    p.add_argument("--variants", help="comma-separated subset of: " + ", ".join(VARIANTS) + " (default: all)")
    p.add_argument("--family-variants", default=",".join(FAMILY_VARIANTS),
                   help="those of --variants the Fashion-MNIST nets run (default: %(default)s)")
    p.add_argument("--report-only", action="store_true", help="rewrite report.md and the plot from OUT/results.json")
    args = p.parse_args(argv)
    ensure_writable_dir(args.out)
    if args.report_only:
        for path in write_outputs(load_results(args.out / "results.json"), args.out):
            log.info("wrote %s", path)
        return 0
    base = DRY_RUN if args.dry_run else {"models": [*DEFAULT_MODELS, *DEFAULT_FAMILY],
                                         "batches": list(DEFAULT_BATCHES), "repeats": 30, "warmup": 5}
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else base["models"]
    cfg = BenchConfig(models=list(dict.fromkeys(models)), batches=args.batches or base["batches"],
                      repeats=args.repeats or base["repeats"],
                      warmup=base["warmup"] if args.warmup is None else args.warmup,
                      max_cell_seconds=args.max_cell_seconds, deadline_s=args.deadline_s or None,
                      dry_run=args.dry_run, onnx_dir=args.onnx_dir, register=args.register, profile=args.profile,
                      engine_check=args.engine_check, profile_model=args.profile_model,
                      variants=_names(args.variants) if args.variants else list(VARIANTS),
                      family_variants=_names(args.family_variants))
    environment.check_models(cfg.models)
    unknown = [v for v in cfg.variants + cfg.family_variants if v not in VARIANTS]
    if unknown or not cfg.variants:
        raise UserError(f"unknown variant {', '.join(unknown) or '(none)'}; choose from {', '.join(VARIANTS)}")
    if cfg.repeats < 1 or cfg.warmup < 0 or cfg.max_cell_seconds <= 0:
        raise UserError("need --repeats >= 1, --warmup >= 0 and --max-cell-seconds > 0")
    results = new_results(cfg)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        run_bench(cfg, results, save=lambda r: write_json(r, args.out / "results.json"))
    except KeyboardInterrupt:
        results["interrupted"] = True
        log.error("interrupted: writing what was measured")
    finally:
        signal.signal(signal.SIGTERM, previous)  # called in-process (tests), it leaves no handler behind
    for path in write_outputs(results, args.out):
        log.info("wrote %s", path)
    if cfg.dry_run:
        log.info("CPU DRY RUN: these are CPU figures of a rehearsal, not GPU measurements")
    return 130 if results.get("interrupted") else 0


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


if __name__ == "__main__":
    raise SystemExit(main())
