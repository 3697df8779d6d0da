"""What a benchmark or sweep ran on: CPU model, cores, versions; for every report's header."""
from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

from service.config import usable_cores


def machine_info() -> dict[str, Any]:
    """CPU model, cores (all, and those this process may use) and serving library versions."""
    import bentoml
    import onnxruntime as ort

    cpu_model = "unknown"
    try:
        cpu_model = next((line.partition(":")[2].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                          if line.startswith("model name")), platform.processor() or "unknown")
    except OSError:
        pass
    return {"cpu_model": cpu_model, "cpu_count": os.cpu_count(), "cpu_usable": usable_cores(),
            "platform": platform.platform(),
            "versions": {"python": platform.python_version(), "onnxruntime": ort.__version__,
                         "bentoml": bentoml.__version__, "numpy": np.__version__}}
