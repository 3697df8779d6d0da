"""The page at / and its files (service/page.py), the samples it offers (service/samples.py) and the
Server-Timing header (service/routes.py): through the ASGI app, and the parts alone."""
import asyncio
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from models.data import FASHION_MNIST_CLASSES
from service.page import STATIC_DIR, Page
from service.samples import COUNT, SAMPLES_DIR, pick
from service.routes import server_timing as timing_header
from tests.service.conftest import encode


def call(app, scope: dict) -> list[dict]:
    """The ASGI messages ``app`` sends for a request of ``scope`` with an empty body."""
    sent = []

    async def receive():
        await asyncio.Event().wait()  # the client stays connected

    async def send(message):
        sent.append(message)

    asyncio.run(app({"type": "http", "method": "GET", "headers": [], **scope}, receive, send))
    return sent


def test_the_page_and_every_file_it_names_are_served(asgi_client):
    r = asgi_client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    named = re.findall(r'(?:src|href)="(/static/[^"]+)"', r.text)
    assert {"/static/page.js", "/static/page.css"} <= set(named)
    types = {".js": "javascript", ".css": "text/css", ".svg": "image/svg+xml", ".png": "image/png"}
    for path in named + ["/static/samples/samples.json"]:
        f = asgi_client.get(path)
        assert f.status_code == 200 and f.content == (STATIC_DIR / path.removeprefix("/static/")).read_bytes()
        assert types.get(path[path.rfind("."):], "json") in f.headers["content-type"], (path, f.headers)


@pytest.mark.parametrize("method, path", [
    ("GET", "/static/nope.js"), ("GET", "/static/"), ("GET", "/static/samples"), ("GET", "/index.html"),
    ("GET", "/static/%2e%2e/page.py"), ("GET", "/static/..%2fpage.py"), ("GET", "/docs/"),
    ("POST", "/"), ("PUT", "/static/page.js"), ("DELETE", "/docs"), ("POST", "/static/page.js"),
])
def test_bad_requests_to_the_new_paths_get_4xx_json(asgi_client, method, path):
    r = asgi_client.request(method, path)
    assert 400 <= r.status_code < 500 and set(r.json()) == {"error", "code"}, (r.status_code, r.text)


def test_no_file_outside_the_static_folder_is_served(tmp_path):
    """The path as the server decoded it, '..' included (HTTP clients would tidy it first)."""
    (tmp_path / "secret.txt").write_text("secret")
    (tmp_path / "static").mkdir()
    (tmp_path / "static" / "index.html").write_text("<p>page</p>")
    passed_on = []

    async def app(scope, receive, send):
        passed_on.append(scope["path"])

    page = Page(app, tmp_path / "static")
    paths = ["/static/../secret.txt", "/static//etc/passwd", "/static/./index.html", "/../secret.txt"]
    assert [call(page, {"path": path}) for path in paths] == [[]] * len(paths)
    assert passed_on == paths
    assert call(page, {"path": "/"})[0]["status"] == 200


def test_bentoml_api_docs_moved_to_docs_and_docs_json_stays(asgi_client):
    r = asgi_client.get("/docs")
    assert r.status_code == 200 and "swagger" in r.text.lower()
    spec = asgi_client.get("/docs.json")
    assert spec.status_code == 200 and "/classify" in spec.json()["paths"]


def server_timing(response) -> dict[str, float]:
    return {k: float(v) for k, v in re.findall(r"(\w+);dur=([\d.]+)", response.headers.get("server-timing", ""))}


def test_classify_answers_carry_server_timing_and_the_same_json(asgi_client, fmnist_test):
    images, _ = fmnist_test
    png = encode(images[0], "PNG")
    one = asgi_client.post("/classify", files={"image": ("a.png", png)})
    batch = asgi_client.post("/classify_batch", files=[("images", ("a.png", png)), ("images", ("b.png", png))])
    for r in (one, batch):
        timing = server_timing(r)
        assert r.status_code == 200 and set(timing) == {"preprocess", "model", "total"}, r.headers
        assert 0 < timing["preprocess"] + timing["model"] <= timing["total"]
    assert set(one.json()) == {"model", "trained", "predictions"} and set(batch.json()) == {"model", "trained", "results"}
    refused = asgi_client.post("/classify", files={"image": ("a.txt", b"just text\n")})
    assert refused.status_code == 415 and "model" not in server_timing(refused)
    assert "server-timing" not in asgi_client.get("/models").headers


def test_server_timing_lists_what_was_timed_in_milliseconds():
    assert timing_header({"preprocess": 0.00005, "model": 0.003, "total": 0.0041}) == (
        b"preprocess;dur=0.05, model;dur=3.00, total;dur=4.10")
    assert timing_header({"total": 0.0001}) == b"total;dur=0.10"


def test_pick_takes_each_class_first():
    labels = np.array([3, 3, 1, 2, 1, 3, 2])
    assert pick(labels, 3) == [0, 2, 3] and pick(labels, 5) == [0, 2, 3, 1, 4]


def test_the_committed_samples_are_the_test_images_they_name(fmnist_test):
    """What ``python -m service.samples`` writes: the PNGs decode to the named test images."""
    images, labels = fmnist_test
    manifest = json.loads((SAMPLES_DIR / "samples.json").read_text())
    assert [s["test_index"] for s in manifest] == sorted(pick(labels), key=lambda i: (labels[i], i))
    assert len(manifest) == COUNT and {s["class_index"] for s in manifest} == set(range(10))
    for s in manifest:
        decoded = np.asarray(Image.open(io.BytesIO((SAMPLES_DIR / s["file"]).read_bytes())))
        assert np.array_equal(decoded, images[s["test_index"]]), s
        assert s["label"] == FASHION_MNIST_CLASSES[labels[s["test_index"]]] and s["class_index"] == labels[s["test_index"]]
    assert sorted(p.name for p in SAMPLES_DIR.glob("*.png")) == sorted(s["file"] for s in manifest)
