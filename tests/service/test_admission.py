"""The adaptive admission limit (service/admission.py), on a fake clock: no server, no timing."""
from __future__ import annotations

import asyncio

import pytest

from service.admission import AdaptiveLimit, AdmissionGate


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


# ---- AdmissionGate: waiting for a slot, on a real event loop (no server) -----------------------

def gate(cap: int = 2, wait_s: float = 0.0, max_waiting: int = 2) -> AdmissionGate:
    return AdmissionGate(AdaptiveLimit(max_limit=cap, target_s=0.0, min_limit=1), wait_s=wait_s, max_waiting=max_waiting)


def test_without_a_wait_the_request_over_the_cap_is_refused_at_once():
    async def main():
        g = gate(cap=2)
        return [await g.enter() for _ in range(3)], g.inflight

    assert asyncio.run(main()) == ([True, True, False], 2)


def test_a_waiting_request_gets_the_slot_a_leaving_one_frees():
    async def main():
        g = gate(cap=1, wait_s=30, max_waiting=2)
        assert await g.enter()
        waiter = asyncio.create_task(g.enter())
        await asyncio.sleep(0)
        assert g.waiting == 1 and not waiter.done()
        g.leave(0.01)
        return await waiter, g.inflight, g.waiting

    assert asyncio.run(main()) == (True, 1, 0)


def test_waiters_are_served_first_come_first_served_and_newcomers_queue_behind_them():
    async def main():
        g = gate(cap=1, wait_s=30, max_waiting=3)
        assert await g.enter()
        order = []

        async def client(name: str):
            if await g.enter():
                order.append(name)

        tasks = [asyncio.create_task(client(n)) for n in "abc"]
        await asyncio.sleep(0)
        for _ in range(3):
            g.leave(0.01)
            await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        return order

    assert asyncio.run(main()) == ["a", "b", "c"]


def test_no_slot_within_the_wait_is_a_refusal_and_leaves_no_trace():
    async def main():
        g = gate(cap=1, wait_s=0.01, max_waiting=2)
        assert await g.enter()
        refused = not await g.enter()
        g.leave(0.01)  # nobody left waiting: the slot is free again
        return refused, g.waiting, g.inflight, await g.enter()

    assert asyncio.run(main()) == (True, 0, 0, True)


def test_at_most_max_waiting_wait_the_next_is_refused_at_once():
    async def main():
        g = gate(cap=1, wait_s=30, max_waiting=2)
        assert await g.enter()
        waiters = [asyncio.create_task(g.enter()) for _ in range(2)]
        await asyncio.sleep(0)
        refused_at_once = not await g.enter()
        for _ in range(3):
            g.leave(0.01)
            await asyncio.sleep(0)
        return refused_at_once, await asyncio.gather(*waiters), g.inflight

    assert asyncio.run(main()) == (True, [True, True], 0)


def test_a_cancelled_waiter_gives_up_its_place():
    async def main():
        g = gate(cap=1, wait_s=30, max_waiting=2)
        assert await g.enter()
        first = asyncio.create_task(g.enter())
        second = asyncio.create_task(g.enter())
        await asyncio.sleep(0)
        first.cancel()  # its client went away
        await asyncio.sleep(0)
        g.leave(0.01)
        return await second, first.cancelled(), g.inflight, g.waiting

    assert asyncio.run(main()) == (True, True, 1, 0)
