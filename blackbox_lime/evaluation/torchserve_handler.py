"""A TorchServe handler for an ONNX image classifier that answers as TorchServe's stock ``image_classifier`` does.

The stock handler (``ts.torch_handler.image_classifier``) needs torchvision, which does not install beside this
project's torch; this one keeps its contract with onnxruntime and Pillow instead: one encoded image per request
(raw body, or a multipart field, or a base64 string), answered with the ``topk`` most probable labels as a JSON
object ``{"label": probability, ...}`` in decreasing order (``topk`` 5 unless the archive's model-config.yaml sets
``handler: {topk: K}``). Labels come from the archive's ``index_to_name.json``, as for the stock handler. The image
is decoded to RGB, resized to the model's input size if it differs, scaled to [0, 1] and laid out NCHW.

It runs inside TorchServe's worker, so it imports nothing of blackbox_lime (see torchserve_server.py).
"""

from __future__ import annotations

import base64
import io
import json
import os
from typing import Any

import numpy as np


class OnnxImageClassifier:
    def __init__(self) -> None:
        self.initialized = False
        self.topk = 5

    def initialize(self, context: Any) -> None:
        import onnxruntime as ort

        model_dir = context.system_properties.get("model_dir")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.session = ort.InferenceSession(os.path.join(model_dir, "model.onnx"), opts,
                                            providers=["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        self.input_name, self.size = inp.name, (int(inp.shape[2]), int(inp.shape[3]))
        with open(os.path.join(model_dir, "index_to_name.json")) as f:
            mapping = json.load(f)
        self.labels = [mapping[str(i)] for i in range(len(mapping))]
        config = getattr(context, "model_yaml_config", None) or {}
        self.topk = int((config.get("handler") or {}).get("topk", self.topk))
        self.initialized = True

    def _decode(self, row: dict[str, Any]) -> np.ndarray:
        from PIL import Image

        data = row.get("data") or row.get("body")
        if data is None:  # a multipart field under another name
            data = next(iter(row.values()))
        if isinstance(data, str):
            data = base64.b64decode(data)
        image = Image.open(io.BytesIO(bytes(data))).convert("RGB")
        if image.size != (self.size[1], self.size[0]):
            image = image.resize((self.size[1], self.size[0]), Image.Resampling.BILINEAR)
        return np.asarray(image, np.float32).transpose(2, 0, 1) / np.float32(255.0)

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[dict[str, float]]:
        x = np.stack([self._decode(row) for row in data])
        probs = np.asarray(self.session.run(None, {self.input_name: x})[0], np.float64)
        out = []
        for p in probs:
            order = np.argsort(-p, kind="stable")[:self.topk]
            out.append({self.labels[i]: float(p[i]) for i in order})
        return out


_service = OnnxImageClassifier()


def handle(data: list[dict[str, Any]] | None, context: Any) -> list[dict[str, float]] | None:
    """TorchServe's module-level entry point."""
    if not _service.initialized:
        _service.initialize(context)
    if data is None:
        return None
    return _service.handle(data, context)
