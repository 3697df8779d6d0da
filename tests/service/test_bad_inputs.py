"""The hostile-request corpus (bench/reliability/hostile.py) through the ASGI app: every broken or hostile
request gets its documented 4xx as ``{"error", "code"}`` JSON, and the service keeps classifying.
The same corpus goes to a real ``bentoml serve`` beside good traffic in test_faults.py."""
from __future__ import annotations

import json

import pytest

from bench.reliability.hostile import MULTIPART, Limits, good_png, hostile_requests, image_form
from models.data import FASHION_MNIST_CLASSES
from service.config import load_config
from service.responses import ErrorShaper, reshape

CONFIG = load_config()
LIMITS = Limits(max_body_bytes=CONFIG.max_body_bytes, max_image_bytes=CONFIG.max_image_bytes,
                max_pixels=CONFIG.max_pixels, max_batch_images=CONFIG.max_batch_images,
                num_classes=len(FASHION_MNIST_CLASSES))
CORPUS = hostile_requests(LIMITS)


@pytest.fixture(scope="module")
def client(asgi_client):
    return asgi_client


def test_the_corpus_holds_at_least_25_kinds():
    assert len(CORPUS) >= 25 and len({h.name for h in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize("case", CORPUS, ids=lambda h: h.name)
def test_hostile_request_gets_its_documented_answer(client, case):
    r = client.request(case.method, case.path, content=case.full_body(),
                       headers={"content-type": case.content_type, **case.extra_headers})
    assert r.status_code == case.status, r.text[:300]
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"error", "code"} and body["code"] in case.codes, body
    assert isinstance(body["error"], str) and 0 < len(body["error"]) <= 600


def test_body_over_the_limit_without_a_length_is_counted(client):
    """No Content-Length (chunked upload): the guard counts the bytes as they come."""
    chunk = b"\0" * (1 << 20)
    chunks = (chunk for _ in range(CONFIG.max_body_bytes // len(chunk) + 1))
    r = client.post("/classify", content=chunks, headers={"content-type": MULTIPART})
    assert r.status_code == 413 and r.json()["code"] == "body_too_large"


def test_still_ready_and_classifying_after_the_corpus(client):
    for case in CORPUS:
        client.request(case.method, case.path, content=case.full_body(), headers={"content-type": case.content_type})
    assert client.get("/readyz").status_code == 200
    r = client.post("/classify", content=image_form(good_png(3), top_k="3"), headers={"content-type": MULTIPART})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 3


def test_a_plain_filename_with_unicode_is_accepted(client):
    """The filename rules refuse paths, control characters and non-UTF-8, not ordinary names."""
    r = client.post("/classify", content=image_form(good_png(), "φωτογραφία été.png".encode()),
                    headers={"content-type": MULTIPART})
    assert r.status_code == 200, r.text


# ---- BentoML's own error bodies, reshaped -----------------------------------------------------

@pytest.mark.parametrize("status,body,code,words", [
    (400, b'[{"error": "bad thing"}]', "invalid_argument", "bad thing"),  # BentoML's 4xx as a list
    (400, json.dumps({"error": "1 validation error for Input",
                      "detail": [{"loc": ["top_k"], "msg": "Input should be a valid integer"}]}).encode(),
     "invalid_argument", "top_k: Input should be a valid integer"),
    (405, b"Method Not Allowed", "method_not_allowed", "Method Not Allowed"),
    (404, b"", "not_found", "HTTP 404"),
    (503, b'{"error": "An unexpected error has occurred"}', "overloaded", "unexpected"),
])
def test_reshape(status, body, code, words):
    out = json.loads(reshape(status, body))
    assert out["code"] == code and words in out["error"]


def test_reshape_keeps_our_own_bodies():
    ours = b'{"error": "x", "code": "bad_top_k"}'
    assert reshape(400, ours) == ours


def test_shaper_adds_retry_after_to_a_503_and_passes_200s():
    sent = []

    async def send(message):
        sent.append(message)

    async def run():
        shaper = ErrorShaper(send, retry_after_s=7)
        await shaper({"type": "http.response.start", "status": 503, "headers": [(b"content-length", b"2")]})
        assert not sent  # held until its body is complete
        await shaper({"type": "http.response.body", "body": b"[]"})
        shaper = ErrorShaper(send, retry_after_s=7)
        await shaper({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await shaper({"type": "http.response.body", "body": b"{}"})

    import asyncio

    asyncio.run(run())
    start, body, ok_start, ok_body = sent
    headers = dict(start["headers"])
    assert headers[b"retry-after"] == b"7" and int(headers[b"content-length"]) == len(body["body"])
    assert json.loads(body["body"])["code"] == "overloaded"
    assert ok_start["status"] == 200 and ok_body["body"] == b"{}"


@pytest.mark.parametrize("failure,code", [("shed", "overloaded"), ("gone", "engine_unavailable")])
def test_engine_trouble_becomes_503_with_retry_after(service_module, failure, code):
    """Shared-engine topology: the engine's adaptive batching sheds with ServiceUnavailable when it
    predicts a wait over max_latency_ms, and an engine that is restarting refuses connections:
    either way the client's request was fine, so it gets a 503 it may retry, not a 500."""
    import asyncio
    from types import SimpleNamespace

    import aiohttp
    from bentoml.exceptions import ServiceUnavailable

    from service.classify import Classify
    from service.errors import ClientError
    from service.topology import SharedEngineModels

    async def infer(x):
        if failure == "shed":
            raise ServiceUnavailable("process is overloaded")
        raise aiohttp.ServerDisconnectedError()

    engine = SimpleNamespace(to_async=SimpleNamespace(**{service_module.SERVED[0].api_name: infer}))
    work = Classify(service_module.SERVED, CONFIG, SharedEngineModels(engine, CONFIG))
    with pytest.raises(ClientError) as e:
        asyncio.run(work.one(good_png()))
    response = e.value.response()
    assert response.status_code == 503 and response.headers["retry-after"] == str(CONFIG.retry_after_s)
    assert json.loads(response.body)["code"] == code


def test_models_while_the_engine_is_unreachable_is_a_503(service_module):
    """GET /models asks the shared engine which provider each model runs on: an engine that is
    restarting makes it a 503 the client may retry, not a 500."""
    import asyncio
    from types import SimpleNamespace

    import aiohttp

    from service.classify import Classify
    from service.errors import ClientError
    from service.topology import SharedEngineModels

    async def describe():
        raise aiohttp.ClientConnectorError(SimpleNamespace(ssl=None, host="127.0.0.1", port=1), OSError(111, "refused"))

    engine = SimpleNamespace(to_async=SimpleNamespace(describe=describe))
    work = Classify(service_module.SERVED, CONFIG, SharedEngineModels(engine, CONFIG))
    with pytest.raises(ClientError) as e:
        asyncio.run(work.describe())
    response = e.value.response()
    assert response.status_code == 503 and response.headers["retry-after"] == str(CONFIG.retry_after_s)
    assert json.loads(response.body)["code"] == "engine_unavailable"
