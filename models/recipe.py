"""What ``models.train`` (one net) and ``models.train_family`` (the ten nets at once) share: the
recipe's config and learning-rate schedule, the data as device tensors, one step's augmented batch,
the training step itself, per-layer gradient norms, the resumable state and the finished run's files.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from common.errors import UserError
from models.augment import random_crop_flip
from models.checkpoint import save_checkpoint
from models.data import FASHION_MNIST_CLASSES, channel_stats, load_fashion_mnist
from models.evaluate import to_input
from models.registry import create_model, get_spec

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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    return torch.device(name)


def environment(device: torch.device) -> dict[str, str]:
    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "device": f"{device.type}: {hw}",
    }


@dataclass
class DeviceData:
    """Fashion-MNIST as uint8 tensors on the training device, with the training split's statistics."""

    train_x: torch.Tensor  # (N, 1, 28, 28) uint8
    train_y: torch.Tensor  # (N,) int64
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: list[float]
    std: list[float]


def load_device_data(train_limit: int | None, test_limit: int | None, device: torch.device) -> DeviceData:
    train_np, train_labels_np = load_fashion_mnist("train")
    test_np, test_labels_np = load_fashion_mnist("test")
    train_np, train_labels_np = train_np[:train_limit], train_labels_np[:train_limit]
    test_np, test_labels_np = test_np[:test_limit], test_labels_np[:test_limit]
    mean, std = channel_stats(train_np)

    def tensors(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(np.ascontiguousarray(images))[:, None].to(device)
        return x, torch.from_numpy(labels.astype(np.int64)).to(device)

    return DeviceData(*tensors(train_np, train_labels_np), *tensors(test_np, test_labels_np), mean, std)


def new_model(cfg: TrainConfig, device: torch.device) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The seeded model and its SGD: seeded just before it is built, so a net starts from the same
    weights whether it is trained alone or beside others."""
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model, in_channels=1, num_classes=len(FASHION_MNIST_CLASSES), shortcut=cfg.shortcut)
    model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return model, optimizer


def epoch_order(cfg: TrainConfig, epoch: int, n: int, device: torch.device) -> tuple[torch.Generator, torch.Tensor]:
    """The epoch's generator and shuffled indices, seeded from (seed, epoch): a resumed run sees the same batches."""
    gen = torch.Generator(device=device).manual_seed(cfg.seed * 100_003 + epoch)
    return gen, torch.randperm(n, generator=gen, device=device)


def step_batch(data: DeviceData, perm: torch.Tensor, i: int, cfg: TrainConfig,
               gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Step ``i``'s batch, cropped, flipped and normalised on the device: (x float (B, 1, 28, 28), y)."""
    idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
    x = to_input(random_crop_flip(data.train_x[idx], cfg.crop_pad, cfg.hflip, gen), data.mean, data.std)
    return x, data.train_y[idx]


class EpochStats:
    """One net's sums over an epoch, kept on the device so that no step waits for the host."""

    def __init__(self, layers: int, device: torch.device) -> None:
        self.loss_sum = torch.zeros((), device=device)
        self.wrong = torch.zeros((), device=device)
        self.norm_sum = torch.zeros(layers, device=device)
        self.seen = 0
        self.steps = 0

    def row(self, epoch: int, lr: float, test_loss: float, test_acc: float, seconds: float) -> dict[str, Any]:
        return {"epoch": epoch, "lr": lr, "train_loss": self.loss_sum.item() / self.seen,
                "train_error": 100.0 * self.wrong.item() / self.seen, "test_loss": test_loss,
                "test_error": 100.0 - test_acc, "seconds": seconds}

    def mean_norms(self) -> list[float]:
        return (self.norm_sum / self.steps).tolist()


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, lr: float,
               stats: EpochStats, names: list[str] | None, autocast=contextlib.nullcontext,
               forward: nn.Module | None = None) -> torch.Tensor:
    """One SGD step of ``model`` on (x, y); returns the loss. ``names``: the layers whose gradient norms
    to add to ``stats`` (None: none); ``forward``: what to call instead of ``model`` (its compiled wrapper)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    with autocast():
        logits = (model if forward is None else forward)(x)
        loss = nn.functional.cross_entropy(logits, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if names is not None:
        stats.norm_sum += grad_norms(model, names)
    optimizer.step()
    stats.loss_sum += loss.detach() * len(y)
    stats.wrong += (logits.argmax(1) != y).sum()
    stats.seen += len(y)
    stats.steps += 1
    return loss


def weight_names(model: nn.Module) -> list[str]:
    """Conv and fc weights, input to output: the layers whose gradient norms tell the depth story."""
    return [n for n, p in model.named_parameters() if p.ndim in (2, 4)]


def grad_norms(model: nn.Module, names: list[str]) -> torch.Tensor:
    params = dict(model.named_parameters())
    return torch.stack(torch._foreach_norm([params[n].grad for n in names]))


def init_grad_norms(model: nn.Module, data: DeviceData, cfg: TrainConfig, names: list[str],
                    autocast=contextlib.nullcontext) -> list[float]:
    """Mean per-layer gradient norm over a few batches at initialisation (no update taken); at most
    the batches the training images hold (an empty one would give NaN)."""
    model.train()
    batches = min(cfg.grad_norm_init_batches, max(1, len(data.train_x) // cfg.batch_size))
    total = torch.zeros(len(names), device=data.train_x.device)
    for i in range(batches):
        idx = slice(i * cfg.batch_size, (i + 1) * cfg.batch_size)
        model.zero_grad(set_to_none=True)
        with autocast():
            loss = nn.functional.cross_entropy(model(to_input(data.train_x[idx], data.mean, data.std)),
                                               data.train_y[idx])
        loss.backward()
        total += grad_norms(model, names)
    model.zero_grad(set_to_none=True)
    return (total / batches).tolist()


def new_grad_log(names: list[str]) -> dict[str, Any]:
    return {"layers": names, "init": None, "epochs": []}


def run_state(cfg: TrainConfig, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer,
              history: list[dict[str, Any]], wall: float, grad_log: dict[str, Any]) -> dict[str, Any]:
    """What ``train_state.pt`` holds after ``epoch`` epochs: enough to continue the run exactly."""
    return {"config": dataclasses.asdict(cfg), "epoch": epoch, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "history": history, "wall_time_s": wall, "grad_norms": grad_log}


def atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_run_state(path: Path, cfg: TrainConfig, device: torch.device, may_differ: set[str] = frozenset()
                   ) -> dict[str, Any]:
    """A saved ``train_state.pt``, refused in one line if it is unreadable or trained other settings
    (``may_differ``: fields, beyond RESUMABLE_CHANGES, that the caller reconciles itself)."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # a torn or foreign file: say so in one line
        raise UserError(f"{path}: unreadable training state ({e})") from None
    current = dataclasses.asdict(cfg)
    saved = state["config"]
    diffs = [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in current.items()
             if k not in RESUMABLE_CHANGES | may_differ and saved.get(k) != v]
    if diffs:
        raise UserError(f"cannot resume {cfg.out} with different settings ({'; '.join(diffs)})")
    return state


def epoch_summary(cfg: TrainConfig, row: dict[str, Any]) -> str:
    return (f"{cfg.model} epoch {row['epoch']}/{cfg.epochs}: train loss {row['train_loss']:.4f}, train error "
            f"{row['train_error']:.2f}%, test error {row['test_error']:.2f}% ({row['seconds']:.1f}s)")


def run_metadata(cfg: TrainConfig, data: DeviceData, test_acc: float, history: list[dict[str, Any]], wall: float,
                 command: str, device: torch.device, config_extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The finished checkpoint's metadata (checkpoint.py); ``config_extra``: recipe fields beyond TrainConfig's."""
    spec = get_spec(cfg.model)
    return {
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
        "mean": data.mean,
        "std": data.std,
        "trained": True,
        "test_accuracy": round(test_acc, 4),
        "test_images": len(data.test_x),
        "train_images": len(data.train_x),
        "epochs": cfg.epochs,
        "seed": cfg.seed,
        "config": {**dataclasses.asdict(cfg), **(config_extra or {})},
        "command": command,
        "wall_time_s": round(wall, 1),
        "environment": environment(device),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "history": history,
    }


def write_run(out: Path, model: nn.Module, metadata: dict[str, Any], grad_log: dict[str, Any] | None) -> None:
    """The finished run's files: the checkpoint, and ``grad_norms.json`` when norms were recorded."""
    save_checkpoint(out, model, metadata)
    if grad_log is not None:
        (out / GRAD_NORMS_FILE).write_text(json.dumps(grad_log) + "\n")
