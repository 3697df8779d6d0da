"""The engine benchmark's surroundings: the machine and its card, CUDA's presence, the models and
their exports (ImageNet ResNets with deterministic random weights at 224x224; the Fashion-MNIST
family from its committed checkpoints at 28x28)."""
from __future__ import annotations

import logging
import multiprocessing
import os
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnxruntime as ort
import torch

from common.errors import UserError
from models.card import ModelCard, served_name

if TYPE_CHECKING:
    from export.sources import Source

log = logging.getLogger(__name__)
PRECISIONS = ["fp32", "fp16"]
# Relative cost of one model's cells, for sharing a time budget: ~GMACs per 224x224 image + a fixed part;
# a 28x28 net costs little but its sessions, whatever its depth.
MODEL_WEIGHT = {"resnet18": 3.8, "resnet34": 5.6, "resnet50": 6.1, "resnet101": 9.8, "resnet152": 13.5}
FAMILY_WEIGHT = 1.0


def is_family(name: str) -> bool:
    """A CIFAR-style net (resnet20 ... plain56): benchmarked as its Fashion-MNIST checkpoint."""
    from models.registry import get_spec

    return get_spec(name).family != "imagenet"


def bench_name(name: str) -> str:
    """The served name of a benchmarked model: resnet50-imagenet, resnet20-fmnist."""
    return served_name(name, "fashion-mnist" if is_family(name) else "imagenet")


def check_models(names: Sequence[str]) -> None:
    """Fails at once on an unknown name, or a family net without a committed checkpoint."""
    from models.default import CHECKPOINTS_DIR

    if not names:
        raise UserError("no model to benchmark")
    for name in names:
        if is_family(name) and not (CHECKPOINTS_DIR / bench_name(name)).is_dir():  # unknown: get_spec says so
            raise UserError(f"{name}: no committed checkpoint {CHECKPOINTS_DIR / bench_name(name)} "
                            "(the engine benchmark takes resnet18 ... resnet152 and the committed Fashion-MNIST nets)")


def bench_source(name: str) -> Source:
    """The unfolded model and its card: random weights for an ImageNet ResNet, the committed checkpoint
    (verified) for a family net."""
    from export.default_model import committed_checkpoint
    from export.sources import from_checkpoint, untrained

    return from_checkpoint(committed_checkpoint(bench_name(name))[0], name) if is_family(name) else untrained(name)


def model_weight(name: str) -> float:
    return FAMILY_WEIGHT if is_family(name) else MODEL_WEIGHT.get(name, 4.0)


def cuda_missing_reason() -> str | None:
    """Why onnxruntime cannot use CUDA here, or None when it can (the same test as the service's)."""
    from service.engine import CUDA, cuda_usable

    if cuda_usable():
        return None
    if CUDA not in ort.get_available_providers():
        return f"this onnxruntime build lists {ort.get_available_providers()}"
    return "no /dev/nvidia* device"


def _nvidia_smi() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0 or not out.stdout.strip():
        return None
    return out.stdout.strip()


def machine_info() -> dict[str, Any]:
    """CPU, card (nvidia-smi and PyTorch's name for it), library versions."""
    from bench.export_latency.measure import machine_info as cpu_info

    info = cpu_info()
    smi = _nvidia_smi()
    cuda = torch.cuda.is_available()
    info.update(
        nvidia_smi=smi, torch_cuda=cuda, torch_device_name=torch.cuda.get_device_name(0) if cuda else None,
        card=(smi.split(",")[0].strip() if smi else None) or (torch.cuda.get_device_name(0) if cuda else None),
        ort_providers=ort.get_available_providers(), ort_device=ort.get_device(),
    )
    info["versions"].update(torch_cuda=torch.version.cuda,
                            cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
    return info


def export_models(names: Sequence[str], onnx_dir: Path, register: bool,
                  workers: int | None = None) -> dict[str, dict[str, Any]]:
    """fp32 + fp16 ONNX of each model through ``export.pipeline`` (reusing verified files already in
    ``onnx_dir``), registered in the BentoML store when ``register``; a failure is recorded per model.
    Several models export side by side in ``workers`` processes (default: one per 3 cores): the
    exporter is mostly single-threaded Python, so on 16 cores this divides the wall time."""
    names = list(dict.fromkeys(names))
    workers = min(len(names), workers or max(1, (os.cpu_count() or 1) // 3))
    if workers <= 1:
        return {name: export_one(name, onnx_dir, register) for name in names}
    threads = max(1, (os.cpu_count() or 1) // workers)
    # spawn, not fork: the parent may already hold a CUDA context
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {name: pool.submit(export_one, name, onnx_dir, register, threads) for name in names}
        exports = {}
        for name, future in futures.items():
            try:
                exports[name] = future.result()
            except Exception as e:  # noqa: BLE001 - a worker that died: recorded like any failure
                exports[name] = {"status": f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
            log.info("%s: %s", name, exports[name].get("how") or exports[name]["status"])
    return exports


def export_one(name: str, onnx_dir: Path, register: bool, threads: int | None = None) -> dict[str, Any]:
    """One model's exports (or the reason there are none), as ``export_models`` records them. A family
    net whose fp16 file fails its verification (resnet110-fmnist did, docs/decisions/009) is exported
    in fp32 alone, the fp16 failure recorded: its fp16 cells then say why they were not measured."""
    from export.verify import VerificationError

    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    files = {p: onnx_dir / f"{bench_name(name)}.{p}.onnx" for p in PRECISIONS}
    missing: dict[str, str] = {}
    try:
        cards = _reusable(name, files)
        if cards is not None:
            tag, how = (_register_existing(files, cards) if register else None), "reused"
        else:
            try:
                files, cards, tag = _export(name, PRECISIONS, onnx_dir, register)
            except VerificationError as e:
                if not is_family(name):
                    raise
                missing["fp16"] = f"fp16 export failed its verification: {str(e).splitlines()[0]}"
                log.warning("%s: %s; exporting fp32 alone", name, missing["fp16"])
                files, cards, tag = _export(name, ["fp32"], onnx_dir, register)
            how = "exported"
    except Exception as e:  # noqa: BLE001 - the other models still run
        log.error("%s: export failed: %s", name, e)
        return {"status": f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    return {
        "status": "ok", "how": how, "tag": tag, "seconds": round(time.perf_counter() - t0, 1),
        "files": {p: str(f) for p, f in files.items()}, "missing": missing,
        "verification": {p: {k: c.verification.get(k) for k in ("rel_error_random", "rel_error_real", "tolerance")}
                         for p, c in cards.items()},
    }


def _export(name: str, precisions: list[str], onnx_dir: Path,
            register: bool) -> tuple[dict[str, Path], dict[str, ModelCard], str | None]:
    from export.default_model import committed_checkpoint
    from export.pipeline import ExportConfig, export_model

    source = {"checkpoint": committed_checkpoint(bench_name(name))[0]} if is_family(name) else {"model": name}
    result = export_model(ExportConfig(**source, precisions=list(precisions), out=onnx_dir, register=register))
    return result.files, result.cards, result.tag


def _reusable(name: str, files: dict[str, Path]) -> dict[str, ModelCard] | None:
    """The files' cards when both precisions of this model, from the same weights, are already there."""
    if not all(f.is_file() and f.with_suffix(".json").is_file() for f in files.values()):
        return None
    try:
        cards = {p: ModelCard.from_json(f.with_suffix(".json").read_text()) for p, f in files.items()}
    except ValueError:  # damaged or older files: export again
        return None
    source = bench_source(name).card  # a family checkpoint's sha256 is checked here
    ok = all(c.model == name and c.trained is source.trained and c.input_shape == source.input_shape
             and c.provenance.sha256 == source.provenance.sha256 and c.precision == p and c.verification is not None
             for p, c in cards.items())
    return cards if ok else None


def _register_existing(files: dict[str, Path], cards: dict[str, ModelCard]) -> str:
    from export.store import find_registered, register

    first = cards[PRECISIONS[0]]
    return find_registered(first.name, first.provenance.sha256, sorted(PRECISIONS)) or register(files, first)
