"""Trains a registered ResNet on Fashion-MNIST with the paper's recipe (SGD, momentum, weight decay,
crop+flip augmentation), evaluating on the test set after every epoch.

    python -m models.train --model resnet20 --epochs 30 --out runs/resnet20
    python -m models.train --model resnet20 --epochs 30 --out runs/resnet20 --resume   # continue

The run folder holds ``train_state.pt`` (rewritten after every epoch, for ``--resume``) and, when
training ends, the checkpoint itself: ``model.safetensors`` + ``metadata.json`` (see checkpoint.py).
"""
from __future__ import annotations

import argparse
import logging
import math
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from common.cli import run_cli
from common.errors import UserError
from models.checkpoint import METADATA_FILE
from models.evaluate import evaluate_model
from models.recipe import (  # noqa: F401  (GRAD_NORMS_FILE, RESUMABLE_CHANGES, learning_rate: imported from here)
    GRAD_NORMS_FILE, RESUMABLE_CHANGES, STATE_FILE, EpochStats, TrainConfig, epoch_order, epoch_summary,
    init_grad_norms, learning_rate, load_device_data, load_run_state, new_grad_log, new_model, resolve_device,
    run_metadata, run_state, step_batch, train_step, weight_names, write_run,
)
from models.recipe import atomic_torch_save as _atomic_torch_save  # tests stop a run here

log = logging.getLogger(__name__)


def train(cfg: TrainConfig, resume: bool = False, command: str | None = None) -> dict[str, Any]:
    """Trains ``cfg.model`` and writes the checkpoint to ``cfg.out``; returns its metadata."""
    out = Path(cfg.out)
    state_path = out / STATE_FILE
    if not resume and (state_path.exists() or (out / METADATA_FILE).exists()):
        raise UserError(f"{out} already holds a training run: pass --resume to continue it, or choose another --out")
    if cfg.schedule not in ("cosine", "step"):
        raise UserError(f"unknown schedule {cfg.schedule!r}: use cosine or step")
    device = resolve_device(cfg.device)
    # Reproducibility over speed: no TF32, deterministic kernels, seeded everything.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True

    data = load_device_data(cfg.train_limit, cfg.test_limit, device)
    model, optimizer = new_model(cfg, device)
    names = weight_names(model)
    steps_per_epoch = math.ceil(len(data.train_x) / cfg.batch_size)

    start_epoch, history, wall = 0, [], 0.0
    grad_log = new_grad_log(names)
    if resume and state_path.exists():
        state = load_run_state(state_path, cfg, device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, history, wall, grad_log = state["epoch"], state["history"], state["wall_time_s"], state["grad_norms"]
        log.info("resuming %s from epoch %d of %d", out, start_epoch, cfg.epochs)
    out.mkdir(parents=True, exist_ok=True)

    if cfg.grad_norms and grad_log["init"] is None:
        grad_log["init"] = init_grad_norms(model, data, cfg, names)

    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        gen, perm = epoch_order(cfg, epoch, len(data.train_x), device)
        stats = EpochStats(len(names), device)
        bar = tqdm(range(steps_per_epoch), desc=f"{cfg.model} epoch {epoch + 1}/{cfg.epochs}",
                   leave=False, disable=None)
        for i in bar:
            x, y = step_batch(data, perm, i, cfg, gen)
            lr = learning_rate(cfg, epoch * steps_per_epoch + i, steps_per_epoch)
            loss = train_step(model, optimizer, x, y, lr, stats, names if cfg.grad_norms else None)
            if i % 50 == 0 and not bar.disable:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        test_loss, test_acc = evaluate_model(model, data.test_x, data.test_y, data.mean, data.std)
        wall += time.perf_counter() - t0
        row = stats.row(epoch + 1, optimizer.param_groups[0]["lr"], test_loss, test_acc, time.perf_counter() - t0)
        history.append(row)
        if cfg.grad_norms:
            grad_log["epochs"].append(stats.mean_norms())
        log.info("%s", epoch_summary(cfg, row))
        _atomic_torch_save(run_state(cfg, epoch + 1, model, optimizer, history, wall, grad_log), state_path)

    if not history:
        raise UserError(f"{out}: no epochs to train (--epochs {cfg.epochs})")
    _, test_acc = evaluate_model(model, data.test_x, data.test_y, data.mean, data.std)
    metadata = run_metadata(cfg, data, test_acc, history, wall,
                            command or "python -m models.train " + shlex.join(sys.argv[1:]), device)
    write_run(out, model, metadata, grad_log if cfg.grad_norms else None)
    log.info("%s: test accuracy %.2f%% after %d epochs (%.0fs); checkpoint in %s",
             cfg.model, test_acc, cfg.epochs, wall, out)
    return metadata


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    defaults = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m models.train", description=__doc__.split("\n")[0])
    p.add_argument("--model", default=defaults.model, help="a registered name (resnet20, plain56, ...)")
    p.add_argument("--out", required=True, help="run folder: training state and the final checkpoint")
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--lr", type=float, default=defaults.lr, help="peak learning rate")
    p.add_argument("--momentum", type=float, default=defaults.momentum)
    p.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    p.add_argument("--schedule", choices=["cosine", "step"], default=defaults.schedule)
    p.add_argument("--warmup-epochs", type=float, default=defaults.warmup_epochs)
    p.add_argument("--crop-pad", type=int, default=defaults.crop_pad)
    p.add_argument("--no-hflip", dest="hflip", action="store_false")
    p.add_argument("--shortcut", choices=["A", "B"], default=defaults.shortcut)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--train-limit", type=int, help="train on the first N images only")
    p.add_argument("--test-limit", type=int, help="evaluate on the first N test images only")
    p.add_argument("--grad-norms", action="store_true", help="record per-layer gradient norms")
    p.add_argument("--device", default=defaults.device, help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last epoch")
    args = vars(p.parse_args(argv))
    resume = args.pop("resume")
    cfg = TrainConfig(**args)
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise UserError("--epochs and --batch-size must be positive")
    command = "python -m models.train " + shlex.join(list(argv) if argv is not None else sys.argv[1:])
    train(cfg, resume=resume, command=command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
