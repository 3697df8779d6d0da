"""The per-request time limit of both services (``traffic={"timeout": ...}``), without BentoML's leak.

BentoML 1.4.40 enforces that limit with ``TimeoutMiddleware``, which starts a ``loop.call_later``
timer for every request and never cancels it. Each timer holds its request's future and a copy of
its context (the OpenTelemetry span and what hangs off it) until the limit has passed, so with the
60-s limit an API worker at 100 requests/s carries ~6,000 finished requests' objects (measured: 11,000
live timers in the engine, 13,000 in one API worker, their objects 360,000 of a worker's 480,000).
Python's garbage collector then traverses them over and over: 100-200 ms pauses every ~20 s and
430-ms full collections, during which the worker answered nobody and requests piled up to the
admission cap (``python -m service.soak_bench`` shed 0.6% of its requests at 70% of saturation).

``ResponseDeadline`` keeps BentoML's contract (a request that has not begun its answer within the
limit gets 504 with a JSON message, and its handler is cancelled) and cancels the timer as soon as the
answer begins. ``install`` puts it in place of BentoML's class, which BentoML looks up each time it
builds a service's app, so it must run before the app is built (service.service does it at import).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.responses import JSONResponse

log = logging.getLogger(__name__)


class ResponseDeadline:
    """ASGI middleware: 504 + JSON when the app has not started its answer within ``timeout`` s."""

    def __init__(self, app: Any, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        started: asyncio.Future[None] = loop.create_future()

        def mark_started(_: object = None) -> None:
            if not started.done():
                started.set_result(None)

        def expire() -> None:
            if not started.done():
                started.set_exception(TimeoutError())

        async def send_marking(message: dict[str, Any]) -> None:
            mark_started()
            await send(message)

        task = asyncio.ensure_future(self.app(scope, receive, send_marking))
        task.add_done_callback(mark_started)  # ended without a word: let its outcome surface now
        timer = loop.call_later(self.timeout, expire)
        try:
            await started
        except TimeoutError:
            if task.cancel():
                log.warning("%s %s: no answer begun within %g s; cancelled", scope.get("method"),
                            scope.get("path"), self.timeout)
                await JSONResponse({"error": f"not able to process the request in {self.timeout:g} seconds",
                                    "code": "timeout"}, status_code=504)(scope, receive, send)
                return
        except asyncio.CancelledError:  # the server gave up on this request: so does its handler
            task.cancel()
            raise
        finally:
            timer.cancel()
        await task


def install() -> None:
    """Make BentoML build every service's app (in this process) with ``ResponseDeadline``."""
    from bentoml._internal.server.http import traffic

    traffic.TimeoutMiddleware = ResponseDeadline  # type: ignore[misc,assignment]
