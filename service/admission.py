"""How many classify requests one API worker admits at once (``AdaptiveLimit``: a fixed cap,
optionally tightened while the requests it admitted take too long; off by default,
``RESNET_ADMIT_TARGET_MS=0``), and what happens to the next one (``AdmissionGate``: it waits for a
slot, briefly, or is refused), so that latency under overload stays bounded instead of growing
with a queue (docs/decisions/003-admission-control.md).

The worker is one asyncio event loop, so no lock: every call comes from that loop.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable


class AdaptiveLimit:
    """``limit`` between ``min_limit`` and ``max_limit``; every ``window_s`` the mean time of the
    requests completed in that window decides: above ``target_s`` the limit shrinks by
    ``backoff``, otherwise it grows by ``growth`` (at least by one), so that it is back at the cap
    within about two seconds of an overload ending. ``target_s`` of 0 keeps the limit at ``max_limit``."""

    def __init__(self, max_limit: int, target_s: float, min_limit: int = 2, window_s: float = 0.25,
                 backoff: float = 0.8, growth: float = 1.25, clock: Callable[[], float] = time.monotonic) -> None:
        if not 1 <= min_limit <= max_limit:
            raise ValueError(f"need 1 <= min_limit ({min_limit}) <= max_limit ({max_limit})")
        self.max_limit, self.min_limit, self.target_s = max_limit, min_limit, target_s
        self.window_s, self.backoff, self.growth, self.clock = window_s, backoff, growth, clock
        self.limit = float(max_limit)
        self._total, self._count, self._window_start = 0.0, 0, clock()

    @property
    def current(self) -> int:
        return int(self.limit)

    def admits(self, inflight: int) -> bool:
        """Whether one more request may start while ``inflight`` are in progress."""
        return inflight < self.current

    def record(self, seconds: float) -> None:
        """One admitted request finished after ``seconds`` in this worker."""
        if self.target_s <= 0:
            return
        self._total += seconds
        self._count += 1
        now = self.clock()
        if now - self._window_start < self.window_s:
            return
        mean = self._total / self._count
        if mean > self.target_s:
            self.limit = max(float(self.min_limit), self.limit * self.backoff)
        else:
            self.limit = min(float(self.max_limit), max(self.limit + 1.0, self.limit * self.growth))
        self._total, self._count, self._window_start = 0.0, 0, now


class AdmissionGate:
    """The admission of one API worker: at most ``limit.current`` requests in progress; one that
    finds no slot free waits for one, first come first served, up to ``wait_s``, and is refused
    when none came in time or when ``max_waiting`` requests are already waiting (``wait_s`` 0:
    refused at once). The wait absorbs the brief congestion episodes that pass the cap below
    saturation; bounded in time and in number, it keeps latency under overload bounded
    (docs/decisions/003-admission-control.md)."""

    def __init__(self, limit: AdaptiveLimit, wait_s: float = 0.0, max_waiting: int = 0) -> None:
        self.limit, self.wait_s, self.max_waiting = limit, wait_s, max_waiting
        self.inflight = 0  # admitted and not yet left
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def enter(self) -> bool:
        """True: admitted (call ``leave`` when done). False: refused."""
        if not self._waiters and self.limit.admits(self.inflight):
            self.inflight += 1
            return True
        if self.wait_s <= 0 or len(self._waiters) >= self.max_waiting:
            return False
        slot: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(slot)
        try:
            await asyncio.wait_for(slot, self.wait_s)
            return True  # ``leave`` counted it in ``inflight`` when it handed the slot over
        except TimeoutError:
            return False
        except asyncio.CancelledError:  # the request itself was cancelled
            if slot.done() and not slot.cancelled():
                self.leave(None)  # a slot handed over a moment ago goes to the next one
            raise
        finally:
            if slot in self._waiters:
                self._waiters.remove(slot)

    def leave(self, seconds: float | None) -> None:
        """An admitted request is done, after ``seconds`` in the worker (None: it never ran)."""
        self.inflight -= 1
        if seconds is not None:
            self.limit.record(seconds)
        while self._waiters and self.limit.admits(self.inflight):
            slot = self._waiters.popleft()
            if not slot.done():  # a timed-out waiter's future is already cancelled
                slot.set_result(None)
                self.inflight += 1
