"""Client errors as JSON: ``{"error": message, "code": short_code}`` with a 4xx status."""
from __future__ import annotations

from starlette.responses import JSONResponse


class ClientError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.message, "code": self.code}, status_code=self.status)


# HTTP status for each preprocess.ImageRejected code.
REJECTION_STATUS = {"too_large": 413, "too_many_pixels": 413, "decompression_bomb": 413,
                    "unsupported": 415, "not_an_image": 415}  # others (empty, corrupt, truncated): 400
