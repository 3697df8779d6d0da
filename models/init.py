"""Non-default initialisations that tests and the export step need."""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def randomize_batchnorm_stats_(model: nn.Module, seed: int) -> nn.Module:
    """Gives every BatchNorm2d random, well-conditioned statistics and affine parameters, in place.

    A freshly built model's BNs are identities in eval mode (mean 0, var 1, weight 1, bias 0), so
    folding them into the convs would change nothing and a wrong fold would go unnoticed. Tests,
    and the export of untrained models, call this first so that folding is really exercised:
    weight ~ U(0.5, 1.5), bias ~ N(0, 0.1), running_mean ~ N(0, 0.1), running_var ~ U(0.5, 1.5).
    The values depend only on ``seed`` and the module order, not on the model's dtype or device.
    Returns ``model`` for chaining.
    """
    generator = torch.Generator().manual_seed(seed)

    def uniform(n: int, low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=generator)

    def normal(n: int, std: float) -> torch.Tensor:
        return std * torch.randn(n, generator=generator)

    for m in model.modules():
        if not isinstance(m, nn.BatchNorm2d):
            continue
        n = m.num_features
        if m.affine:
            m.weight.copy_(uniform(n, 0.5, 1.5))
            m.bias.copy_(normal(n, 0.1))
        if m.track_running_stats:
            m.running_mean.copy_(normal(n, 0.1))
            m.running_var.copy_(uniform(n, 0.5, 1.5))
    return model
