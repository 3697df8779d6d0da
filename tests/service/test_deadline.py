"""The services' per-request time limit (service/deadline.py): BentoML's contract (504 + JSON when no
answer has begun in time), and nothing of a finished request kept until the limit would have passed."""
from __future__ import annotations

import asyncio
import contextvars
import json
import weakref

import pytest

from service.deadline import ResponseDeadline

REQUEST_STATE: contextvars.ContextVar[object] = contextvars.ContextVar("request_state")


class RequestState:
    """Stands for what a request's context carries (BentoML's tracing span and what hangs off it)."""


def http_scope() -> dict:
    return {"type": "http", "method": "POST", "path": "/classify", "headers": []}


async def answer_at_once(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def call(app, scope: dict) -> list[dict]:
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def test_a_finished_request_leaves_nothing_behind():
    """BentoML 1.4.40's TimeoutMiddleware fails this: its timer keeps the request's context alive
    for the whole limit (60 s in the service)."""
    async def main() -> bool:
        app = ResponseDeadline(answer_at_once, timeout=60)

        async def one_request() -> weakref.ref:
            state = RequestState()
            REQUEST_STATE.set(state)
            sent = await call(app, http_scope())
            assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
            return weakref.ref(state)

        ref = await asyncio.create_task(one_request())  # its own context, as each request has
        for _ in range(3):  # a few turns of the loop, which drops cancelled timers from its heap
            await asyncio.sleep(0)
        return ref() is None  # asked while the loop (and every timer it holds) is still alive

    assert asyncio.run(main())


def test_the_timer_is_cancelled_once_the_answer_began():
    async def main() -> list[asyncio.TimerHandle]:
        app = ResponseDeadline(answer_at_once, timeout=60)
        for _ in range(5):
            await call(app, http_scope())
        loop = asyncio.get_running_loop()
        return [h for h in loop._scheduled if not h.cancelled()]  # noqa: SLF001: the loop's timer heap

    assert asyncio.run(main()) == []


def test_no_answer_in_time_is_a_504_with_json_and_the_handler_is_cancelled():
    cancelled = asyncio.Event()

    async def never_answers(scope, receive, send) -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    sent = asyncio.run(call(ResponseDeadline(never_answers, timeout=0.05), http_scope()))
    assert sent[0]["status"] == 504
    body = json.loads(b"".join(m.get("body", b"") for m in sent[1:]))
    assert body["code"] == "timeout" and "0.05 seconds" in body["error"]
    assert cancelled.is_set()


def test_an_answer_that_began_in_time_may_end_after_the_limit():
    async def slow_body(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(0.1)
        await send({"type": "http.response.body", "body": b"late but whole"})

    sent = asyncio.run(call(ResponseDeadline(slow_body, timeout=0.02), http_scope()))
    assert sent[0]["status"] == 200 and sent[1]["body"] == b"late but whole"


def test_a_handler_error_surfaces_at_once_not_after_the_limit():
    async def fails(scope, receive, send) -> None:
        raise RuntimeError("handler bug")

    async def main() -> None:
        # BentoML's middleware waits out its whole limit here and then drops the error.
        await asyncio.wait_for(call(ResponseDeadline(fails, timeout=3600), http_scope()), 10)

    with pytest.raises(RuntimeError, match="handler bug"):
        asyncio.run(main())


def test_lifespan_passes_through():
    seen = []

    async def app(scope, receive, send) -> None:
        seen.append(scope["type"])

    asyncio.run(call(ResponseDeadline(app, timeout=1), {"type": "lifespan"}))
    assert seen == ["lifespan"]
