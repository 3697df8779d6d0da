"""What the serving-cost benchmarks measure against: a served model's fp32 file from the BentoML store,
as the service resolves it on the CPU, and the commit of an earlier checkout (``--before``)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from bench.service_overhead.measure import service_config
from common.errors import UserError
from models.default import DEFAULT_MODEL_NAME
from service.catalog import ModelUnavailable, ServedModel, resolve_models


def fp32_file(model: str) -> ServedModel:
    """The store's fp32 file of ``model``, as the service resolves it (the default model exported
    first if absent); UserError names what is missing."""
    if model == DEFAULT_MODEL_NAME:
        from export.default_model import ensure_default_model

        ensure_default_model()
    env = {**os.environ, "RESNET_MODELS": model, "RESNET_PRECISION": "fp32", "RESNET_DEVICE": "cpu"}
    try:
        return resolve_models(service_config(env), verify_checksums=True)[0]
    except ModelUnavailable as e:
        raise UserError(str(e)) from None


def checkout_commit(path: Path) -> str:
    """``<short hash> <subject>`` of the checkout at ``path``."""
    out = subprocess.run(["git", "-C", str(path), "log", "-1", "--format=%h %s"], capture_output=True, text=True)
    return out.stdout.strip()[:120] or "unknown (not a git checkout)"
