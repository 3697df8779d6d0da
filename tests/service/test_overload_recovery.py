"""How bench.reliability.overload decides when the service recovered, on made-up outcomes (no server)."""
from __future__ import annotations

import json

from bench.aio_http import Outcome
from bench.reliability.overload import last_slow_answer_s, recovery_seconds

GOOD_BODY = json.dumps({"model": "m", "trained": True,
                        "predictions": [{"label": "a", "class_index": 0, "probability": 0.9}]}).encode()


def answer(sent: float, latency: float, status: int = 200) -> Outcome:
    body = GOOD_BODY if status == 200 else b'{"error": "busy", "code": "overloaded"}'
    return Outcome(sent, latency, status, {"content-type": "application/json"}, body)


def probe(spec: list[tuple[float, float, int]]) -> list[Outcome]:
    return [answer(*s) for s in spec]


def test_recovered_from_the_first_window_after_the_backlog():
    # 0-1 s: a backlog (slow) and a 503; from 1.0 s on: fast answers.
    p = probe([(t / 10, 0.5, 200) for t in range(5)] + [(0.6, 0.01, 503), (0.8, 0.5, 200)]
              + [(1 + t / 10, 0.02, 200) for t in range(40)])
    assert recovery_seconds(p, healthy_s=0.06, window_s=0.5) == 1.0


def test_one_slow_answer_in_a_window_does_not_undo_recovery():
    fast = [(t / 10, 0.02, 200) for t in range(50)]
    fast[30] = (3.0, 0.4, 200)  # one garbage-collection pause
    assert recovery_seconds(probe(fast), healthy_s=0.06, window_s=0.5) == 0.0
    assert last_slow_answer_s(probe(fast), slow_s=0.2) == 3.0


def test_a_503_late_in_the_probe_delays_recovery_to_after_it():
    spec = [(t / 10, 0.02, 200) for t in range(50)]
    spec[31] = (3.1, 0.002, 503)
    assert recovery_seconds(probe(spec), healthy_s=0.06, window_s=0.5) == 3.5


def test_never_recovered_when_the_last_window_is_slow():
    spec = [(t / 10, 0.02, 200) for t in range(40)] + [(4 + t / 10, 0.5, 200) for t in range(10)]
    assert recovery_seconds(probe(spec), healthy_s=0.06, window_s=0.5) is None
    assert recovery_seconds([], healthy_s=0.06) is None


def test_no_slow_answer_at_all():
    assert last_slow_answer_s(probe([(t / 10, 0.02, 200) for t in range(10)]), slow_s=0.2) is None
