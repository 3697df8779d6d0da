"""Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (IDX files, gzip-compressed)."""
from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path
from typing import Literal

import numpy as np

from common.errors import UserError

FMNIST_DIR_ENV = "FMNIST_DIR"
DEFAULT_FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_IDX_UBYTE = 0x08


def fashion_mnist_dir() -> Path:
    """The dataset folder: ``$FMNIST_DIR`` if set, else where the Debian package puts it."""
    return Path(os.environ.get(FMNIST_DIR_ENV) or DEFAULT_FMNIST_DIR)


def read_idx(path: Path) -> np.ndarray:
    """Reads an unsigned-byte IDX file (optionally gzip-compressed) into an array of its shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _IDX_UBYTE:
        raise UserError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    if len(raw) - header != int(np.prod(shape)):
        raise UserError(f"{path} is truncated: header says {shape}, found {len(raw) - header} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()  # writable


def load_fashion_mnist(split: Literal["train", "test"]) -> tuple[np.ndarray, np.ndarray]:
    """Returns ``(images, labels)``: uint8 arrays of shape (N, 28, 28) and (N,)."""
    root = fashion_mnist_dir()
    image_file, label_file = (root / name for name in _FILES[split])
    for path in (image_file, label_file):
        if not path.is_file():
            raise UserError(
                f"Fashion-MNIST not found at {path}: install it with "
                f"'sudo apt-get install dataset-fashion-mnist' (or 'make dataset'), "
                f"or point ${FMNIST_DIR_ENV} at a folder holding the IDX files"
            )
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise UserError(f"{root}: images {images.shape} and labels {labels.shape} do not match")
    if labels.max(initial=0) >= len(FASHION_MNIST_CLASSES):
        raise UserError(f"{label_file}: label {labels.max()} out of range")
    return images, labels


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] units of a uint8 (N, H, W) grayscale set."""
    x = images.astype(np.float64) / 255.0
    return [float(x.mean())], [float(x.std())]
