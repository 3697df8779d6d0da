"""Exports a ResNet to verified ONNX files and optionally registers them in the BentoML store.

    python -m export --model resnet50 --precision fp32,fp16,int8 --out artifacts/export --register
    python -m export --checkpoint models/checkpoints/resnet20-fmnist --precision fp32,int8 --out artifacts/export
    python -m export --model resnet50 --torchvision-weights resnet50-0676ba61.pth --out artifacts/export
"""
from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from export.pipeline import PRECISIONS, ExportConfig, export_model
from common.cli import run_cli

log = logging.getLogger("export")


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    p = argparse.ArgumentParser(prog="python -m export", description=__doc__.split("\n")[0])
    p.add_argument("--model", help="registered model name (resnet18 ... resnet152, resnet20, ...)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", type=Path, help="a checkpoint folder written by models.train")
    src.add_argument("--torchvision-weights", type=Path, help="a torchvision ResNet state_dict file")
    p.add_argument("--precision", default="fp32", help=f"comma-separated, from {','.join(PRECISIONS)}")
    p.add_argument("--out", type=Path, default=Path("artifacts/export"), help="folder for the .onnx/.json files")
    p.add_argument("--register", action="store_true", help="add the verified files to the BentoML model store")
    p.add_argument("--merge-projections", action=argparse.BooleanOptionalAction, default=False,
                   help="merge 1x1 projection shortcuts into the parallel branch conv (default: off, "
                        "measured slower on this CPU: reports/export-bench); BatchNorm is folded either way")
    args = p.parse_args(argv)
    cfg = ExportConfig(
        model=args.model, checkpoint=args.checkpoint, torchvision_weights=args.torchvision_weights,
        precisions=[s.strip() for s in args.precision.split(",") if s.strip()], out=args.out,
        register=args.register, merge_projections=args.merge_projections,
    )
    result = export_model(cfg)
    for precision, path in result.files.items():
        log.info("wrote %s", path)
    if result.tag:
        log.info("registered %s; see `bentoml models list`", result.tag)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
