"""Where the models run, chosen by one setting (``RESNET_TOPOLOGY``, service/config.py):

* ``per-worker``: each API worker loads every served model and batches its own clients' requests
  in-process (service/batcher.py). No hop between processes; the CPU default
  (docs/decisions/017-serving-path.md).
* ``shared-engine``: one Engine process owns the models (on a GPU: the one device) and BentoML's
  adaptive batching forms batches across every API worker's requests; the workers send it ready
  tensors over loopback HTTP. The CUDA default until the GPU check (bench/gpu) measures both.

Both give the API the same two calls: ``infer`` (a model's logits for ready tensors, or a
``ClientError`` the service answers with) and ``describe`` (what each model runs on).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from service.batcher import Batcher, QueueFull
from service.catalog import ServedModel
from service.config import ServiceConfig
from service.engine import EngineOptions, OnnxEngine
from service.errors import ClientError, overloaded
from service.metrics import BATCH_SIZE, INFERENCE_SECONDS

log = logging.getLogger("bentoml.resnet_serving")
PER_WORKER, SHARED_ENGINE = "per-worker", "shared-engine"
TOPOLOGIES = (PER_WORKER, SHARED_ENGINE)


def resolve_topology(setting: str, on_cuda: bool) -> str:
    """``auto``: per-worker on the CPU, where it measured best; shared-engine on a GPU (one device
    for every worker) until the GPU check has measured the two there."""
    if setting != "auto":
        return setting
    return SHARED_ENGINE if on_cuda else PER_WORKER


@dataclass(frozen=True)
class Runtime:
    """What one served model runs on, as ``GET /models`` shows it."""

    provider: str
    precision: str
    buckets: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"provider": self.provider, "precision": self.precision, "buckets": list(self.buckets)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Runtime:
        return cls(str(data["provider"]), str(data["precision"]), tuple(data["buckets"]))


class Models(Protocol):
    async def infer(self, served: ServedModel, images: np.ndarray) -> np.ndarray: ...

    async def describe(self) -> dict[str, Runtime]: ...


def queue_full(served: ServedModel, config: ServiceConfig) -> ClientError:
    """503: the model's queue would make this request wait past its max_latency_ms."""
    limit = config.batch_settings(served.name).max_latency_ms
    return overloaded(f"the model queue is full (over {limit} ms); retry after {config.retry_after_s} s",
                      config.retry_after_s)


def engine_unavailable(config: ServiceConfig, reason: Exception) -> ClientError:
    log.warning("engine unreachable (%s)", reason)
    return overloaded(f"the model engine is unavailable (restarting or shutting down); retry after "
                      f"{config.retry_after_s} s", config.retry_after_s, code="engine_unavailable")


def engine_options(config: ServiceConfig, served: ServedModel, topology: str) -> EngineOptions:
    """The options of ``served``'s session as the service builds it in ``topology`` (the experiments
    time the model alone with these)."""
    _, height, width = served.card.input_shape
    return EngineOptions.from_config(config, served.name, per_worker=topology == PER_WORKER,
                                     input_pixels=height * width)


def load_engine(served: ServedModel, options: EngineOptions) -> OnnxEngine:
    engine = OnnxEngine(served.onnx_path, options)
    seconds = engine.warm_up(served.card.input_shape)
    log.info("%s (%s, %s) loaded and warmed in %.2fs", served.tag, served.precision, engine.provider, seconds)
    return engine


def timed_run(name: str, engine: OnnxEngine) -> Callable[[np.ndarray], np.ndarray]:
    """``engine.infer`` with the inference metrics of each call."""
    def run(images: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        logits = engine.infer(images)
        INFERENCE_SECONDS.labels(name).observe(time.perf_counter() - t0)
        BATCH_SIZE.labels(name).observe(len(images))
        return logits

    return run


class PerWorkerModels:
    """Every served model in this process, each behind its own batcher."""

    def __init__(self, served: list[ServedModel], config: ServiceConfig) -> None:
        self.config = config
        self.engines: dict[str, OnnxEngine] = {}
        self.batchers: dict[str, Batcher] = {}
        for m in served:
            engine = load_engine(m, engine_options(config, m, PER_WORKER))
            own = config.batch_settings(m.name)
            # RESNET_BATCHING=off: one onnxruntime call per request, for measuring batching on against off
            self.batchers[m.name] = Batcher(timed_run(m.name, engine), own.max_batch_size if config.batching else 1,
                                            own.max_latency_ms / 1000, m.name,
                                            seconds_per_image=_seconds_per_image(engine, m))
            self.engines[m.name] = engine
        self.precisions = {m.name: m.precision for m in served}

    async def infer(self, served: ServedModel, images: np.ndarray) -> np.ndarray:
        try:
            return await self.batchers[served.name].infer(images)
        except QueueFull:
            raise queue_full(served, self.config) from None

    async def describe(self) -> dict[str, Runtime]:
        return {name: Runtime(e.provider, self.precisions[name], tuple(e.buckets)) for name, e in self.engines.items()}

    def close(self) -> None:
        for batcher in self.batchers.values():
            batcher.close()


def _seconds_per_image(engine: OnnxEngine, served: ServedModel) -> float:
    """One batch-1 call's time: the batcher's first estimate, before it has timed real batches."""
    x = np.zeros((1, *served.card.input_shape), np.float32)
    t0 = time.perf_counter()
    engine.infer(x)
    return time.perf_counter() - t0


class SharedEngineModels:
    """The models in the Engine process, called through BentoML's client (``bentoml.depends``)."""

    def __init__(self, engine: Any, config: ServiceConfig) -> None:
        self.engine, self.config = engine, config

    async def infer(self, served: ServedModel, images: np.ndarray) -> np.ndarray:
        import aiohttp
        from bentoml.exceptions import ServiceUnavailable

        call = getattr(self.engine.to_async, served.api_name)
        try:
            try:
                return await call(images)
            except aiohttp.ServerDisconnectedError:
                # The engine's HTTP server closed a keep-alive connection just as this worker reused
                # it; inference is idempotent, so one retry on a fresh connection is safe.
                log.info("engine connection was closed under us; retrying once")
                return await call(images)
        except ServiceUnavailable:
            # BentoML's adaptive batching predicted this request would wait past max_latency_ms
            # and shed it: the client's request was fine, so a 503 it may retry, not a 500.
            raise queue_full(served, self.config) from None
        except aiohttp.ClientConnectionError as e:
            raise engine_unavailable(self.config, e) from None

    async def describe(self) -> dict[str, Runtime]:
        import aiohttp

        try:
            described = await self.engine.to_async.describe()
        except aiohttp.ClientConnectionError as e:
            raise engine_unavailable(self.config, e) from None
        return {name: Runtime.from_dict(d) for name, d in described.items()}

    def close(self) -> None:
        pass
