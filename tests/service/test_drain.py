"""Shutdown helpers of service/drain.py, without a server: the engine's wait until idle and the
``Connection: close`` that API workers add to responses once SIGTERM has come (the SIGTERM
handlers themselves: test_bentoml_compat.py)."""
from __future__ import annotations

import asyncio
import threading
import time

from service.drain import Activity, close_when_shutting_down, wait_until_idle


def run_send(event: threading.Event, message: dict) -> list[dict]:
    sent: list[dict] = []

    async def send(m: dict) -> None:
        sent.append(m)

    asyncio.run(close_when_shutting_down(send, event)(message))
    return sent


START = {"type": "http.response.start", "status": 200,
         "headers": [(b"content-type", b"application/json"), (b"Connection", b"keep-alive")]}


def test_responses_keep_their_headers_before_sigterm():
    assert run_send(threading.Event(), START) == [START]


def test_responses_begun_after_sigterm_close_the_connection():
    event = threading.Event()
    event.set()
    [sent] = run_send(event, START)
    assert sent["status"] == 200
    assert sent["headers"] == [(b"content-type", b"application/json"), (b"connection", b"close")]
    body = {"type": "http.response.body", "body": b"{}"}
    assert run_send(event, body) == [body]  # only the start of a response carries headers


def test_wait_until_idle_returns_once_quiet_or_at_the_limit():
    idle = Activity()
    idle.last = time.monotonic() - 1.0
    assert wait_until_idle(idle, quiet_s=0.5, max_s=10) < 0.5  # quiet already
    busy = Activity()
    busy.inflight = 1
    assert 0.2 <= wait_until_idle(busy, quiet_s=0.05, max_s=0.2) < 2  # never quiet: the limit
