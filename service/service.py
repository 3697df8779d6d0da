"""The HTTP image-classification service: ``bentoml serve`` (see bentofile.yaml).

Two BentoML Services, as BentoML's "Distributed Services" guide suggests for CPU + accelerator work:

* ``Classifier`` (entry, ``RESNET_API_WORKERS`` processes): HTTP API, validation, image decoding
  and preprocessing. Each upload is decoded where it arrives, so decoding runs on every core in
  parallel and a bad upload is refused before it could share a batch with anyone.
* ``Engine`` (one process): owns one onnxruntime session per served model and exposes one
  *batchable* API per model, so BentoML's dispatcher forms batches across clients for each model
  separately. Its APIs take ready float32 tensors.

Why two processes: docs/decisions/001-two-processes-api-and-engine.md.
Configuration: environment variables, all listed in service/config.py.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import bentoml
import numpy as np
from bentoml.exceptions import ServiceUnavailable
from prometheus_client import Counter, Histogram

from service import bentoml_compat, openapi, timing
from service.catalog import ModelUnavailable, ServedModel, resolve_models
from service.config import load_config
from service.deadline import ResponseDeadline
from service.drain import ActivityMiddleware
from service.engine import EngineOptions, OnnxEngine
from service.errors import ClientError, overloaded
from service.guard import RequestGuard
from service.page import Page
from service.preprocess import DecodeLimits, ImageRejected, PreprocessSpec, preprocess
from service.schema import CLASSIFY, CLASSIFY_BATCH, MODELS, check_apis

log = logging.getLogger("bentoml.resnet_serving")  # under "bentoml": shown by bentoml serve
# Here because `bentoml serve` imports this module before it creates sockets or builds any app.
bentoml_compat.listen_on_tcp()
bentoml_compat.replace_timeout_middleware(ResponseDeadline)
try:
    CONFIG = load_config()  # a bad setting (ValueError) is the same one-line exit as a missing model
    # Every process that imports the service (bentoml serve's own, each worker, bentoml build)
    # checks each model file against the sha256 in its metadata before anything loads it.
    SERVED: list[ServedModel] = resolve_models(CONFIG, verify_checksums=True)
except (ValueError, ModelUnavailable) as e:
    # One line and a non-zero exit, not a traceback: raised in a worker, BentoML would log the
    # traceback and respawn the worker forever.
    sys.exit(f"error: cannot start the service: {e}")
BY_NAME = {m.name: m for m in SERVED}
# Full collections over what a worker holds for good (never garbage) were most of the latency tail
# under load, so each worker freezes it once started (docs/decisions/005-garbage-collector.md).
GC_THRESHOLDS = (20_000, 10, 10)  # CPython's defaults: (700, 10, 10)


def _settle_garbage_collector() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


TIME_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)

BATCH_SIZE = Histogram("resnet_batch_size", "Images per onnxruntime call", ["model"],
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
INFERENCE_SECONDS = Histogram("resnet_inference_seconds", "onnxruntime time per batch", ["model"],
                              buckets=TIME_BUCKETS)
PREPROCESS_SECONDS = Histogram("resnet_preprocess_seconds", "Decode + preprocess time per image", ["model"],
                               buckets=TIME_BUCKETS)


# ---- Engine: one batchable API per model -------------------------------------------------------

class _EngineBase:
    def __init__(self) -> None:
        self.served = {m.name: m for m in SERVED}  # checksums verified at import, in this process
        # SIGTERM: keep serving until the API workers' in-flight requests are through.
        bentoml_compat.defer_sigterm(CONFIG.drain_quiet_s, CONFIG.drain_max_s)
        self.engines: dict[str, OnnxEngine] = {}
        for name, served in self.served.items():
            engine = OnnxEngine(served.onnx_path, EngineOptions.from_config(CONFIG, name))  # its own buckets
            seconds = engine.warm_up(served.card.input_shape)
            log.info("%s (%s, %s) loaded and warmed in %.2fs", served.tag, served.precision, engine.provider, seconds)
            self.engines[name] = engine
        _settle_garbage_collector()

    def _run(self, name: str, images: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        logits = self.engines[name].infer(np.ascontiguousarray(images, dtype=np.float32))
        INFERENCE_SECONDS.labels(name).observe(time.perf_counter() - t0)
        BATCH_SIZE.labels(name).observe(len(images))
        return logits

    @bentoml.api
    def describe(self) -> dict[str, Any]:
        """The provider actually in use for each model (onnxruntime falls back to the CPU silently)."""
        return {name: {"provider": e.provider, "precision": self.served[name].precision,
                       "buckets": e.buckets} for name, e in self.engines.items()}


def _batchable_infer(name: str):
    def infer(self, images: np.ndarray) -> np.ndarray:
        return self._run(name, images)

    infer.__name__ = infer.__qualname__ = BY_NAME[name].api_name
    own = CONFIG.batch_settings(name)  # RESNET_MODEL_SETTINGS, else the global defaults
    return bentoml.api(batchable=CONFIG.batching, batch_dim=0, max_batch_size=own.max_batch_size,
                       max_latency_ms=own.max_latency_ms)(infer)


_engine_attrs: dict[str, Any] = {"__module__": __name__}
for _i, _m in enumerate(SERVED):
    _engine_attrs[_m.api_name] = _batchable_infer(_m.name)
    _engine_attrs[f"model_{_i}"] = bentoml.models.BentoModel(_m.tag)  # so `bentoml build` packages it
Engine = bentoml.service(name="resnet-engine", workers=1, traffic={"timeout": 60})(
    type("Engine", (_EngineBase,), _engine_attrs))
Engine.add_asgi_middleware(ActivityMiddleware)
bentoml_compat.cache_media_types(Engine)


# ---- Classifier: the HTTP API ------------------------------------------------------------------

@bentoml.service(name="resnet-classifier", workers=CONFIG.api_workers, traffic={"timeout": 60})
class Classifier:
    engine = bentoml.depends(Engine)

    def __init__(self) -> None:
        bentoml_compat.keep_connections_open(self.engine)
        self.specs = {m.name: PreprocessSpec.from_card(m.card) for m in SERVED}
        self.limits = DecodeLimits(max_bytes=CONFIG.max_image_bytes, max_pixels=CONFIG.max_pixels)
        bentoml_compat.note_sigterm()  # after SIGTERM, responses close their connections
        _settle_garbage_collector()

    @bentoml.api(route=CLASSIFY.path)
    async def classify(self, image: Path, model: str | None = None, top_k: int = 5) -> dict[str, Any]:
        """Classifies one image (multipart field ``image``); ``model`` defaults to the first served."""
        try:
            served, k = self._check(model, top_k)
            x = await self._preprocess(served, image)
            logits = await self._infer(served, x[None])
            return self._result(served, logits[0], k)
        except ClientError as e:
            return e.response()

    @bentoml.api(route=CLASSIFY_BATCH.path)
    async def classify_batch(self, images: list[Path], model: str | None = None, top_k: int = 5) -> dict[str, Any]:
        """Classifies several images (multipart field ``images``, repeated): one result per image, in order."""
        try:
            served, k = self._check(model, top_k)
            if not images:
                raise ClientError("no_images", "field 'images' holds no file")
            if len(images) > CONFIG.max_batch_images:
                raise ClientError("too_many_images",
                                  f"{len(images)} images; at most {CONFIG.max_batch_images} per request")
            tensors = []
            for i, path in enumerate(images):
                try:
                    tensors.append(await self._preprocess(served, path))
                except ClientError as e:
                    raise ClientError(e.code, f"image {i}: {e.message}") from None
            logits = await self._infer(served, np.stack(tensors))
            results = [self._result(served, row, k) for row in logits]
            return {"model": served.name, "trained": served.card.trained,
                    "results": [{"predictions": r["predictions"]} for r in results]}
        except ClientError as e:
            return e.response()

    @bentoml.api(route=MODELS.path)
    async def models(self) -> dict[str, Any]:
        """Every served model: depth, dataset, classes, input size, precision, provider, accuracy, batching."""
        return await self._describe()

    async def _describe(self) -> dict[str, Any]:
        try:
            runtime = await self.engine.to_async.describe()
        except aiohttp.ClientConnectionError as e:
            return self._engine_unavailable(e).response()
        out = []
        for m in SERVED:
            card = m.card
            out.append({
                "name": m.name, "tag": m.tag, "version": m.version, "model": card.model, "depth": card.depth,
                "residual": card.residual, "dataset": card.dataset, "num_classes": card.num_classes, "class_names": list(card.class_names),
                "input_shape": list(card.input_shape), "channel_mode": card.channel_mode,
                "precision": m.precision, "provider": runtime[m.name]["provider"],
                "trained": card.trained, "test_accuracy": card.test_accuracy,
                "default": m.name == CONFIG.default_model,
                "batching": {"enabled": CONFIG.batching, **vars(CONFIG.batch_settings(m.name))},
            })
        return {"models": out}

    # -- helpers --
    def _check(self, model: str | None, top_k: int) -> tuple[ServedModel, int]:
        name = model or CONFIG.default_model
        served = BY_NAME.get(name)
        if served is None:
            shown = name if len(name) <= 64 else name[:64] + "..."
            raise ClientError("unknown_model", f"unknown model {shown!r}; served: {', '.join(BY_NAME)}")
        limit = min(CONFIG.max_top_k, served.card.num_classes)
        if not 1 <= top_k <= limit:
            raise ClientError("bad_top_k", f"top_k must be between 1 and {limit}, got {top_k}")
        return served, top_k

    async def _preprocess(self, served: ServedModel, path: Path) -> np.ndarray:
        size = path.stat().st_size
        if size > CONFIG.max_image_bytes:  # refuse before reading it into memory
            raise ClientError("too_large", f"image is {size} bytes; the limit is {CONFIG.max_image_bytes}")
        t0 = time.perf_counter()
        try:
            # In a thread: decoding must not block this worker's event loop (other clients' requests).
            x = await asyncio.to_thread(lambda: preprocess(path.read_bytes(), self.specs[served.name], self.limits))
        except ImageRejected as e:
            raise ClientError(e.code, e.message) from None
        seconds = time.perf_counter() - t0
        PREPROCESS_SECONDS.labels(served.name).observe(seconds)
        timing.record("preprocess", seconds)  # Server-Timing (service/timing.py)
        return x

    async def _infer(self, served: ServedModel, x: np.ndarray) -> np.ndarray:
        call = timing.timed("model", getattr(self.engine.to_async, served.api_name))
        try:
            try:
                return await call(x)
            except aiohttp.ServerDisconnectedError:
                # The engine's HTTP server closed a keep-alive connection just as this worker reused
                # it; inference is idempotent, so one retry on a fresh connection is safe.
                log.info("engine connection was closed under us; retrying once")
                return await call(x)
        except ServiceUnavailable:
            # The engine's adaptive batching predicted this request would wait past max_latency_ms
            # and shed it: the client's request was fine, so a 503 it may retry, not a 500.
            limit = CONFIG.batch_settings(served.name).max_latency_ms
            raise overloaded(f"the model queue is full (over {limit} ms); "
                             f"retry after {CONFIG.retry_after_s} s", CONFIG.retry_after_s) from None
        except aiohttp.ClientConnectionError as e:
            raise self._engine_unavailable(e) from None

    @staticmethod
    def _engine_unavailable(e: Exception) -> ClientError:
        log.warning("engine unreachable (%s)", e)
        return overloaded(f"the model engine is unavailable (restarting or shutting down); retry after "
                          f"{CONFIG.retry_after_s} s", CONFIG.retry_after_s, code="engine_unavailable")

    @staticmethod
    def _result(served: ServedModel, logits: np.ndarray, k: int) -> dict[str, Any]:
        z = logits.astype(np.float64) - logits.max()
        probs = np.exp(z) / np.exp(z).sum()
        order = np.argsort(-probs, kind="stable")[:k]
        names = served.card.class_names
        return {"model": served.name, "trained": served.card.trained,
                "predictions": [{"label": names[i], "class_index": int(i), "probability": float(probs[i])}
                                for i in order]}


check_apis(Classifier)  # every API's fields as service/schema.py declares them, which the guard checks
bentoml_compat.cache_media_types(Classifier)
REFUSED = Counter("resnet_refused", "Requests the API refused before BentoML parsed them", ["status", "code"])


def _guarded(app: Any) -> RequestGuard:
    """The Classifier's app, with the page and Server-Timing, behind RequestGuard, which counts its
    refusals in ``resnet_refused_total`` (they never reach BentoML's request metrics)."""
    return RequestGuard(Page(timing.ServerTiming(app)), max_body_bytes=CONFIG.max_body_bytes,
                        max_header_bytes=CONFIG.max_header_bytes, max_headers=CONFIG.max_headers,
                        max_files=CONFIG.max_batch_images, max_inflight=CONFIG.max_inflight,
                        admit_target_s=CONFIG.admit_target_ms / 1000, admit_wait_s=CONFIG.admit_wait_ms / 1000,
                        retry_after_s=CONFIG.retry_after_s,
                        body_timeout_s=CONFIG.body_timeout_s,
                        on_refuse=lambda status, code: REFUSED.labels(str(status), code).inc())


bentoml_compat.guard_outside_middleware(Classifier, _guarded)
bentoml_compat.document_openapi(Classifier, openapi.document)  # typed answers, errors, GET /models
