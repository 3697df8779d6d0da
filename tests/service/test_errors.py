"""service/errors.py: one writer of the error body, one status per code."""
from __future__ import annotations

import asyncio
import json
import typing

from service.errors import STATUS, ClientError, error_body, overloaded, send_error
from service.preprocess import RejectCode


def test_every_image_rejection_has_a_status():
    assert set(typing.get_args(RejectCode)) <= set(STATUS)


def test_the_api_and_the_asgi_writers_send_the_same_body_and_status():
    body = error_body("unknown_model", "unknown model 'φ'")
    assert json.loads(body) == {"error": "unknown model 'φ'", "code": "unknown_model"}
    response = ClientError("unknown_model", "unknown model 'φ'").response()
    assert (response.status_code, response.body, response.headers["content-type"]) == (404, body, "application/json")

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(send_error(send, "unknown_model", "unknown model 'φ'", [(b"connection", b"close")]))
    start, sent_body = sent
    assert start["status"] == 404 and sent_body["body"] == body
    assert dict(start["headers"]) == {b"content-type": b"application/json", b"content-length": str(len(body)).encode(),
                                      b"connection": b"close"}


def test_overloaded_is_a_503_with_retry_after():
    response = overloaded("busy", 3, code="engine_unavailable").response()
    assert response.status_code == 503 and response.headers["retry-after"] == "3"
    assert json.loads(response.body) == {"error": "busy", "code": "engine_unavailable"}
