"""service/routes.py behind service/guard.py, without BentoML: the guard reads and checks each
classify form once and hands it to ClassifyRoutes, which answers it (the real default model, in
this process), or, with no handler yet, replays the body to the app it wraps."""
from __future__ import annotations

import asyncio
import re

import numpy as np
import pytest
from starlette.testclient import TestClient

from bench.reliability.hostile import BOUNDARY, MULTIPART, form, image_form, part
from service.classify import Classify
from service.engine import EngineOptions, OnnxEngine
from service.errors import overloaded
from service.guard import RequestGuard
from service.preprocess import DecodeLimits, PreprocessSpec, preprocess
from service.routes import ClassifyRoutes, server_timing
from service.topology import PerWorkerModels, Runtime

from tests.service.conftest import encode


class RecordingApp:
    """The app behind the guard (BentoML's, in the service): notes each request that reaches it
    with the body it received."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes]] = []

    async def __call__(self, scope, receive, send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.calls.append((scope["path"], body))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"reached the app"})


class RecordingHandler:
    """ClassifyRoutes, noting each form handed to it."""

    def __init__(self, routes: ClassifyRoutes) -> None:
        self.routes, self.forms = routes, []

    async def __call__(self, route, form, send) -> None:
        self.forms.append((route.path, form))
        await self.routes(route, form, send)


def guarded(app, handler, config) -> TestClient:
    return TestClient(RequestGuard(app, max_body_bytes=config.max_body_bytes,
                                   handler=lambda: handler), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def models(service_module):
    made = PerWorkerModels(service_module.SERVED, service_module.CONFIG)
    yield made
    made.close()


@pytest.fixture(scope="module")
def classify(service_module, models) -> Classify:
    return Classify(service_module.SERVED, service_module.CONFIG, models)


@pytest.fixture
def app() -> RecordingApp:
    return RecordingApp()


@pytest.fixture
def handler(classify) -> RecordingHandler:
    return RecordingHandler(ClassifyRoutes(classify, deadline_s=30))


@pytest.fixture
def client(app, handler, service_module) -> TestClient:
    return guarded(app, handler, service_module.CONFIG)


@pytest.fixture(scope="module")
def reference(service_module):
    """Each image's class probabilities computed without the service's request path."""
    served = service_module.SERVED[0]
    engine = OnnxEngine(served.onnx_path, EngineOptions(device="cpu", threads=1))
    spec = PreprocessSpec.from_card(served.card)
    limits = DecodeLimits(max_bytes=service_module.CONFIG.max_image_bytes,
                          max_pixels=service_module.CONFIG.max_pixels)

    def probabilities(image: bytes) -> np.ndarray:
        logits = engine.infer(preprocess(image, spec, limits)[None])[0].astype(np.float64)
        e = np.exp(logits - logits.max())
        return e / e.sum()

    return probabilities


def timings(response) -> dict[str, float]:
    header = response.headers["server-timing"]
    found = dict(re.findall(r"(\w+);dur=([0-9.]+)", header))
    assert ", ".join(f"{k};dur={v}" for k, v in found.items()) == header  # nothing else in it
    return {k: float(v) for k, v in found.items()}


def check_predictions(predictions: list[dict], probs: np.ndarray, k: int, class_names) -> None:
    order = np.argsort(-probs, kind="stable")[:k]
    assert [p["class_index"] for p in predictions] == [int(i) for i in order]
    assert [p["label"] for p in predictions] == [class_names[i] for i in order]
    np.testing.assert_allclose([p["probability"] for p in predictions], probs[order], rtol=1e-4, atol=1e-6)


def test_a_good_classify_is_answered_by_the_handler_not_the_app(client, app, handler, fmnist_test, reference,
                                                                 service_module):
    images, _ = fmnist_test
    png = encode(images[0], "PNG")
    r = client.post("/classify", content=image_form(png, top_k="3"), headers={"content-type": MULTIPART})
    assert r.status_code == 200, r.text
    assert app.calls == [] and [path for path, _ in handler.forms] == ["/classify"]
    served = service_module.SERVED[0]
    body = r.json()
    assert body["model"] == served.name and body["trained"] == served.card.trained
    check_predictions(body["predictions"], reference(png), 3, served.card.class_names)
    assert r.headers["content-type"] == "application/json"
    timing = timings(r)
    assert set(timing) == {"preprocess", "model", "total"}
    assert all(v >= 0 for v in timing.values()) and timing["total"] >= timing["model"]


def test_a_good_batch_is_answered_in_order(client, app, fmnist_test, reference, service_module):
    images, _ = fmnist_test
    pngs = [encode(images[i], "PNG") for i in range(3)]
    body = form(*(part("images", png, f"{i}.png".encode()) for i, png in enumerate(pngs)),
                part("model", service_module.SERVED[0].name.encode()))
    r = client.post("/classify_batch", content=body, headers={"content-type": MULTIPART})
    assert r.status_code == 200, r.text
    assert app.calls == []
    results = r.json()["results"]
    assert len(results) == 3
    for png, result in zip(pngs, results):
        check_predictions(result["predictions"], reference(png), 5, service_module.SERVED[0].card.class_names)
    assert {"preprocess", "model", "total"} <= set(timings(r))


@pytest.mark.parametrize("fields, status, code", [
    ({"model": "no-such-model"}, 404, "unknown_model"),
    ({"top_k": "0"}, 400, "bad_top_k"),
    ({"top_k": "11"}, 400, "bad_top_k"),  # more than the model's 10 classes
])
def test_the_handler_answers_a_bad_choice_as_json(client, app, handler, fields, status, code):
    png = encode(np.full((28, 28), 128, np.uint8), "PNG")
    r = client.post("/classify", content=image_form(png, **fields), headers={"content-type": MULTIPART})
    assert r.status_code == status and r.json()["code"] == code
    assert len(handler.forms) == 1 and app.calls == []  # the form was fine; the handler refused the choice
    assert "total" in timings(r)


def test_the_handler_answers_a_bad_image_as_json(client, app, handler):
    r = client.post("/classify", content=image_form(b"hello, I am not an image\n" * 10),
                    headers={"content-type": MULTIPART})
    assert r.status_code == 415 and r.json()["code"] == "not_an_image"
    assert len(handler.forms) == 1 and app.calls == []


PNG = b"\x89PNG\r\n\x1a\n" + bytes(64)
BAD_FORMS = {
    "not multipart": ("/classify", b"image=x", "application/x-www-form-urlencoded", 415, "not_multipart"),
    "malformed": ("/classify", b"--" + BOUNDARY.encode() + b"\r\nno colon here\r\n\r\nx", MULTIPART, 400,
                  "bad_multipart"),
    "unknown field": ("/classify", form(part("image", PNG, b"a.png"), part("colour", b"red")), MULTIPART, 400,
                      "unknown_field"),
    "no image": ("/classify", form(part("top_k", b"3")), MULTIPART, 400, "missing_field"),
    "image as text": ("/classify", form(part("image", PNG)), MULTIPART, 400, "not_a_file"),
    "two images": ("/classify", form(part("image", PNG, b"a.png"), part("image", PNG, b"b.png")), MULTIPART, 400,
                   "duplicate_field"),
    "top_k not a number": ("/classify", image_form(PNG, top_k="many"), MULTIPART, 400, "bad_top_k"),
    "top_k twice": ("/classify_batch", form(part("images", PNG, b"a.png"), part("top_k", b"1"), part("top_k", b"2")),
                    MULTIPART, 400, "duplicate_field"),
    "non-UTF-8 filename": ("/classify", image_form(PNG, filename=b"\xff\xfe.png"), MULTIPART, 400, "bad_filename"),
    "path in filename": ("/classify", image_form(PNG, filename=b"../etc/passwd"), MULTIPART, 400, "bad_filename"),
}


@pytest.mark.parametrize("name", list(BAD_FORMS))
def test_a_bad_form_is_refused_by_the_guard_before_the_handler(client, app, handler, name):
    path, body, content_type, status, code = BAD_FORMS[name]
    r = client.post(path, content=body, headers={"content-type": content_type})
    assert r.status_code == status and r.json()["code"] == code, r.text
    assert handler.forms == [] and app.calls == []


@pytest.mark.parametrize("path", ["/classify", "/classify_batch"])
def test_without_a_handler_the_body_is_replayed_intact_to_the_app(app, service_module, path):
    client = guarded(app, None, service_module.CONFIG)
    field = "image" if path == "/classify" else "images"
    body = form(part(field, bytes(range(256)) * 40, b"a.png"), part("top_k", b"2"))
    r = client.post(path, content=body, headers={"content-type": MULTIPART})
    assert r.status_code == 200 and r.text == "reached the app"
    assert app.calls == [(path, body)]


def test_without_a_handler_a_bad_form_is_still_refused(app, service_module):
    client = guarded(app, None, service_module.CONFIG)
    r = client.post("/classify", content=form(part("top_k", b"3")), headers={"content-type": MULTIPART})
    assert r.status_code == 400 and r.json()["code"] == "missing_field" and app.calls == []


# ---- the model's failures, with fake models ----------------------------------------------------------

class FakeModels:
    def __init__(self, infer) -> None:
        self._infer = infer

    async def infer(self, served, images: np.ndarray) -> np.ndarray:
        return await self._infer(images)

    async def describe(self) -> dict[str, Runtime]:
        return {}


def fake_client(app, service_module, infer, deadline_s: float = 30) -> TestClient:
    classify = Classify(service_module.SERVED, service_module.CONFIG, FakeModels(infer))
    return guarded(app, ClassifyRoutes(classify, deadline_s=deadline_s), service_module.CONFIG)


def one_png() -> bytes:
    return encode(np.full((28, 28), 128, np.uint8), "PNG")


def test_no_answer_within_the_deadline_is_a_504(app, service_module):
    finished = []

    async def slow(images):
        await asyncio.sleep(30)
        finished.append(True)

    client = fake_client(app, service_module, slow, deadline_s=0.05)
    r = client.post("/classify", content=image_form(one_png()), headers={"content-type": MULTIPART})
    assert r.status_code == 504
    assert r.json() == {"error": "not able to process the request in 0.05 seconds", "code": "timeout"}
    assert finished == [] and app.calls == []  # the model's wait was abandoned, not awaited
    assert "total" in timings(r)


def test_a_failing_model_is_a_500_without_its_traceback(app, service_module, caplog):
    async def broken(images):
        raise RuntimeError("onnxruntime exploded at /secret/path/model.onnx")

    client = fake_client(app, service_module, broken)
    r = client.post("/classify", content=image_form(one_png()), headers={"content-type": MULTIPART})
    assert r.status_code == 500
    assert r.json() == {"error": "the service failed to answer this request; see its log", "code": "internal"}
    assert "secret" not in r.text and "Traceback" not in r.text and app.calls == []
    # the traceback goes to the log instead
    assert any(rec.name == "bentoml.resnet_serving" and rec.exc_info and "secret" in str(rec.exc_info[1])
               for rec in caplog.records)


def test_a_full_queue_is_a_503_with_retry_after(app, service_module):
    async def full(images):
        raise overloaded("the model queue is full", 7)

    client = fake_client(app, service_module, full)
    r = client.post("/classify", content=image_form(one_png()), headers={"content-type": MULTIPART})
    assert r.status_code == 503 and r.json() == {"error": "the model queue is full", "code": "overloaded"}
    assert r.headers["retry-after"] == "7"


def test_the_images_reach_the_model_as_one_batch_in_order(app, service_module):
    seen = []

    async def record(images):
        seen.append(images.copy())
        return np.tile(np.arange(10, dtype=np.float32), (len(images), 1))

    client = fake_client(app, service_module, record)
    pngs = [encode(np.full((28, 28), v, np.uint8), "PNG") for v in (0, 128, 255)]
    r = client.post("/classify_batch", content=form(*(part("images", p, b"x.png") for p in pngs)),
                    headers={"content-type": MULTIPART})
    assert r.status_code == 200, r.text
    [batch] = seen
    assert batch.shape == (3, 1, 28, 28)
    assert batch[0].mean() < batch[1].mean() < batch[2].mean()  # in the order sent
    assert [res["predictions"][0]["class_index"] for res in r.json()["results"]] == [9, 9, 9]


def test_server_timing_formats_milliseconds():
    assert server_timing({"preprocess": 0.00005, "model": 0.00031, "total": 0.0012}) == \
        b"preprocess;dur=0.05, model;dur=0.31, total;dur=1.20"


# ---- once bugs: what int() refuses, a boundary too long -----------------------------------------------

@pytest.mark.parametrize("top_k", ["\u00b2", "+-5", "--5"])
def test_a_top_k_that_int_refuses_is_a_400(client, app, top_k):
    r = client.post("/classify", content=image_form(one_png(), top_k=top_k), headers={"content-type": MULTIPART})
    assert r.status_code == 400 and r.json()["code"] == "bad_top_k"


def test_a_boundary_too_long_is_a_400(client, app):
    boundary = "b" * 257
    body = f"--{boundary}\r\n".encode() + b'Content-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n' + \
        PNG + f"\r\n--{boundary}--\r\n".encode()
    r = client.post("/classify", content=body, headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 400 and r.json()["code"] == "bad_multipart"
