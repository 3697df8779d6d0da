"""Tier 3: the real ``bentoml serve`` in a subprocess, on a free loopback port."""
import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from models.card import ModelCard
from service.engine import EngineOptions, OnnxEngine
from service.preprocess import DecodeLimits, PreprocessSpec, preprocess
from tests.service.conftest import REPO_ROOT, bad_uploads, encode, start_server

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def server(default_model_tag):
    srv = start_server()
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def classify(url: str, data: bytes, **fields) -> httpx.Response:
    return httpx.post(url + "/classify", files={"image": ("img", data)}, data=fields, timeout=60)


def test_http_accuracy_equals_offline_accuracy(server, fmnist_test, default_model_tag):
    import bentoml

    images, labels = fmnist_test
    n = 300
    uploads = [encode(images[i], "PNG" if i % 2 else "JPEG") for i in range(n)]
    with ThreadPoolExecutor(8) as pool:  # concurrent, so the service forms real batches
        responses = list(pool.map(lambda b: classify(server.url, b, top_k="1"), uploads))
    failed = [(r.status_code, r.text) for r in responses if r.status_code != 200]
    assert not failed, (len(failed), failed[:3], server.log_tail(3000))
    served = np.array([r.json()["predictions"][0]["class_index"] for r in responses])

    # Offline: the same ONNX file and the same preprocessing of the same bytes, one image at a time.
    stored = bentoml.models.get(default_model_tag)
    card = ModelCard.from_json(Path(stored.path_of("model.fp32.json")).read_text())
    spec, limits = PreprocessSpec.from_card(card), DecodeLimits()
    engine = OnnxEngine(Path(stored.path_of("model.fp32.onnx")), EngineOptions(device="cpu", threads=1))
    offline = np.array([engine.infer(preprocess(b, spec, limits)[None])[0].argmax() for b in uploads])
    accuracy_http = (served == labels[:n]).mean()
    accuracy_offline = (offline == labels[:n]).mean()
    disagree = np.flatnonzero(served != offline).tolist()
    assert accuracy_http == accuracy_offline, (accuracy_http, accuracy_offline, disagree)
    assert accuracy_http > 0.9 and not disagree


def test_32_concurrent_clients_good_and_bad_each_get_their_answer(server, fmnist_test):
    images, labels = fmnist_test
    bad = list(bad_uploads().items())
    jobs = []
    for i in range(32):
        if i % 3 == 0:
            name, (data, status) = bad[i % len(bad)]
            jobs.append((data, status, None))
        else:
            jobs.append((encode(images[100 + i], "PNG"), 200, int(labels[100 + i])))
    # Offline expectation for the good ones: what the service says for each alone.
    with ThreadPoolExecutor(32) as pool:
        responses = list(pool.map(lambda job: classify(server.url, job[0], top_k="1"), jobs))
    for (data, status, label), r in zip(jobs, responses):
        assert r.status_code == status, r.text
        if status == 200:
            alone = classify(server.url, data, top_k="1").json()["predictions"][0]["class_index"]
            assert r.json()["predictions"][0]["class_index"] == alone
        else:
            assert "error" in r.json()
    assert httpx.get(server.url + "/readyz").status_code == 200


def test_models_and_metrics(server):
    r = httpx.get(server.url + "/models")
    assert r.status_code == 200 and r.json()["models"][0]["provider"] == "CPUExecutionProvider"
    classify(server.url, encode(np.zeros((28, 28), np.uint8), "PNG"))
    metrics = httpx.get(server.url + "/metrics").text
    assert re.search(r'resnet_preprocess_seconds_count\{model="resnet20-fmnist"\} [1-9]', metrics), metrics[-2000:]


def readme_client() -> str:
    """README's Python client, word for word: its one ```python block that uses SyncHTTPClient."""
    blocks = re.findall(r"```python\n(.*?)```", (REPO_ROOT / "README.md").read_text(), re.S)
    (code,) = [b for b in blocks if "SyncHTTPClient" in b]
    return code


def test_the_readme_python_client(server, fmnist_test, tmp_path, monkeypatch, capsys):
    images, labels = fmnist_test
    files = {"shoe.png": (0, "PNG"), "a.png": (2, "PNG"), "b.jpg": (18, "JPEG")}  # test images 0, 2, 18
    for name, (i, fmt) in files.items():
        (tmp_path / name).write_bytes(encode(images[i], fmt))
    assert [labels[i] for i, _ in files.values()] == [9, 1, 8]  # Ankle boot, Trouser, Bag
    monkeypatch.chdir(tmp_path)
    run: dict = {}
    exec(readme_client().replace("http://127.0.0.1:3000", server.url), run)
    answer, from_pil, batch = run["answer"], run["from_pil"], run["batch"]
    assert answer["model"] == "resnet20-fmnist" and len(answer["predictions"]) == 3
    assert answer["predictions"][0]["label"] == "Ankle boot" and answer["predictions"][0]["class_index"] == 9
    assert from_pil["predictions"] == answer["predictions"] + from_pil["predictions"][3:]  # same bytes, top 5
    assert [r["predictions"][0]["label"] for r in batch["results"]] == ["Trouser", "Bag"]
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("resnet20-fmnist {'label': 'Ankle boot'") and printed[1] == "['Trouser', 'Bag']"


def test_the_python_client_raises_the_error_answer(server, fmnist_test, tmp_path):
    import bentoml

    (tmp_path / "shoe.png").write_bytes(encode(fmnist_test[0][0], "PNG"))
    with bentoml.SyncHTTPClient(server.url) as client, pytest.raises(bentoml.exceptions.BentoMLException) as e:
        client.classify(image=tmp_path / "shoe.png", model="resnet999")
    assert e.value.error_code == 404 and json.loads(e.value.message)["code"] == "unknown_model"


@pytest.mark.slow
def test_bentoml_build_and_serve_the_bento(default_model_tag, fmnist_test):
    bentoml_cli = str(Path(sys.executable).parent / "bentoml")
    out = subprocess.run([bentoml_cli, "build", "--output", "tag"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    tag = out.stdout.strip().splitlines()[-1].replace("__tag__:", "")
    import bentoml

    bento = bentoml.get(tag)
    dockerfile = Path(bento.path) / "env" / "docker" / "Dockerfile"
    if not dockerfile.exists():  # generated on demand by `bentoml containerize`; render it the same way
        from bentoml._internal.container import generate_containerfile

        dockerfile = Path(bento.path) / "Dockerfile.generated"
        dockerfile.write_text(generate_containerfile(bento.path and bento.info.docker, bento.path))
    text = dockerfile.read_text()
    assert "nvidia/cuda" in text and "cudnn" in text
    assert {m.tag.name for m in bento.info.all_models} >= {"resnet20-fmnist"}
    srv = start_server(target=tag, cwd=Path("/tmp"))
    try:
        srv.wait_ready()
        images, labels = fmnist_test
        r = classify(srv.url, encode(images[0], "PNG"), top_k="1")
        assert r.status_code == 200 and r.json()["predictions"][0]["class_index"] == labels[0]
        page = httpx.get(srv.url + "/static/samples/samples.json")  # the page shipped inside the Bento
        assert httpx.get(srv.url + "/").status_code == 200 and len(page.json()) == 12
    finally:
        srv.stop()
