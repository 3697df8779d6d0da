"""One onnxruntime session per served model: provider choice, threads, batch buckets, warm-up.

No BentoML import: the service wraps it, the benchmarks time it bare.
"""
from __future__ import annotations

import bisect
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def cuda_usable() -> bool:
    """onnxruntime-gpu lists the CUDA provider even on machines without a GPU: also ask for a device."""
    return CUDA in ort.get_available_providers() and any(Path("/dev").glob("nvidia[0-9]*"))


@dataclass(frozen=True)
class EngineOptions:
    device: str = "auto"  # auto, cuda, cpu
    device_id: int = 0
    threads: int = 1  # intra-op threads for the CPU provider
    max_batch_size: int = 32


def bucket_sizes(max_batch: int) -> list[int]:
    """Powers of two up to ``max_batch`` (and it): on CUDA every batch is padded to one of these, so
    cuDNN's algorithm search runs once per bucket at warm-up instead of at each new batch size."""
    sizes, b = [], 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    return sizes + [max_batch]


class OnnxEngine:
    def __init__(self, path: Path, options: EngineOptions) -> None:
        self.path = Path(path)
        self.options = options
        want_cuda = options.device in ("auto", "cuda") and cuda_usable()
        if options.device == "cuda" and not want_cuda:
            raise RuntimeError(f"RESNET_DEVICE=cuda but no usable CUDA device (providers: {ort.get_available_providers()})")
        so = ort.SessionOptions()
        so.log_severity_level = 3
        providers: list = [CPU]
        if want_cuda:
            providers = [(CUDA, {"device_id": options.device_id, "cudnn_conv_algo_search": "EXHAUSTIVE",
                                 "do_copy_in_default_stream": True}), CPU]
        else:
            so.intra_op_num_threads = options.threads
            so.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.path), so, providers=providers)
        except Exception as e:  # CUDA libraries missing or the device busy: say so, serve on the CPU
            if not want_cuda:
                raise
            log.warning("CUDA provider failed for %s (%s); falling back to the CPU", self.path.name, e)
            so.intra_op_num_threads = options.threads
            self.session = ort.InferenceSession(str(self.path), so, providers=[CPU])
        # onnxruntime falls back to the CPU silently: what runs is what get_providers() says.
        self.provider = self.session.get_providers()[0]
        if want_cuda and self.provider != CUDA:
            log.warning("%s: CUDA was requested but onnxruntime runs it on %s", self.path.name, self.provider)
        self.on_cuda = self.provider == CUDA
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.buckets = bucket_sizes(options.max_batch_size) if self.on_cuda else []
        log.info("%s on %s (threads %s)", self.path.name, self.provider, "n/a" if self.on_cuda else options.threads)

    def infer(self, images: np.ndarray) -> np.ndarray:
        """float32 (N, C, H, W) -> float32 logits (N, classes)."""
        n = len(images)
        if self.buckets and n <= self.buckets[-1]:
            padded = self.buckets[bisect.bisect_left(self.buckets, n)]
            if padded != n:
                images = np.concatenate([images, np.zeros((padded - n, *images.shape[1:]), images.dtype)])
        if self.on_cuda:
            binding = self.session.io_binding()
            binding.bind_cpu_input(self.input_name, np.ascontiguousarray(images))
            binding.bind_output(self.output_name, "cuda", self.options.device_id)
            self.session.run_with_iobinding(binding)
            return binding.copy_outputs_to_cpu()[0][:n]
        return self.session.run([self.output_name], {self.input_name: images})[0]

    def warm_up(self, input_shape: tuple[int, ...]) -> float:
        """Runs every batch size that will be served once (each bucket on CUDA; 1 and the max on
        the CPU), so the first real requests do not pay for allocation and algorithm search."""
        t0 = time.perf_counter()
        for n in self.buckets or sorted({1, self.options.max_batch_size}):
            self.infer(np.zeros((n, *input_shape), np.float32))
        return time.perf_counter() - t0
