"""Hands the C allocator's free pages back to the system now and then, so that a worker's resident
memory stays flat over weeks of serving.

Under steady load each API worker's resident memory rose 24-54 MiB an hour while its live native
allocations (heaptrack) and Python objects (tracemalloc) stayed flat: the growth is free memory
glibc keeps in the main heap between live blocks, which it returns only from the heap's top.
``malloc_trim(0)`` also returns the free pages inside the heap (docs/decisions/018-malloc-trim.md).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading

log = logging.getLogger(__name__)


def _libc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


class PeriodicTrim:
    """A daemon thread calling ``malloc_trim(0)`` every ``interval_s`` seconds until ``stop``. ctypes
    drops the GIL for the call (a few ms on a worker's heap), so the event loop runs on meanwhile."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.trims = 0
        self._malloc_trim = _libc_trim()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="malloc-trim", daemon=True)

    @property
    def available(self) -> bool:
        return self._malloc_trim is not None

    def start(self) -> PeriodicTrim:
        if self.interval_s <= 0:
            return self
        if not self.available:
            log.info("malloc_trim is not in this C library; resident memory is left to the allocator")
            return self
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._malloc_trim(0)
            self.trims += 1

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
