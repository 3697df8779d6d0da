"""The depth study: plain against residual nets of growing depth, trained with one recipe on Fashion-MNIST.

    python -m bench.depth_study.study                     # trains what is missing into runs/study/, then the report
    python -m bench.depth_study.study --register          # ... and exports + registers the trained nets for serving
    python -m bench.depth_study.study --publish           # ... and copies them to models/checkpoints/<model>-fmnist/
    python -m bench.depth_study.study --latency reports/latency-by-depth/<stamp>/results.json
    python -m bench.depth_study.study --register --sweep 15s  # the committed report: train, register, sweep, report
    python -m bench.depth_study.study --report-only --runs runs/family --out /tmp/depth-study  # models.train_family's runs

It trains resnet20/32/44/56/110 and plain20/32/44/56 with ``models.train`` (one recipe, one seed,
per-layer gradient norms recorded), resuming any run already in ``--runs``, and writes
``reports/depth-study/``: ``report.md``, ``training_curves.png`` (the layout of the ResNet paper's
Figure 6: training and test error against epoch, plain nets left, ResNets right),
``gradient_norms.png`` (per-layer gradient norm of plain-56 and resnet-56 at initialisation and
during training) and ``results.json``. Served latency comes from a latency-by-depth report that
swept the Fashion-MNIST family (``python -m loadtests.sweep --models fmnist``), the newest one by
default. ``--publish`` copies each finished net except resnet20 (whose name is the committed
default's) to ``models/checkpoints/<model>-fmnist/`` (weights and metadata only), the committed
family that ``make serve`` serves beside the default. The defaults are a CPU budget (10,000
training images, 6 epochs, 5,000 test images): on this 2-core machine the whole family takes about
45 minutes of CPU; on a GPU pass the full data.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from models.card import served_name
from models.checkpoint import METADATA_FILE, WEIGHTS_FILE, CheckpointError, load_checkpoint
from common.cli import run_cli
from models.default import CHECKPOINTS_DIR, DEFAULT_MODEL_NAME
from common.errors import UserError
from common.files import ensure_writable_dir, sha256_file
from models.train import RESUMABLE_CHANGES, GRAD_NORMS_FILE, TrainConfig, train

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[2]  # bench/depth_study/ -> the repository
STUDY_MODELS = ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "plain20", "plain32", "plain44", "plain56")


@dataclass
class StudyConfig:
    models: tuple[str, ...] = STUDY_MODELS
    epochs: int = 6
    train_limit: int | None = 10_000  # None: all 60,000
    test_limit: int | None = 5_000  # None: all 10,000
    seed: int = 0
    runs: Path = REPO_ROOT / "runs" / "study"
    out: Path = REPO_ROOT / "reports" / "depth-study"
    latency: Path | None = None  # a latency-by-depth results.json; None: the newest that has *-fmnist runs
    register: bool = False
    publish: bool = False  # copy the finished nets' checkpoints to checkpoints/<model>-fmnist/
    checkpoints: Path = CHECKPOINTS_DIR
    sweep_duration: str | None = None  # e.g. "15s": run the latency sweep over the family first
    report_only: bool = False  # no training: the finished runs in `runs`, whatever trained them (models.train_family)
    train_overrides: dict[str, Any] = field(default_factory=dict)


def train_config(cfg: StudyConfig, model: str) -> TrainConfig:
    return TrainConfig(model=model, out=str(cfg.runs / model), epochs=cfg.epochs, train_limit=cfg.train_limit,
                       test_limit=cfg.test_limit, seed=cfg.seed, grad_norms=True, **cfg.train_overrides)


def _finished(tc: TrainConfig) -> dict[str, Any] | None:
    """The run's metadata if it finished with exactly this configuration."""
    path = Path(tc.out) / METADATA_FILE
    if not path.is_file():
        return None
    meta = json.loads(path.read_text())
    want = {k: v for k, v in asdict(tc).items() if k not in RESUMABLE_CHANGES}
    have = {k: v for k, v in meta.get("config", {}).items() if k not in RESUMABLE_CHANGES}
    return meta if have == want else None


def train_family(cfg: StudyConfig, command: str) -> dict[str, dict[str, Any]]:
    """Trains (or resumes) every model of the study; returns {model: checkpoint metadata}."""
    metas = {}
    for i, model in enumerate(cfg.models):
        tc = train_config(cfg, model)
        meta = _finished(tc)
        if meta is None:
            if (Path(tc.out) / METADATA_FILE).is_file():
                raise UserError(f"{tc.out} holds a finished run with other settings: move it or choose another --runs")
            log.info("[%d/%d] training %s (%d epochs)", i + 1, len(cfg.models), model, cfg.epochs)
            meta = train(tc, resume=True, command=command)
        else:
            log.info("[%d/%d] %s already trained: %.2f%% test accuracy", i + 1, len(cfg.models), model,
                     meta["test_accuracy"])
        metas[model] = meta
    return metas


def finished_runs(cfg: StudyConfig) -> dict[str, dict[str, Any]]:
    """{model: metadata} of the finished runs in ``cfg.runs``, whatever settings trained them (the
    GPU-trained family of models.train_family); a missing or unfinished one is a one-line error."""
    metas = {}
    for model in cfg.models:
        path = cfg.runs / model / METADATA_FILE
        meta = json.loads(path.read_text()) if path.is_file() else None
        if meta is None or len(meta.get("history", [])) != meta.get("epochs"):
            raise UserError(f"{cfg.runs / model} is not a finished run (no complete {METADATA_FILE})")
        metas[model] = meta
    return metas


PUBLISHED_FILES = (WEIGHTS_FILE, METADATA_FILE)  # no train_state.pt, logs or gradient norms


def _served_members(cfg: StudyConfig, verb: str) -> list[tuple[str, str]]:
    """(model, served name) of each net of the study but the one whose name is the default model's,
    which keeps the committed, longer-trained default."""
    members = []
    for model in cfg.models:
        served = served_name(model, "fashion-mnist")
        if served == DEFAULT_MODEL_NAME:
            log.info("%s: not %s over the default model %s", model, verb, DEFAULT_MODEL_NAME)
        else:
            members.append((model, served))
    return members


def publish_family(cfg: StudyConfig) -> dict[str, Path]:
    """Copies each finished run's weights and metadata to ``cfg.checkpoints/<model>-fmnist/``, except
    the default model's name (the committed default is not overwritten). A run that has not finished
    with the study's settings is refused before anything is copied."""
    runs = {}
    if cfg.report_only:
        finished_runs(cfg)  # every one finished, or nothing is copied
    for model, served in _served_members(cfg, "published"):
        tc = train_config(cfg, model)
        if not cfg.report_only and _finished(tc) is None:
            why = "it holds a run with other settings" if (Path(tc.out) / METADATA_FILE).is_file() else \
                f"it has no {METADATA_FILE} (training has not finished)"
            raise UserError(f"cannot publish {model}: {tc.out} is not a finished run of this study, {why}; "
                            "run python -m bench.depth_study.study first")
        runs[served] = Path(tc.out)
    published = {}
    for served, run in runs.items():
        dest = cfg.checkpoints / served
        if publish_checkpoint(run, dest):
            log.info("published %s -> %s", run, dest)
        else:
            log.info("%s already holds these weights", dest)
        published[served] = dest
    return published


def publish_checkpoint(run: Path, dest: Path) -> bool:
    """Copies ``run``'s checkpoint (verified) into ``dest`` atomically: written and checked in a
    staging folder beside it, then renamed into place, so ``dest`` is at every moment either absent,
    the complete old checkpoint or the complete new one. False when ``dest`` is already identical."""
    load_checkpoint(run)  # the weights' sha256 and architecture, as a one-line error
    if dest.is_dir() and sorted(p.name for p in dest.iterdir()) == sorted(PUBLISHED_FILES) and all(
            sha256_file(run / f) == sha256_file(dest / f) for f in PUBLISHED_FILES):
        return False
    ensure_writable_dir(dest.parent)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.staging-", dir=dest.parent))
    old = dest.parent / f"{staging.name}.old"
    try:
        for name in PUBLISHED_FILES:
            shutil.copyfile(run / name, staging / name)
        expected = json.loads((staging / METADATA_FILE).read_text()).get("weights_sha256")
        if sha256_file(staging / WEIGHTS_FILE) != expected:
            raise CheckpointError(f"{run / WEIGHTS_FILE} changed while it was copied; publish again")
        staging.chmod(0o755)  # mkdtemp's 0700 would not suit a committed folder
        if dest.exists():
            os.replace(dest, old)
        try:
            os.replace(staging, dest)
        except OSError:
            if old.exists():
                os.replace(old, dest)  # put the previous checkpoint back
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return True


def register_family(cfg: StudyConfig) -> dict[str, str]:
    """Exports (fp32) and registers each trained net as ``<model>-fmnist``, except the
    default model's name, which keeps the committed, longer-trained default."""
    from export.default_model import EXPORT_DIR, FAMILY_PRECISIONS
    from export.pipeline import ExportConfig, export_model
    from export.store import find_registered

    precisions = FAMILY_PRECISIONS  # fp32 only, as make serve exports them (why: export/default_model.py)
    tags = {}
    for model, served in _served_members(cfg, "registered"):
        weights_sha = json.loads((cfg.runs / model / METADATA_FILE).read_text()).get("weights_sha256")
        tags[model] = find_registered(served, weights_sha, precisions)  # the same weights, already there
        if tags[model]:
            log.info("%s is already registered from these weights", tags[model])
        else:
            tags[model] = export_model(ExportConfig(checkpoint=cfg.runs / model, precisions=precisions,
                                                    out=EXPORT_DIR, register=True)).tag
    return tags


def sweep_family(cfg: StudyConfig) -> None:
    """``python -m loadtests.sweep`` over the served family (1, 8 and 32 users), in its own process:
    it starts the service, and exports from ``cfg.runs`` whatever is not registered yet."""
    served = [served_name(m, "fashion-mnist") for m in cfg.models]
    cmd = [sys.executable, "-m", "loadtests.sweep", "--models", ",".join(served), "--users", "1,8,32",
           "--duration", cfg.sweep_duration, "--checkpoints", str(cfg.runs)]
    log.info("latency sweep: %s", shlex.join(cmd))
    if subprocess.run(cmd, cwd=REPO_ROOT).returncode != 0:
        raise UserError("the latency sweep failed (see its output above)")


def newest_latency_report(models: Sequence[str]) -> Path | None:
    """The newest ``reports/latency-by-depth/*/results.json`` with a closed-loop run of any of ``models``."""
    wanted = {served_name(m, "fashion-mnist") for m in models}
    for path in sorted((REPO_ROOT / "reports" / "latency-by-depth").glob("*/results.json"), reverse=True):
        runs = json.loads(path.read_text()).get("runs", [])
        if any(r["model"] in wanted and r["mode"] == "closed" for r in runs):
            return path
    return None


def run_study(cfg: StudyConfig, command: str) -> dict[str, Any]:
    from models.flops import registry_cost

    if cfg.epochs < 1:
        raise UserError("--epochs must be at least 1")
    metas = finished_runs(cfg) if cfg.report_only else train_family(cfg, command)
    if cfg.publish:
        publish_family(cfg)
    tags = register_family(cfg) if cfg.register else {}
    if cfg.sweep_duration:
        sweep_family(cfg)
    latency_path = cfg.latency or newest_latency_report(cfg.models)
    latency = json.loads(latency_path.read_text()) if latency_path else None
    models = {}
    for model, meta in metas.items():
        cost = registry_cost(model, tuple(meta["input_shape"]), meta["num_classes"])
        grads_path = cfg.runs / model / GRAD_NORMS_FILE
        models[model] = {
            "depth": meta["depth"], "residual": meta["residual"], "params": cost.params, "gflops": cost.gflops,
            "test_accuracy": meta["test_accuracy"], "test_images": meta["test_images"],
            "train_images": meta["train_images"], "epochs": meta["epochs"], "wall_time_s": meta["wall_time_s"],
            "history": meta["history"], "environment": meta.get("environment"), "registered": tags.get(model),
            "recipe": {k: meta["config"][k] for k in ("batch_size", "lr", "momentum", "weight_decay", "schedule",
                                                      "warmup_epochs", "crop_pad", "hflip", "shortcut", "seed",
                                                      "warmup_lr", "warmup_until_train_error", "warmup_min_depth",
                                                      "precision") if k in meta["config"]},
            "trainer": _trainer(meta.get("command", "")),
            "grad_norms": json.loads(grads_path.read_text()) if grads_path.is_file() else None,
            "served": _served_latency(latency, served_name(model, "fashion-mnist")) if latency else None,
        }
    return {"config": {**asdict(cfg), "runs": str(cfg.runs), "out": str(cfg.out),
                       "latency": str(latency_path) if latency_path else None},
            "command": command, "latency_report": _latency_summary(latency, latency_path), "models": models}


def _trainer(command: str) -> str:
    """The module that trained a run, from its metadata's command (models.train unless it says otherwise)."""
    words = command.split()
    return words[2] if words[:2] == ["python", "-m"] and len(words) > 2 else "models.train"


def _served_latency(latency: dict[str, Any], served: str) -> dict[str, Any] | None:
    """p50 at the lowest load and the best answered rate, from the sweep's first variant."""
    runs = [r for r in latency["runs"] if r["model"] == served and r["mode"] == "closed"]
    if not runs:
        return None
    variant = runs[0]["variant"]
    runs = [r for r in runs if r["variant"] == variant]
    low = min(runs, key=lambda r: r["users"])
    rates = [(r["stats"]["classify"]["requests_per_s"] or 0) * (1 - r["stats"]["classify"]["failures"]
                                                                 / max(1, r["stats"]["classify"]["requests"]))
             for r in runs]
    best = max(range(len(runs)), key=lambda i: rates[i])
    engine = latency.get("engine", {}).get(variant.rsplit(", ", 1)[-1], {}).get(served, {}).get("1")
    return {"variant": variant, "p50_ms_low_load": low["stats"]["classify"]["p50_ms"], "low_load_users": low["users"],
            "best_req_per_s": rates[best], "best_at_users": runs[best]["users"],
            "engine_batch1_ms": engine["p50_ms"] if engine else None,
            "trained_weights_served": served != DEFAULT_MODEL_NAME}


def _latency_summary(latency: dict[str, Any] | None, path: Path | None) -> dict[str, Any] | None:
    if latency is None or path is None:
        return None
    try:
        shown = str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        shown = str(path)
    return {"path": shown, "machine": latency["machine"].get("cpu_model"), "cores": latency["machine"].get("cpu_count"),
            "gpu": latency["machine"].get("gpu"), "command": latency["settings"].get("command")}


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    from bench.depth_study.report import write_report

    p = argparse.ArgumentParser(prog="python -m bench.depth_study.study", description=__doc__.split("\n")[0])
    p.add_argument("--models", help="comma-separated CIFAR-style models (default: the study's nine; with "
                                    "--report-only, every finished run in --runs)")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--train-limit", type=int, default=10_000, help="training images (0: all 60,000)")
    p.add_argument("--test-limit", type=int, default=5_000, help="test images (0: all 10,000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", type=Path, default=StudyConfig.runs, help="run folders, one per model (resumable)")
    p.add_argument("--out", type=Path, default=StudyConfig.out)
    p.add_argument("--latency", type=Path, help="a latency-by-depth results.json (default: the newest with *-fmnist)")
    p.add_argument("--register", action="store_true", help="export and register the trained nets for serving")
    p.add_argument("--publish", action="store_true",
                   help="copy the trained nets but resnet20 to models/checkpoints/<model>-fmnist/ (make serve's)")
    p.add_argument("--sweep", metavar="DURATION", help="run the latency sweep over the family first (e.g. 15s per load)")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: report (and --publish) the finished runs in --runs, e.g. models.train_family's")
    args = p.parse_args(argv)
    from models.registry import get_spec, list_models

    if args.models:
        models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    elif args.report_only:
        models = tuple(m for m in list_models() if (args.runs / m / METADATA_FILE).is_file())
        if not models:
            raise UserError(f"--report-only: no finished run in {args.runs}")
    else:
        models = STUDY_MODELS
    for m in models:
        if get_spec(m).family != "cifar":
            raise UserError(f"{m}: the study trains the CIFAR-style family (resnet20 ... plain110) on Fashion-MNIST")
    if args.latency and not args.latency.is_file():
        raise UserError(f"--latency {args.latency}: no such file")
    cfg = StudyConfig(models=models, epochs=args.epochs, train_limit=args.train_limit or None,
                      test_limit=args.test_limit or None, seed=args.seed, runs=args.runs, out=args.out,
                      latency=args.latency, register=args.register, publish=args.publish,
                      sweep_duration=args.sweep, report_only=args.report_only)
    ensure_writable_dir(cfg.out)
    results = run_study(cfg, "python -m bench.depth_study.study " + shlex.join(sys.argv[1:]))
    for path in write_report(results, cfg.out):
        log.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
