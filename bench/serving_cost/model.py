"""The model work the two comparison servers share: an onnxruntime session on the ONNX file named by
``SERVING_COST_ONNX``, its card's preprocessing in PIL/numpy, softmax and top-k.

Both servers do exactly this per image, so what differs between them and the service is the serving
path alone. The session has the service's CPU settings (``service.engine``: intra-op threads not
spinning between runs), one thread, since a 28x28 image at batch 1 gives a second one nothing to do.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

ONNX_ENV = "SERVING_COST_ONNX"  # the fp32 ONNX file; its card is the JSON beside it


class Model:
    def __init__(self, onnx_path: str | None = None) -> None:
        path = Path(onnx_path or os.environ[ONNX_ENV])
        self.card = json.loads(path.with_suffix(".json").read_text())
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        channels, height, width = self.card["input_shape"]
        self.size = (width, height)
        self.mean = np.asarray(self.card["mean"], np.float32).reshape(channels, 1, 1)
        self.std = np.asarray(self.card["std"], np.float32).reshape(channels, 1, 1)

    def tensor(self, image: Image.Image) -> np.ndarray:
        """(C, H, W) float32, normalised as the card says (Fashion-MNIST needs no crop: 28x28 in)."""
        image = image.convert(self.card["channel_mode"]).resize(self.size, Image.Resampling.BILINEAR)
        x = np.asarray(image, np.float32) / 255.0
        x = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)
        return (x - self.mean) / self.std

    def classify(self, images: list[Image.Image], top_k: int = 5) -> list[list[dict]]:
        """Top ``top_k`` {label, class_index, probability} of each image, in one onnxruntime call."""
        logits = self.session.run(None, {self.input: np.stack([self.tensor(i) for i in images])})[0]
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        names = self.card["class_names"]
        return [[{"label": names[c], "class_index": int(c), "probability": float(p[c])}
                 for c in np.argsort(-p)[:top_k]] for p in probs]

    def classify_bytes(self, data: bytes, top_k: int = 5) -> list[dict]:
        with Image.open(io.BytesIO(data)) as image:
            return self.classify([image], top_k)[0]
