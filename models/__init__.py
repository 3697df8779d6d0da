"""The ResNet family: ImageNet ResNet-18..152, the paper's CIFAR ResNet-20..110, and plain twins.

Names are imported lazily so that torch-free users of the package (the HTTP service reads
``models.card`` and ``models.default``) do not pay for importing torch.
"""
from __future__ import annotations

from typing import Any

__all__ = ["MODEL_SPECS", "create_model", "get_spec", "list_models"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from models import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")
