"""Graceful shutdown: the engine outlives the API workers' last requests, and API workers' keep-alive
connections end once SIGTERM has come (docs/decisions/007-sigterm-drain.md).

``bentoml serve`` signals every process at once, but an API worker's in-flight request may not
have reached the engine yet, so the engine keeps serving until it has been idle for a moment.
The SIGTERM handlers that use these helpers are installed by service/bentoml_compat.py.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any

log = logging.getLogger("bentoml.resnet_serving")


class Activity:
    """Requests in progress in this process, and when the last one started or ended."""

    def __init__(self) -> None:
        self.inflight = 0
        self.last = time.monotonic()

    def idle_for(self) -> float:
        return 0.0 if self.inflight else time.monotonic() - self.last


ACTIVITY = Activity()


class ActivityMiddleware:
    """ASGI middleware that keeps ACTIVITY (the engine's HTTP requests, whatever their route)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        ACTIVITY.inflight += 1
        ACTIVITY.last = time.monotonic()
        try:
            await self.app(scope, receive, send)
        finally:
            ACTIVITY.inflight -= 1
            ACTIVITY.last = time.monotonic()


def wait_until_idle(activity: Activity, quiet_s: float, max_s: float) -> float:
    """Blocks until no request has arrived or been in progress for ``quiet_s`` (the API workers have
    drained), at most ``max_s``; returns the seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < max_s and activity.idle_for() < quiet_s:
        time.sleep(0.05)
    waited = time.monotonic() - start
    log.info("engine idle for %.1f s after SIGTERM (%.1f s); shutting down", activity.idle_for(), waited)
    return waited


# ---- API workers: keep-alive connections must end once SIGTERM has come ------------------------

SHUTTING_DOWN = threading.Event()  # set by the API workers' SIGTERM handler


def close_when_shutting_down(send: Any, shutting_down: threading.Event = SHUTTING_DOWN) -> Any:
    """An ASGI ``send`` that adds ``Connection: close`` to each response begun after SIGTERM, so the
    server closes the connection once that response is out and the client reconnects elsewhere
    (uvicorn's own shutdown leaves open a keep-alive connection whose response had already begun)."""
    async def wrapped(message: dict) -> None:
        if message["type"] == "http.response.start" and shutting_down.is_set():
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
            message = {**message, "headers": [*headers, (b"connection", b"close")]}
        await send(message)

    return wrapped
