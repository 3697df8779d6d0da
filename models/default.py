"""The default model everything serves first: resnet20 trained on Fashion-MNIST, committed to the repo.

    python -m models.default          # check it (sha256, architecture); retrain it only if missing
"""
from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from models.cli import run_cli

log = logging.getLogger(__name__)
DEFAULT_MODEL_NAME = "resnet20-fmnist"  # <architecture>-<dataset>: the name it is served under
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / DEFAULT_MODEL_NAME
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
