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
  (UTF-8, at most 200 bytes, no path or control characters). The form is parsed once, in memory
  (service/multipart.py), and a checked one goes to ``handler`` (service/routes.py), which answers
  it without BentoML (docs/decisions/017-serving-path.md);
* every 4xx and 503 leaves as ``{"error": ..., "code": ...}`` (service/responses.py reshapes
  BentoML's own), and every 503 carries ``Retry-After``;
* a route declared ``also_get`` (``/models``) answers GET; after SIGTERM every response carries
  ``Connection: close`` (service/drain.py).
"""
from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from service.admission import AdaptiveLimit, AdmissionGate
from service.drain import close_when_shutting_down
from service.errors import STATUS, send_error
from service.multipart import Form, MalformedForm, parse_form
from service.responses import ErrorShaper
from service.schema import ROUTES, Route

# The answer to a checked form: service/routes.py's ClassifyRoutes once the service has started
# (None before: the form goes on to BentoML).
FormHandler = Callable[[Route, Form, Any], Awaitable[None]]

MAX_FORM_PARTS = 1000
_INTEGER = re.compile(r"[+-]?[0-9]{1,11}")
MAX_FILENAME_BYTES = 200  # what BentoML could put in a temporary file's name (Linux allows 255 bytes there)


class _TooLarge(Exception):
    pass


class _ClientGone(Exception):
    pass


class RequestGuard:
    def __init__(self, app: Any, max_body_bytes: int, max_inflight: int = 1 << 30,
                 max_header_bytes: int = 16 * 1024, max_headers: int = 100,
                 retry_after_s: int = 1, body_timeout_s: float = 30.0, admit_target_s: float = 0.0,
                 admit_wait_s: float = 0.0, on_refuse: Callable[[int, str], None] | None = None,
                 routes: Mapping[str, Route] = ROUTES, handler: Callable[[], FormHandler | None] = lambda: None) -> None:
        self.app, self.max_body_bytes, self.routes = app, max_body_bytes, routes
        self.handler = handler  # who answers a checked form (docs/decisions/017-serving-path.md)
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
            checked = self._check_form(headers.get(b"content-type", b""), body, route)
            if isinstance(checked, tuple):
                return await self._refuse(send, *checked)
            handler = self.handler()
            if handler is not None:  # parsed once, answered here: BentoML never sees the request
                return await handler(route, checked, send)
            return await self.app(scope, replay_body(body), send)
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

    def _check_form(self, content_type: bytes, body: bytes, route: Route) -> Form | tuple[str, str]:
        """The request's form, or the (code, message) of the first way it breaks ``route``'s declaration."""
        file_field = route.file_field
        if not content_type.lower().startswith(b"multipart/form-data"):
            shown = content_type.decode("latin-1")
            return "not_multipart", f"send multipart/form-data with the image in field '{file_field}' (got {shown or 'no content type'!r})"
        try:
            form = parse_form(body, content_type, max_parts=MAX_FORM_PARTS)
        except MalformedForm as e:
            return "bad_multipart", f"malformed multipart body: {str(e)[:200]}"
        unknown = sorted({n for n in form.names if n not in route.fields})
        if unknown:
            shown = ", ".join(repr(n[:40]) for n in unknown[:5])
            return "unknown_field", f"unknown field(s) {shown}; expected {', '.join(map(repr, route.fields))}"
        files = form.get_all(file_field)
        if not files:
            return "missing_field", f"field '{file_field}' with an image file is required"
        if not all(f.is_file for f in files):
            return "not_a_file", f"field '{file_field}' must be a file upload"
        for part in form.parts:
            bad_name = _filename_problem(part.filename)
            if bad_name:
                return "bad_filename", bad_name
        if len(files) > 1 and not route.repeatable:
            return "duplicate_field", f"field '{file_field}' given {len(files)} times; send one image (or use /classify_batch)"
        for name, kind in route.scalars.items():
            values = form.get_all(name)
            if len(values) > 1:
                return "duplicate_field", f"field '{name}' given {len(values)} times"
            if values and values[0].is_file:
                return "bad_field", f"field '{name}' must be text, not a file"
            if values and kind is int and not _is_int(values[0].text(form.charset)):
                return f"bad_{name}", f"{name} must be an integer, got {values[0].text(form.charset)[:40]!r}"
        return form


def _filename_problem(raw: bytes | None) -> str | None:
    """Why a part's filename is refused: names that are not UTF-8, too long, or that hold a path or
    control characters (uploads are never written under their name, but a client sending one is
    either broken or probing)."""
    if raw is None:
        return None
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
    """What int() reads and a top_k can be: ASCII digits with at most one sign, 12 characters at most
    (``str.isdigit`` also takes superscripts, which int() refuses)."""
    return _INTEGER.fullmatch(text.strip()) is not None


def replay_body(body: bytes) -> Any:
    """An ASGI ``receive`` that gives ``body`` whole, then a disconnect."""
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
    return {**scope, "method": "POST", "headers": headers}, replay_body(b"{}")
