"""Adapters: the only way blackbox_lime reaches a classifier.

``ClassifierAdapter.predict(images) -> probs`` is the whole protocol; see :mod:`adapters.base`.
"""

from adapters.base import ClassifierAdapter, ModelInfo
from adapters.errors import (AdapterError, AdapterTimeout, BudgetExhausted, ConnectionFailed, ModelLoadError,
                             ResponseError, ServerError)

__all__ = [
    "AdapterError", "AdapterTimeout", "BudgetExhausted", "ClassifierAdapter", "ConnectionFailed", "ModelInfo",
    "ModelLoadError", "ResponseError", "ServerError", "load_adapter",
]


def load_adapter(model: str, **kwargs: object) -> ClassifierAdapter:
    """An adapter for ``model``: a path to an ``.onnx`` file (remote URLs come with the remote adapters)."""
    from pathlib import Path

    if "://" in model:
        raise ValueError(
            f"Remote models ({model.split('://')[0]}://) are not supported by this version; pass a local .onnx file.")
    from adapters.onnx import OnnxAdapter

    p = Path(model)
    return OnnxAdapter(p, **kwargs)  # type: ignore[arg-type]
