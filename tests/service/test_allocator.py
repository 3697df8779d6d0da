"""service/allocator.py: free heap pages handed back to the system."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import pytest

from service.allocator import PeriodicTrim

pytestmark = pytest.mark.skipif(not PeriodicTrim(1).available, reason="the C library has no malloc_trim (not glibc)")


def test_trims_repeatedly_until_stopped():
    trim = PeriodicTrim(0.01).start()
    try:
        done = threading.Event()
        for _ in range(500):  # until it has trimmed twice, whatever the machine's speed
            if trim.trims >= 2:
                break
            done.wait(0.01)
        assert trim.trims >= 2
    finally:
        trim.stop()
    after = trim.trims
    done.wait(0.05)
    assert trim.trims == after


def test_an_interval_of_0_starts_no_thread():
    trim = PeriodicTrim(0).start()
    assert not trim._thread.is_alive() and trim.trims == 0
    trim.stop()


def test_a_trim_returns_free_pages_held_between_live_blocks():
    # 100 MiB of 2 KiB blocks (malloc'd, not pymalloc's), one in 64 kept: the freed space lies between
    # live blocks, so glibc does not return it by itself; one trim does.
    script = textwrap.dedent("""
        import psutil, time
        from service.allocator import PeriodicTrim
        rss = lambda: psutil.Process().memory_info().rss / 2**20
        blocks = [bytes(2048) for _ in range(51_200)]
        kept = blocks[::64]
        del blocks
        before = rss()
        trim = PeriodicTrim(0.01).start()
        while trim.trims < 1:
            time.sleep(0.01)
        trim.stop()
        print(before, rss(), len(kept))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    before, after = float(out[0]), float(out[1])
    assert before - after > 50, f"resident {before:.0f} MiB before the trim, {after:.0f} MiB after"
