"""The naive BentoML service issue 16 compares the service with: one Service, PIL + onnxruntime inside
a batchable API, in the pattern of BentoML's own examples (bentoml/BentoResnet), 2 workers.

    SERVING_COST_ONNX=/path/model.fp32.onnx bentoml serve bench.serving_cost.naive_service:NaiveClassifier

``POST /classify`` with the multipart field ``image`` answers ``[{"label", "class_index",
"probability"}, ...]`` (top 5); BentoML's adaptive batching merges concurrent requests into one call.
"""
from __future__ import annotations

import bentoml
from PIL.Image import Image

from bench.serving_cost.model import Model


@bentoml.service(workers=2, traffic={"timeout": 60})
class NaiveClassifier:
    def __init__(self) -> None:
        self.model = Model()

    @bentoml.api(batchable=True, max_batch_size=32, max_latency_ms=1000)
    def classify(self, image: list[Image]) -> list[list[dict]]:
        return self.model.classify(image)
