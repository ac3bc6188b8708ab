"""The local reference of the file-API tests: a model run on exactly the pixels an 8-bit PNG carries."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from blackbox_lime.adapters.base import ClassifierAdapter, ModelInfo
from blackbox_lime.adapters.onnx import OnnxAdapter


class Quantised(ClassifierAdapter):
    """The local model on the pixels a PNG carries (round(x * 255) / 255), one image per run, as a file-API server
    (the loopback one, TorchServe's handler) runs it."""

    def __init__(self, path: str) -> None:
        super().__init__(max_batch=1)
        self.inner = OnnxAdapter(Path(path), max_batch=1)

    @property
    def info(self) -> ModelInfo:
        return self.inner.info

    def _predict_batch(self, images: np.ndarray) -> np.ndarray:
        q = np.round(np.clip(images, 0, 1) * 255).astype(np.uint8).astype(np.float32) / 255.0
        return self.inner.predict(q)
