"""Which models the service loads: served names resolved to verified ONNX files in the BentoML store."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from common.files import sha256_file
from models.card import ModelCard
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
    card: ModelCard

    @property
    def version(self) -> str:
        """The store version served (the tag's part after the colon)."""
        return self.tag.partition(":")[2]

    @property
    def api_name(self) -> str:
        return "infer_" + "".join(c if c.isalnum() else "_" for c in self.name)


def resolve_precision(config: ServiceConfig, on_cuda: bool | None = None) -> str:
    """RESNET_PRECISION, or for ``auto`` fp16 where the models will run on CUDA (``on_cuda``; by
    default whether this machine has a usable CUDA device and RESNET_DEVICE allows it), else fp32."""
    if config.precision != "auto":
        return config.precision
    if on_cuda is None:
        on_cuda = config.device != "cpu" and cuda_usable()
    return "fp16" if on_cuda else "fp32"


def resolve_models(config: ServiceConfig, verify_checksums: bool = False) -> list[ServedModel]:
    """The pinned (``name:version``) or latest store version of each configured name, with its card;
    one clear error if absent."""
    import bentoml
    from bentoml.exceptions import BentoMLException, NotFound

    precision = resolve_precision(config)
    served = []
    for name in config.models:
        version = config.version(name)
        try:
            stored = bentoml.models.get(f"{name}:{version}" if version else name)
        except NotFound:
            if version and (versions := _store_versions(name)):
                raise ModelUnavailable(f"model {name!r} has no version {version!r} in the BentoML store "
                                       f"(it has {', '.join(versions)})") from None
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
        card_path = path.with_suffix(".json")
        for needed in (path, card_path):
            if not needed.is_file():
                raise ModelUnavailable(f"{stored.tag}: {needed} is missing; re-export it with --precision {own}")
        try:
            card = ModelCard.from_json(card_path.read_text())
        except ValueError as e:
            raise ModelUnavailable(f"{stored.tag}: {card_path}: {e}; re-export the model") from None
        if verify_checksums:
            verify_checksum(str(stored.tag), path, card.onnx_sha256)
        served.append(ServedModel(name, str(stored.tag), own, path, card))
    return served


def _store_versions(name: str) -> list[str]:
    """The versions of ``name`` in the store, newest first (for the error that names a missing one)."""
    import bentoml

    stored = sorted(bentoml.models.list(name), key=lambda m: m.creation_time, reverse=True)
    return [str(m.tag.version) for m in stored]


def verify_checksum(tag: str, path: Path, expected: str | None) -> None:
    """The file's sha256 must equal the one its export recorded (``expected``); a file with none
    recorded is refused too, since nothing would then tell a damaged or swapped file from the real one."""
    if not isinstance(expected, str) or len(expected) != 64:
        raise ModelUnavailable(f"{tag}: {path.with_suffix('.json')} records no onnx_sha256, so {path.name} "
                               "cannot be verified; re-export the model")
    actual = sha256_file(path)
    if actual != expected:
        raise ModelUnavailable(f"{tag}: {path} is corrupt: sha256 {actual[:12]}... does not match "
                               f"{expected[:12]}... recorded at export")
