"""The dozen Fashion-MNIST test images the page (service/static/) offers as samples, one per class
first, written as PNGs with a ``samples.json`` naming each one's label and test-set index.

    python -m service.samples          # regenerates service/static/samples/ from the Debian dataset
"""
from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from common.cli import OneLineParser, run_cli

SAMPLES_DIR = Path(__file__).resolve().parent / "static" / "samples"
COUNT = 12


def pick(labels: np.ndarray, count: int = COUNT) -> list[int]:
    """Test-set indices: each class's first image, then each class's second, ..., in file order."""
    rank, seen = [], {}  # rank: how many earlier images share this one's class
    for label in labels.tolist():
        rank.append(seen.get(label, 0))
        seen[label] = rank[-1] + 1
    return sorted(range(len(labels)), key=lambda i: (rank[i], i))[:count]


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def make_samples(out: Path = SAMPLES_DIR) -> list[dict]:
    """Writes the samples and their ``samples.json`` into ``out``; returns that manifest."""
    from models.data import FASHION_MNIST_CLASSES, load_fashion_mnist  # a dev tool: the Bento ships no dataset reader

    images, labels = load_fashion_mnist("test")
    out.mkdir(parents=True, exist_ok=True)
    manifest = []
    for i in sorted(pick(labels), key=lambda i: (labels[i], i)):  # shown in class order
        label = FASHION_MNIST_CLASSES[labels[i]]
        name = f"{label.lower().replace('/', '-').replace(' ', '-')}-{i}.png"
        (out / name).write_bytes(png(images[i]))
        manifest.append({"file": name, "label": label, "class_index": int(labels[i]), "test_index": i})
    (out / "samples.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    parser = OneLineParser(prog="python -m service.samples", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=SAMPLES_DIR, help="folder to write (default: %(default)s)")
    args = parser.parse_args(argv)
    print(f"{len(make_samples(args.out))} samples written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
