"""What one forward pass costs: parameters and floating-point operations, counted layer by layer.

FLOPs are counted as 2 x multiply-accumulates of every convolution and fully connected layer (the
convention of the ResNet paper's "3.6 billion FLOPs" for ResNet-34 is multiply-adds; torchvision's
"GFLOPS" column is also multiply-adds). We say GFLOPs = 2 x GMACs: ResNet-50 at 224x224 is 4.1
GMACs = 8.2 GFLOPs. BatchNorm, ReLU, additions and pooling are left out (under 1% for these nets).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.registry import create_model, get_spec


@dataclass(frozen=True)
class ModelCost:
    params: int
    macs: int  # multiply-accumulates per image

    @property
    def gflops(self) -> float:
        return 2 * self.macs / 1e9


def count_cost(model: nn.Module, input_shape: tuple[int, int, int]) -> ModelCost:
    """Parameters and per-image MACs of ``model`` on one (C, H, W) input, by forward hooks."""
    macs = 0

    def conv_hook(module: nn.Conv2d, _inputs, output: torch.Tensor) -> None:
        nonlocal macs
        kernel = module.weight.shape[1] * module.weight.shape[2] * module.weight.shape[3]  # (C_in/groups)*kh*kw
        macs += output[0].numel() * kernel

    def linear_hook(module: nn.Linear, _inputs, output: torch.Tensor) -> None:
        nonlocal macs
        macs += output[0].numel() * module.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return ModelCost(params=sum(p.numel() for p in model.parameters()), macs=macs)


def registry_cost(name: str, input_shape: tuple[int, int, int] | None = None, num_classes: int | None = None) -> ModelCost:
    """The cost of a registered model (``resnet50``) at ``input_shape`` (its family's default if None)."""
    spec = get_spec(name)
    shape = tuple(input_shape or spec.default_input)
    model = create_model(name, in_channels=shape[0], num_classes=num_classes or spec.default_classes)
    return count_cost(model, shape)
