"""Numerical verification that every export must pass before it is written or registered.

fp32 and fp16 files are compared with the *unfolded* PyTorch model run in float64, so folding,
merging, export and the runtime are all checked at once; int8 is compared with fp32 by top-1
agreement and, for Fashion-MNIST models, by test accuracy.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from export.onnx_io import INPUT_NAME, cpu_session, op_counts
from models.card import ModelCard
from models.data import load_fashion_mnist
from common.errors import UserError

log = logging.getLogger(__name__)
TOLERANCE = {"fp32": 1e-5, "fp16": 5e-3}  # max |onnx - float64| / max |float64|
INT8_MIN_AGREEMENT = 99.0  # % top-1 agreement with fp32
INT8_MAX_ACCURACY_DROP = 0.5  # points of Fashion-MNIST test accuracy
# An untrained model's logits are nearly tied, so its argmax flips on any noise and top-1 agreement
# says nothing about the quantisation. There the gate is the cosine similarity of the (per-image
# centred) int8 and fp32 logits; top-1 agreement is still measured and reported.
INT8_MIN_UNTRAINED_COSINE = 0.99


class VerificationError(UserError):
    pass


def real_images(card: ModelCard, split: str, count: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Normalised model inputs made from real Fashion-MNIST images, and their labels.

    Fashion-MNIST models get them as they were trained; ImageNet-shape models get them resized
    to the input size and repeated over RGB (real image statistics, not noise).
    """
    images, labels = load_fashion_mnist(split)
    x = torch.from_numpy(images[offset : offset + count]).float()[:, None] / 255.0  # (N, 1, 28, 28)
    c, h, w = card.input_shape
    if (h, w) != (28, 28):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)
    x = x.expand(-1, c, -1, -1)
    mean = torch.tensor(card.mean).view(1, -1, 1, 1)
    std = torch.tensor(card.std).view(1, -1, 1, 1)
    return ((x - mean) / std).numpy().astype(np.float32), labels[offset : offset + count].astype(np.int64)


def random_inputs(card: ModelCard, count: int, seed: int = 0) -> np.ndarray:
    gen = np.random.default_rng(seed)
    return gen.standard_normal((count, *card.input_shape), dtype=np.float32)


def reference_logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """The unfolded model in float64: the ground truth every export is held to."""
    ref = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        return torch.cat([ref(torch.from_numpy(b).double()) for b in np.array_split(x, max(1, len(x) // 16))]).numpy()


def onnx_logits(path: Path, x: np.ndarray, batch: int = 64) -> np.ndarray:
    session = cpu_session(path)
    return np.concatenate([session.run(None, {INPUT_NAME: x[i : i + batch]})[0] for i in range(0, len(x), batch)])


def relative_error(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(out.astype(np.float64) - ref).max() / max(np.abs(ref).max(), 1e-30))


def check_graph(path: Path) -> dict[str, int]:
    onnx.checker.check_model(str(path), full_check=True)
    ops = op_counts(path)
    if ops.get("BatchNormalization"):
        raise VerificationError(f"{path.name}: {ops['BatchNormalization']} BatchNormalization nodes left")
    return ops


def verify_float(path: Path, precision: str, model: nn.Module, inputs: dict[str, np.ndarray],
                 references: dict[str, np.ndarray]) -> dict[str, Any]:
    """Relative error of an fp32/fp16 file against the float64 unfolded model on each input set."""
    figures: dict[str, Any] = {"ops": check_graph(path), "tolerance": TOLERANCE[precision]}
    for kind, x in inputs.items():
        err = relative_error(onnx_logits(path, x), references[kind])
        figures[f"rel_error_{kind}"] = err
        if not err <= TOLERANCE[precision]:
            raise VerificationError(f"{path.name}: relative error {err:.2e} on {kind} inputs "
                                    f"exceeds {TOLERANCE[precision]:.0e}")
    return figures


def verify_int8(path: Path, fp32_path: Path, card: ModelCard, agreement_images: np.ndarray) -> dict[str, Any]:
    figures: dict[str, Any] = {"ops": check_graph(path)}
    q, f = onnx_logits(path, agreement_images), onnx_logits(fp32_path, agreement_images)
    agreement = 100.0 * float((q.argmax(1) == f.argmax(1)).mean())
    qc, fc = q - q.mean(1, keepdims=True), f - f.mean(1, keepdims=True)
    cosine = float(((qc * fc).sum(1) / (np.linalg.norm(qc, axis=1) * np.linalg.norm(fc, axis=1) + 1e-30)).min())
    figures.update(top1_agreement=agreement, agreement_images=len(agreement_images), min_logit_cosine=cosine)
    if not card.trained:
        if not cosine >= INT8_MIN_UNTRAINED_COSINE:
            raise VerificationError(f"{path.name}: int8 logits of this untrained model reach cosine {cosine:.4f} "
                                    f"with fp32, below {INT8_MIN_UNTRAINED_COSINE}")
    elif agreement < INT8_MIN_AGREEMENT:
        raise VerificationError(f"{path.name}: int8 top-1 agrees with fp32 on {agreement:.2f}% of "
                                f"{len(q)} images, below {INT8_MIN_AGREEMENT}%")
    if card.dataset == "fashion-mnist":
        x, y = real_images(card, "test", 10_000)
        acc_q = 100.0 * float((onnx_logits(path, x, 500).argmax(1) == y).mean())
        acc_f = 100.0 * float((onnx_logits(fp32_path, x, 500).argmax(1) == y).mean())
        figures.update(test_accuracy=acc_q, fp32_test_accuracy=acc_f)
        if acc_f - acc_q > INT8_MAX_ACCURACY_DROP:
            raise VerificationError(f"{path.name}: int8 test accuracy {acc_q:.2f}% is {acc_f - acc_q:.2f} "
                                    f"points below fp32 ({acc_f:.2f}%), more than {INT8_MAX_ACCURACY_DROP}")
    return figures
