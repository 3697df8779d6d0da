"""ASGI middleware in front of the BentoML app: refuses malformed requests with 4xx JSON before
BentoML parses them, so that no client input can reach BentoML's generic 500 path, and sheds load
before it queues. It wraps BentoML's whole app, middleware included, so that a refusal costs little
(docs/decisions/004-guard-outside-bentoml-middleware.md).

* a body over the byte limit: 413; a body not received in full within ``body_timeout_s``: 408;
* admission: at most ``max_inflight`` requests in progress in this worker; the next waits for a
  slot for at most ``admit_wait_s``, else 503 with ``Retry-After`` (service/admission.py,
  docs/decisions/003-admission-control.md). The body is read first, so slow uploads hold no slot;
* each route's form as service/schema.py declares it (multipart, known fields, the file field
  present, files only in it, text fields at most once and of their type), and uploads' filenames
  that BentoML can put into a temporary file's name (UTF-8, at most 200 bytes, no path or control
  characters);
* every 4xx and 503 leaves as ``{"error": ..., "code": ...}`` (service/responses.py reshapes
  BentoML's own), and every 503 carries ``Retry-After``;
* a route declared ``also_get`` (``/models``) answers GET; after SIGTERM every response carries
  ``Connection: close`` (service/drain.py).
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

from python_multipart.multipart import parse_options_header
from starlette.datastructures import UploadFile
from starlette.requests import Request

from service.admission import AdaptiveLimit, AdmissionGate
from service.drain import close_when_shutting_down
from service.errors import STATUS, send_error
from service.responses import ErrorShaper
from service.schema import ROUTES, Route

MAX_FORM_PARTS = 1000
MAX_FILENAME_BYTES = 200  # BentoML adds it to a temporary file's name; Linux allows 255 bytes there


class _TooLarge(Exception):
    pass


class _ClientGone(Exception):
    pass


class RequestGuard:
    def __init__(self, app: Any, max_body_bytes: int, max_files: int, max_inflight: int = 1 << 30,
                 max_header_bytes: int = 16 * 1024, max_headers: int = 100,
                 retry_after_s: int = 1, body_timeout_s: float = 30.0, admit_target_s: float = 0.0,
                 admit_wait_s: float = 0.0, on_refuse: Callable[[int, str], None] | None = None,
                 routes: Mapping[str, Route] = ROUTES) -> None:
        self.app, self.max_body_bytes, self.max_files, self.routes = app, max_body_bytes, max_files, routes
        self.max_header_bytes, self.max_headers = max_header_bytes, max_headers
        self.on_refuse = on_refuse  # counts each refusal (the service feeds a Prometheus counter)
        self.retry_after_s, self.body_timeout_s = retry_after_s, body_timeout_s
        # Classify requests in progress in this worker (one event loop), and those waiting for a slot.
        self.gate = AdmissionGate(AdaptiveLimit(max_inflight, admit_target_s, min_limit=min(2, max_inflight)),
                                  wait_s=admit_wait_s, max_waiting=max_inflight)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        send = close_when_shutting_down(send)
        problem = self._header_problem(scope.get("headers") or [])
        if problem:  # on every route: nothing behind the guard sees an unbounded header block
            return await self._refuse(send, "headers_too_large", problem, close=True)
        path, method = scope.get("path", ""), scope.get("method")
        route = self.routes.get(path)
        if route is not None and route.also_get and method == "GET":
            return await self.app(*_as_post_json(scope), ErrorShaper(send, self.retry_after_s))
        send = ErrorShaper(send, self.retry_after_s)  # touches only 4xx and 503 answers
        if method != "POST":  # e.g. GET /classify: BentoML's 405, as JSON like every refusal
            return await self.app(scope, receive, send)
        headers = {k.lower(): v for k, v in scope.get("headers") or []}
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            return await self._refuse(send, "body_too_large",
                                      f"request body over the {self.max_body_bytes}-byte limit", close=True)
        if route is None or route.file_field is None:  # BentoML's 404, or a route that takes no fields
            return await self.app(scope, receive, send)
        try:
            body = await asyncio.wait_for(self._read_body(receive), self.body_timeout_s)
        except _TooLarge:
            return await self._refuse(send, "body_too_large",
                                      f"request body over the {self.max_body_bytes}-byte limit", close=True)
        except _ClientGone:
            return None  # nobody is left to answer
        except asyncio.TimeoutError:
            return await self._refuse(send, "body_timeout",
                                      f"the request body was not received in full within {self.body_timeout_s:g} s",
                                      close=True)
        if not await self.gate.enter():
            gate = self.gate
            return await self._refuse(send, "overloaded",
                                      f"the service is at capacity ({gate.inflight} requests in progress and "
                                      f"{gate.waiting} waiting in this worker); retry after {self.retry_after_s} s",
                                      extra=[(b"retry-after", str(self.retry_after_s).encode())])
        admitted = time.monotonic()
        try:
            problem = await self._check_form(scope, body, route)
            if problem:
                return await self._refuse(send, *problem)
            return await self.app(scope, _replay(body), send)
        finally:
            self.gate.leave(time.monotonic() - admitted)

    def _header_problem(self, headers: list[tuple[bytes, bytes]]) -> str | None:
        """Why the request's header block is refused (431), as servers people trust bound it
        (Apache: 100 fields; Node.js: 16 KiB in all); None when it is within both limits."""
        if len(headers) > self.max_headers:
            return f"{len(headers)} request headers; at most {self.max_headers}"
        size = sum(len(k) + len(v) + 4 for k, v in headers)  # "name: value\r\n"
        if size > self.max_header_bytes:
            return f"request headers of {size} bytes; at most {self.max_header_bytes}"
        return None

    async def _refuse(self, send: Any, code: str, message: str, close: bool = False,
                      extra: list[tuple[bytes, bytes]] | None = None) -> None:
        """Answers with the error JSON. ``close``: the body was not read to its end, so the connection
        cannot carry another request."""
        if self.on_refuse is not None:
            self.on_refuse(STATUS[code], code)
        await send_error(send, code, message, [*(extra or []), *([(b"connection", b"close")] if close else [])])

    async def _read_body(self, receive: Any) -> bytes:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _TooLarge
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    async def _check_form(self, scope: dict, body: bytes, route: Route) -> tuple[str, str] | None:
        """The (code, message) of the first way the request's form breaks ``route``'s declaration."""
        file_field = route.file_field
        content_type = dict(scope.get("headers") or []).get(b"content-type", b"").decode("latin-1")
        if not content_type.lower().startswith("multipart/form-data"):
            return "not_multipart", f"send multipart/form-data with the image in field '{file_field}' (got {content_type or 'no content type'!r})"
        request = Request(scope, _replay(body))
        try:
            form = await request.form(max_files=self.max_files + 1, max_fields=MAX_FORM_PARTS)
        except Exception as e:  # malformed multipart: starlette/python-multipart say why
            return "bad_multipart", f"malformed multipart body: {str(e)[:200]}"
        try:
            names = list(form.keys())
            unknown = sorted({n for n in names if n not in route.fields})
            if unknown:
                shown = ", ".join(repr(n[:40]) for n in unknown[:5])
                return "unknown_field", f"unknown field(s) {shown}; expected {', '.join(map(repr, route.fields))}"
            files = form.getlist(file_field)
            if not files:
                return "missing_field", f"field '{file_field}' with an image file is required"
            if not all(isinstance(f, UploadFile) for f in files):
                return "not_a_file", f"field '{file_field}' must be a file upload"
            bad_name = _filename_problem(body, content_type)
            if bad_name:
                return "bad_filename", bad_name
            if len(files) > 1 and not route.repeatable:
                return "duplicate_field", f"field '{file_field}' given {len(files)} times; send one image (or use /classify_batch)"
            for name, kind in route.scalars.items():
                values = form.getlist(name)
                if len(values) > 1:
                    return "duplicate_field", f"field '{name}' given {len(values)} times"
                if values and isinstance(values[0], UploadFile):
                    return "bad_field", f"field '{name}' must be text, not a file"
                if values and kind is int and not _is_int(values[0]):
                    return f"bad_{name}", f"{name} must be an integer, got {str(values[0])[:40]!r}"
            return None
        finally:
            await form.close()


def _filename_problem(body: bytes, content_type: str) -> str | None:
    """Why a part's filename is refused, read from the raw part headers: once decoded, starlette
    has turned bytes that are not UTF-8 into Latin-1 text that could also have been sent as is."""
    boundary = parse_options_header(content_type.encode("latin-1"))[1].get(b"boundary")
    if not boundary:
        return None
    for part in body.split(b"--" + boundary)[1:]:
        for line in part.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() != b"content-disposition":
                continue
            params = parse_options_header(value.strip())[1]
            raw = params.get(b"filename")
            if raw is None:
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                return f"filename {raw[:40]!r} is not UTF-8"
            if len(raw) > MAX_FILENAME_BYTES:
                return f"filename of {len(raw)} bytes; at most {MAX_FILENAME_BYTES}"
            if any(c in text for c in "/\\") or ".." in text:
                return f"filename {text[:40]!r} holds a path; send the file's name alone"
            if any(ord(c) < 32 or ord(c) == 127 for c in text):
                return f"filename {text[:40]!r} holds control characters"
    return None


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
