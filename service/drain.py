"""Graceful shutdown of the engine process: it outlives the API workers' last requests.

On SIGTERM, ``bentoml serve`` (circus) signals every process at once. Each uvicorn server then
stops accepting connections and finishes the requests it has; but an API worker's in-flight
request that is still decoding its image has not reached the engine yet, and finds it gone: seen
as one 503 in 16 clients' in-flight requests before this module existed. So the engine defers
SIGTERM: it keeps serving until no request has arrived or been in progress for ``quiet_s``
(the API workers have drained), at most ``max_s``, and then hands the signal to uvicorn, whose
own graceful shutdown follows. A second SIGTERM stops it at once.
"""
from __future__ import annotations

import logging
import signal
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


def _server_sigterm_handler() -> Any:
    """The SIGTERM handler the server (uvicorn) installed, for a wrapper to call; None off the main
    thread (signal handlers live there) or when no server handler is set."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGTERM)
    return previous if callable(previous) else None


def defer_sigterm(quiet_s: float, max_s: float, activity: Activity = ACTIVITY) -> bool:
    """Wraps the SIGTERM handler installed by the server (uvicorn's) so that it runs only once this
    process has been idle for ``quiet_s`` (or ``max_s`` have passed). Returns False, changing
    nothing, off the main thread (signal handlers live there) or when no server handler is set."""
    previous = _server_sigterm_handler()
    if previous is None:
        return False
    draining = threading.Event()

    def stop_when_idle(sig: int) -> None:
        start = time.monotonic()
        while time.monotonic() - start < max_s and activity.idle_for() < quiet_s:
            time.sleep(0.05)
        log.info("engine idle for %.1f s after SIGTERM (%.1f s); shutting down", activity.idle_for(),
                 time.monotonic() - start)
        previous(sig, None)  # uvicorn's handle_exit only sets flags: safe from this thread

    def on_sigterm(sig: int, frame: Any) -> None:
        if draining.is_set():
            previous(sig, frame)
            return
        draining.set()
        log.info("SIGTERM: serving until idle for %.1f s (at most %.0f s)", quiet_s, max_s)
        threading.Thread(target=stop_when_idle, args=(sig,), name="drain", daemon=True).start()

    signal.signal(signal.SIGTERM, on_sigterm)
    return True


# ---- API workers: keep-alive connections must end once SIGTERM has come ------------------------

SHUTTING_DOWN = threading.Event()


def note_sigterm() -> bool:
    """Wraps the server's (uvicorn's) SIGTERM handler so that it also sets SHUTTING_DOWN, which
    ``close_when_shutting_down`` reads. Why: uvicorn's graceful shutdown asks each connection once
    to close after its current response, but a connection whose response had already begun keeps
    its keep-alive; a closed-loop client then sends its next request on it, which is served, and so
    on: in 4 of 10 runs with 12 clients an API worker kept serving for 30 s after SIGTERM, until
    the engine had gone and its requests timed out (``python -m service.fault_bench``). Returns
    False, changing nothing, off the main thread or when no server handler is set."""
    previous = _server_sigterm_handler()
    if previous is None:
        return False

    def on_sigterm(sig: int, frame: Any) -> None:
        SHUTTING_DOWN.set()
        previous(sig, frame)

    signal.signal(signal.SIGTERM, on_sigterm)
    return True


def close_when_shutting_down(send: Any, shutting_down: threading.Event = SHUTTING_DOWN) -> Any:
    """An ASGI ``send`` that adds ``Connection: close`` to each response begun after SIGTERM, so the
    server closes the connection once that response is out and the client reconnects elsewhere."""
    async def wrapped(message: dict) -> None:
        if message["type"] == "http.response.start" and shutting_down.is_set():
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
            message = {**message, "headers": [*headers, (b"connection", b"close")]}
        await send(message)

    return wrapped
