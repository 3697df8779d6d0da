"""A small asyncio HTTP/1.1 client for the reliability benchmarks: open-loop load (requests sent on
a fixed schedule whether or not earlier ones have been answered, which is what overload means) and
closed-loop load, on one core of the load generator.

It sends pre-built request bytes and parses the answer itself, so that it can tell apart what a
library would fold into one exception: a refused connection, a connection closed before any answer
(the request was never taken), a timeout, and a *truncated* answer (headers received, body cut short),
the one outcome a graceful shutdown must never produce.
"""
from __future__ import annotations

import asyncio
import gc
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

# Outcomes that are not an HTTP status.
REFUSED = "refused"  # no connection could be made
NO_RESPONSE = "no_response"  # the connection closed before any byte of an answer
TRUNCATED = "truncated"  # the answer began but its body ended early
TIMEOUT = "timeout"  # no complete answer within the client's timeout
NOT_SENT = "not_sent"  # open loop only: every connection of the generator was busy at the send time
# uvicorn closes a keep-alive connection idle for 5 s; one idle longer than this is not reused, so
# a close that races the next request is never mistaken for the server dropping it.
MAX_IDLE_S = 3.0


@dataclass
class Outcome:
    sent: float  # seconds since the run started, when the request was (to be) sent
    latency: float  # seconds from send to the last byte of the answer (or to the failure)
    status: int | str  # the HTTP status, or one of the outcomes above
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def build_request(path: str, body: bytes, content_type: str, host: str = "127.0.0.1",
                  method: str = "POST", extra: dict[str, str] | None = None,
                  declared_length: int | None = None) -> bytes:
    """The request's bytes, with Content-Length (``declared_length`` to announce more than is
    sent); keep-alive (HTTP/1.1's default)."""
    length = len(body) if declared_length is None else declared_length
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Content-Type: {content_type}",
             f"Content-Length: {length}", *(f"{k}: {v}" for k, v in (extra or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.open = reader, writer, True
        self.last_used = time.perf_counter()

    @classmethod
    async def connect(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 22)
        return cls(reader, writer)

    def close(self) -> None:
        self.open = False
        self.writer.close()

    async def exchange(self, request: bytes) -> tuple[int | str, dict[str, str], bytes]:
        """Sends one request and reads its answer: (status, lower-cased headers, body)."""
        try:
            self.writer.write(request)
            await self.writer.drain()
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            self.close()
            return NO_RESPONSE, {}, b""
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        try:
            if "content-length" in headers:
                body = await self.reader.readexactly(int(headers["content-length"]))
            elif headers.get("transfer-encoding", "").lower() == "chunked":
                body = await self._chunked()
            else:
                body = await self.reader.read()  # delimited by the close
                self.close()
        except (asyncio.IncompleteReadError, ConnectionError):
            self.close()
            return TRUNCATED, headers, b""
        if headers.get("connection", "").lower() == "close":
            self.close()
        self.last_used = time.perf_counter()
        return status, headers, body

    async def _chunked(self) -> bytes:
        parts = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self.reader.readuntil(b"\r\n")
                return b"".join(parts)
            parts.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)


async def send_one(host: str, port: int, request: bytes, timeout: float, conn: Connection | None = None,
                   t0: float = 0.0) -> tuple[Outcome, Connection | None]:
    """One request on ``conn`` (or a new connection); the connection comes back if still usable."""
    start = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            if conn is not None and conn.open and start - conn.last_used > MAX_IDLE_S:
                conn.close()
            if conn is None or not conn.open:
                try:
                    conn = await Connection.connect(host, port)
                except OSError:
                    return Outcome(start - t0, time.perf_counter() - start, REFUSED), None
            status, headers, body = await conn.exchange(request)
    except TimeoutError:
        if conn is not None:
            conn.close()
        return Outcome(start - t0, time.perf_counter() - start, TIMEOUT), None
    outcome = Outcome(start - t0, time.perf_counter() - start, status, headers, body)
    return outcome, conn if conn.open else None


async def open_loop(host: str, port: int, request: Callable[[int], bytes], rate: float, seconds: float,
                    max_connections: int = 512, timeout: float = 30.0) -> list[Outcome]:
    """Sends request ``i`` at ``i / rate`` seconds, for ``seconds``, each on an idle keep-alive
    connection (a new one when none is idle, up to ``max_connections``; beyond that the send is
    recorded as NOT_SENT: the generator's limit, not the server's answer). Idle connections are
    taken in turn, oldest first, so the load spreads over all of them (and so over every API
    worker that accepted one) as many independent clients' would. Waits for the answers of
    everything sent."""
    idle: deque[Connection] = deque()
    busy = 0
    outcomes: list[Outcome] = []
    tasks: set[asyncio.Task] = set()
    t0 = time.perf_counter()

    async def one(i: int, conn: Connection | None) -> None:
        nonlocal busy
        outcome, conn = await send_one(host, port, request(i), timeout, conn, t0)
        outcomes.append(outcome)
        busy -= 1
        if conn is not None:
            idle.append(conn)

    n = int(rate * seconds)
    freeze_every = max(1, int(rate))  # about once a second
    try:
        for i in range(n):
            if i % freeze_every == 0:
                # The outcomes kept so far are never garbage; frozen, the generator's collector stops
                # traversing them. Unfrozen, its full collections grew with the run (147 ms after 4
                # minutes at 232 requests/s, measured), and each sent the requests due meanwhile in
                # one burst the server saw as a load spike the schedule does not have.
                gc.freeze()
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if not idle and busy >= max_connections:
                outcomes.append(Outcome(i / rate, 0.0, NOT_SENT))
                continue
            busy += 1
            task = asyncio.create_task(one(i, idle.popleft() if idle else None))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(list(tasks))
    finally:
        gc.unfreeze()
        for conn in idle:
            conn.close()
    return outcomes


async def closed_loop(host: str, port: int, request: Callable[[int], bytes], clients: int, seconds: float,
                      timeout: float = 60.0) -> list[Outcome]:
    """``clients`` concurrent loops, each sending its next request when its last was answered."""
    outcomes: list[Outcome] = []
    t0 = time.perf_counter()
    deadline = t0 + seconds

    async def client(c: int) -> None:
        conn, i = None, c * 7919
        while time.perf_counter() < deadline:
            outcome, conn = await send_one(host, port, request(i), timeout, conn, t0)
            outcomes.append(outcome)
            i += 1
        if conn is not None:
            conn.close()

    await asyncio.gather(*(client(c) for c in range(clients)))
    return outcomes
