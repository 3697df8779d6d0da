"""The sweep's models: names as users type them, resolved to served names, exported when missing.

``resnet50`` means the ImageNet-shape ``resnet50-imagenet`` (random weights unless a trained one
was registered under that name); the CIFAR-style ``resnet20`` ... ``plain110`` mean the Fashion-MNIST
models ``resnet20-fmnist`` ...; a served name (``resnet20-fmnist``) is taken as it is; ``fmnist``
means the whole trained Fashion-MNIST family: the default model and every ``*-fmnist`` model
registered or found as a checkpoint.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from export.default_model import EXPORT_DIR, ensure_default_model
from export.pipeline import ExportConfig, export_model
from models.checkpoint import METADATA_FILE
from models.default import CHECKPOINTS_DIR, DEFAULT_MODEL_NAME
from common.errors import UserError
from models.card import served_name
from models.flops import registry_cost
from models.registry import get_spec

log = logging.getLogger(__name__)
FAMILY_KEYWORD = "fmnist"
CHECKPOINT_DIRS = (CHECKPOINTS_DIR,)  # the committed default and family


@dataclass(frozen=True)
class SweepModel:
    served: str  # resnet50-imagenet
    arch: str  # resnet50
    depth: int
    residual: bool
    dataset: str
    num_classes: int
    input_shape: tuple[int, int, int]
    trained: bool
    test_accuracy: float | None
    gflops: float
    params: int

    @property
    def corpus_kind(self) -> str:
        return "fmnist" if self.dataset == "fashion-mnist" else "photo"

    @property
    def top_k(self) -> int:
        return min(5, self.num_classes)


def resolve_served_name(name: str) -> str:
    """``resnet50`` -> ``resnet50-imagenet``, ``resnet20`` -> ``resnet20-fmnist``, served names as they are."""
    if "-" in name:
        return name
    spec = get_spec(name)  # one-line error listing every name for a typo
    return served_name(name, "imagenet" if spec.family == "imagenet" else "fashion-mnist")


def _store_names() -> list[str]:
    import bentoml

    return sorted({str(m.tag.name) for m in bentoml.models.list()})


def _checkpoint_for(served: str, extra_dirs: tuple[Path, ...]) -> Path | None:
    """A checkpoint folder for a Fashion-MNIST served name: ``<dir>/<served>`` or ``<dir>/<arch>``."""
    arch = served.rsplit("-", 1)[0]
    for folder in (*extra_dirs, *CHECKPOINT_DIRS):
        for candidate in (folder / served, folder / arch):
            if (candidate / METADATA_FILE).is_file():
                meta = json.loads((candidate / METADATA_FILE).read_text())
                if meta.get("model") == arch and meta.get("dataset") == "fashion-mnist":
                    return candidate
    return None


def family_names(extra_dirs: tuple[Path, ...] = ()) -> list[str]:
    """Every Fashion-MNIST model the sweep can serve: registered, or with a checkpoint to export."""
    names = {DEFAULT_MODEL_NAME, *(n for n in _store_names() if n.endswith("-fmnist"))}
    for folder in (*extra_dirs, *CHECKPOINT_DIRS):
        for meta_path in folder.glob(f"*/{METADATA_FILE}") if folder.is_dir() else ():
            meta = json.loads(meta_path.read_text())
            if meta.get("dataset") == "fashion-mnist" and meta.get("model"):
                names.add(served_name(meta["model"], "fashion-mnist"))
    return sorted(names, key=lambda n: (not get_spec(n.rsplit("-", 1)[0]).residual, get_spec(n.rsplit("-", 1)[0]).depth))


def expand(requested: list[str], extra_dirs: tuple[Path, ...] = ()) -> list[str]:
    out: list[str] = []
    for name in requested:
        for served in family_names(extra_dirs) if name == FAMILY_KEYWORD else [resolve_served_name(name)]:
            if served not in out:
                out.append(served)
    return out


def _has_precisions(served: str, precisions: list[str]) -> bool:
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        stored = bentoml.models.get(served)
    except NotFound:
        return False
    return all(Path(stored.path_of(f"model.{p}.onnx")).is_file() for p in precisions)


def ensure_registered(served: str, precisions: list[str], extra_dirs: tuple[Path, ...] = ()) -> None:
    """Exports and registers ``served`` with ``precisions`` unless the store's latest version has them."""
    if _has_precisions(served, precisions):
        return
    if served == DEFAULT_MODEL_NAME:
        ensure_default_model()  # every precision, from the committed checkpoint
        if _has_precisions(served, precisions):
            return
    arch, _, dataset = served.rpartition("-")
    if dataset == "imagenet":
        cfg = ExportConfig(model=arch, precisions=precisions, out=EXPORT_DIR, register=True)
    elif dataset == "fmnist":
        checkpoint = _checkpoint_for(served, extra_dirs)
        if checkpoint is None:
            raise UserError(f"{served} is not in the BentoML store and no checkpoint of it was found "
                            f"(train it: python -m models.train --model {arch} ..., then pass --checkpoints)")
        cfg = ExportConfig(checkpoint=checkpoint, precisions=precisions, out=EXPORT_DIR, register=True)
    else:
        raise UserError(f"{served}: not in the BentoML store, and the sweep can only export *-imagenet "
                        "and *-fmnist models itself")
    log.info("exporting %s (%s) for the sweep", served, ", ".join(precisions))
    export_model(cfg)


def describe(served: str, listed: dict[str, Any]) -> SweepModel:
    """A served model as ``GET /models`` lists it, with its parameters and GFLOPs counted here."""
    arch = listed["model"]
    shape = tuple(listed["input_shape"])
    cost = registry_cost(arch, shape, listed["num_classes"])
    spec = get_spec(arch)
    return SweepModel(served=served, arch=arch, depth=int(listed["depth"]), residual=spec.residual,
                      dataset=listed["dataset"], num_classes=int(listed["num_classes"]), input_shape=shape,
                      trained=bool(listed["trained"]), test_accuracy=listed.get("test_accuracy"),
                      gflops=cost.gflops, params=cost.params)
