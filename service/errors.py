"""Every error the service answers, in one shape: ``{"error": message, "code": short_code}``.

``error_body`` is the one writer of that body (the request guard, the API, the response deadline
and the reshaping of BentoML's own errors all call it) and ``STATUS`` the one table of each code's
HTTP status: a 4xx for the client's mistakes, 503 with ``Retry-After`` when the service is too busy
to take the request, 504 when no answer began in time.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from starlette.responses import Response

STATUS = {
    # the request itself (service/guard.py)
    "headers_too_large": 431, "body_too_large": 413, "body_timeout": 408, "not_multipart": 415, "bad_multipart": 400,
    "unknown_field": 400, "missing_field": 400, "not_a_file": 400, "duplicate_field": 400,
    "bad_field": 400, "bad_filename": 400,
    # its fields (service/service.py)
    "unknown_model": 404, "bad_top_k": 400, "no_images": 400, "too_many_images": 413,
    # its images (service/preprocess.py's RejectCode)
    "empty": 400, "too_large": 413, "not_an_image": 415, "unsupported": 415, "corrupt": 400,
    "truncated": 400, "too_many_pixels": 413, "decompression_bomb": 413,
    # the service, not the request (503s carry Retry-After)
    "overloaded": 503, "engine_unavailable": 503, "timeout": 504,
    # a bug or a failed model call (logged with its traceback)
    "internal": 500,
}

# The code given to an error BentoML answered without one (service/responses.py), by its status,
# which stays BentoML's.
BENTOML_CODES = {400: "invalid_argument", 404: "not_found", 405: "method_not_allowed", 408: "body_timeout",
                 413: "too_large", 415: "unsupported_media_type", 422: "invalid_argument",
                 429: "overloaded", 503: "overloaded"}


def error_body(code: str, message: str) -> bytes:
    """The JSON body of every error the service answers."""
    return json.dumps({"error": message, "code": code}).encode()


async def send_error(send: Any, code: str, message: str, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """Answers an ASGI request with the error ``code`` and its status; ``headers`` are added."""
    body = error_body(code, message)
    await send({"type": "http.response.start", "status": STATUS[code],
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


class ClientError(Exception):
    """An error the API answers with ``code``'s status; ``headers`` go with the response."""

    def __init__(self, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = STATUS[code], code, message
        self.headers = headers or {}

    def response(self) -> Response:
        return Response(error_body(self.code, self.message), status_code=self.status, headers=self.headers,
                        media_type="application/json")


def overloaded(message: str, retry_after_s: int, code: str = "overloaded") -> ClientError:
    """503: nothing wrong with the request, but it was not processed; the client may send it again
    after ``retry_after_s`` seconds (HTTP's Retry-After, in whole seconds)."""
    return ClientError(code, message, headers={"Retry-After": str(retry_after_s)})
