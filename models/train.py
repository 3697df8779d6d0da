"""Trains a registered ResNet on Fashion-MNIST with the paper's recipe (SGD, momentum, weight decay,
crop+flip augmentation), evaluating on the test set after every epoch.

    python -m models.train --model resnet20 --epochs 30 --out runs/resnet20
    python -m models.train --model resnet20 --epochs 30 --out runs/resnet20 --resume   # continue

The run folder holds ``train_state.pt`` (rewritten after every epoch, for ``--resume``) and, when
training ends, the checkpoint itself: ``model.safetensors`` + ``metadata.json`` (see checkpoint.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from models.augment import random_crop_flip
from models.checkpoint import METADATA_FILE, save_checkpoint
from models.cli import run_cli
from models.data import FASHION_MNIST_CLASSES, channel_stats, load_fashion_mnist
from models.errors import UserError
from models.evaluate import evaluate_model, to_input
from models.registry import create_model, get_spec

log = logging.getLogger(__name__)
STATE_FILE = "train_state.pt"
GRAD_NORMS_FILE = "grad_norms.json"
# Fields that may differ between a run and its resumption without changing what is trained.
RESUMABLE_CHANGES = {"out", "device", "grad_norm_init_batches"}


@dataclass
class TrainConfig:
    model: str = "resnet20"
    out: str = "runs/resnet20"
    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.1  # peak learning rate at batch 128, as in the paper
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # "cosine" to zero, or "step": /10 at 50% and 75% of training (paper)
    warmup_epochs: float = 1.0  # linear warm-up; the paper warms ResNet-110 up the same way
    crop_pad: int = 2  # random-crop padding in pixels (28x28 images)
    hflip: bool = True
    shortcut: str = "B"  # CIFAR family only: "A" zero-padded identity, "B" 1x1 projection
    seed: int = 0
    train_limit: int | None = None  # use only the first N training images (smoke tests)
    test_limit: int | None = None
    grad_norms: bool = False  # record per-layer gradient norms (depth study)
    grad_norm_init_batches: int = 8
    device: str = "auto"


def learning_rate(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    total = cfg.epochs * steps_per_epoch
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.schedule == "cosine":
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
    return cfg.lr * (0.1 ** ((step >= total // 2) + (step >= 3 * total // 4)))


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    return torch.device(name)


def _environment(device: torch.device) -> dict[str, str]:
    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "device": f"{device.type}: {hw}",
    }


def _weight_names(model: nn.Module) -> list[str]:
    """Conv and fc weights, input to output: the layers whose gradient norms tell the depth story."""
    return [n for n, p in model.named_parameters() if p.ndim in (2, 4)]


def _grad_norms(model: nn.Module, names: list[str]) -> torch.Tensor:
    params = dict(model.named_parameters())
    return torch.stack(torch._foreach_norm([params[n].grad for n in names]))


def _check_resumable(saved: dict[str, Any], cfg: TrainConfig) -> None:
    current = dataclasses.asdict(cfg)
    diffs = [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in current.items()
             if k not in RESUMABLE_CHANGES and saved.get(k) != v]
    if diffs:
        raise UserError(f"cannot resume {cfg.out} with different settings ({'; '.join(diffs)})")


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train(cfg: TrainConfig, resume: bool = False, command: str | None = None) -> dict[str, Any]:
    """Trains ``cfg.model`` and writes the checkpoint to ``cfg.out``; returns its metadata."""
    spec = get_spec(cfg.model)
    out = Path(cfg.out)
    state_path = out / STATE_FILE
    if not resume and (state_path.exists() or (out / METADATA_FILE).exists()):
        raise UserError(f"{out} already holds a training run: pass --resume to continue it, or choose another --out")
    if cfg.schedule not in ("cosine", "step"):
        raise UserError(f"unknown schedule {cfg.schedule!r}: use cosine or step")
    device = _resolve_device(cfg.device)
    # Reproducibility over speed: no TF32, deterministic kernels, seeded everything.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True

    train_np, train_labels_np = load_fashion_mnist("train")
    test_np, test_labels_np = load_fashion_mnist("test")
    train_np, train_labels_np = train_np[: cfg.train_limit], train_labels_np[: cfg.train_limit]
    test_np, test_labels_np = test_np[: cfg.test_limit], test_labels_np[: cfg.test_limit]
    mean, std = channel_stats(train_np)
    train_x = torch.from_numpy(np.ascontiguousarray(train_np))[:, None].to(device)  # (N, 1, 28, 28) uint8
    train_y = torch.from_numpy(train_labels_np.astype(np.int64)).to(device)
    test_x = torch.from_numpy(np.ascontiguousarray(test_np))[:, None].to(device)
    test_y = torch.from_numpy(test_labels_np.astype(np.int64)).to(device)

    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model, in_channels=1, num_classes=len(FASHION_MNIST_CLASSES), shortcut=cfg.shortcut)
    model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    names = _weight_names(model)
    steps_per_epoch = math.ceil(len(train_x) / cfg.batch_size)

    start_epoch, history, wall = 0, [], 0.0
    grad_log: dict[str, Any] = {"layers": names, "init": None, "epochs": []}
    if resume and state_path.exists():
        try:
            state = torch.load(state_path, map_location=device, weights_only=True)
        except Exception as e:  # a torn or foreign file: say so in one line
            raise UserError(f"{state_path}: unreadable training state ({e})") from None
        _check_resumable(state["config"], cfg)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, history, wall, grad_log = state["epoch"], state["history"], state["wall_time_s"], state["grad_norms"]
        log.info("resuming %s from epoch %d of %d", out, start_epoch, cfg.epochs)
    out.mkdir(parents=True, exist_ok=True)

    if cfg.grad_norms and grad_log["init"] is None:
        grad_log["init"] = _init_grad_norms(model, train_x, train_y, mean, std, cfg, names)

    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        # One generator per epoch, seeded from (seed, epoch): a resumed run sees the same batches.
        gen = torch.Generator(device=device).manual_seed(cfg.seed * 100_003 + epoch)
        perm = torch.randperm(len(train_x), generator=gen, device=device)
        loss_sum = torch.zeros((), device=device)
        wrong = torch.zeros((), device=device)
        norm_sum = torch.zeros(len(names), device=device)
        bar = tqdm(range(steps_per_epoch), desc=f"{cfg.model} epoch {epoch + 1}/{cfg.epochs}",
                   leave=False, disable=None)
        for i in bar:
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg, epoch * steps_per_epoch + i, steps_per_epoch)
            idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            x = to_input(random_crop_flip(train_x[idx], cfg.crop_pad, cfg.hflip, gen), mean, std)
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, train_y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_norms:
                norm_sum += _grad_norms(model, names)
            optimizer.step()
            loss_sum += loss.detach() * len(idx)
            wrong += (logits.argmax(1) != train_y[idx]).sum()
            if i % 50 == 0 and not bar.disable:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        test_loss, test_acc = evaluate_model(model, test_x, test_y, mean, std)
        wall += time.perf_counter() - t0
        row = {
            "epoch": epoch + 1,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": loss_sum.item() / len(train_x),
            "train_error": 100.0 * wrong.item() / len(train_x),
            "test_loss": test_loss,
            "test_error": 100.0 - test_acc,
            "seconds": time.perf_counter() - t0,
        }
        history.append(row)
        if cfg.grad_norms:
            grad_log["epochs"].append((norm_sum / steps_per_epoch).tolist())
        log.info("%s epoch %d/%d: train loss %.4f, train error %.2f%%, test error %.2f%% (%.1fs)",
                 cfg.model, epoch + 1, cfg.epochs, row["train_loss"], row["train_error"],
                 row["test_error"], row["seconds"])
        _atomic_torch_save(
            {"config": dataclasses.asdict(cfg), "epoch": epoch + 1, "model": model.state_dict(),
             "optimizer": optimizer.state_dict(), "history": history, "wall_time_s": wall,
             "grad_norms": grad_log},
            state_path,
        )

    if not history:
        raise UserError(f"{out}: no epochs to train (--epochs {cfg.epochs})")
    test_loss, test_acc = evaluate_model(model, test_x, test_y, mean, std)
    metadata = {
        "model": cfg.model,
        "family": spec.family,
        "depth": spec.depth,
        "residual": spec.residual,
        "shortcut": cfg.shortcut,
        "dataset": "fashion-mnist",
        "num_classes": len(FASHION_MNIST_CLASSES),
        "class_names": list(FASHION_MNIST_CLASSES),
        "input_shape": [1, 28, 28],
        "channel_mode": "L",
        "mean": mean,
        "std": std,
        "trained": True,
        "test_accuracy": round(test_acc, 4),
        "test_images": len(test_x),
        "train_images": len(train_x),
        "epochs": cfg.epochs,
        "seed": cfg.seed,
        "config": dataclasses.asdict(cfg),
        "command": command or "python -m models.train " + shlex.join(sys.argv[1:]),
        "wall_time_s": round(wall, 1),
        "environment": _environment(device),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "history": history,
    }
    save_checkpoint(out, model, metadata)
    if cfg.grad_norms:
        (out / GRAD_NORMS_FILE).write_text(json.dumps(grad_log) + "\n")
    log.info("%s: test accuracy %.2f%% after %d epochs (%.0fs); checkpoint in %s",
             cfg.model, test_acc, cfg.epochs, wall, out)
    return metadata


def _init_grad_norms(model, train_x, train_y, mean, std, cfg: TrainConfig, names: list[str]) -> list[float]:
    """Mean per-layer gradient norm over a few batches at initialisation (no update taken)."""
    model.train()
    total = torch.zeros(len(names), device=train_x.device)
    for i in range(cfg.grad_norm_init_batches):
        idx = slice(i * cfg.batch_size, (i + 1) * cfg.batch_size)
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(to_input(train_x[idx], mean, std)), train_y[idx]).backward()
        total += _grad_norms(model, names)
    model.zero_grad(set_to_none=True)
    return (total / cfg.grad_norm_init_batches).tolist()


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
