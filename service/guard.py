"""ASGI middleware in front of the BentoML app: refuses malformed requests with 4xx JSON before
BentoML parses them, so that no client input can reach BentoML's generic 500 path.

* a body over the byte limit: 413, by Content-Length when given, by counting otherwise;
* ``/classify`` and ``/classify_batch`` must be ``multipart/form-data`` holding only their own
  fields (BentoML would try to JSON-decode a stray file field and answer 500), with the file
  field present, files only in it, ``model``/``top_k`` at most once and ``top_k`` an integer;
* ``GET /models`` is served by the ``/models`` API (BentoML APIs are POST-only).
"""
from __future__ import annotations

import json
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request

# route -> (file field, may repeat)
FILE_ROUTES = {"/classify": ("image", False), "/classify_batch": ("images", True)}
SCALAR_FIELDS = ("model", "top_k")
MAX_FORM_PARTS = 1000


class _TooLarge(Exception):
    pass


class RequestGuard:
    def __init__(self, app: Any, max_body_bytes: int, max_files: int) -> None:
        self.app, self.max_body_bytes, self.max_files = app, max_body_bytes, max_files

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope.get("path", ""), scope.get("method")
        if path == "/models" and method == "GET":
            return await self.app(*_as_post_json(scope), send)
        if method != "POST":
            return await self.app(scope, receive, send)
        headers = {k.lower(): v for k, v in scope.get("headers") or []}
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            return await _refuse(send, 413, "body_too_large", f"request body over the {self.max_body_bytes}-byte limit")
        if path not in FILE_ROUTES:
            return await self.app(scope, receive, send)
        try:
            body = await self._read_body(receive)
        except _TooLarge:
            return await _refuse(send, 413, "body_too_large", f"request body over the {self.max_body_bytes}-byte limit")
        problem = await self._check_form(scope, body, *FILE_ROUTES[path])
        if problem:
            return await _refuse(send, *problem)
        return await self.app(scope, _replay(body), send)

    async def _read_body(self, receive: Any) -> bytes:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _TooLarge  # the client went away; nothing to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _TooLarge
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    async def _check_form(self, scope: dict, body: bytes, file_field: str, repeat: bool) -> tuple[int, str, str] | None:
        content_type = dict(scope.get("headers") or []).get(b"content-type", b"").decode("latin-1")
        if not content_type.lower().startswith("multipart/form-data"):
            return 415, "not_multipart", f"send multipart/form-data with the image in field '{file_field}' (got {content_type or 'no content type'!r})"
        request = Request(scope, _replay(body))
        try:
            form = await request.form(max_files=self.max_files + 1, max_fields=MAX_FORM_PARTS)
        except Exception as e:  # malformed multipart: starlette/python-multipart say why
            return 400, "bad_multipart", f"malformed multipart body: {str(e)[:200]}"
        try:
            names = list(form.keys())
            unknown = sorted({n for n in names if n not in (file_field, *SCALAR_FIELDS)})
            if unknown:
                shown = ", ".join(repr(n[:40]) for n in unknown[:5])
                return 400, "unknown_field", f"unknown field(s) {shown}; expected '{file_field}', 'model', 'top_k'"
            files = form.getlist(file_field)
            if not files:
                return 400, "missing_field", f"field '{file_field}' with an image file is required"
            if not all(isinstance(f, UploadFile) for f in files):
                return 400, "not_a_file", f"field '{file_field}' must be a file upload"
            if len(files) > 1 and not repeat:
                return 400, "duplicate_field", f"field '{file_field}' given {len(files)} times; send one image (or use /classify_batch)"
            for name in SCALAR_FIELDS:
                values = form.getlist(name)
                if len(values) > 1:
                    return 400, "duplicate_field", f"field '{name}' given {len(values)} times"
                if values and isinstance(values[0], UploadFile):
                    return 400, "bad_field", f"field '{name}' must be text, not a file"
            top_k = form.get("top_k")
            if top_k is not None and not _is_int(top_k):
                return 400, "bad_top_k", f"top_k must be an integer, got {str(top_k)[:40]!r}"
            return None
        finally:
            await form.close()


def _is_int(text: str) -> bool:
    t = text.strip()
    return t.lstrip("+-").isdigit() and len(t) <= 12


def _replay(body: bytes) -> Any:
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def _as_post_json(scope: dict) -> tuple[dict, Any]:
    headers = [(k, v) for k, v in scope.get("headers") or [] if k.lower() not in (b"content-type", b"content-length")]
    headers += [(b"content-type", b"application/json"), (b"content-length", b"2")]
    return {**scope, "method": "POST", "headers": headers}, _replay(b"{}")


async def _refuse(send: Any, status: int, code: str, message: str) -> None:
    body = json.dumps({"error": message, "code": code}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
