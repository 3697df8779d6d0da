"""Tiers 1 and 2 of BentoML's testing guide: the class called directly, and HTTP through to_asgi()."""
import asyncio
import json

import numpy as np
import pytest

from models.data import FASHION_MNIST_CLASSES
from tests.service.conftest import bad_uploads, encode


@pytest.fixture(scope="module")
def client(asgi_client):
    return asgi_client


def post(client, files, data=None, route="/classify"):
    return client.post(route, files=files, data=data or {})


# ---- tier 1: the class itself --------------------------------------------------------------

def test_direct_call_classifies(service_module, fmnist_test, tmp_path):
    images, labels = fmnist_test
    path = tmp_path / "img.png"
    path.write_bytes(encode(images[0], "PNG"))
    svc = service_module.Classifier()
    result = asyncio.run(svc.classify(image=path, top_k=3))
    assert result["model"] == "resnet20-fmnist" and result["trained"] is True
    assert [p["class_index"] for p in result["predictions"]][0] == labels[0]
    probs = [p["probability"] for p in result["predictions"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-9


def test_direct_call_rejects_with_status(service_module, tmp_path):
    path = tmp_path / "bad.png"
    path.write_bytes(b"not an image")
    response = asyncio.run(service_module.Classifier().classify(image=path))
    assert response.status_code == 415 and json.loads(response.body)["code"] == "not_an_image"


# ---- tier 2: HTTP through the ASGI app -----------------------------------------------------

def test_classify_png_and_jpeg(client, fmnist_test):
    images, labels = fmnist_test
    for fmt in ("PNG", "JPEG"):
        r = post(client, {"image": ("x", encode(images[1], fmt), f"image/{fmt.lower()}")}, {"top_k": "2"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["predictions"]) == 2 and body["predictions"][0]["class_index"] == labels[1]
        assert body["predictions"][0]["label"] == FASHION_MNIST_CLASSES[labels[1]]


def test_default_top_k_is_5_and_model_param(client, fmnist_test):
    r = post(client, {"image": ("x.png", encode(fmnist_test[0][2], "PNG"))}, {"model": "resnet20-fmnist"})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 5


def test_classify_batch_keeps_order(client, fmnist_test):
    images, labels = fmnist_test
    files = [("images", (f"{i}.png", encode(images[i], "PNG"))) for i in range(6)]
    r = client.post("/classify_batch", files=files, data={"top_k": "1"})
    assert r.status_code == 200, r.text
    got = [res["predictions"][0]["class_index"] for res in r.json()["results"]]
    single = [post(client, {"image": ("x.png", encode(images[i], "PNG"))}).json()["predictions"][0]["class_index"]
              for i in range(6)]
    assert got == single and sum(g == l for g, l in zip(got, labels[:6])) >= 5


def test_models_endpoint(client):
    r = client.get("/models")
    assert r.status_code == 200
    (m,) = r.json()["models"]
    assert m["name"] == "resnet20-fmnist" and m["depth"] == 20 and m["dataset"] == "fashion-mnist"
    assert m["provider"] == "CPUExecutionProvider" and m["precision"] == "fp32"
    assert m["trained"] is True and m["test_accuracy"] == 94.55 and m["input_shape"] == [1, 28, 28]
    assert m["batching"]["max_batch_size"] >= 1 and m["default"] is True


def test_health_and_openapi(client):  # /metrics needs the real server: tests/service/test_server.py
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 200
    spec = client.get("/docs.json").json()
    assert {"/classify", "/classify_batch", "/models"} <= set(spec["paths"])


@pytest.mark.parametrize("name", list(bad_uploads()))
def test_bad_images_get_their_4xx(client, name):
    data, status = bad_uploads()[name]
    r = post(client, {"image": ("upload", data, "application/octet-stream")})
    assert r.status_code == status, r.text
    assert r.json()["error"] and r.json()["code"]


def test_over_the_pixel_limit(client, monkeypatch, service_module):
    big = encode(np.zeros((7000, 6000), np.uint8), "PNG")  # 42 MP > the default 40 MP
    r = post(client, {"image": ("big.png", big)})
    assert r.status_code == 413 and r.json()["code"] in ("too_many_pixels", "decompression_bomb")


@pytest.mark.parametrize("files,data,status,code", [
    ({"img": ("x.png", b"\x89PNG")}, {}, 400, "unknown_field"),
    ({}, {"model": "resnet20-fmnist"}, 400, "missing_field"),
    ({"image": ("x.png", b"x")}, {"top_k": "0"}, 400, "bad_top_k"),
    ({"image": ("x.png", b"x")}, {"top_k": "-1"}, 400, "bad_top_k"),
    ({"image": ("x.png", b"x")}, {"top_k": "11"}, 400, "bad_top_k"),
    ({"image": ("x.png", b"x")}, {"top_k": "ten"}, 400, "bad_top_k"),
    ({"image": ("x.png", b"x")}, {"model": "resnet999"}, 404, "unknown_model"),
    ({"image": ("x.png", b"x")}, {"model": "'; DROP TABLE models; --"}, 404, "unknown_model"),
])
def test_bad_fields(client, files, data, status, code):
    r = post(client, files or {"placeholder": ("", b"")} if not files and not data else files, data)
    if not files:  # no file at all: send only the text fields as multipart
        r = client.post("/classify", files={"model": (None, data["model"])})
    assert r.status_code == status, r.text
    assert r.json()["code"] == code


def test_not_multipart(client):
    r = client.post("/classify", json={"image": "aGVsbG8="})
    assert r.status_code == 415 and r.json()["code"] == "not_multipart"


def test_body_over_the_byte_limit(client, service_module):
    limit = service_module.CONFIG.max_body_bytes
    r = client.post("/classify", content=b"0" * (limit + 1), headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 413 and r.json()["code"] == "body_too_large"


def test_batch_over_its_image_limit(client, service_module):
    n = service_module.CONFIG.max_batch_images + 1
    png = encode(np.zeros((28, 28), np.uint8), "PNG")
    r = client.post("/classify_batch", files=[("images", (f"{i}.png", png)) for i in range(n)])
    assert r.status_code in (400, 413) and r.json()["code"] in ("too_many_images", "bad_multipart")


def test_batch_names_the_bad_image(client):
    png = encode(np.zeros((28, 28), np.uint8), "PNG")
    r = client.post("/classify_batch", files=[("images", ("a.png", png)), ("images", ("b.png", b"junk"))])
    assert r.status_code == 415 and r.json()["error"].startswith("image 1:")


def test_still_ready_after_bad_input(client):
    post(client, {"image": ("x", b"\x00" * 10)})
    assert client.get("/readyz").status_code == 200
