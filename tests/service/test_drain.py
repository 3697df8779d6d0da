"""Shutdown helpers of service/drain.py, without a server: the SIGTERM wrappers and the
``Connection: close`` that API workers add to responses once SIGTERM has come."""
from __future__ import annotations

import asyncio
import signal
import threading

import pytest

from service.drain import close_when_shutting_down, note_sigterm


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


@pytest.fixture
def sigterm_handler():
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


def test_note_sigterm_sets_the_flag_and_still_calls_the_server_handler(sigterm_handler, monkeypatch):
    import service.drain as drain

    flag = threading.Event()
    monkeypatch.setattr(drain, "SHUTTING_DOWN", flag)
    calls = []
    signal.signal(signal.SIGTERM, lambda sig, frame: calls.append(sig))
    assert note_sigterm()
    signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
    assert flag.is_set() and calls == [signal.SIGTERM]


def test_note_sigterm_changes_nothing_without_a_server_handler(sigterm_handler):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    assert not note_sigterm()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
