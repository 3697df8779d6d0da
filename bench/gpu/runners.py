"""What the engine benchmark times: onnxruntime sessions with IO binding, and PyTorch eager models.

Every runner keeps its input and output where the computation happens (device memory on CUDA), so
a timed call is the model and nothing else. Each call ends only when the device has finished:
onnxruntime's ``run_with_iobinding`` synchronises its stream at the end of a run and
``synchronize_outputs`` makes sure; PyTorch's calls end with ``torch.cuda.synchronize()``.
"""
from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from export.onnx_io import INPUT_NAME, OUTPUT_NAME
from service.engine import CPU, CUDA, cuda_provider_options

NP_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
# max |out - CPU fp32| / max |CPU fp32|. fp32 on CUDA may use TF32 tensor cores (onnxruntime's
# use_tf32 and PyTorch's cudnn.allow_tf32 both default to on), whose 10-bit mantissa is fp16's.
TOLERANCE = {"fp32": 1e-2, "fp16": 1e-2}
REFERENCE_IMAGES = 8  # distinct inputs, tiled to each batch size
# The CUDA provider options worth recording beside each figure (get_provider_options() lists ~30).
RECORDED_OPTIONS = ("device_id", "cudnn_conv_algo_search", "do_copy_in_default_stream", "prefer_nhwc",
                    "enable_cuda_graph", "use_tf32", "cudnn_conv_use_max_workspace", "fuse_conv_bias",
                    "arena_extend_strategy")


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    runtime: str  # "ort" or "torch"
    precision: str  # "fp32" or "fp16"
    nhwc: bool = False  # ORT: the CUDA provider option prefer_nhwc; PyTorch: channels-last tensors
    graph: bool = False  # ORT: enable_cuda_graph, one session (and one captured graph) per batch size
    # ORT: cudnn_conv_use_max_workspace set to this; None leaves the provider's default (1 since
    # onnxruntime 1.14, PR #13981), which onnxruntime issue #20712 reports slowing ResNets.
    workspace: int | None = None

    @property
    def cuda_only(self) -> bool:
        """Options of the CUDA provider: on the CPU there is nothing to run in their place."""
        return self.runtime == "ort" and (self.nhwc or self.graph or self.workspace is not None)


def _ort(precision: str, nhwc: bool, graph: bool, workspace: int | None = None) -> Variant:
    suffix = [] if workspace is None else [f"ws{workspace}"]
    key = "_".join(["ort", precision] + ["nhwc"] * nhwc + ["graph"] * graph + suffix)
    label = (f"ORT {precision}" + " NHWC" * nhwc + " + CUDA graph" * graph
             + ("" if workspace is None else f", max workspace {'on' if workspace else 'off'}"))
    return Variant(key, label, "ort", precision, nhwc, graph, workspace)


# In the order they run within a batch size (a model's time share can end within one) and appear in
# tables: the baseline, then onnxruntime fp16 (the targets' pair), max workspace off after the
# provider's default, then fp32.
VARIANTS: dict[str, Variant] = {v.key: v for v in (
    Variant("torch_fp16_cl", "PyTorch eager fp16 channels-last", "torch", "fp16", nhwc=True),
    *(_ort("fp16", nhwc, graph, ws) for ws in (None, 0) for graph in (False, True) for nhwc in (False, True)),
    *(_ort("fp32", nhwc, graph) for graph in (False, True) for nhwc in (False, True)),
    Variant("torch_fp32", "PyTorch eager fp32", "torch", "fp32"),
)}
BASELINE = "torch_fp16_cl"  # what the engine targets compare onnxruntime fp16 against
# The 28x28 Fashion-MNIST nets: a few kernels per layer at any batch, so launches dominate and CUDA
# graphs are the option worth timing; NHWC and the workspace size were left out to keep the budget.
FAMILY_VARIANTS = ("torch_fp16_cl", "ort_fp16", "ort_fp16_graph", "ort_fp32", "ort_fp32_graph", "torch_fp32")


class FellBack(RuntimeError):
    """onnxruntime was asked for the CUDA provider and silently runs on something else."""


def ort_session(path: Path, device: str, *, nhwc: bool = False, graph: bool = False, workspace: int | None = None,
                threads: int | None = None, optimized_path: Path | None = None) -> ort.InferenceSession:
    """A session on ``device`` ("cuda": the service's CUDA provider options plus ``prefer_nhwc`` /
    ``enable_cuda_graph`` / ``cudnn_conv_use_max_workspace`` as asked; "cpu": the CPU provider with
    ``threads`` intra-op threads).
    Raises ``FellBack`` when CUDA was asked for and onnxruntime took another provider."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if optimized_path is not None:
        so.optimized_model_filepath = str(optimized_path)
    if device == "cuda":
        options = cuda_provider_options(0, prefer_nhwc=nhwc, cuda_graph=graph)
        if workspace is not None:
            options["cudnn_conv_use_max_workspace"] = str(workspace)
        providers: list[Any] = [(CUDA, options), CPU]
    else:
        so.intra_op_num_threads = threads or os.cpu_count() or 1
        so.inter_op_num_threads = 1
        providers = [CPU]
    session = ort.InferenceSession(str(path), so, providers=providers)
    if device == "cuda" and session.get_providers()[0] != CUDA:
        raise FellBack(f"{Path(path).name}: asked for CUDA, onnxruntime runs on {session.get_providers()}")
    return session


def session_facts(session: ort.InferenceSession) -> dict[str, Any]:
    """The providers a session really runs on and the CUDA options it really applied."""
    cuda = session.get_provider_options().get(CUDA, {})
    return {"providers": session.get_providers(),
            "cuda_options": {k: cuda[k] for k in RECORDED_OPTIONS if k in cuda}}


class OrtRunner:
    """A session bound once to an input and an output buffer on the session's device."""

    def __init__(self, session: ort.InferenceSession, x: np.ndarray, device: str) -> None:
        where = "cuda" if device == "cuda" else "cpu"
        inp, out = session.get_inputs()[0], session.get_outputs()[0]
        self.session = session
        self.x = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(x, NP_TYPES[inp.type]), where, 0)
        self.y = ort.OrtValue.ortvalue_from_shape_and_type([len(x), *out.shape[1:]], NP_TYPES[out.type], where, 0)
        self.binding = session.io_binding()
        self.binding.bind_ortvalue_input(INPUT_NAME, self.x)
        self.binding.bind_ortvalue_output(OUTPUT_NAME, self.y)

    def __call__(self) -> None:
        self.session.run_with_iobinding(self.binding)
        self.binding.synchronize_outputs()

    def output(self) -> np.ndarray:
        return self.y.numpy()


def torch_model(model: torch.nn.Module, device: str, precision: str, channels_last: bool) -> torch.nn.Module:
    """A copy of ``model`` in the variant's dtype and memory format, on ``device``."""
    dtype = torch.float16 if precision == "fp16" else torch.float32
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return copy.deepcopy(model).to(device=device, dtype=dtype).to(memory_format=fmt).eval()


class TorchRunner:
    def __init__(self, model: torch.nn.Module, x: np.ndarray, device: str, channels_last: bool) -> None:
        dtype = next(model.parameters()).dtype
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model
        self.x = torch.from_numpy(x).to(device=device, dtype=dtype).contiguous(memory_format=fmt)
        self.sync: Callable[[], None] = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        self.out: torch.Tensor | None = None

    def __call__(self) -> None:
        with torch.inference_mode():
            self.out = self.model(self.x)
        self.sync()

    def output(self) -> np.ndarray:
        assert self.out is not None, "call the runner first"
        return self.out.float().cpu().numpy()


def time_calls(fn: Callable[[], Any], warmup: int, repeats: int, max_seconds: float,
               min_repeats: int = 10) -> list[float]:
    """Seconds of each of ``repeats`` calls after ``warmup`` untimed ones; fewer (at least
    ``min_repeats``, or ``repeats`` if smaller) when ``repeats`` calls would take over ``max_seconds``,
    judged from one more untimed call."""
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    fn()
    estimate = time.perf_counter() - t0
    n = repeats
    if estimate * repeats > max_seconds:
        n = max(min(min_repeats, repeats), int(max_seconds / max(estimate, 1e-9)))
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return samples


def relative_error(out: np.ndarray, ref: np.ndarray) -> float:
    """max |out - ref| / max |ref|, in float64 (as ``export.verify`` measures exports)."""
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-30))


def top1_agreement(out: np.ndarray, ref: np.ndarray) -> float:
    return float(100.0 * np.mean(np.argmax(out, axis=1) == np.argmax(ref, axis=1)))


def nhwc_nodes(path: Path, workdir: Path) -> dict[str, int]:
    """Node counts by domain of the graph onnxruntime really runs with ``prefer_nhwc`` on CUDA
    (saved through ``optimized_model_filepath``): NHWC kernels live in ``com.ms.internal.nhwc``."""
    import onnx

    saved = workdir / f"{Path(path).stem}.nhwc-optimized.onnx"
    ort_session(path, "cuda", nhwc=True, optimized_path=saved)
    counts: dict[str, int] = {}
    for node in onnx.load(str(saved), load_external_data=False).graph.node:
        counts[node.domain or "ai.onnx"] = counts.get(node.domain or "ai.onnx", 0) + 1
    saved.unlink(missing_ok=True)
    return counts
