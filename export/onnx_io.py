"""ONNX files: export from PyTorch, fp16 and int8 variants, metadata inside the file, sessions."""
from __future__ import annotations

import json
import logging
import os
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

log = logging.getLogger(__name__)
OPSET = 18
INPUT_NAME, OUTPUT_NAME = "images", "logits"
METADATA_KEY = "resnet_serving"  # metadata_props key holding the JSON metadata
for _chatty in ("onnxscript", "onnx_ir", "torch.onnx", "torch.export"):  # per-pass INFO lines, "torchvision is not installed"
    logging.getLogger(_chatty).setLevel(logging.ERROR)


def export_fp32(model: nn.Module, input_shape: list[int], path: Path) -> None:
    """One self-contained ONNX file, input ``images`` (N, C, H, W) with a dynamic N, output ``logits``."""
    example = torch.randn(2, *input_shape)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's chatter about its own internals
        torch.onnx.export(
            model.eval(), (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            opset_version=OPSET, dynamo=True, external_data=False, verbose=False,
            dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=4096)}},
        )
    proto = onnx.load(str(path))
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    proto.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    onnx.save(proto, str(path))


def convert_fp16(src: Path, dst: Path) -> None:
    """fp16 weights and activations for the CUDA provider; fp32 ``images``/``logits`` kept at the
    boundary so clients and the service feed the same tensors to every precision."""
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    converted = OnnxModel(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True))
    converted.topological_sort()  # the converter appends its boundary Casts at the end of the graph
    onnx.save(converted.model, str(dst))


class _Calibration:
    """onnxruntime's CalibrationDataReader protocol over preprocessed images."""

    def __init__(self, images: np.ndarray, batch_size: int = 32) -> None:
        self._batches: Iterator[np.ndarray] = iter(np.array_split(images, max(1, len(images) // batch_size)))

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)}


def quantize_int8(src: Path, dst: Path, calibration: np.ndarray) -> None:
    """Static QDQ int8 for the CPU provider: per-channel int8 weights, uint8 activations (the U8S8
    pairing onnxruntime's x86 kernels run fastest, VNNI included), MinMax-calibrated."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = dst.with_suffix(".prep.onnx")
    try:
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared), str(dst), _Calibration(calibration), quant_format=QuantFormat.QDQ,
            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    finally:
        prepared.unlink(missing_ok=True)
        for leftover in dst.parent.glob("*.onnx.data"):
            leftover.unlink()


def embed_metadata(path: Path, metadata: dict[str, Any]) -> None:
    """Stores the metadata inside the ONNX file (``metadata_props``), so the file alone suffices."""
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    proto.producer_name = "resnet-serving"
    tmp = path.with_suffix(".tmp")
    onnx.save(proto, str(tmp))
    os.replace(tmp, path)


def read_embedded_metadata(path: Path) -> dict[str, Any]:
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return json.loads(props[METADATA_KEY])


def op_counts(path: Path) -> dict[str, int]:
    return dict(Counter(node.op_type for node in onnx.load(str(path)).graph.node))


def cpu_session(path: Path, threads: int | None = None) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    assert session.get_providers()[0] == "CPUExecutionProvider", session.get_providers()
    return session
