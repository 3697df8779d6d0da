"""service/batcher.py: in-process adaptive batching, with a fake model whose answer row is each
image's first three values (so every row can be traced back to its image). A batch is held on the
model's thread by a threading.Event, so what queues meanwhile is decided by the test, not by timing."""
from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from service.batcher import BatchDone, Batcher, QueueFull

WAIT_S = 10  # a generous bound on every wait: a broken batcher fails the test, never hangs it


class FakeModel:
    """``run`` for a Batcher: records each batch's shape and answers one traceable row per image.
    A batch the test holds (``hold(i)``: the i-th call, from 0) waits on the model's thread until
    released; ``started[i]`` tells the test the i-th call has begun."""

    def __init__(self, fail_on: float | None = None) -> None:
        self.shapes: list[tuple[int, ...]] = []
        self.gates: dict[int, threading.Event] = {}
        self.started = [threading.Event() for _ in range(64)]
        self.fail_on = fail_on  # a batch holding an image of this value raises

    def hold(self, batch: int) -> None:
        self.gates[batch] = threading.Event()

    def release(self, batch: int = 0) -> None:
        self.gates[batch].set()

    def release_all(self) -> None:
        for gate in self.gates.values():
            gate.set()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        i = len(self.shapes)
        self.shapes.append(images.shape)
        self.started[i].set()
        gate = self.gates.get(i)
        if gate is not None:
            assert gate.wait(WAIT_S), "the test never released a held batch"
        if self.fail_on is not None and (images == self.fail_on).any():
            raise RuntimeError("the model failed")
        return images.reshape(len(images), -1)[:, :3].copy()

    @property
    def sizes(self) -> list[int]:
        return [s[0] for s in self.shapes]


class Images:
    """Distinct images of shape (1, 2, 2): the k-th image made holds k*10 .. k*10+3."""

    def __init__(self) -> None:
        self.made = 0

    def __call__(self, n: int) -> np.ndarray:
        start = self.made
        self.made += n
        return (np.arange(start, start + n)[:, None] * 10 + np.arange(4)).astype(np.float32).reshape(n, 1, 2, 2)


def rows(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1)[:, :3]


async def until(condition, what: str) -> None:
    for _ in range(WAIT_S * 1000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"never: {what}")


async def hold_first_batch(batcher: Batcher, model: FakeModel, images: np.ndarray) -> asyncio.Task:
    """Starts a request whose batch (the model's first call) stays on its thread until ``model.release()``."""
    model.hold(0)
    first = asyncio.create_task(batcher.infer(images))
    await until(model.started[0].is_set, "the first batch started")
    return first


async def submit(batcher: Batcher, *requests: np.ndarray) -> list[asyncio.Task]:
    """Queues ``requests`` in this order (each task runs to its first wait before the next starts)."""
    tasks = []
    for images in requests:
        before = batcher.queued_images
        tasks.append(asyncio.create_task(batcher.infer(images)))
        await until(lambda: batcher.queued_images == before + len(images), "the request queued")
    return tasks


def run(main) -> object:
    return asyncio.run(asyncio.wait_for(main(), WAIT_S * 2))


@pytest.fixture
def model():
    m = FakeModel()
    yield m
    m.release_all()  # never leave the model's thread waiting


@pytest.fixture
def batchers():
    made: list[Batcher] = []
    yield made
    for b in made:
        b.close()


def make(batchers: list[Batcher], model: FakeModel, max_batch_size: int = 8, max_latency_s: float = 3600,
         **kwargs) -> Batcher:
    b = Batcher(model, max_batch_size, max_latency_s, name="fake", **kwargs)
    batchers.append(b)
    return b


def test_a_lone_request_runs_alone_at_once(model, batchers):
    batcher, images = make(batchers, model), Images()
    x = images(1)
    answer = run(lambda: batcher.infer(x))
    assert model.sizes == [1]
    np.testing.assert_array_equal(answer, rows(x))
    assert batcher.queued_images == 0


def test_requests_that_arrive_while_a_batch_runs_share_the_next_batch(model, batchers):
    batcher, images = make(batchers, model), Images()
    a, b, c, d = images(1), images(2), images(1), images(3)

    async def main():
        first = await hold_first_batch(batcher, model, a)
        waiting = await submit(batcher, b, c, d)
        assert model.sizes == [1] and batcher.queued_images == 6  # nothing runs beside the held batch
        model.release()
        return await asyncio.gather(first, *waiting)

    answers = run(main)
    assert model.sizes == [1, 6]  # b, c and d in one call, in arrival order
    for request, answer in zip((a, b, c, d), answers):
        np.testing.assert_array_equal(answer, rows(request))  # its own rows, in order
    assert batcher.queued_images == 0


def test_max_batch_size_takes_whole_requests_in_order(model, batchers):
    batcher, images = make(batchers, model, max_batch_size=4), Images()
    requests = [images(2), images(2), images(3), images(1)]

    async def main():
        first = await hold_first_batch(batcher, model, images(1))
        waiting = await submit(batcher, *requests)
        model.release()
        await first
        return await asyncio.gather(*waiting)

    answers = run(main)
    assert model.sizes == [1, 4, 4]  # 2+2 (the 3 does not fit), then 3+1; no request split
    for request, answer in zip(requests, answers):
        np.testing.assert_array_equal(answer, rows(request))


def test_a_request_over_max_batch_size_runs_alone_and_whole(model, batchers):
    batcher, images = make(batchers, model, max_batch_size=4), Images()
    big, small = images(6), images(1)

    async def main():
        first = await hold_first_batch(batcher, model, images(1))
        waiting = await submit(batcher, big, small)
        model.release()
        await first
        return await asyncio.gather(*waiting)

    answer_big, answer_small = run(main)
    assert model.sizes == [1, 6, 1]
    np.testing.assert_array_equal(answer_big, rows(big))
    np.testing.assert_array_equal(answer_small, rows(small))
    lone = images(9)
    np.testing.assert_array_equal(run(lambda: batcher.infer(lone)), rows(lone))  # idle: at once, whole
    assert model.sizes[-1] == 9


def test_a_cancelled_request_is_skipped_and_the_others_answered(model, batchers):
    batcher, images = make(batchers, model), Images()
    b, c, d = images(2), images(3), images(1)

    async def main():
        first = await hold_first_batch(batcher, model, images(1))
        tb, tc, td = await submit(batcher, b, c, d)
        tc.cancel()  # its client went away while it was queued
        model.release()
        await first
        answers = await asyncio.gather(tb, td)
        with pytest.raises(asyncio.CancelledError):
            await tc
        return answers

    answer_b, answer_d = run(main)
    assert model.sizes == [1, 3]  # b and d only: c's images never reach the model
    np.testing.assert_array_equal(answer_b, rows(b))
    np.testing.assert_array_equal(answer_d, rows(d))
    assert batcher.queued_images == 0


def test_a_request_cancelled_while_its_batch_runs_leaves_the_others_their_answers(model, batchers):
    batcher, images = make(batchers, model), Images()
    a, b = images(1), images(2)

    async def main():
        first = await hold_first_batch(batcher, model, images(1))
        model.hold(1)
        ta, tb = await submit(batcher, a, b)
        model.release(0)
        await until(model.started[1].is_set, "the batch of a and b started")
        tb.cancel()  # b's client leaves while its batch is on the model
        await asyncio.sleep(0)
        model.release(1)
        await first
        answer = await ta
        with pytest.raises(asyncio.CancelledError):
            await tb
        return answer

    answer = run(main)
    assert model.sizes == [1, 3]
    np.testing.assert_array_equal(answer, rows(a))
    np.testing.assert_array_equal(run(lambda: batcher.infer(b)), rows(b))  # and it still serves


def test_a_failed_batch_fails_each_of_its_requests_and_the_next_batch_runs(batchers):
    model = FakeModel(fail_on=40.0)  # the fifth image made
    done: list[BatchDone] = []
    batcher, images = make(batchers, model, on_batch=done.append), Images()
    a, b, c = images(1), images(3), images(2)  # c holds the images 40.. and 50..

    async def main():
        try:
            first = await hold_first_batch(batcher, model, a)
            waiting = await submit(batcher, b, c)
            model.release()
            return await asyncio.gather(first, *waiting, return_exceptions=True)
        finally:
            model.release_all()

    answer_a, error_b, error_c = run(main)
    np.testing.assert_array_equal(answer_a, rows(a))
    assert model.sizes == [1, 5]
    for error in (error_b, error_c):  # b was fine, but it shared c's batch: both learn why
        assert isinstance(error, RuntimeError) and str(error) == "the model failed"
    assert [(d.images, d.requests) for d in done] == [(1, 1), (5, 2)]
    after = images(2)
    np.testing.assert_array_equal(run(lambda: batcher.infer(after)), rows(after))
    assert model.sizes == [1, 5, 2] and batcher.queued_images == 0


# The time per image is seeded far above anything the test takes (100 s), so that the time a held
# batch has already run (milliseconds) cannot change a prediction's side of the limit.
SLOW = 100.0


def test_queue_full_when_the_predicted_wait_is_over_the_limit(model, batchers):
    batcher = make(batchers, model, max_batch_size=4, max_latency_s=2.5 * SLOW, seconds_per_image=SLOW)
    images = Images()
    a, b, c = images(1), images(1), images(1)

    async def main():
        first = await hold_first_batch(batcher, model, a)
        # what is left of a (~1 image) and b itself: ~2 images' time, within 2.5
        assert 1.9 * SLOW < batcher.predicted_wait_s(1) <= 2 * SLOW
        [tb] = await submit(batcher, b)
        # a, b and c itself: ~3 images' time, over 2.5
        with pytest.raises(QueueFull):
            await batcher.infer(c)
        assert batcher.queued_images == 1  # the refused request was not queued
        model.release()
        return await asyncio.gather(first, tb)

    answer_a, answer_b = run(main)
    np.testing.assert_array_equal(answer_a, rows(a))
    np.testing.assert_array_equal(answer_b, rows(b))
    assert model.sizes == [1, 1]  # c never reached the model


def test_queue_full_counts_the_request_own_images(model, batchers):
    batcher = make(batchers, model, max_batch_size=8, max_latency_s=2.5 * SLOW, seconds_per_image=SLOW)
    images = Images()

    async def main():
        first = await hold_first_batch(batcher, model, images(1))
        with pytest.raises(QueueFull):  # nothing queued, but 1 + 3 images' time is over 2.5
            await batcher.infer(images(3))
        small = images(1)
        [ts] = await submit(batcher, small)  # 1 + 1: within
        model.release()
        await first
        return small, await ts

    small, answer = run(main)
    np.testing.assert_array_equal(answer, rows(small))
    assert model.sizes == [1, 1]


def test_never_queue_full_when_idle(model, batchers):
    # a prediction far over the limit, but no batch running: the request runs at once
    batcher = make(batchers, model, max_batch_size=4, max_latency_s=0.001, seconds_per_image=SLOW)
    x = Images()(8)
    assert batcher.predicted_wait_s(8) > batcher.max_latency_s
    np.testing.assert_array_equal(run(lambda: batcher.infer(x)), rows(x))
    assert model.sizes == [8]


def test_on_batch_counts_images_and_requests_of_each_call(model, batchers):
    done: list[BatchDone] = []
    batcher, images = make(batchers, model, on_batch=done.append, seconds_per_image=SLOW), Images()

    async def main():
        first = await hold_first_batch(batcher, model, images(2))
        waiting = await submit(batcher, images(1), images(3), images(1))
        model.release()
        await asyncio.gather(first, *waiting)

    run(main)
    assert [(d.images, d.requests) for d in done] == [(2, 1), (5, 3)]
    assert all(d.seconds >= 0 for d in done)
    assert batcher.seconds_per_image < SLOW  # the estimate learns from the batches timed
