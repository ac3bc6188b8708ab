"""Declared preprocessing, shared by every adapter: [0, 1] images in, the model's tensor out, and back.

The explainer always hands an adapter float32 images (N, H, W, C) in [0, 1] at the model's input
size. What the model really takes (layout, dtype, normalisation) and what it returns (probabilities
or logits) is declared once in a :class:`TensorSpec`, which the local ONNX adapter and every remote
adapter use the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import ResponseError

# Open Inference Protocol datatype names <-> numpy dtypes (only those an image classifier takes).
OIP_DTYPES = {"FP32": "float32", "FP16": "float16", "FP64": "float64", "UINT8": "uint8"}
DTYPE_TO_OIP = {v: k for k, v in OIP_DTYPES.items()}

# Output tensors a server may answer with (raw bytes, little-endian); BF16 has no numpy dtype: the top half of a float32.
OUTPUT_DTYPES = {**OIP_DTYPES, "BF16": "bfloat16", "INT32": "int32", "INT64": "int64"}


def decode_raw_output(raw: bytes, datatype: str) -> np.ndarray:
    """Raw little-endian tensor bytes of an OIP ``datatype`` -> float64 values (flat)."""
    if datatype == "BF16":
        if len(raw) % 2:
            raise ValueError(f"{len(raw)} bytes is not a whole number of BF16 values")
        halves = np.frombuffer(raw, "<u2").astype(np.uint32) << 16
        return halves.view(np.float32).astype(np.float64)
    return np.frombuffer(raw, np.dtype(OUTPUT_DTYPES[datatype]).newbyteorder("<")).astype(np.float64)


def output_itemsize(datatype: str) -> int:
    return 2 if datatype == "BF16" else np.dtype(OUTPUT_DTYPES[datatype]).itemsize

# What a classifier's output row means. Exclusive: one class per image, the row sums to 1 (after a softmax for
# logits). Multi-label: K independent findings, each its own probability (after a sigmoid per column for logits).
OUTPUT_KINDS = ("probabilities", "logits", "multilabel", "multilabel_logits")
MULTILABEL_KINDS = ("multilabel", "multilabel_logits")


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


@dataclass(frozen=True)
class TensorSpec:
    """How images become the model's input tensor, and how its output becomes probabilities.

    Parameters
    ----------
    layout : "NCHW" or "NHWC".
    dtype : "float32", "float16", "float64" or "uint8" (uint8 sends round(pixels * 255)).
    mean, std : per-channel normalisation of [0, 1] pixels, applied before the cast (default none).
    output : one of :data:`OUTPUT_KINDS`: "probabilities" (exclusive classes, rows sum to 1), "logits"
        (softmax over classes, or a sigmoid for one column), "multilabel" (independent per-finding
        probabilities) or "multilabel_logits" (a sigmoid per column).
    """

    layout: str = "NCHW"
    dtype: str = "float32"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    output: str = "probabilities"

    def __post_init__(self) -> None:
        if self.layout not in ("NCHW", "NHWC"):
            raise ValueError(f"layout must be 'NCHW' or 'NHWC'. Got {self.layout!r} instead.")
        if self.dtype not in DTYPE_TO_OIP:
            raise ValueError(f"dtype must be one of {sorted(DTYPE_TO_OIP)}. Got {self.dtype!r} instead.")
        if self.output not in OUTPUT_KINDS:
            raise ValueError(f"output must be one of {', '.join(repr(k) for k in OUTPUT_KINDS)}. Got {self.output!r} "
                             "instead.")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if v is not None:
                if isinstance(v, (str, bytes)) or not isinstance(v, Sequence) or not v:
                    raise ValueError(f"{name} must be a list of per-channel numbers. Got {v!r} instead.")
                object.__setattr__(self, name, tuple(float(x) for x in v))
        if self.std is not None and min(self.std) <= 0:
            raise ValueError(f"std must be positive per channel. Got {self.std!r} instead.")

    @property
    def oip_datatype(self) -> str:
        return DTYPE_TO_OIP[self.dtype]

    def encode(self, images: np.ndarray) -> np.ndarray:
        """images: float32 (n, H, W, C) in [0, 1] -> the model's tensor, C-contiguous."""
        x = images
        if self.mean is not None:
            x = x - np.asarray(self.mean, np.float32).reshape(1, 1, 1, -1)
        if self.std is not None:
            x = x / np.asarray(self.std, np.float32).reshape(1, 1, 1, -1)
        if self.layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)  # (n, C, H, W)
        if self.dtype == "uint8":
            return np.ascontiguousarray(np.round(np.clip(x, 0, 1) * 255).astype(np.uint8))
        return np.ascontiguousarray(x, dtype=self.dtype)

    def decode(self, out: np.ndarray, n: int, where: str = "the model") -> np.ndarray:
        """The model's raw output (n, K), (n, 1) or (n,) -> float64 probabilities (n, K) or (n,)."""
        raw = np.asarray(out)
        if raw.dtype.kind in "iub":
            raise ResponseError(
                f"{where} returned {raw.dtype} values (shape {raw.shape}), such as a class index or a label; "
                "explaining needs class probabilities or logits. Export or serve the model's probability or logit "
                "output (and declare logits with --output-kind logits, or kind = \"logits\" in the profile's [output]).")
        out = np.asarray(raw, np.float64)
        if out.ndim == 2 and out.shape[1] == 1:
            out = out[:, 0]
        if out.ndim not in (1, 2) or out.shape[0] != n:
            raise ResponseError(f"{where} returned an output of shape {out.shape}; expected ({n}, K) or ({n},).")
        if self.output in ("logits", "multilabel_logits"):
            if not np.all(np.isfinite(out)):
                raise ResponseError(f"{where} returned NaN or infinite logits. Check the model and its preprocessing.")
            out = softmax(out) if out.ndim == 2 and self.output == "logits" else sigmoid(out)
        return out

    @property
    def multilabel(self) -> bool:
        return self.output in MULTILABEL_KINDS
