"""The reliability tests count truncated answers and requests not taken (bench/aio_http.py):
here a throwaway server misbehaves on purpose, so those counts are shown to be able to be non-zero."""
from __future__ import annotations

import asyncio

import pytest

from bench.aio_http import NO_RESPONSE, REFUSED, TRUNCATED, build_request, send_one
from loadtests.http_load import free_port


def _serve_once(reply: bytes):
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply)
        await writer.drain()
        writer.close()

    return handle


@pytest.mark.parametrize("reply,outcome", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 40, TRUNCATED),  # body cut short
    (b"", NO_RESPONSE),  # closed before any byte of an answer
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", 200),
])
def test_outcomes(reply, outcome):
    async def run():
        server = await asyncio.start_server(_serve_once(reply), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            got, _ = await send_one("127.0.0.1", port, build_request("/x", b"", "text/plain"), 5.0)
        return got

    assert asyncio.run(run()).status == outcome


def test_refused():
    got, conn = asyncio.run(send_one("127.0.0.1", free_port(), build_request("/x", b"", "text/plain"), 5.0))
    assert got.status == REFUSED and conn is None
