"""The service's own Prometheus metrics (``GET /metrics``, beside BentoML's), defined once.

BentoML gathers every worker's values (its multiprocess collector), so each is the service's total.
"""
from __future__ import annotations

from prometheus_client import Counter, Histogram

TIME_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)

BATCH_SIZE = Histogram("resnet_batch_size", "Images per onnxruntime call", ["model"],
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
INFERENCE_SECONDS = Histogram("resnet_inference_seconds", "onnxruntime time per batch", ["model"],
                              buckets=TIME_BUCKETS)
PREPROCESS_SECONDS = Histogram("resnet_preprocess_seconds", "Decode + preprocess time per image", ["model"],
                               buckets=TIME_BUCKETS)
# /classify and /classify_batch are answered before BentoML's own request metrics would see them
# (docs/decisions/017-serving-path.md): these count them instead, with every status.
REQUEST_SECONDS = Histogram("resnet_request_seconds", "Classify requests: time from the body's arrival to the answer",
                            ["route", "status"], buckets=TIME_BUCKETS)
REFUSED = Counter("resnet_refused", "Requests the API refused before BentoML parsed them", ["status", "code"])
