"""Per-model batching (RESNET_MODEL_SETTINGS) and pinned store versions (RESNET_MODELS name:version),
served by the real ``bentoml serve``: shown in ``GET /models``, and bad values refused at start-up."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from common.errors import UserError
from tests.service.conftest import encode, start_server

pytestmark = [pytest.mark.server, pytest.mark.slow]
SETTINGS = '{"resnet20-fmnist": {"max_batch_size": 8, "max_latency_ms": 200}}'
# A second, newer version of the model in a copy of the tests' store, so that the pinned one is not the latest.
NEWER_VERSION = """
import os, shutil, bentoml
src = bentoml.models.get("resnet20-fmnist")
with bentoml.models.create("resnet20-fmnist", labels=src.info.labels, metadata=src.info.metadata) as m:
    for f in os.listdir(src.path):
        if f != "model.yaml":
            shutil.copy(src.path_of(f), m.path_of(f))
print(m.tag)
"""


@pytest.fixture(scope="module")
def store_with_two_versions(default_model_tag, tmp_path_factory) -> tuple[Path, str, str]:
    """(BENTOML_HOME, the older version, the latest) of resnet20-fmnist."""
    home = tmp_path_factory.mktemp("store") / "home"
    shutil.copytree(Path(os.environ["BENTOML_HOME"]) / "models", home / "models")
    newer = subprocess.run([sys.executable, "-c", NEWER_VERSION], env={**os.environ, "BENTOML_HOME": str(home)},
                           capture_output=True, text=True, timeout=120, check=True).stdout.split()[-1]
    return home, default_model_tag.split(":")[1], newer.split(":")[1]


def test_a_pinned_version_and_its_batch_settings_are_served_and_shown(store_with_two_versions):
    home, older, latest = store_with_two_versions
    assert older != latest
    image = encode(np.full((28, 28), 128, np.uint8), "PNG")
    with start_server(env={"BENTOML_HOME": str(home), "RESNET_MODELS": f"resnet20-fmnist:{older}",
                           "RESNET_MODEL_SETTINGS": SETTINGS}) as srv:
        (m,) = httpx.get(srv.url + "/models").json()["models"]
        r = httpx.post(srv.url + "/classify", files={"image": ("x.png", image)}, timeout=60)
    assert m["version"] == older and m["tag"] == f"resnet20-fmnist:{older}" and m["default"] is True
    assert m["batching"] == {"enabled": True, "max_batch_size": 8, "max_latency_ms": 200}
    assert r.status_code == 200 and r.json()["model"] == "resnet20-fmnist"


@pytest.mark.parametrize("env, message", [
    ({"RESNET_MODELS": "resnet20-fmnist:nosuchversion"}, "model 'resnet20-fmnist' has no version 'nosuchversion'"),
    ({"RESNET_MODEL_SETTINGS": '{"resnet56-fmnist": {"max_batch_size": 8}}'}, "not a served model"),
    ({"RESNET_MODEL_SETTINGS": '{"resnet20-fmnist": {"max_batch_size": "8"}}'}, 'max_batch_size="8": expected'),
])
def test_bad_settings_stop_the_start_with_one_line(default_model_tag, env, message):
    srv = start_server(env=env)
    try:
        with pytest.raises(UserError) as e:
            srv.wait_ready(timeout=120)
    finally:
        srv.stop()
    log = srv.log_path.read_text()
    assert "error: cannot start the service: " in log and message in str(e.value)
    assert "Traceback" not in log
