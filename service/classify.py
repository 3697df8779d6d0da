"""The work of ``/classify`` and ``/classify_batch``, whichever way a request arrives: the HTTP path
(service/routes.py) or a direct call of the BentoML API (tests, ``bentoml.depends`` callers).

Check the model and ``top_k``, decode each upload (service/preprocess.py), run the model
(service/topology.py), and answer the top ``k`` classes with their probabilities. Every problem is
a ``ClientError`` (service/errors.py) the caller answers with.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from service.catalog import ServedModel
from service.config import ServiceConfig
from service.errors import ClientError
from service.metrics import PREPROCESS_SECONDS
from service.preprocess import DecodeLimits, ImageRejected, PreprocessSpec, preprocess
from service.topology import Models, Runtime

# Uploads up to this size are decoded on the event loop: a 28x28 PNG takes ~0.05 ms there, and
# handing it to a thread (asyncio.to_thread) costs ~0.15 ms more; larger ones (a 640x480 JPEG
# takes ~3 ms) go to a thread so the loop keeps serving (docs/decisions/017-serving-path.md).
INLINE_DECODE_BYTES = 16 * 1024


class Classify:
    def __init__(self, served: Sequence[ServedModel], config: ServiceConfig, models: Models) -> None:
        self.served = {m.name: m for m in served}
        self.config, self.models = config, models
        self.specs = {m.name: PreprocessSpec.from_card(m.card) for m in served}
        self.limits = DecodeLimits(max_bytes=config.max_image_bytes, max_pixels=config.max_pixels)

    def check(self, model: str | None, top_k: int) -> tuple[ServedModel, int]:
        """The served model ``model`` names (the default when empty) and a valid ``top_k``."""
        name = model or self.config.default_model
        served = self.served.get(name)
        if served is None:
            shown = name if len(name) <= 64 else name[:64] + "..."
            raise ClientError("unknown_model", f"unknown model {shown!r}; served: {', '.join(self.served)}")
        limit = min(self.config.max_top_k, served.card.num_classes)
        if not 1 <= top_k <= limit:
            raise ClientError("bad_top_k", f"top_k must be between 1 and {limit}, got {top_k}")
        return served, top_k

    async def one(self, image: bytes, model: str | None = None, top_k: int = 5,
                  timings: dict[str, float] | None = None) -> dict[str, Any]:
        """One image's answer: ``{"model", "trained", "predictions": [...]}``."""
        served, k = self.check(model, top_k)
        x = await self.tensor(served, image, timings)
        logits = await self.logits(served, x[None], timings)
        return {"model": served.name, "trained": served.card.trained, "predictions": self.top(served, logits[0], k)}

    async def batch(self, images: Sequence[bytes], model: str | None = None, top_k: int = 5,
                    timings: dict[str, float] | None = None) -> dict[str, Any]:
        """Several images' answer, in order: ``{"model", "trained", "results": [{"predictions"}, ...]}``."""
        served, k = self.check(model, top_k)
        if not images:
            raise ClientError("no_images", "field 'images' holds no file")
        if len(images) > self.config.max_batch_images:
            raise ClientError("too_many_images", f"{len(images)} images; at most {self.config.max_batch_images} per request")
        tensors = []
        for i, image in enumerate(images):
            try:
                tensors.append(await self.tensor(served, image, timings))
            except ClientError as e:
                raise ClientError(e.code, f"image {i}: {e.message}") from None
        logits = await self.logits(served, np.stack(tensors), timings)
        return {"model": served.name, "trained": served.card.trained,
                "results": [{"predictions": self.top(served, row, k)} for row in logits]}

    async def tensor(self, served: ServedModel, image: bytes, timings: dict[str, float] | None) -> np.ndarray:
        """The upload as the model's input (C, H, W); ClientError when it is not a usable image."""
        if len(image) > self.config.max_image_bytes:
            raise ClientError("too_large", f"image is {len(image)} bytes; the limit is {self.config.max_image_bytes}")
        spec = self.specs[served.name]
        t0 = time.perf_counter()
        try:
            if len(image) <= INLINE_DECODE_BYTES:
                x = preprocess(image, spec, self.limits)
            else:
                x = await asyncio.to_thread(preprocess, image, spec, self.limits)
        except ImageRejected as e:
            raise ClientError(e.code, e.message) from None
        seconds = time.perf_counter() - t0
        PREPROCESS_SECONDS.labels(served.name).observe(seconds)
        if timings is not None:
            timings["preprocess"] = timings.get("preprocess", 0.0) + seconds
        return x

    async def logits(self, served: ServedModel, x: np.ndarray, timings: dict[str, float] | None) -> np.ndarray:
        t0 = time.perf_counter()
        logits = await self.models.infer(served, x)
        if timings is not None:
            timings["model"] = time.perf_counter() - t0
        return logits

    @staticmethod
    def top(served: ServedModel, logits: np.ndarray, k: int) -> list[dict[str, Any]]:
        """The ``k`` most probable classes (softmax of ``logits``), most probable first."""
        z = logits.astype(np.float64) - logits.max()
        probs = np.exp(z) / np.exp(z).sum()
        order = np.argsort(-probs, kind="stable")[:k]
        names = served.card.class_names
        return [{"label": names[i], "class_index": int(i), "probability": float(probs[i])} for i in order]

    async def describe(self) -> dict[str, Any]:
        """``GET /models``: every served model's card, what it runs on and its batching."""
        runtime: dict[str, Runtime] = await self.models.describe()
        out = []
        for m in self.served.values():
            card = m.card
            out.append({
                "name": m.name, "tag": m.tag, "version": m.version, "model": card.model, "depth": card.depth,
                "residual": card.residual, "dataset": card.dataset, "num_classes": card.num_classes,
                "class_names": list(card.class_names), "input_shape": list(card.input_shape),
                "channel_mode": card.channel_mode, "precision": m.precision, "provider": runtime[m.name].provider,
                "trained": card.trained, "test_accuracy": card.test_accuracy,
                "default": m.name == self.config.default_model,
                "batching": {"enabled": self.config.batching, **vars(self.config.batch_settings(m.name))},
            })
        return {"models": out}
