"""One registry for every model the product knows: create a model by name, list the names."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from common.errors import UserError
from models.resnet import CIFAR_DEPTHS, IMAGENET_LAYERS, cifar_resnet, imagenet_resnet

Family = Literal["imagenet", "cifar"]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: Family
    depth: int
    residual: bool
    default_input: tuple[int, int, int]  # (C, H, W) the family was designed for
    default_classes: int


def _specs() -> dict[str, ModelSpec]:
    specs: list[ModelSpec] = []
    for depth in IMAGENET_LAYERS:
        specs.append(ModelSpec(f"resnet{depth}", "imagenet", depth, True, (3, 224, 224), 1000))
    for depth in (18, 34):  # the paper's plain ImageNet baselines (Table 2)
        specs.append(ModelSpec(f"plain{depth}", "imagenet", depth, False, (3, 224, 224), 1000))
    for depth in CIFAR_DEPTHS:
        specs.append(ModelSpec(f"resnet{depth}", "cifar", depth, True, (3, 32, 32), 10))
        specs.append(ModelSpec(f"plain{depth}", "cifar", depth, False, (3, 32, 32), 10))
    return {s.name: s for s in sorted(specs, key=lambda s: (s.family, not s.residual, s.depth))}


MODEL_SPECS: dict[str, ModelSpec] = _specs()


class UnknownModelError(UserError):
    pass


def list_models() -> list[str]:
    """Every registered model name: ImageNet family first, then CIFAR; residual before plain."""
    return list(MODEL_SPECS)


def get_spec(name: str) -> ModelSpec:
    try:
        return MODEL_SPECS[name]
    except (KeyError, TypeError):
        raise UnknownModelError(
            f"unknown model {name!r}; valid names: {', '.join(list_models())}"
        ) from None


def create_model(
    name: str,
    *,
    in_channels: int | None = None,
    num_classes: int | None = None,
    shortcut: Literal["A", "B"] = "B",
    zero_init_residual: bool = False,
) -> nn.Module:
    """Builds a registered model with freshly initialised weights.

    ``in_channels``/``num_classes`` default to the family's (3 and 1000 for ImageNet, 3 and 10 for
    CIFAR); Fashion-MNIST models use 1 and 10. ``shortcut`` ("A" zero-padded identity, "B" 1x1
    projection) only exists for the CIFAR family, as in the paper.
    """
    spec = get_spec(name)
    kwargs = dict(
        in_channels=in_channels or spec.default_input[0],
        num_classes=num_classes or spec.default_classes,
        residual=spec.residual,
        zero_init_residual=zero_init_residual,
    )
    if spec.family == "imagenet":
        if shortcut != "B":
            raise UserError(f"{name}: shortcut option {shortcut!r} exists only for the CIFAR family")
        return imagenet_resnet(spec.depth, **kwargs)
    return cifar_resnet(spec.depth, shortcut=shortcut, **kwargs)
