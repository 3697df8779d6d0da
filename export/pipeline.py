"""Export = fold, write ONNX in each precision, verify every file, then (and only then) publish.

All files are written and verified in a staging folder beside ``out``; they are moved into ``out``
only after every requested precision has passed, and registered in the BentoML store after that.
A failed export therefore leaves ``out`` and the store exactly as they were.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from tqdm import tqdm

from export.fold import fold_model, fold_report
from export.onnx_io import INPUT_NAME, OPSET, OUTPUT_NAME, convert_fp16, embed_metadata, export_fp32, quantize_int8
from export.sources import load_source
from export.store import register
from export.verify import random_inputs, real_images, reference_logits, verify_float, verify_int8
from common.files import ensure_writable_dir, sha256_file
from common.errors import UserError
from models.card import ModelCard

log = logging.getLogger(__name__)
PRECISIONS = ("fp32", "fp16", "int8")
CALIBRATION_IMAGES = 512  # int8 calibration, from the Fashion-MNIST training set


@dataclass
class ExportConfig:
    model: str | None = None
    checkpoint: Path | None = None
    torchvision_weights: Path | None = None
    precisions: list[str] = field(default_factory=lambda: ["fp32"])
    out: Path = Path("artifacts/export")
    register: bool = False
    # Off by default: merged projections measured slower overall on this CPU with onnxruntime
    # (reports/export-bench); --merge-projections turns them on.
    merge_projections: bool = False
    verify_random: int | None = None  # inputs per check; None: a size-dependent default
    verify_real: int | None = None


@dataclass
class ExportResult:
    name: str
    files: dict[str, Path]
    cards: dict[str, ModelCard]  # by precision, as written beside each file
    tag: str | None


def export_model(cfg: ExportConfig) -> ExportResult:
    unknown = [p for p in cfg.precisions if p not in PRECISIONS]
    if unknown or not cfg.precisions:
        raise UserError(f"unknown precision {', '.join(unknown) or '(none)'}; choose from {', '.join(PRECISIONS)}")
    out = Path(cfg.out)
    ensure_writable_dir(out)
    source = load_source(cfg.model, cfg.checkpoint, cfg.torchvision_weights)
    card = source.card
    name = card.name
    small = card.input_shape[-1] <= 64
    n_random = cfg.verify_random or (32 if small else 4)
    n_real = cfg.verify_real or (256 if small else 4)

    staging = Path(tempfile.mkdtemp(prefix=f".{name}.staging-", dir=out))
    try:
        steps = tqdm(total=2 + len(cfg.precisions), desc=f"export {name}", disable=None, leave=False)
        folded = fold_model(source.model, merge_projections=cfg.merge_projections)
        report = dataclasses.asdict(fold_report(source.model, folded))
        fp32 = staging / f"{name}.fp32.onnx"
        t0 = time.perf_counter()
        export_fp32(folded, card.input_shape, fp32)
        steps.update()
        inputs = {"random": random_inputs(card, n_random), "real": real_images(card, "test", n_real)[0]}
        references = {kind: reference_logits(source.model, x) for kind, x in inputs.items()}
        steps.update()
        files, figures = {}, {}
        for precision in ["fp32"] + [p for p in ("fp16", "int8") if p in cfg.precisions]:
            path = staging / f"{name}.{precision}.onnx"
            if precision == "fp16":
                convert_fp16(fp32, path)
            elif precision == "int8":
                quantize_int8(fp32, path, real_images(card, "train", CALIBRATION_IMAGES)[0])
            if precision == "int8":
                figures[precision] = verify_int8(path, fp32, card, real_images(card, "test", 1000 if small else 64, 5000)[0])
            else:
                figures[precision] = verify_float(path, precision, source.model, inputs, references)
            figures[precision]["calibration_images"] = CALIBRATION_IMAGES if precision == "int8" else None
            files[precision] = path
            _log_figures(name, precision, figures[precision])
            steps.update()
        steps.close()
        if "fp32" not in cfg.precisions:
            files.pop("fp32").unlink()
        cards = {p: _file_card(card, p, report, figures[p], cfg, time.perf_counter() - t0) for p in files}
        for precision, path in files.items():
            embed_metadata(path, cards[precision].to_dict())
            cards[precision] = dataclasses.replace(cards[precision], onnx_sha256=sha256_file(path))
            path.with_suffix(".json").write_text(cards[precision].to_json())
        published = {}
        for precision, path in files.items():  # verified: publish, each file atomically
            for src in (path.with_suffix(".json"), path):
                os.replace(src, out / src.name)
            published[precision] = out / path.name
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    tag = register(published, cards[next(iter(published))]) if cfg.register else None
    return ExportResult(name, published, cards, tag)


def _file_card(card: ModelCard, precision: str, report: dict[str, int],
               figures: dict[str, Any], cfg: ExportConfig, seconds: float) -> ModelCard:
    return dataclasses.replace(
        card,
        precision=precision,
        opset=OPSET,
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        folding={**report, "merge_projections": cfg.merge_projections},
        verification=figures,
        exported=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        export_seconds=round(seconds, 1),
        versions={"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__,
                  "numpy": np.__version__, "python": platform.python_version()},
    )


def _log_figures(name: str, precision: str, fig: dict[str, Any]) -> None:
    if precision == "int8":
        acc = (f", test accuracy {fig['test_accuracy']:.2f}% vs fp32 {fig['fp32_test_accuracy']:.2f}%"
               if "test_accuracy" in fig else "")
        log.info("%s int8: top-1 agreement with fp32 %.2f%% on %d images, min logit cosine %.4f%s", name,
                 fig["top1_agreement"], fig["agreement_images"], fig["min_logit_cosine"], acc)
    else:
        log.info("%s %s: relative error vs float64 PyTorch %.1e (random), %.1e (real); limit %.0e; "
                 "no BatchNormalization node", name, precision, fig["rel_error_random"], fig["rel_error_real"],
                 fig["tolerance"])
