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
    from bentoml.exceptions import BentoMLException, NotFound

    precision = resolve_precision(config)
    served = []
    for name in config.models:
        try:
            stored = bentoml.models.get(name)
        except NotFound:
            raise ModelUnavailable(
                f"model {name!r} is not in the BentoML store: export it with "
                f"'python -m export --model ... --register' (make serve does this for the default served set)") from None
        except BentoMLException as e:  # a damaged store entry (model.yaml unreadable, ...)
            raise ModelUnavailable(f"model {name!r}: its BentoML store entry cannot be read ({e})") from None
        own = precision
        if config.precision == "auto" and own != "fp32" and not Path(stored.path_of(f"model.{own}.onnx")).is_file():
            # auto chose fp16 (CUDA), but the model was registered without it (the depth-study
            # family, fp32 only: export.default_model): serve its fp32 file rather than refuse.
            log.info("%s has no %s file: serving it in fp32", stored.tag, own)
            own = "fp32"
        path = Path(stored.path_of(f"model.{own}.onnx"))
        meta_path = path.with_suffix(".json")
        for needed in (path, meta_path):
            if not needed.is_file():
                raise ModelUnavailable(f"{stored.tag}: {needed} is missing; re-export it with --precision {own}")
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError as e:
            raise ModelUnavailable(f"{stored.tag}: {meta_path} is not valid JSON ({e})") from None
        if verify_checksums:
            verify_checksum(str(stored.tag), path, meta)
        served.append(ServedModel(name, str(stored.tag), own, path, meta))
    return served


def verify_checksum(tag: str, path: Path, meta: dict[str, Any]) -> None:
    """The file's sha256 must equal the one its export recorded; a file with none recorded is
    refused too, since nothing would then tell a damaged or swapped file from the real one."""
    expected = meta.get("onnx_sha256")
    if not isinstance(expected, str) or len(expected) != 64:
        raise ModelUnavailable(f"{tag}: {path.with_suffix('.json')} records no onnx_sha256, so {path.name} "
                               "cannot be verified; re-export the model")
    actual = sha256_file(path)
    if actual != expected:
        raise ModelUnavailable(f"{tag}: {path} is corrupt: sha256 {actual[:12]}... does not match "
                               f"{expected[:12]}... recorded at export")
