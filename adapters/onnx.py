"""A local ONNX classifier through onnxruntime: the embedded default, and the tests' classifier.

onnxruntime comes from the ``cpu`` extra (``onnxruntime``) or the ``gpu`` extra
(``onnxruntime-gpu``); install exactly one. CUDA is used only when the session really runs on it
(``session.get_providers()[0]``): onnxruntime-gpu lists CUDA even where no CUDA library loads and
then falls back to the CPU silently, so the provider actually used is logged and reported.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .base import ClassifierAdapter, ModelInfo
from .errors import AdapterError, ModelLoadError
from .preprocess import TensorSpec

log = logging.getLogger(__name__)

ORT_MISSING = (
    "onnxruntime is not installed. Install exactly one of the two extras: "
    "pip install 'blackbox-lime[cpu]' (onnxruntime) or pip install 'blackbox-lime[gpu]' (onnxruntime-gpu)."
)


def import_onnxruntime() -> Any:
    """Import onnxruntime, or raise a ModelLoadError that names both extras."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ModelLoadError(ORT_MISSING) from exc
    return ort


def make_session(path: str | Path, threads: int | None = None, device: str = "auto") -> tuple[Any, str]:
    """An onnxruntime session on CUDA when it really works, else the CPU; returns (session, provider).

    device: "auto" (CUDA if it loads, else CPU), "cpu" or "cuda" (an error if CUDA does not load).
    """
    ort = import_onnxruntime()
    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.onnx"))
        listed = (f" It holds {', '.join(inside[:8])}{' ...' if len(inside) > 8 else ''}: pass one of them."
                  if inside else " It holds no .onnx file.")
        raise ModelLoadError(f"{path} is a folder, not a model file.{listed}")
    if not path.is_file():
        raise ModelLoadError(f"Model file not found: {path}. Pass the path to an .onnx file.")
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda'. Got {device!r} instead.")
    providers = ["CPUExecutionProvider"]
    if device != "cpu" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), opts, providers=providers)
    except Exception as exc:  # onnxruntime raises several private exception types
        raise ModelLoadError(
            f"{path.name} is not a loadable ONNX model ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). "
            "Pass an .onnx file exported for onnxruntime.") from exc
    provider = session.get_providers()[0]
    if device == "cuda" and provider != "CUDAExecutionProvider":
        raise ModelLoadError(
            "CUDA was requested but onnxruntime runs on the CPU: install onnxruntime-gpu (the 'gpu' extra) "
            "with matching CUDA libraries, or use device='auto'.")
    log.info("onnxruntime session for %s runs on %s", path.name, provider)
    return session, provider


def read_metadata(session: Any) -> dict[str, Any]:
    """The model's metadata_props, with JSON values decoded."""
    props = session.get_modelmeta().custom_metadata_map
    out: dict[str, Any] = {}
    for k, v in props.items():
        try:
            out[k] = json.loads(v)
        except (TypeError, ValueError):
            out[k] = v
    return out


class OnnxAdapter(ClassifierAdapter):
    """Classifier from a local ``.onnx`` file.

    Parameters
    ----------
    path : the model file.
    input_size : (height, width) the model takes; default from the model's metadata or input shape.
    mean, std : per-channel normalisation applied to [0, 1] pixels before the model (default none).
    layout : "NCHW" or "NHWC"; default from metadata, else guessed from the input shape.
    dtype : "float32", "float16" or "uint8" (uint8 feeds round(pixels * 255)).
    output : "probabilities", "logits" (softmax, or a sigmoid for one output column), "multilabel" (independent
        per-finding probabilities) or "multilabel_logits" (a sigmoid per column); default from metadata.
    class_names, abnormal_index : default from metadata, else ("normal", "abnormal") and the last class.
    max_batch, budget : see :class:`~blackbox_lime.adapters.base.ClassifierAdapter`.
    threads : onnxruntime intra-op threads (default: onnxruntime's choice).
    device : "auto", "cpu" or "cuda".
    """

    def __init__(self, path: str | Path, *, input_size: tuple[int, int] | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 layout: str | None = None, dtype: str = "float32", output: str | None = None,
                 class_names: Sequence[str] | None = None, abnormal_index: int | None = None,
                 max_batch: int = 64, budget: int | None = None, threads: int | None = None,
                 device: str = "auto") -> None:
        super().__init__(max_batch=max_batch, budget=budget)
        self.path = Path(path)
        self.session, self.provider = make_session(self.path, threads, device)
        meta = read_metadata(self.session)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise ModelLoadError(f"{self.path.name} has {len(inputs)} inputs; a classifier must take exactly one image input.")
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name
        shape = list(inputs[0].shape)
        if len(shape) != 4:
            raise ModelLoadError(f"{self.path.name} takes an input of rank {len(shape)} ({shape}); expected 4 (N, C, H, W) or (N, H, W, C).")
        if layout is None:
            layout = meta.get("layout") or ("NHWC" if shape[3] in (1, 3) and shape[1] not in (1, 3) else "NCHW")
        if layout not in ("NCHW", "NHWC"):
            raise ValueError(f"layout must be 'NCHW' or 'NHWC'. Got {layout!r} instead.")
        self.layout = layout
        c_dim, h_dim, w_dim = (shape[1], shape[2], shape[3]) if layout == "NCHW" else (shape[3], shape[1], shape[2])
        size = meta.get("image_size")
        if input_size is None:
            if isinstance(h_dim, int) and isinstance(w_dim, int):
                input_size = (h_dim, w_dim)
            elif isinstance(size, int):
                input_size = (size, size)
            else:
                raise ModelLoadError(f"{self.path.name} has a dynamic image size; declare input_size=(height, width).")
        input_size = (int(input_size[0]), int(input_size[1]))
        for got, want, what in ((h_dim, input_size[0], "height"), (w_dim, input_size[1], "width")):
            if isinstance(got, int) and got != want:
                raise ModelLoadError(
                    f"{self.path.name} takes input {what} {got} but {want} was declared; the model's input shape is {shape}. "
                    "Declare the model's own input size.")
        channels = c_dim if isinstance(c_dim, int) else int(meta.get("channels", 3))
        if channels not in (1, 3):
            raise ModelLoadError(f"{self.path.name} takes {channels} channels; only 1 or 3 are supported.")
        if isinstance(shape[0], int) and shape[0] != max_batch:
            if shape[0] == 1:
                self.max_batch = self.request_size = 1
            else:
                raise ModelLoadError(f"{self.path.name} has a fixed batch of {shape[0]}; export it with a dynamic batch.")
        self.spec = TensorSpec(layout=layout, dtype=dtype, mean=None if mean is None else tuple(mean),
                               std=None if std is None else tuple(std), output=output or meta.get("output", "probabilities"))
        self.dtype, self.output = self.spec.dtype, self.spec.output
        names = tuple(class_names or meta.get("class_names") or ("normal", "abnormal"))
        ab = abnormal_index if abnormal_index is not None else int(meta.get("abnormal_index", len(names) - 1))
        self._info = ModelInfo(input_size, channels, names, ab, self.path.name,
                               {"provider": self.provider, "layout": layout, "dtype": dtype, "output": self.output})

    @property
    def info(self) -> ModelInfo:
        return self._info

    def _predict_batch(self, images: np.ndarray) -> np.ndarray:
        x = self.spec.encode(images)  # (n, C, H, W) or (n, H, W, C) in the model's dtype
        try:
            out = self.session.run([self.output_name], {self.input_name: x})[0]
        except Exception as exc:
            raise AdapterError(f"onnxruntime failed on {self.path.name}: {str(exc).splitlines()[0][:300]}") from exc
        return self.spec.decode(out, images.shape[0], self.path.name)

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]
