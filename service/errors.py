"""Errors as JSON: ``{"error": message, "code": short_code}``, a 4xx for the client's mistakes and a
503 with ``Retry-After`` when the service is too busy to take the request."""
from __future__ import annotations

from starlette.responses import JSONResponse


class ClientError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.message, "code": self.code}, status_code=self.status, headers=self.headers)


def overloaded(message: str, retry_after_s: int, code: str = "overloaded") -> ClientError:
    """503: nothing wrong with the request, but it was not processed; the client may send it again
    after ``retry_after_s`` seconds (HTTP's Retry-After, in whole seconds)."""
    return ClientError(503, code, message, headers={"Retry-After": str(retry_after_s)})


# HTTP status for each preprocess.ImageRejected code.
REJECTION_STATUS = {"too_large": 413, "too_many_pixels": 413, "decompression_bomb": 413,
                    "unsupported": 415, "not_an_image": 415}  # others (empty, corrupt, truncated): 400
