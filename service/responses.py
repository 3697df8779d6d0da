"""Every error the API answers in one shape: ``{"error": message, "code": short_code}``.

Our own code answers that way already; BentoML does not. Its validation errors are
``{"error": ..., "detail": [...]}``, its 4xx exceptions a JSON *list* holding one object (1.4.40),
and its 503s carry no ``Retry-After``. :class:`ErrorShaper` wraps the ASGI ``send`` of a request
and rewrites those answers on their way out; 200s and 5xx other than 503 pass untouched (a 500 is
a bug to be seen, not dressed up).
"""
from __future__ import annotations

import json
from typing import Any

from service.errors import BENTOML_CODES, error_body

MAX_MESSAGE = 500


class ErrorShaper:
    """An ASGI ``send`` that reshapes 4xx and 503 answers (buffered: they are small) and passes
    everything else through as it comes."""

    def __init__(self, send: Any, retry_after_s: int) -> None:
        self.send, self.retry_after_s = send, retry_after_s
        self.start: dict | None = None  # the held http.response.start of an error
        self.chunks: list[bytes] = []

    async def __call__(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            status = message["status"]
            if 400 <= status < 500 or status == 503:
                self.start = message
                return None
            return await self.send(message)
        if message["type"] == "http.response.body" and self.start is not None:
            self.chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return None
            start, body = self.start, b"".join(self.chunks)
            self.start, self.chunks = None, []
            status, headers = start["status"], list(start.get("headers") or [])
            body = reshape(status, body)
            names = {k.lower() for k, _ in headers}
            headers = [(k, v) for k, v in headers if k.lower() not in (b"content-length", b"content-type")]
            headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            if status == 503 and b"retry-after" not in names:
                headers.append((b"retry-after", str(self.retry_after_s).encode()))
            await self.send({**start, "headers": headers})
            return await self.send({"type": "http.response.body", "body": body})
        return await self.send(message)


def reshape(status: int, body: bytes) -> bytes:
    """The error body as ``{"error", "code"}``: unchanged when it already is, else rebuilt from
    whatever message it holds."""
    try:
        data = json.loads(body) if body else None
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), str) and isinstance(data.get("code"), str):
        return body
    if isinstance(data, list) and len(data) == 1 and isinstance(data[0], dict):
        data = data[0]  # BentoML 1.4.40 wraps a 4xx exception's body in a list
    if isinstance(data, dict) and "error" in data:
        message = str(data["error"])
        detail = data.get("detail")
        if isinstance(detail, list):  # pydantic: name each field that failed, not the whole dump
            parts = [f"{'.'.join(str(x) for x in d.get('loc', ()))}: {d.get('msg', '')}"
                     for d in detail if isinstance(d, dict)]
            message += " (" + "; ".join(parts) + ")" if parts else ""
    elif data is not None:
        message = json.dumps(data)
    else:
        message = body.decode("utf-8", "replace").strip() or f"HTTP {status}"
    code = BENTOML_CODES.get(status, "client_error" if status < 500 else "server_error")
    return error_body(code, message[:MAX_MESSAGE])
