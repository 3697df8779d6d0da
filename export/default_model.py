"""Makes sure the default model is exported, verified and in the BentoML store (``make serve`` runs it).

    python -m export.default_model

Idempotent: when the store already holds a version made from the same checkpoint (same sha256)
with every precision, it does nothing but say so, in a few seconds.
"""
from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from export.pipeline import ExportConfig, export_model
from export.store import find_registered
from models.cli import run_cli
from models.default import DEFAULT_CHECKPOINT, DEFAULT_MODEL_NAME, ensure_default_checkpoint

log = logging.getLogger(__name__)
DEFAULT_PRECISIONS = ["fp32", "fp16", "int8"]  # fp32/int8 for the CPU, fp16 for the CUDA provider
EXPORT_DIR = Path(__file__).resolve().parents[1] / "artifacts" / "export"


def ensure_default_model() -> str:
    meta = ensure_default_checkpoint()
    tag = find_registered(DEFAULT_MODEL_NAME, meta["weights_sha256"], DEFAULT_PRECISIONS)
    if tag:
        log.info("%s is already in the BentoML store", tag)
        return tag
    result = export_model(ExportConfig(checkpoint=DEFAULT_CHECKPOINT, precisions=DEFAULT_PRECISIONS,
                                       out=EXPORT_DIR, register=True))
    return result.tag


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    argparse.ArgumentParser(prog="python -m export.default_model", description=__doc__.split("\n")[0]).parse_args(argv)
    ensure_default_model()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
