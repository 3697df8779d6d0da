"""The default model everything serves first (resnet20 trained on Fashion-MNIST, committed to the
repo), and the default served set: that model, then the depth study's family.

    python -m models.default          # check it (sha256, architecture); retrain it only if missing
"""
from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from common.cli import run_cli
from models.card import served_name

log = logging.getLogger(__name__)
DEFAULT_MODEL_NAME = served_name("resnet20", "fashion-mnist")  # resnet20-fmnist: the name it is served under
CHECKPOINTS_DIR = Path(__file__).resolve().parent / "checkpoints"  # committed checkpoints, <served name>/
DEFAULT_CHECKPOINT = CHECKPOINTS_DIR / DEFAULT_MODEL_NAME
# The depth study's nets (python -m bench.depth_study.study --publish copies them into CHECKPOINTS_DIR), one per
# depth; its own resnet20 is left out, since that name is the default's.
FAMILY_MODEL_NAMES = tuple(served_name(m, "fashion-mnist") for m in (
    "resnet32", "resnet44", "resnet56", "resnet110", "plain20", "plain32", "plain44", "plain56"))
# What the service serves when RESNET_MODELS is not set, and what `make serve` exports: the default
# model first (it answers requests that name no model), then the family.
DEFAULT_SERVED_MODELS = (DEFAULT_MODEL_NAME, *FAMILY_MODEL_NAMES)
# The recipe that produced the committed checkpoint (its metadata.json holds the exact command).
DEFAULT_RECIPE = {"model": "resnet20", "epochs": 30, "grad_norms": True}


def ensure_default_checkpoint(path: Path = DEFAULT_CHECKPOINT) -> dict:
    """Verifies the committed checkpoint; retrains it (an hour on 2 CPU cores) only if it is absent."""
    from models.checkpoint import load_checkpoint  # torch: imported only by those who train/export
    from models.train import TrainConfig, train

    if not (path / "metadata.json").exists():
        log.warning("%s is missing: training it again with the committed recipe (slow on a CPU)", path)
        train(TrainConfig(**DEFAULT_RECIPE, out=str(path)), resume=True)
    _, meta = load_checkpoint(path)  # raises a one-line error if it is corrupt
    log.info("default model %s: %s, test accuracy %.2f%% (%s)", DEFAULT_MODEL_NAME, path,
             meta["test_accuracy"], "trained" if meta.get("trained") else "untrained")
    return meta


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    argparse.ArgumentParser(prog="python -m models.default", description=__doc__.split("\n")[0]).parse_args(argv)
    ensure_default_checkpoint()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
