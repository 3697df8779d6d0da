"""The adaptive admission limit (service/admission.py), on a fake clock: no server, no timing."""
from __future__ import annotations

import pytest

from service.admission import AdaptiveLimit


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def finish_window(limit: AdaptiveLimit, clock: FakeClock, seconds: float, requests: int = 5) -> None:
    """``requests`` admitted requests that each took ``seconds``, spread over one window."""
    for _ in range(requests):
        clock.now += limit.window_s / requests
        limit.record(seconds)


def test_starts_at_the_cap_and_admits_below_it():
    limit = AdaptiveLimit(max_limit=24, target_s=0.15, clock=FakeClock())
    assert limit.current == 24
    assert limit.admits(23)
    assert not limit.admits(24)


def test_slow_windows_shrink_it_down_to_the_floor_and_no_further():
    clock = FakeClock()
    limit = AdaptiveLimit(max_limit=24, target_s=0.15, min_limit=2, backoff=0.8, clock=clock)
    finish_window(limit, clock, 0.3)
    assert limit.current == int(24 * 0.8)
    for _ in range(30):
        finish_window(limit, clock, 0.3)
    assert limit.current == 2
    assert limit.admits(1) and not limit.admits(2)


def test_fast_windows_grow_it_back_to_the_cap_and_no_further():
    clock = FakeClock()
    limit = AdaptiveLimit(max_limit=24, target_s=0.15, min_limit=2, growth=1.25, clock=clock)
    for _ in range(30):
        finish_window(limit, clock, 0.3)
    assert limit.current == 2
    windows = 0
    while limit.current < 24:
        finish_window(limit, clock, 0.05)
        windows += 1
    assert windows <= 12  # from the floor to the cap in about 3 s of 0.25 s windows
    finish_window(limit, clock, 0.05)
    assert limit.current == 24


def test_the_window_mean_decides_not_one_slow_request():
    clock = FakeClock()
    limit = AdaptiveLimit(max_limit=24, target_s=0.15, clock=clock)
    for seconds in (0.05, 0.05, 0.05, 0.05, 0.3):  # mean 0.1 s: under the target
        clock.now += limit.window_s / 5
        limit.record(seconds)
    assert limit.current == 24


def test_nothing_changes_within_a_window():
    clock = FakeClock()
    limit = AdaptiveLimit(max_limit=24, target_s=0.15, window_s=0.25, clock=clock)
    for _ in range(10):
        clock.now += 0.01
        limit.record(1.0)
    assert limit.current == 24
    clock.now += 0.25
    limit.record(1.0)
    assert limit.current < 24


def test_target_zero_keeps_the_cap():
    clock = FakeClock()
    limit = AdaptiveLimit(max_limit=24, target_s=0.0, clock=clock)
    for _ in range(10):
        finish_window(limit, clock, 5.0)
    assert limit.current == 24


@pytest.mark.parametrize("max_limit,min_limit", [(4, 0), (4, 5)])
def test_refuses_a_floor_outside_the_cap(max_limit, min_limit):
    with pytest.raises(ValueError, match="min_limit"):
        AdaptiveLimit(max_limit=max_limit, target_s=0.1, min_limit=min_limit)


def test_the_guard_is_the_outermost_layer_and_counts_what_it_refuses(service_module, asgi_client):
    """RequestGuard wraps BentoML's whole app (so a refusal skips its tracing, metrics and access
    log), and each refusal is counted in resnet_refused_total instead."""
    from service.guard import RequestGuard

    assert isinstance(service_module.Classifier.to_asgi(), RequestGuard)
    counter = service_module.REFUSED.labels("415", "not_multipart")
    before = counter._value.get()
    r = asgi_client.post("/classify", json={"image": None})
    assert r.status_code == 415
    assert r.json()["code"] == "not_multipart"
    assert counter._value.get() == before + 1
