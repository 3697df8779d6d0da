"""Which models the service loads: served names resolved to verified ONNX files in the BentoML store."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.files import sha256_file
from service.config import ServiceConfig
from service.engine import cuda_usable

log = logging.getLogger(__name__)


class ModelUnavailable(RuntimeError):
    """A configured model is missing from the store, lacks the precision, or fails its checksum."""


@dataclass(frozen=True)
class ServedModel:
    name: str  # resnet20-fmnist
    tag: str  # resnet20-fmnist:<version>
    precision: str
    onnx_path: Path
    metadata: dict[str, Any]

    @property
    def api_name(self) -> str:
        return "infer_" + "".join(c if c.isalnum() else "_" for c in self.name)


def resolve_precision(config: ServiceConfig) -> str:
    if config.precision != "auto":
        return config.precision
    return "fp16" if config.device != "cpu" and cuda_usable() else "fp32"


def resolve_models(config: ServiceConfig, verify_checksums: bool = False) -> list[ServedModel]:
    """Latest store version of each configured name, with its metadata; one clear error if absent."""
    import bentoml
    from bentoml.exceptions import NotFound

    precision = resolve_precision(config)
    served = []
    for name in config.models:
        try:
            stored = bentoml.models.get(name)
        except NotFound:
            raise ModelUnavailable(
                f"model {name!r} is not in the BentoML store: export it with "
                f"'python -m export --model ... --register' (make serve does this for the default)") from None
        path = Path(stored.path_of(f"model.{precision}.onnx"))
        meta_path = path.with_suffix(".json")
        if not path.is_file() or not meta_path.is_file():
            raise ModelUnavailable(f"{stored.tag} has no {precision} file; re-export it with --precision {precision}")
        meta = json.loads(meta_path.read_text())
        if verify_checksums and meta.get("onnx_sha256") and sha256_file(path) != meta["onnx_sha256"]:
            raise ModelUnavailable(f"{path}: sha256 does not match its metadata; the model file is corrupt")
        served.append(ServedModel(name, str(stored.tag), precision, path, meta))
    return served
