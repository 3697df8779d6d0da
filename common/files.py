"""File helpers with no torch dependency (the service uses them too)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from common.errors import UserError


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def ensure_writable_dir(path: Path) -> Path:
    """Creates ``path`` if needed and checks it can be written, as one-line UserErrors: called
    before long work so that an unwritable output fails at once, not after minutes."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output folder {path}: {e.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"output folder {path} is not writable")
    return path
