"""Where an exported model comes from: a checkpoint of ours, a torchvision state_dict, or nothing.

Each source yields the unfolded PyTorch model in eval mode plus its model card (class names, input
size, channel mode, normalisation, trained flag, accuracy, provenance), which travels with it.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.checkpoint import load_checkpoint, load_state_dict_strict
from common.files import sha256_file
from common.errors import UserError
from models.card import ModelCard, Provenance, served_name
from models.init import randomize_batchnorm_stats_
from models.registry import create_model, get_spec

log = logging.getLogger(__name__)
IMAGENET_CLASSES: list[str] = json.loads((Path(__file__).parent / "imagenet_classes.json").read_text())["classes"]
# torchvision's ImageNet preprocessing: resize the shorter side to 256, centre-crop 224.
IMAGENET_PREPROCESS = {"input_shape": [3, 224, 224], "resize": 256, "channel_mode": "RGB",
                       "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
UNTRAINED_SEED = 0


@dataclass
class Source:
    model: nn.Module  # unfolded, eval mode, float32
    card: ModelCard  # not exported yet: no precision, verification or onnx_sha256


def from_checkpoint(path: Path, model_name: str | None) -> Source:
    model, meta = load_checkpoint(path)
    if model_name and model_name != meta["model"]:
        raise UserError(f"--model {model_name} but {path} holds a {meta['model']}")
    return Source(model, checkpoint_card(meta, path))


def checkpoint_card(meta: dict[str, Any], path: Path) -> ModelCard:
    """The card of a checkpoint, from its ``metadata.json`` (the training side's format); a missing
    ``resize`` means none: the shorter side is resized straight to the crop (28x28 Fashion-MNIST)."""
    spec = get_spec(meta["model"])
    dataset = meta.get("dataset", "unknown")
    sha256 = meta.get("weights_sha256") or sha256_file(Path(path) / "model.safetensors")
    try:
        return ModelCard(
            name=served_name(meta["model"], dataset), model=meta["model"], family=spec.family,
            depth=spec.depth, residual=spec.residual, dataset=dataset,
            num_classes=meta["num_classes"], class_names=meta["class_names"],
            input_shape=meta["input_shape"], resize=meta.get("resize", meta["input_shape"][-1]),
            channel_mode=meta["channel_mode"], mean=meta["mean"], std=meta["std"],
            trained=bool(meta.get("trained", True)), test_accuracy=meta.get("test_accuracy"),
            provenance=Provenance(kind="checkpoint", path=str(path), sha256=sha256, command=meta.get("command")),
        )
    except (KeyError, ValueError) as e:
        raise UserError(f"{path}: its metadata cannot make a model card ({e})") from None


def from_torchvision_weights(path: Path, model_name: str) -> Source:
    """A torchvision ResNet ``state_dict`` file as users have them (``torch.save(model.state_dict())``)."""
    spec = get_spec(model_name)
    if spec.family != "imagenet" or not spec.residual:
        raise UserError(f"--torchvision-weights fits resnet18/34/50/101/152, not {model_name}")
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - on arbitrary bytes the unpickler raises IndexError, KeyError, ... too
        detail = (str(e).splitlines() or [""])[0]
        raise UserError(f"{path}: not a readable PyTorch state_dict ({type(e).__name__}: {detail})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: expected a state_dict (a dict of tensors)")
    num_classes = state["fc.weight"].shape[0] if "fc.weight" in state else 1000
    model = create_model(model_name, num_classes=num_classes)
    load_state_dict_strict(model, state, source=f"{path} (as {model_name})")
    classes = IMAGENET_CLASSES if num_classes == 1000 else [f"class_{i}" for i in range(num_classes)]
    provenance = Provenance(kind="torchvision-weights", path=str(path), sha256=sha256_file(path))
    return Source(model.eval(), _imagenet_card(model_name, classes, trained=True, provenance=provenance))


def untrained(model_name: str) -> Source:
    """Deterministic random weights, with non-trivial BatchNorm statistics so folding is exercised.

    For latency measurement only: ``trained: false`` travels with it to the service and reports.
    """
    spec = get_spec(model_name)
    if spec.family != "imagenet":
        raise UserError(f"{model_name} is a CIFAR-family model: export it from a trained --checkpoint")
    torch.manual_seed(UNTRAINED_SEED)
    model = randomize_batchnorm_stats_(create_model(model_name), seed=UNTRAINED_SEED)
    provenance = Provenance(kind="deterministic-init", seed=UNTRAINED_SEED, sha256=None)
    return Source(model.eval(), _imagenet_card(model_name, IMAGENET_CLASSES, trained=False, provenance=provenance))


def _imagenet_card(model_name: str, classes: list[str], trained: bool, provenance: Provenance) -> ModelCard:
    spec = get_spec(model_name)
    return ModelCard(name=served_name(model_name, "imagenet"), model=model_name, family=spec.family,
                     depth=spec.depth, residual=spec.residual, dataset="imagenet",
                     num_classes=len(classes), class_names=classes, **IMAGENET_PREPROCESS,
                     trained=trained, test_accuracy=None, provenance=provenance)


def load_source(model_name: str | None, checkpoint: Path | None, torchvision_weights: Path | None) -> Source:
    if checkpoint and torchvision_weights:
        raise UserError("give --checkpoint or --torchvision-weights, not both")
    if checkpoint:
        return from_checkpoint(checkpoint, model_name)
    if not model_name:
        raise UserError("--model is required without --checkpoint")
    get_spec(model_name)  # unknown name: one line listing the valid ones
    if torchvision_weights:
        return from_torchvision_weights(torchvision_weights, model_name)
    return untrained(model_name)
