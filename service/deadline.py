"""The per-request time limit of both services (``traffic={"timeout": ...}``), without BentoML's leak.

BentoML 1.4.40's ``TimeoutMiddleware`` starts a timer for every request and never cancels it, so
each finished request's future and context stay alive for the whole limit (60 s), and the garbage
collector's pauses over them made the latency tail (docs/decisions/006-response-deadline.md).
``ResponseDeadline`` keeps its contract (504 + JSON when no answer has begun within the limit, the
handler cancelled) and cancels its timer once the answer begins. service/bentoml_compat.py puts it
in the place of BentoML's.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from service.errors import send_error

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
                await send_error(send, "timeout", f"not able to process the request in {self.timeout:g} seconds")
                return
        except asyncio.CancelledError:  # the server gave up on this request: so does its handler
            task.cancel()
            raise
        finally:
            timer.cancel()
        await task

