"""Adaptive batching inside one process: one ``Batcher`` per served model.

A request's images join the model's queue. Whenever the model is free, everything queued (whole
requests, up to ``max_batch_size`` images) goes into one onnxruntime call on the model's own thread,
so a lone client waits for nobody and batches grow with the load, as in BentoML's dispatcher, but
without its inter-process hop (docs/decisions/017-serving-path.md). onnxruntime releases the GIL
while it runs, so the event loop reads, checks and decodes the next requests meanwhile.

A request that would wait longer than ``max_latency_s`` for its answer (what is left of the batch
running, then every image queued before it and its own, at the recent time per image) is not
queued: ``QueueFull``, which the service answers 503. On the CPU a batch costs about its images
times one image's cost (docs/decisions/017-serving-path.md), so images, not batches, are counted.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)
SMOOTHING = 0.2  # weight of the newest batch in the running mean of seconds per image


class QueueFull(Exception):
    """The request would wait past the model's ``max_latency_s``: it was not queued."""


@dataclass(slots=True)
class _Waiting:
    images: np.ndarray
    answer: asyncio.Future


@dataclass(frozen=True)
class BatchDone:
    """What one onnxruntime call did, for the caller's metrics."""

    images: int
    requests: int
    seconds: float


class Batcher:
    def __init__(self, run: Callable[[np.ndarray], np.ndarray], max_batch_size: int, max_latency_s: float,
                 name: str = "model", on_batch: Callable[[BatchDone], None] | None = None,
                 seconds_per_image: float = 0.0) -> None:
        self._run, self.max_batch_size, self.max_latency_s = run, max_batch_size, max_latency_s
        self.name, self._on_batch = name, on_batch
        self._queue: deque[_Waiting] = deque()
        self._queued_images = 0
        self._busy = False
        self._running_images, self._running_since = 0, 0.0
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"batch-{name}")
        self.seconds_per_image = seconds_per_image  # running mean, seeded by the warm-up

    @property
    def queued_images(self) -> int:
        return self._queued_images

    def predicted_wait_s(self, images: int) -> float:
        """How long ``images`` more would wait for their answer: the rest of the running batch, then
        every queued image and their own."""
        left = 0.0
        if self._busy:
            left = max(0.0, self._running_images * self.seconds_per_image - (time.perf_counter() - self._running_since))
        return left + (self._queued_images + images) * self.seconds_per_image

    async def infer(self, images: np.ndarray) -> np.ndarray:
        """Logits of ``images`` (N, C, H, W), computed in a batch with whatever else is queued."""
        if self._busy and self.predicted_wait_s(len(images)) > self.max_latency_s:
            raise QueueFull(f"{self._queued_images} images queued for {self.name}, "
                            f"~{self.predicted_wait_s(len(images)) * 1000:.0f} ms of work")
        loop = asyncio.get_running_loop()
        waiting = _Waiting(images, loop.create_future())
        self._queue.append(waiting)
        self._queued_images += len(images)
        if not self._busy:
            self._start_batch(loop)
        return await waiting.answer

    def _start_batch(self, loop: asyncio.AbstractEventLoop) -> None:
        taken: list[_Waiting] = []
        size = 0
        while self._queue and (not taken or size + len(self._queue[0].images) <= self.max_batch_size):
            waiting = self._queue.popleft()
            self._queued_images -= len(waiting.images)
            if not waiting.answer.cancelled():  # its client is gone: nothing to compute
                taken.append(waiting)
                size += len(waiting.images)
        if not taken:
            self._busy = False
            return
        self._busy = True
        batch = taken[0].images if len(taken) == 1 else np.concatenate([w.images for w in taken])
        started = time.perf_counter()
        self._running_images, self._running_since = len(batch), started
        done = self._thread.submit(self._run, batch)
        done.add_done_callback(lambda f: loop.call_soon_threadsafe(self._finish, loop, taken, f, started))

    def _finish(self, loop: asyncio.AbstractEventLoop, taken: list[_Waiting], done: Future,
                started: float) -> None:
        seconds = time.perf_counter() - started
        images = sum(len(w.images) for w in taken)
        self.seconds_per_image += SMOOTHING * (seconds / images - self.seconds_per_image)
        error = done.exception()
        if error is not None:
            log.error("%s: a batch of %d requests failed: %s", self.name, len(taken), error)
        logits = None if error is not None else done.result()
        at = 0
        for waiting in taken:
            n = len(waiting.images)
            if not waiting.answer.done():  # cancelled meanwhile: its client is gone
                if logits is None:
                    waiting.answer.set_exception(error)
                else:
                    waiting.answer.set_result(logits[at:at + n])
            at += n
        if self._on_batch is not None:
            try:
                self._on_batch(BatchDone(images, len(taken), seconds))
            except Exception:  # a metrics hook must not leave the batcher busy for good
                log.exception("%s: on_batch failed", self.name)
        self._busy = False
        if self._queue:
            self._start_batch(loop)

    def close(self) -> None:
        self._thread.shutdown(wait=True)
