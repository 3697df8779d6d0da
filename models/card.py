"""A served model's card: what it is, how to feed it, where its weights came from, how it was verified.

Built once at export (``export.sources``, then ``export.pipeline`` adds the file's precision and
verification), written into the ONNX file (``metadata_props``) and beside it as
``<name>.<precision>.json``, parsed once by the service (``service.catalog``). Plain stdlib, no torch:
the service imports it. (A checkpoint's ``metadata.json`` is the training side's own format.)
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, Literal

# The short form of a dataset in served names; other datasets keep their own name.
DATASET_SHORT_NAMES = {"fashion-mnist": "fmnist"}
PROVENANCE_KINDS = ("checkpoint", "torchvision-weights", "deterministic-init")


def served_name(model: str, dataset: str) -> str:
    """The name users see in the store and the API: ``resnet20-fmnist``, ``resnet50-imagenet``."""
    return f"{model}-{DATASET_SHORT_NAMES.get(dataset, dataset)}"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_list(v: Any, item: Callable[[Any], bool]) -> bool:
    return isinstance(v, (list, tuple)) and all(item(x) for x in v)


# kind -> (what a valid value is, its check, its conversion to the card's type)
_KINDS: dict[str, tuple[str, Callable[[Any], bool], Callable[[Any], Any]]] = {
    "str": ("a string", lambda v: isinstance(v, str), str),
    "int": ("an integer", _is_int, int),
    "positive int": ("a positive integer", lambda v: _is_int(v) and v > 0, int),
    "bool": ("true or false", lambda v: isinstance(v, bool), bool),
    "number": ("a number", _is_number, float),
    "object": ("a JSON object", lambda v: isinstance(v, dict), dict),
    "strings": ("a list of strings", lambda v: _is_list(v, lambda x: isinstance(x, str)), tuple),
    "numbers": ("a list of numbers", lambda v: _is_list(v, _is_number), lambda v: tuple(float(x) for x in v)),
    "shape": ("[C, H, W] of positive integers",
              lambda v: _is_list(v, lambda x: _is_int(x) and x > 0) and len(v) == 3, tuple),
    "channel_mode": ("'L' or 'RGB'", lambda v: v in ("L", "RGB"), str),
    "provenance kind": (" or ".join(map(repr, PROVENANCE_KINDS)), lambda v: v in PROVENANCE_KINDS, str),
}


def _typed(kind: str, nullable: bool = False, key: str | None = None, **kw: Any) -> Any:
    """A dataclass field with its JSON kind; ``nullable`` fields may hold null, ``key`` renames it in JSON."""
    return field(metadata={"kind": kind, "nullable": nullable, "key": key}, **kw)


def _from_dict(cls: type, data: Any, where: str) -> Any:
    """``cls`` built from the JSON object ``data``; keys it does not know are ignored."""
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a JSON object, got {type(data).__name__}")
    values = {}
    for f in fields(cls):
        key = f.metadata["key"] or f.name
        if key in data:
            values[f.name] = data[key]
        elif f.default is not None:  # only the optional fields (default None) may be left out
            raise ValueError(f"{where} lacks field {key!r}")
    return cls(**values)


def _check_fields(obj: Any, where: str) -> None:
    """Checks every field of a card being built and converts it to its declared type (lists to
    tuples, ints to floats), so a card is typed however it was built; one ValueError naming the field."""
    for f in fields(obj):
        value, key = getattr(obj, f.name), f.metadata["key"] or f.name
        if value is None and (f.metadata["nullable"] or f.default is None):
            continue
        if f.metadata["kind"] == "provenance":
            if isinstance(value, dict):
                value = Provenance.from_dict(value)
            elif not isinstance(value, Provenance):
                raise ValueError(f"{where} field {key!r} must be a JSON object, got {value!r:.200}")
        else:
            expected, check, convert = _KINDS[f.metadata["kind"]]
            if not check(value):
                raise ValueError(f"{where} field {key!r} must be {expected}, got {value!r:.200}")
            value = convert(value)
        object.__setattr__(obj, f.name, value)  # frozen: the one place a field is normalised


def _to_dict(obj: Any) -> dict[str, Any]:
    """JSON-ready, in field order; optional fields left unset (None) are left out."""
    out = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if value is None and f.default is None:
            continue
        out[f.metadata["key"] or f.name] = (value.to_dict() if isinstance(value, Provenance)
                                            else list(value) if isinstance(value, tuple) else value)
    return out


@dataclass(frozen=True, kw_only=True)
class Provenance:
    """Where the weights came from: a checkpoint, a torchvision state_dict, or a seeded random init."""

    kind: Literal["checkpoint", "torchvision-weights", "deterministic-init"] = _typed("provenance kind")
    path: str | None = _typed("str", default=None)  # the checkpoint folder or weights file
    seed: int | None = _typed("int", default=None)  # of a deterministic init
    sha256: str | None = _typed("str", nullable=True)  # of the weights file; null for a random init
    command: str | None = _typed("str", default=None)  # the training command a checkpoint records

    def __post_init__(self) -> None:
        _check_fields(self, "model card 'source'")

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Provenance:
        return _from_dict(cls, data, "model card 'source'")


@dataclass(frozen=True, kw_only=True)
class ModelCard:
    """One model file's card, fields in the order its JSON lists them.

    The fields up to ``provenance`` describe the model and come from its source; the rest are set by
    the export for each file and are absent (None) from a card that has not been exported yet.
    """

    name: str = _typed("str")  # the served name: resnet20-fmnist
    model: str = _typed("str")  # the architecture: resnet20
    family: str = _typed("str")  # imagenet or cifar
    depth: int = _typed("positive int")
    residual: bool = _typed("bool")  # False for the plain twins
    dataset: str = _typed("str")  # fashion-mnist, imagenet
    num_classes: int = _typed("positive int")
    class_names: tuple[str, ...] = _typed("strings")
    input_shape: tuple[int, int, int] = _typed("shape")  # (C, H, W)
    resize: int = _typed("positive int")  # the shorter side is resized to this, then centre-cropped
    channel_mode: Literal["L", "RGB"] = _typed("channel_mode")
    mean: tuple[float, ...] = _typed("numbers")  # per channel, on the [0, 1] scale
    std: tuple[float, ...] = _typed("numbers")
    trained: bool = _typed("bool")  # False: random weights, for latency measurement only
    test_accuracy: float | None = _typed("number", nullable=True)  # %, as the checkpoint records it
    provenance: Provenance = _typed("provenance", key="source")
    precision: str | None = _typed("str", default=None)  # fp32, fp16, int8
    opset: int | None = _typed("int", default=None)
    input_name: str | None = _typed("str", default=None)
    output_name: str | None = _typed("str", default=None)
    folding: dict[str, int | bool] | None = _typed("object", default=None)  # export.fold's report
    verification: dict[str, Any] | None = _typed("object", default=None)  # export.verify's figures
    exported: str | None = _typed("str", default=None)  # ISO 8601, UTC
    export_seconds: float | None = _typed("number", default=None)
    versions: dict[str, str] | None = _typed("object", default=None)  # torch, onnx, onnxruntime, ...
    # Not inside the ONNX file (it would change the hash): only in the JSON beside it.
    onnx_sha256: str | None = _typed("str", default=None)

    def __post_init__(self) -> None:
        _check_fields(self, "model card")
        # The service indexes class_names by logit: a short list would fail requests, not the load.
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"model card {self.name!r} has {len(self.class_names)} class_names "
                             f"for num_classes {self.num_classes}")

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    def to_json(self) -> str:
        """As written beside each ONNX file."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: Any) -> ModelCard:
        return _from_dict(cls, data, "model card")

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelCard:
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ValueError(f"model card is not valid JSON ({e})") from None
        return cls.from_dict(data)
