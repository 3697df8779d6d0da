"""The HTTP answer of ``POST /classify`` and ``POST /classify_batch``, written straight to ASGI.

The request guard (service/guard.py) has already read the body, parsed its form once and checked
it against the route's declaration; this turns that form into the call of ``Classify`` and its
answer into JSON, with ``Server-Timing``, without BentoML's per-request machinery (its IO models,
temporary files, tracing and access log), which cost several times the model itself here
(docs/decisions/017-serving-path.md). The answers are the ones the BentoML APIs declare
(service/bodies.py): the same JSON, the same errors.

    Server-Timing: preprocess;dur=0.05, model;dur=0.31, total;dur=0.42

``model`` is the wait for the batch and onnxruntime; ``total`` runs from the moment the request was
admitted with its body read to its answer.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from service.classify import Classify
from service.errors import ClientError, error_body
from service.metrics import REQUEST_SECONDS
from service.multipart import Form
from service.schema import Route

log = logging.getLogger("bentoml.resnet_serving")
DEFAULT_TOP_K = 5


def server_timing(timings: dict[str, float]) -> bytes:
    return ", ".join(f"{name};dur={seconds * 1000:.2f}" for name, seconds in timings.items()).encode()


class ClassifyRoutes:
    """Answers a checked classify form; ``deadline_s``: 504 when no answer is ready by then."""

    def __init__(self, classify: Classify, deadline_s: float) -> None:
        self.classify, self.deadline_s = classify, deadline_s

    async def __call__(self, route: Route, form: Form, send: Any) -> None:
        started = time.perf_counter()
        timings: dict[str, float] = {}
        headers: list[tuple[bytes, bytes]] = []
        try:
            async with asyncio.timeout(self.deadline_s):
                answer = await self._answer(route, form, timings)
            status, body = 200, json.dumps(answer).encode()
        except ClientError as e:
            status, body = e.status, error_body(e.code, e.message)
            headers = [(k.lower().encode(), v.encode()) for k, v in e.headers.items()]
        except TimeoutError:
            log.warning("POST %s: no answer within %g s", route.path, self.deadline_s)
            status, body = 504, error_body("timeout", f"not able to process the request in {self.deadline_s:g} seconds")
        except Exception:  # a bug or a failed onnxruntime call: a 500, logged with its traceback
            log.exception("POST %s failed", route.path)
            status, body = 500, error_body("internal", "the service failed to answer this request; see its log")
        total = time.perf_counter() - started
        timings["total"] = total
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"server-timing", server_timing(timings)), *headers]})
        await send({"type": "http.response.body", "body": body})
        REQUEST_SECONDS.labels(route.path, str(status)).observe(total)

    async def _answer(self, route: Route, form: Form, timings: dict[str, float]) -> dict[str, Any]:
        model, top_k = None, DEFAULT_TOP_K
        images = []
        for part in form.parts:  # the guard has checked every field's presence, count and type
            if part.name == route.file_field:
                images.append(part.data)
            elif part.name == "model":
                model = part.text(form.charset)
            elif part.name == "top_k":
                top_k = int(part.text(form.charset))
        if not route.repeatable:
            return await self.classify.one(images[0], model, top_k, timings)
        return await self.classify.batch(images, model, top_k, timings)
