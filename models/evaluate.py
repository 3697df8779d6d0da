"""Re-computes a checkpoint's Fashion-MNIST test accuracy.

    python -m models.evaluate models/checkpoints/resnet20-fmnist
"""
from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.checkpoint import load_checkpoint
from common.cli import run_cli
from models.data import load_fashion_mnist
from common.errors import UserError

log = logging.getLogger(__name__)


def to_input(images_u8: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (N, C, H, W) -> normalised float32, as the model was trained on."""
    m = torch.tensor(mean, device=images_u8.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=images_u8.device).view(1, -1, 1, 1)
    return (images_u8.float() / 255.0 - m) / s


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 1000,
) -> tuple[float, float]:
    """Returns (mean cross-entropy, accuracy in %) of ``model`` in eval mode on uint8 (N, C, H, W)."""
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    for i in range(0, len(images), batch_size):
        x = to_input(images[i : i + batch_size], mean, std)
        y = labels[i : i + batch_size]
        logits = model(x)
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    model.train(was_training)
    return loss_sum / len(images), 100.0 * correct / len(images)


def evaluate_checkpoint(path: Path, limit: int | None = None) -> dict:
    """Accuracy of a checkpoint on the Fashion-MNIST test set (first ``limit`` images if given)."""
    model, meta = load_checkpoint(path)
    if meta.get("dataset") != "fashion-mnist":
        raise UserError(f"{path}: trained on {meta.get('dataset')!r}, not Fashion-MNIST")
    images, labels = load_fashion_mnist("test")
    if limit:
        images, labels = images[:limit], labels[:limit]
    x = torch.from_numpy(np.ascontiguousarray(images))[:, None]
    _, acc = evaluate_model(model, x, torch.from_numpy(labels.astype(np.int64)), meta["mean"], meta["std"])
    return {"accuracy": acc, "images": len(labels), "recorded_accuracy": meta.get("test_accuracy")}


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", type=Path, help="checkpoint folder (or a file inside it)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N test images")
    parser.add_argument(
        "--tolerance", type=float, default=0.1,
        help="fail when the accuracy differs from the metadata's by more points than this",
    )
    args = parser.parse_args(argv)
    result = evaluate_checkpoint(args.checkpoint, args.limit)
    log.info("test accuracy %.2f%% on %d images", result["accuracy"], result["images"])
    recorded = result["recorded_accuracy"]
    if recorded is None or args.limit:
        return 0
    diff = result["accuracy"] - recorded
    log.info("metadata says %.2f%%: difference %+.2f points", recorded, diff)
    if abs(diff) > args.tolerance:
        raise UserError(f"accuracy {result['accuracy']:.2f}% differs from the recorded {recorded:.2f}% "
                        f"by more than {args.tolerance} points")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
