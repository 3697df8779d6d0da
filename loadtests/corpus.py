"""The images the load tests send, written to a folder with a manifest the locustfile reads.

Two kinds, chosen by the served model's dataset:

- ``fmnist``: the first N Fashion-MNIST *test* images (never seen in training), alternately as PNG
  and JPEG, with their labels, so a run also reports accuracy over HTTP;
- ``photo``: natural-photo-sized JPEGs (640x480 by default) for the 224x224 ImageNet-shape models,
  generated here (smooth colour fields, shapes, texture and sensor-like noise, so that JPEG sizes
  and decode cost are like a camera's rather than a flat test card's). Nothing is downloaded.

    python -m loadtests.corpus --kind photo --count 64 --out /tmp/corpus-photo

The locustfile, given no ``--corpus``, uses ``cached_corpus``: one written on first use under
``$XDG_CACHE_HOME/resnet-serving`` (``~/.cache/resnet-serving``).
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from common.cli import run_cli
from common.files import ensure_writable_dir

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
KINDS = ("fmnist", "photo")
BOUNDARY = "resnet-load-3f9a1c"  # multipart boundary of every request the load tests send


@dataclass(frozen=True)
class CorpusImage:
    file: str
    content_type: str
    label: int | None  # Fashion-MNIST class index; None for generated photos
    bytes: int


def kind_for(dataset: str) -> str:
    """The corpus for a model trained on ``dataset`` (its metadata's ``dataset``)."""
    return "fmnist" if dataset == "fashion-mnist" else "photo"


def synthetic_photo(rng: np.random.Generator, width: int = 640, height: int = 480) -> Image.Image:
    """An RGB image with photo-like statistics: a blurred colour field, a few shapes, fine noise."""
    coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1, y1 = x0 + int(rng.integers(20, width // 2)), y0 + int(rng.integers(20, height // 2))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
    img = img.filter(ImageFilter.GaussianBlur(1.5))
    noise = rng.normal(0, 8, size=(height, width, 3))
    return Image.fromarray(np.clip(np.asarray(img, np.float32) + noise, 0, 255).astype(np.uint8))


def build_corpus(out: Path, kind: str, count: int, seed: int = 0,
                 photo_size: tuple[int, int] = (640, 480)) -> list[CorpusImage]:
    """Writes ``count`` images of ``kind`` and ``manifest.json`` into ``out``; returns the manifest."""
    if kind not in KINDS:
        raise ValueError(f"unknown corpus kind {kind!r}; choose from {', '.join(KINDS)}")
    if count < 1:
        raise ValueError("a corpus needs at least one image")
    out.mkdir(parents=True, exist_ok=True)
    items: list[CorpusImage] = []
    if kind == "fmnist":
        from models.data import load_fashion_mnist

        images, labels = load_fashion_mnist("test")
        for i in range(min(count, len(images))):
            fmt = "PNG" if i % 2 == 0 else "JPEG"
            items.append(_write(out, f"fmnist-{i:05d}", Image.fromarray(images[i]), fmt, int(labels[i])))
    else:
        rng = np.random.default_rng(seed)
        for i in range(count):
            items.append(_write(out, f"photo-{i:05d}", synthetic_photo(rng, *photo_size), "JPEG", None))
    (out / MANIFEST).write_text(json.dumps({"kind": kind, "images": [asdict(i) for i in items]}, indent=1) + "\n")
    log.info("corpus %s: %d images, %.1f kB mean, in %s", kind, len(items),
             np.mean([i.bytes for i in items]) / 1e3, out)
    return items


def cached_corpus(kind: str, count: int = 64) -> Path:
    """The folder of a corpus of ``kind`` in the user's cache, built on first use. Built beside it and
    renamed into place, since the processes of one Locust run (``--processes``) may race to build it."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    folder = cache / "resnet-serving" / f"corpus-{kind}-{count}"
    if not (folder / MANIFEST).is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        staged = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        build_corpus(staged, kind, count)
        try:
            staged.rename(folder)
        except OSError:  # another process renamed its copy first
            shutil.rmtree(staged, ignore_errors=True)
    return folder


def _write(out: Path, stem: str, img: Image.Image, fmt: str, label: int | None) -> CorpusImage:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    suffix = ".png" if fmt == "PNG" else ".jpg"
    (out / f"{stem}{suffix}").write_bytes(buf.getvalue())
    return CorpusImage(f"{stem}{suffix}", f"image/{fmt.lower()}", label, len(buf.getvalue()))


def multipart_body(image: bytes, content_type: str, filename: str, fields: dict[str, str]) -> bytes:
    """A /classify request: the text ``fields`` (model, top_k), then the image in field ``image``."""
    parts = [f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
                 f"Content-Type: {content_type}\r\n\r\n".encode() + image + b"\r\n")
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def check_answer(body: bytes, model: str, top_k: int) -> str | None:
    """Why a 200 answer is wrong, or None: the right model, exactly ``top_k`` predictions, sorted probabilities."""
    try:
        data = json.loads(body)
        preds = data["predictions"]
        if model and data["model"] != model:
            return f"answered by {data['model']!r}, not {model!r}"
        probs = [float(p["probability"]) for p in preds]
        labels_ok = all(isinstance(p["label"], str) and isinstance(p["class_index"], int) for p in preds)
    except (ValueError, KeyError, TypeError):
        return f"malformed body: {body[:80]!r}"
    if len(preds) != top_k or not labels_ok:
        return f"{len(preds)} predictions for top_k={top_k}, or a malformed prediction"
    if any(not 0.0 <= p <= 1.0 for p in probs) or probs != sorted(probs, reverse=True):
        return f"probabilities not in [0, 1] and descending: {probs}"
    return None


def load_corpus(folder: Path) -> tuple[str, list[tuple[CorpusImage, bytes]]]:
    """(kind, [(entry, file bytes)]) of a folder written by ``build_corpus``."""
    manifest = json.loads((folder / MANIFEST).read_text())
    entries = [CorpusImage(**e) for e in manifest["images"]]
    return manifest["kind"], [(e, (folder / e.file).read_bytes()) for e in entries]


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.corpus", description=__doc__.split("\n")[0])
    p.add_argument("--kind", choices=KINDS, required=True)
    p.add_argument("--count", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    ensure_writable_dir(args.out)
    build_corpus(args.out, args.kind, args.count, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
