"""The ResNet family: ImageNet ResNet-18..152, the paper's CIFAR ResNet-20..110, and plain twins."""
from models.registry import MODEL_SPECS, create_model, get_spec, list_models

__all__ = ["MODEL_SPECS", "create_model", "get_spec", "list_models"]
