"""Checkpoints: a folder with ``model.safetensors`` (weights) and ``metadata.json`` (everything else).

The metadata is what travels downstream (export, service): model name and depth, classes, input
shape and channel mode, normalisation, accuracy, and how the weights were made. The weights'
sha256 is recorded in it, so a corrupt file is caught before it is used.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from common.errors import UserError
from common.files import sha256_file
from models.registry import create_model

WEIGHTS_FILE = "model.safetensors"
METADATA_FILE = "metadata.json"
FORMAT_VERSION = 1
REQUIRED_FIELDS = ("model", "num_classes", "class_names", "input_shape", "channel_mode", "mean", "std")


class CheckpointError(UserError):
    pass


def save_checkpoint(out_dir: Path, model: nn.Module, metadata: dict[str, Any]) -> Path:
    """Writes the checkpoint into a staging folder, then swaps it in, so a crash never leaves a
    half-written checkpoint and an existing one is replaced only by a complete one."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(staging / WEIGHTS_FILE))
        meta = {"format_version": FORMAT_VERSION, **metadata}
        meta["weights_sha256"] = sha256_file(staging / WEIGHTS_FILE)
        (staging / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        if out_dir.exists():
            # Keep whatever else lives in the folder (training state, logs): move only our two files.
            for name in (WEIGHTS_FILE, METADATA_FILE):
                os.replace(staging / name, out_dir / name)
        else:
            os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def read_metadata(path: Path) -> dict[str, Any]:
    """Reads and validates a checkpoint's metadata; ``path`` is the folder or a file inside it."""
    ckpt_dir = _checkpoint_dir(path)
    meta_path = ckpt_dir / METADATA_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{ckpt_dir}: no {METADATA_FILE}, not a checkpoint folder")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{meta_path}: unreadable metadata ({e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{meta_path}: metadata is not a JSON object")
    missing = [k for k in REQUIRED_FIELDS if k not in meta]
    if missing:
        raise CheckpointError(f"{meta_path}: metadata lacks {', '.join(missing)}")
    return meta


def load_checkpoint(path: Path, map_location: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuilds the model named in the metadata and loads the weights strictly, in eval mode."""
    ckpt_dir = _checkpoint_dir(path)
    meta = read_metadata(ckpt_dir)
    weights = ckpt_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{ckpt_dir}: no {WEIGHTS_FILE}")
    expected = meta.get("weights_sha256")
    if expected and sha256_file(weights) != expected:
        raise CheckpointError(f"{weights}: sha256 does not match the metadata; the file is corrupt")
    try:
        state = load_file(str(weights), device=map_location)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights}: not a readable safetensors file ({e})") from None
    model = create_model(
        meta["model"],
        in_channels=int(meta["input_shape"][0]),
        num_classes=int(meta["num_classes"]),
        shortcut=meta.get("shortcut", "B"),
    )
    load_state_dict_strict(model, state, source=str(weights))
    return model.eval(), meta


def load_state_dict_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with a one-line error naming the first mismatched keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong_shape)):
        if keys:
            more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
            problems.append(f"{label}: {', '.join(keys[:3])}{more}")
    if problems:
        name = type(model).__name__
        raise CheckpointError(f"{source} does not fit {name}: {'; '.join(problems)}")
    model.load_state_dict(state, strict=True)


def _checkpoint_dir(path: Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    return path if path.is_dir() else path.parent
