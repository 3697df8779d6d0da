"""The floor issue 16 measures the service against: a bare ASGI app on uvicorn (1 worker) doing the same
work per request: python-multipart, PIL, onnxruntime at batch 1, JSON. No framework.

    SERVING_COST_ONNX=/path/model.fp32.onnx uvicorn bench.serving_cost.bare_asgi:app --no-access-log

``POST /classify`` with the multipart field ``image`` answers ``{"predictions": [...]}`` (top 5);
``GET /readyz`` answers 200 once the session is loaded (at import).
"""
from __future__ import annotations

import json

from python_multipart import MultipartParser
from python_multipart.multipart import parse_options_header

from bench.serving_cost.model import Model

MODEL = Model()


def _image_field(body: bytes, content_type: bytes) -> bytes | None:
    """The bytes of the multipart field ``image``, or None."""
    _, params = parse_options_header(content_type)
    fields: dict[str, bytes] = {}
    name, chunks = b"", []

    def on_header_value(data: bytes, start: int, end: int) -> None:
        nonlocal name
        _, disposition = parse_options_header(data[start:end])
        name = disposition.get(b"name", name)

    def on_part_end() -> None:
        fields[name] = b"".join(chunks)
        chunks.clear()

    parser = MultipartParser(params[b"boundary"], {
        "on_header_value": on_header_value, "on_part_end": on_part_end,
        "on_part_data": lambda data, start, end: chunks.append(data[start:end])})
    parser.write(body)
    parser.finalize()
    return fields.get(b"image")


async def _send(send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def app(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/readyz":
        return await _send(send, 200, b'"ready"')
    if scope["path"] != "/classify" or scope["method"] != "POST":
        return await _send(send, 404, b'{"error": "not found"}')
    chunks, more = [], True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    headers = dict(scope["headers"])
    try:
        image = _image_field(b"".join(chunks), headers.get(b"content-type", b""))
        predictions = MODEL.classify_bytes(image) if image else None
    except Exception as e:  # a bad upload: 400, never a 500
        return await _send(send, 400, json.dumps({"error": str(e)}).encode())
    if predictions is None:
        return await _send(send, 400, b'{"error": "no field image"}')
    await _send(send, 200, json.dumps({"predictions": predictions}).encode())
