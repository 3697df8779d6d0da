"""The BentoML model store: one model per served name (``resnet20-fmnist``), all precisions inside.

Honours ``BENTOML_HOME`` (BentoML reads it itself). A model is created only from files that have
already passed verification, and BentoML's ``models.create`` context writes into a temporary
folder that is moved into the store only when the block exits cleanly, so nothing half-written is
ever visible to ``bentoml models list`` or the service.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from models.card import ModelCard

log = logging.getLogger(__name__)


def labels_for(card: ModelCard, precisions: list[str]) -> dict[str, str]:
    acc = card.test_accuracy
    return {
        "model": card.model, "dataset": card.dataset, "depth": str(card.depth),
        "precision": ",".join(precisions), "trained": str(card.trained).lower(),
        "accuracy": f"{acc:.2f}" if acc is not None else "n/a",
    }


def register(files: dict[str, Path], card: ModelCard) -> str:
    """Copies the verified ``{precision: onnx_path}`` files (and their cards) into a new store version."""
    import bentoml

    precisions = sorted(files)
    summary = {"model": card.model, "depth": card.depth, "dataset": card.dataset, "trained": card.trained,
               "test_accuracy": card.test_accuracy, "input_shape": list(card.input_shape),
               "source_sha256": card.provenance.sha256}
    summary = {k: v for k, v in summary.items() if v is not None}  # BentoML metadata refuses None
    with bentoml.models.create(card.name, labels=labels_for(card, precisions), metadata=summary) as bento_model:
        for precision, path in files.items():
            shutil.copy2(path, bento_model.path_of(f"model.{precision}.onnx"))
            shutil.copy2(path.with_suffix(".json"), bento_model.path_of(f"model.{precision}.json"))
    log.info("registered %s (%s) in the BentoML model store", bento_model.tag, ", ".join(precisions))
    return str(bento_model.tag)


def find_registered(name: str, source_sha256: str | None, precisions: list[str]) -> str | None:
    """The newest stored version of ``name`` made from the same source file with these precisions."""
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        candidates = bentoml.models.list(name)
    except NotFound:
        return None
    for model in sorted(candidates, key=lambda m: m.info.creation_time, reverse=True):
        have = [p for p in precisions if Path(model.path_of(f"model.{p}.onnx")).is_file()]
        card_file = Path(model.path_of(f"model.{precisions[0]}.json"))
        if have == precisions and card_file.is_file():
            try:
                stored = ModelCard.from_json(card_file.read_text())
            except ValueError:  # unreadable: not a version to reuse
                continue
            if stored.provenance.sha256 == source_sha256:
                return str(model.tag)
    return None
