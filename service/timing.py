"""The ``Server-Timing`` header of the classify answers: how long decoding and the model took, in
milliseconds, so that a client (the page, a browser's dev tools) sees the service's own share of
its round trip while the JSON bodies keep their shape.

    Server-Timing: preprocess;dur=0.61, model;dur=2.43, total;dur=4.02

``model`` is the engine call as the API worker sees it: the batching wait, the loopback hop and
onnxruntime. ``total`` runs from the request's arrival at ``ServerTiming``, once the request guard
has read and checked it, to its answer's start.
"""
from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any, TypeVar

T = TypeVar("T")
# The request's own dict, mutated (never set) below it: BentoML's middleware may run the API in a
# copied context, which still holds the same dict.
_TIMINGS: ContextVar[dict[str, float] | None] = ContextVar("server_timing", default=None)


def record(name: str, seconds: float) -> None:
    """Adds ``seconds`` to ``name`` for the request in progress; nothing outside one."""
    timings = _TIMINGS.get()
    if timings is not None:
        timings[name] = timings.get(name, 0.0) + seconds


def timed(name: str, call: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """``call``, its duration recorded as ``name`` when it returns."""
    async def run(*args: Any, **kwargs: Any) -> T:
        t0 = time.perf_counter()
        result = await call(*args, **kwargs)
        record(name, time.perf_counter() - t0)
        return result

    return run


def header(timings: dict[str, float]) -> bytes:
    return ", ".join(f"{name};dur={seconds * 1000:.2f}" for name, seconds in timings.items()).encode()


class ServerTiming:
    """ASGI middleware: answers that recorded anything carry it as ``Server-Timing``."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()

        async def send_timed(message: dict) -> None:
            if message["type"] == "http.response.start" and timings:
                timings["total"] = time.perf_counter() - t0
                message = {**message, "headers": [*message.get("headers", []), (b"server-timing", header(timings))]}
            await send(message)

        token = _TIMINGS.set(timings)
        try:
            await self.app(scope, receive, send_timed)
        finally:
            _TIMINGS.reset(token)
