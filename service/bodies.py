"""The JSON bodies the API answers, typed: what /docs.json shows for each route (service/openapi.py).

The API itself returns plain dicts, serialised as they always were: a model here documents its
route's answer, and tests/service/test_openapi.py checks that real answers are exactly what the
models describe (docs/decisions/016-typed-answers-documented.md).
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from pydantic.json_schema import GenerateJsonSchema


def _example(value: Any) -> ConfigDict:
    return ConfigDict(json_schema_extra={"example": value})  # OpenAPI 3.0's "example", not "examples"


PREDICTIONS = [{"label": "Ankle boot", "class_index": 9, "probability": 0.9915},
               {"label": "Sneaker", "class_index": 7, "probability": 0.0062}]


class Prediction(BaseModel):
    model_config = _example(PREDICTIONS[0])
    label: str
    class_index: int
    probability: float


class Classification(BaseModel):
    """The `top_k` most probable classes of one image, most probable first."""
    model_config = _example({"model": "resnet20-fmnist", "trained": True, "predictions": PREDICTIONS})
    model: str
    trained: bool  # False: random weights, for latency measurement only
    predictions: list[Prediction]


class ImageResult(BaseModel):
    model_config = _example({"predictions": PREDICTIONS})
    predictions: list[Prediction]


class BatchClassification(BaseModel):
    """One result per image, in the order the images were sent."""
    model_config = _example({"model": "resnet20-fmnist", "trained": True,
                             "results": [{"predictions": PREDICTIONS}, {"predictions": PREDICTIONS[::-1]}]})
    model: str
    trained: bool
    results: list[ImageResult]


CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot"]
BATCHING = {"enabled": True, "max_batch_size": 32, "max_latency_ms": 1000}


class Batching(BaseModel):
    model_config = _example(BATCHING)
    enabled: bool
    max_batch_size: int
    max_latency_ms: int


SERVED = {"name": "resnet20-fmnist", "tag": "resnet20-fmnist:i3jy3ixnioc7gax4", "version": "i3jy3ixnioc7gax4",
          "model": "resnet20", "depth": 20, "residual": True, "dataset": "fashion-mnist", "num_classes": 10,
          "class_names": CLASS_NAMES, "input_shape": [1, 28, 28], "channel_mode": "L",
          "precision": "fp32", "provider": "CPUExecutionProvider", "trained": True, "test_accuracy": 94.55,
          "default": True, "batching": BATCHING}


class ModelInfo(BaseModel):
    """One served model's card, as the engine serves it."""
    model_config = _example(SERVED)
    name: str
    tag: str
    version: str  # the BentoML store version
    model: str
    depth: int
    residual: bool  # false for the plain twins (no shortcuts)
    dataset: str
    num_classes: int
    class_names: list[str]
    input_shape: list[int]  # [C, H, W]
    channel_mode: Literal["L", "RGB"]
    precision: str
    provider: str  # onnxruntime's provider in use (it falls back to the CPU silently)
    trained: bool
    test_accuracy: float | None  # %, null for random weights
    default: bool  # the model that requests naming none get
    batching: Batching


class ModelList(BaseModel):
    """Every served model."""
    model_config = _example({"models": [SERVED]})
    models: list[ModelInfo]


class ErrorBody(BaseModel):
    """Every error: a message for people and a short code for programs."""
    model_config = _example({"error": "unknown model 'resnet999'; served: resnet20-fmnist", "code": "unknown_model"})
    error: str
    code: str


class OpenAPI30(GenerateJsonSchema):
    """pydantic's JSON schema in OpenAPI 3.0's dialect, which BentoML's document declares: ``T | None``
    as ``nullable``, since 3.0 has no ``null`` type."""

    def nullable_schema(self, schema: Any) -> dict[str, Any]:
        return {**self.generate_inner(schema["schema"]), "nullable": True}
