"""Batched training-time augmentation on tensors (works on CPU and GPU alike, no per-image loop)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop_flip(
    images: torch.Tensor, pad: int, hflip: bool, generator: torch.Generator
) -> torch.Tensor:
    """Random crop after zero padding by ``pad`` pixels, then a random horizontal flip.

    The standard CIFAR augmentation of the paper (Sec. 4.2). ``images``: (N, C, H, W).
    """
    n, _, h, w = images.shape
    if pad:
        padded = F.pad(images, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=generator.device)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=generator.device)
        rows = (dy[:, None] + torch.arange(h, device=images.device))[:, None, :, None]  # (N,1,H,1)
        cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, None, :]  # (N,1,1,W)
        batch = torch.arange(n, device=images.device)[:, None, None, None]
        chans = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
        images = padded[batch, chans, rows, cols]
    if hflip:
        flip = torch.rand(n, generator=generator, device=generator.device) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    return images
