"""How many classify requests one API worker admits at once: a fixed cap, optionally tightened
while the requests it admitted take too long (it shrinks and grows multiplicatively on their mean
time in the worker). Off by default (``RESNET_ADMIT_TARGET_MS=0``).

Why it exists: a cap high enough for a burst of well-behaved clients (connections do not spread
evenly over the workers, so one worker may hold all of them) lets an overloaded worker hold that
many requests. Measured on the 2-core CPU machine with the overload benchmark's load, before the
request guard moved outside BentoML's middleware and the garbage collector was tuned: at 4x the
saturation rate, 24 per worker gave accepted p99 of 1.0-1.8 s, 12 per worker 0.6-0.8 s but refused
5-9% of 16 closed-loop clients at saturation, and this limit with a 150 ms target 0.74-0.81 s
without refusing them. After those two changes the fixed cap alone meets the service's latency
budget (``python -m service.overload_bench``: accepted p99 452 ms with the cap, 365 ms with a
150 ms target, in adjacent runs), and one target for every served model would shed the clients
of a slow one, so it is off unless asked for.

The worker is one asyncio event loop, so no lock: every call comes from that loop.
"""
from __future__ import annotations

import time
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
