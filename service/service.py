"""The HTTP image-classification service: ``bentoml serve`` (see bentofile.yaml).

``Classifier`` (``RESNET_API_WORKERS`` processes) is the HTTP API. Each classify request is read,
checked and parsed once by the request guard (service/guard.py) and answered by service/routes.py
on the worker's event loop: the upload is decoded where it arrives, then the model runs where
``RESNET_TOPOLOGY`` says (service/topology.py):

* per-worker (the CPU default): every worker holds every served model, each behind an in-process
  batcher that batches that worker's concurrent requests;
* shared-engine (the CUDA default): ``Engine``, one process owning the models, exposes one
  *batchable* BentoML API per model, so BentoML's dispatcher batches across every worker.

Why: docs/decisions/017-serving-path.md (and 001 for the shared engine).
Configuration: environment variables, all listed in service/config.py.
"""
from __future__ import annotations

import gc
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bentoml
import numpy as np

from service import bentoml_compat, openapi
from service.allocator import PeriodicTrim
from service.catalog import ModelUnavailable, ServedModel, resolve_models
from service.classify import Classify
from service.config import load_config
from service.deadline import ResponseDeadline
from service.drain import ActivityMiddleware
from service.engine import cuda_usable
from service.errors import ClientError
from service.guard import RequestGuard
from service.metrics import REFUSED
from service.page import Page
from service.routes import ClassifyRoutes
from service.schema import CLASSIFY, CLASSIFY_BATCH, MODELS, check_apis
from service.topology import (SHARED_ENGINE, Models, PerWorkerModels, Runtime, SharedEngineModels, engine_options,
                              load_engine, resolve_topology, timed_run)

log = logging.getLogger("bentoml.resnet_serving")  # under "bentoml": shown by bentoml serve
# Here because `bentoml serve` imports this module before it creates sockets or builds any app.
bentoml_compat.listen_on_tcp()
bentoml_compat.replace_timeout_middleware(ResponseDeadline)
try:
    CONFIG = load_config()  # a bad setting (ValueError) is the same one-line exit as a missing model
    # Every process that imports the service (bentoml serve's own, each worker, bentoml build)
    # checks each model file against the sha256 in its metadata before anything loads it.
    SERVED: list[ServedModel] = resolve_models(CONFIG, verify_checksums=True)
    # Every header block up to this size reaches the guard, which answers 431 JSON above its limit.
    bentoml_compat.read_header_blocks_up_to(max(1 << 20, 4 * CONFIG.max_header_bytes))
except (ValueError, ModelUnavailable) as e:
    # One line and a non-zero exit, not a traceback: raised in a worker, BentoML would log the
    # traceback and respawn the worker forever.
    sys.exit(f"error: cannot start the service: {e}")
BY_NAME = {m.name: m for m in SERVED}
TOPOLOGY = resolve_topology(CONFIG.topology, on_cuda=CONFIG.device != "cpu" and cuda_usable())
TIMEOUT_S = 60  # no answer begun by then: 504 (service/deadline.py, service/routes.py)
# Full collections over what a worker holds for good (never garbage) were most of the latency tail
# under load, so each worker freezes it once started (docs/decisions/005-garbage-collector.md).
GC_THRESHOLDS = (20_000, 10, 10)  # CPython's defaults: (700, 10, 10)


def _settle_memory() -> None:
    """After start-up: the collector settled (docs/decisions/005-garbage-collector.md), and free heap
    pages handed back to the system every RESNET_MALLOC_TRIM_S (docs/decisions/018-malloc-trim.md)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    PeriodicTrim(CONFIG.malloc_trim_s).start()


# ---- Engine (shared-engine topology): one batchable API per model ------------------------------

class _EngineBase:
    def __init__(self) -> None:
        self.served = {m.name: m for m in SERVED}  # checksums verified at import, in this process
        # SIGTERM: keep serving until the API workers' in-flight requests are through.
        bentoml_compat.defer_sigterm(CONFIG.drain_quiet_s, CONFIG.drain_max_s)
        self.runs: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
        self.runtime: dict[str, dict[str, Any]] = {}
        for m in SERVED:
            engine = load_engine(m, engine_options(CONFIG, m, SHARED_ENGINE))  # its own buckets
            self.runs[m.name] = timed_run(m.name, engine)
            self.runtime[m.name] = Runtime(engine.provider, m.precision, tuple(engine.buckets)).to_dict()
        _settle_memory()

    @bentoml.api
    def describe(self) -> dict[str, Any]:
        """The provider actually in use for each model (onnxruntime falls back to the CPU silently)."""
        return self.runtime


def _batchable_infer(name: str):
    def infer(self, images: np.ndarray) -> np.ndarray:
        return self.runs[name](np.ascontiguousarray(images, dtype=np.float32))

    infer.__name__ = infer.__qualname__ = BY_NAME[name].api_name
    own = CONFIG.batch_settings(name)  # RESNET_MODEL_SETTINGS, else the global defaults
    return bentoml.api(batchable=CONFIG.batching, batch_dim=0, max_batch_size=own.max_batch_size,
                       max_latency_ms=own.max_latency_ms)(infer)


Engine = bentoml.service(name="resnet-engine", workers=1, traffic={"timeout": TIMEOUT_S})(
    type("Engine", (_EngineBase,), {"__module__": __name__, **{m.api_name: _batchable_infer(m.name) for m in SERVED}}))
Engine.add_asgi_middleware(ActivityMiddleware)
bentoml_compat.cache_media_types(Engine)


# ---- Classifier: the HTTP API ------------------------------------------------------------------

class _Answering:
    """The running worker's answer to checked classify forms (service/routes.py), for the guard;
    None until the Classifier's instance has started in this process."""

    routes: ClassifyRoutes | None = None


class _ClassifierBase:
    def __init__(self) -> None:
        if TOPOLOGY == SHARED_ENGINE:
            bentoml_compat.keep_connections_open(self.engine)
            models: Models = SharedEngineModels(self.engine, CONFIG)
        else:
            models = PerWorkerModels(SERVED, CONFIG)
        self.work = Classify(SERVED, CONFIG, models)
        _Answering.routes = ClassifyRoutes(self.work, deadline_s=TIMEOUT_S)
        bentoml_compat.note_sigterm()  # after SIGTERM, responses close their connections
        _settle_memory()

    # Over HTTP, RequestGuard hands these routes' requests to service/routes.py, which answers them
    # as these methods would; BentoML still builds their OpenAPI, its clients and direct calls on them.
    @bentoml.api(route=CLASSIFY.path)
    async def classify(self, image: Path, model: str | None = None, top_k: int = 5) -> dict[str, Any]:
        """Classifies one image (multipart field ``image``); ``model`` defaults to the first served."""
        try:
            return await self.work.one(self._read(image), model, top_k)
        except ClientError as e:
            return e.response()

    @bentoml.api(route=CLASSIFY_BATCH.path)
    async def classify_batch(self, images: list[Path], model: str | None = None, top_k: int = 5) -> dict[str, Any]:
        """Classifies several images (multipart field ``images``, repeated): one result per image, in order."""
        try:
            return await self.work.batch([self._read(p) for p in images], model, top_k)
        except ClientError as e:
            return e.response()

    @bentoml.api(route=MODELS.path)
    async def models(self) -> dict[str, Any]:
        """Every served model: depth, dataset, classes, input size, precision, provider, accuracy, batching."""
        try:
            return await self.work.describe()
        except ClientError as e:
            return e.response()

    @staticmethod
    def _read(path: Path) -> bytes:
        size = path.stat().st_size
        if size > CONFIG.max_image_bytes:  # refuse before reading it into memory
            raise ClientError("too_large", f"image is {size} bytes; the limit is {CONFIG.max_image_bytes}")
        return path.read_bytes()


_classifier_attrs: dict[str, Any] = {"__module__": __name__}
if TOPOLOGY == SHARED_ENGINE:
    _classifier_attrs["engine"] = bentoml.depends(Engine)
for _i, _m in enumerate(SERVED):
    _classifier_attrs[f"model_{_i}"] = bentoml.models.BentoModel(_m.tag)  # so `bentoml build` packages it
Classifier = bentoml.service(name="resnet-classifier", workers=CONFIG.api_workers, traffic={"timeout": TIMEOUT_S})(
    type("Classifier", (_ClassifierBase,), _classifier_attrs))
check_apis(Classifier)  # every API's fields as service/schema.py declares them, which the guard checks
bentoml_compat.cache_media_types(Classifier)


def _guarded(app: Any) -> RequestGuard:
    """The Classifier's app, with the page, behind RequestGuard, which answers classify requests
    itself once the worker has started and counts its refusals in ``resnet_refused_total``."""
    return RequestGuard(Page(app), max_body_bytes=CONFIG.max_body_bytes,
                        max_header_bytes=CONFIG.max_header_bytes, max_headers=CONFIG.max_headers,
                        max_inflight=CONFIG.max_inflight,
                        admit_target_s=CONFIG.admit_target_ms / 1000, admit_wait_s=CONFIG.admit_wait_ms / 1000,
                        retry_after_s=CONFIG.retry_after_s,
                        body_timeout_s=CONFIG.body_timeout_s,
                        on_refuse=lambda status, code: REFUSED.labels(str(status), code).inc(),
                        handler=lambda: _Answering.routes)


bentoml_compat.guard_outside_middleware(Classifier, _guarded)
bentoml_compat.document_openapi(Classifier, openapi.document)  # typed answers, errors, GET /models
