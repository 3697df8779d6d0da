"""One onnxruntime session per served model: provider choice, threads, batch buckets, warm-up.

No BentoML import: the service wraps it, the benchmarks time it bare.
"""
from __future__ import annotations

import bisect
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

if TYPE_CHECKING:
    from service.config import ServiceConfig

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
    # Off: spinning intra-op threads take the cores the API workers decode on
    # (docs/decisions/002-engine-threads-and-spinning.md).
    spin: bool = False
    max_batch_size: int = 32
    # CUDA only (ignored on the CPU provider); off until measured on the GPU (bench/gpu).
    cuda_graphs: bool = False  # one captured CUDA graph per batch bucket, fixed device buffers
    prefer_nhwc: bool = False  # the CUDA provider's NHWC kernels (provider option prefer_nhwc)
    # Pad each batch to a bucket (bucket_sizes) and slice the answer back: None = on CUDA only, where
    # it spares cuDNN's algorithm search per new batch size; True also on the CPU (tests, measuring).
    pad_to_buckets: bool | None = None

    @classmethod
    def from_config(cls, config: ServiceConfig, model: str | None = None, per_worker: bool = False,
                    input_pixels: int = 0) -> EngineOptions:
        """The engine options that the service's settings (``service/config.py``) ask for; with
        ``model``, its own max batch size (RESNET_MODEL_SETTINGS), which sizes its CUDA buckets.
        ``per_worker``: the session of one of several API workers (service/topology.py), and
        ``input_pixels`` its model's input size, which size its threads (``threads_per_session``)."""
        max_batch = config.batch_settings(model).max_batch_size if model else config.max_batch_size
        return cls(device=config.device, device_id=config.device_id,
                   threads=config.threads_per_session(per_worker, input_pixels),
                   max_batch_size=max_batch, cuda_graphs=config.cuda_graphs,
                   prefer_nhwc=config.prefer_nhwc, spin=config.engine_spin)


def cuda_provider_options(device_id: int, prefer_nhwc: bool = False, cuda_graph: bool = False) -> dict[str, Any]:
    """The CUDA provider's options as the service sets them. ``prefer_nhwc`` and ``enable_cuda_graph``
    are added only when asked for, so the default is exactly what ran before they existed."""
    options: dict[str, Any] = {"device_id": device_id, "cudnn_conv_algo_search": "EXHAUSTIVE",
                               "do_copy_in_default_stream": True}
    if prefer_nhwc:
        options["prefer_nhwc"] = "1"
    if cuda_graph:
        options["enable_cuda_graph"] = "1"
    return options


def bucket_sizes(max_batch: int) -> list[int]:
    """Powers of two up to ``max_batch`` (and it): on CUDA every batch is padded to one of these, so
    cuDNN's algorithm search runs once per bucket at warm-up instead of at each new batch size."""
    sizes, b = [], 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    return sizes + [max_batch]


def pad_to_bucket(images: np.ndarray, buckets: list[int]) -> np.ndarray:
    """``images`` followed by zero images up to the smallest bucket that holds them (at most the
    largest bucket; a larger batch is returned as it is)."""
    n = len(images)
    if n > buckets[-1]:
        return images
    padded = buckets[bisect.bisect_left(buckets, n)]
    if padded == n:
        return images
    return np.concatenate([images, np.zeros((padded - n, *images.shape[1:]), images.dtype)])


class OnnxEngine:
    def __init__(self, path: Path, options: EngineOptions) -> None:
        self.path = Path(path)
        self.options = options
        want_cuda = options.device in ("auto", "cuda") and cuda_usable()
        if options.device == "cuda" and not want_cuda:
            raise RuntimeError(f"RESNET_DEVICE=cuda but no usable CUDA device (providers: {ort.get_available_providers()})")
        so = ort.SessionOptions()
        so.log_severity_level = 3
        if not options.spin:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        providers: list = [CPU]
        if want_cuda:
            providers = [(CUDA, cuda_provider_options(options.device_id, options.prefer_nhwc)), CPU]
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
            # the session was built for CUDA, with onnxruntime's default threads: rebuilt with ours
            so.intra_op_num_threads, so.inter_op_num_threads = options.threads, 1
            self.session = ort.InferenceSession(str(self.path), so, providers=[CPU])
            self.provider = self.session.get_providers()[0]
        self.on_cuda = self.provider == CUDA
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        pad = self.on_cuda if options.pad_to_buckets is None else options.pad_to_buckets
        self.buckets = bucket_sizes(options.max_batch_size) if pad else []
        self.prefer_nhwc = self.on_cuda and options.prefer_nhwc
        self._graphs: dict[int, _GraphBucket] = {}
        if options.cuda_graphs and self.on_cuda:
            self._graphs = self._capture_sessions(so)
        elif options.cuda_graphs or options.prefer_nhwc:
            log.info("%s: CUDA graphs / prefer_nhwc apply to the CUDA provider only; ignored on %s",
                     self.path.name, self.provider)
        self.cuda_graphs = bool(self._graphs)
        log.info("%s on %s (threads %s%s)", self.path.name, self.provider, "n/a" if self.on_cuda else options.threads,
                 ", CUDA graphs" if self.cuda_graphs else "")

    def _capture_sessions(self, so: ort.SessionOptions) -> dict[int, _GraphBucket]:
        """One session with ``enable_cuda_graph`` per bucket: a captured graph replays fixed device
        addresses, so each bucket owns its input and output buffers. Any failure leaves the engine on
        the ordinary path (logged), never without a working session."""
        providers = [(CUDA, cuda_provider_options(self.options.device_id, self.options.prefer_nhwc, cuda_graph=True)), CPU]
        try:
            graphs = {}
            for n in self.buckets:
                session = ort.InferenceSession(str(self.path), so, providers=providers)
                if session.get_providers()[0] != CUDA:
                    raise RuntimeError(f"graph session runs on {session.get_providers()}")
                graphs[n] = _GraphBucket(session, n, self.options.device_id)
            return graphs
        except Exception as e:  # noqa: BLE001 - any onnxruntime failure: serve without graphs
            log.warning("%s: CUDA graphs unavailable (%s); serving without them", self.path.name, e)
            return {}

    def infer(self, images: np.ndarray) -> np.ndarray:
        """float32 (N, C, H, W) -> float32 logits (N, classes)."""
        n = len(images)
        if self.buckets and n <= self.buckets[-1]:
            images = pad_to_bucket(images, self.buckets)
            if self._graphs:
                return self._graphs[len(images)].run(images)[:n]
        if self.on_cuda:
            binding = self.session.io_binding()
            binding.bind_cpu_input(self.input_name, np.ascontiguousarray(images))
            binding.bind_output(self.output_name, "cuda", self.options.device_id)
            self.session.run_with_iobinding(binding)
            return binding.copy_outputs_to_cpu()[0][:n]
        return self.session.run([self.output_name], {self.input_name: images})[0][:n]

    def warm_up(self, input_shape: tuple[int, ...]) -> float:
        """Runs every batch size that will be served once (each bucket on CUDA; 1 and the max on
        the CPU), so the first real requests do not pay for allocation and algorithm search."""
        t0 = time.perf_counter()
        for n in self.buckets or sorted({1, self.options.max_batch_size}):
            self.infer(np.zeros((n, *input_shape), np.float32))
        return time.perf_counter() - t0


class _GraphBucket:
    """A CUDA-graph session for one batch size: input and output live at fixed device addresses and
    a lock keeps concurrent batches (BentoML may run several at once) off the same buffers."""

    def __init__(self, session: ort.InferenceSession, batch: int, device_id: int) -> None:
        inp, out = session.get_inputs()[0], session.get_outputs()[0]
        dtypes = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
        self.session, self.lock, self.dtype = session, threading.Lock(), dtypes[inp.type]
        self.input = ort.OrtValue.ortvalue_from_shape_and_type(
            [batch, *inp.shape[1:]], self.dtype, "cuda", device_id)
        self.output = ort.OrtValue.ortvalue_from_shape_and_type(
            [batch, *out.shape[1:]], dtypes[out.type], "cuda", device_id)
        self.binding = session.io_binding()
        self.binding.bind_ortvalue_input(inp.name, self.input)
        self.binding.bind_ortvalue_output(out.name, self.output)

    def run(self, images: np.ndarray) -> np.ndarray:
        """The first call captures the graph (onnxruntime runs the model itself first to allocate);
        later calls copy the images into the fixed input buffer and replay it."""
        with self.lock:
            self.input.update_inplace(np.ascontiguousarray(images, dtype=self.dtype))
            self.session.run_with_iobinding(self.binding)
            return self.output.numpy()
