"""The fillers: what hidden patches are filled with. GM's MAE (generative masking, through onnxruntime) and
the classic fills (mean, blur, zero, Telea inpainting). Each one is registered by name in
:mod:`blackbox_lime.fill.registry`, which is where a new fill is added.

The MAE (``onnx/mae_recon.onnx`` by default; see the MAE contract in the README) takes a
normalised image and a patch mask and returns the image with hidden patches predicted and visible
ones copied. The perturbed images therefore stay close to the data manifold instead of carrying
black or mean blocks. The classic fills (mean, blur, zero) are here too, for ablations and for
classic LIME.

A filler maps the explanation canvas (the classifier's input size and channels) to the MAE's size
and channels and back: a grayscale canvas is replicated to a 3-channel MAE and the reconstruction
averaged back; a canvas of another size is resized, and an MAE patch is hidden whenever any of its
pixels is hidden, so no hidden pixel ever conditions a fill.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from blackbox_lime.adapters.onnx import make_session, read_metadata
from blackbox_lime.models import bundled_model

log = logging.getLogger(__name__)


class Filler(ABC):
    """Makes fill content for hidden pixels. ``fill`` returns whole images; callers composite."""

    name: str = ""
    notes: list[str]

    @abstractmethod
    def fill(self, canvas: np.ndarray, hidden_px: np.ndarray) -> np.ndarray:
        """canvas: float32 (H, W, C) in [0, 1]; hidden_px: bool (G, H, W) -> float32 (G, H, W, C)."""

    def depends_on_mask(self) -> bool:
        return True


class ConstantFiller(Filler):
    """Fill with the image's per-channel mean ("mean") or with zeros ("zero")."""

    def __init__(self, kind: str) -> None:
        self.name, self.notes = kind, []

    def fill(self, canvas: np.ndarray, hidden_px: np.ndarray) -> np.ndarray:
        value = canvas.mean(axis=(0, 1)) if self.name == "mean" else np.zeros(canvas.shape[2], np.float32)
        out = np.empty((hidden_px.shape[0],) + canvas.shape, np.float32)
        out[...] = value
        return out

    def depends_on_mask(self) -> bool:
        return False


class BlurFiller(Filler):
    """Fill with a Gaussian blur of the image (sigma = ``sigma_px``), the classic "blurred" substrate."""

    def __init__(self, sigma_px: float) -> None:
        self.name, self.notes, self.sigma = "blur", [], float(sigma_px)

    def fill(self, canvas: np.ndarray, hidden_px: np.ndarray) -> np.ndarray:
        blurred = cv2.GaussianBlur(canvas, (0, 0), self.sigma, borderType=cv2.BORDER_REFLECT)
        blurred = blurred.reshape(canvas.shape)
        return np.broadcast_to(blurred, (hidden_px.shape[0],) + canvas.shape).copy()

    def depends_on_mask(self) -> bool:
        return False


class InpaintFiller(Filler):
    """Fill hidden patches by OpenCV's Telea inpainting (radius ``radius_px``) from the visible pixels around them:
    smooth continuations of the surrounding anatomy, without a learned model (shap's default image masker).
    Each sample's hidden set is inpainted on its own, so it costs more than a static fill (about 20 ms per
    224 x 224 sample on one core; the samples of a batch run on every core).

    OpenCV's Telea on float images is tuned for the 0..255 range: on [0, 1] values it overshoots far outside the
    image's range (a constant 0.4 image came back between -1.03 and 1.83), so planes are inpainted at 255 times
    their value and scaled back."""

    def __init__(self, radius_px: float = 3.0) -> None:
        self.name, self.notes, self.radius = "telea", [], float(radius_px)

    def fill(self, canvas: np.ndarray, hidden_px: np.ndarray) -> np.ndarray:
        c = canvas.shape[2]
        grey = c == 1 or all(np.array_equal(canvas[..., 0], canvas[..., k]) for k in range(1, c))
        planes = [np.ascontiguousarray(canvas[..., k], np.float32) * np.float32(255.0) for k in range(1 if grey else c)]
        masks = hidden_px.astype(np.uint8)
        out = np.empty((len(masks),) + canvas.shape, np.float32)

        def one(i: int) -> None:
            if masks[i].all():  # nothing visible to inpaint from: the image's mean
                out[i] = canvas.mean(axis=(0, 1))
            elif not masks[i].any():
                out[i] = canvas
            else:
                filled = [cv2.inpaint(p, masks[i], self.radius, cv2.INPAINT_TELEA) for p in planes]
                out[i] = np.clip(np.stack(filled * c if grey else filled, axis=-1) / np.float32(255.0), 0.0, 1.0)

        # cv2.inpaint runs on one core and releases the GIL: one thread per core (the same result as a loop)
        with ThreadPoolExecutor(max(1, min(len(masks), os.cpu_count() or 1))) as pool:
            list(pool.map(one, range(len(masks))))
        return out


class MAEFiller(Filler):
    """Fill hidden pixels with the reconstruction of a masked autoencoder (``mae_recon.onnx``).

    Parameters
    ----------
    path : the MAE graph; default the bundled ``onnx/mae_recon.onnx``.
    batch_size : images per onnxruntime run.
    threads, device : passed to onnxruntime (see :func:`blackbox_lime.adapters.onnx.make_session`).
    """

    def __init__(self, path: str | Path | None = None, batch_size: int = 64, threads: int | None = None,
                 device: str = "auto") -> None:
        self.name, self.notes = "mae", []
        self.path, self.session, self.provider, meta = open_mae(path, "mae_recon.onnx", threads, device)
        self.size, self.patch, self.channels, self.mean, self.std = meta
        self.grid = self.size // self.patch
        self.batch_size = batch_size
        self.runs = 0  # images reconstructed

    def describe(self) -> dict[str, Any]:
        return {"path": self.path.name, "provider": self.provider, "image_size": self.size, "patch_size": self.patch,
                "channels": self.channels}

    def _to_mae(self, canvas: np.ndarray) -> np.ndarray:
        """canvas (H, W, C) -> (C_mae, S, S) normalised."""
        return mae_input(canvas, self.size, self.channels, self.mean, self.std, self.notes)

    def _patch_mask(self, hidden_px: np.ndarray) -> np.ndarray:
        """bool (G, H, W) on the canvas -> float32 (G, L): an MAE patch is hidden if any of its pixels is."""
        g = hidden_px.shape[0]
        h = hidden_px.astype(np.uint8)
        if h.shape[1:] != (self.size, self.size):
            # Max over each resized block keeps every hidden canvas pixel inside a hidden MAE patch.
            h = np.stack([cv2.resize(m, (self.size, self.size), interpolation=cv2.INTER_NEAREST) for m in h])
            k = np.ones((3, 3), np.uint8)
            h = np.stack([cv2.dilate(m, k) for m in h])
        blocks = h.reshape(g, self.grid, self.patch, self.grid, self.patch)
        return blocks.max(axis=(2, 4)).reshape(g, -1).astype(np.float32)

    def fill(self, canvas: np.ndarray, hidden_px: np.ndarray) -> np.ndarray:
        x = self._to_mae(canvas)  # (C, S, S)
        masks = self._patch_mask(hidden_px)  # (G, L)
        outs = []
        for i in range(0, len(masks), self.batch_size):
            pm = masks[i:i + self.batch_size]
            batch = np.broadcast_to(x, (len(pm),) + x.shape).copy()
            recon = self.session.run(["recon"], {"image": batch, "patch_mask": pm})[0]  # (B, C, S, S)
            self.runs += len(pm)
            outs.append(recon)
        recon = np.concatenate(outs) * self.std + self.mean
        recon = np.clip(recon, 0.0, 1.0).transpose(0, 2, 3, 1)  # (G, S, S, C_mae)
        h, w, c = canvas.shape
        if c != self.channels:
            recon = recon.mean(axis=3, keepdims=True) if c == 1 else np.repeat(recon, c, axis=3)
        if (h, w) != (self.size, self.size):
            recon = np.stack([cv2.resize(r, (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w, c) for r in recon])
        return recon.astype(np.float32)


def open_mae(path: str | Path | None, default: str, threads: int | None = None, device: str = "auto"
             ) -> tuple[Path, Any, str, tuple[int, int, int, np.ndarray, np.ndarray]]:
    """An MAE graph's session and its metadata: (path, session, provider, (image_size, patch_size,
    channels, mean (1, C, 1, 1), std (1, C, 1, 1))). ``default`` names the bundled graph used when
    ``path`` is None."""
    where = Path(path) if path else bundled_model(default)
    session, provider = make_session(where, threads, device)
    meta = read_metadata(session)
    try:
        info = (int(meta["image_size"]), int(meta["patch_size"]), int(meta["channels"]),
                np.asarray(meta["mean"], np.float32).reshape(1, -1, 1, 1),
                np.asarray(meta["std"], np.float32).reshape(1, -1, 1, 1))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{where.name} lacks the MAE metadata (image_size, patch_size, channels, mean, std). "
                         "Export it with onnx/export_mae.py.") from exc
    return where, session, provider, info


def mae_input(canvas: np.ndarray, size: int, channels: int, mean: np.ndarray, std: np.ndarray,
              notes: list[str]) -> np.ndarray:
    """Map a canvas (H, W, C) in [0, 1] to an MAE's input (channels, size, size), normalised by its mean/std
    (each (1, channels, 1, 1)). A grayscale canvas is replicated, a colour one averaged for a 1-channel
    MAE; what was done is appended to ``notes`` once."""
    x = canvas
    if x.shape[:2] != (size, size):
        x = cv2.resize(x, (size, size), interpolation=cv2.INTER_AREA if x.shape[0] > size
                       else cv2.INTER_LINEAR).reshape(size, size, -1)
    c = x.shape[2]
    if c != channels:
        if c == 1:
            x = np.repeat(x, channels, axis=2)
            note = f"grayscale image replicated to the MAE's {channels} channels"
        elif channels == 1:
            x = x.mean(axis=2, keepdims=True)
            note = "colour image averaged to the MAE's single channel"
        else:
            raise ValueError(f"The MAE takes {channels} channels; the image has {c}.")
        if note not in notes:
            notes.append(note)
    x = x.transpose(2, 0, 1)[None]
    return ((x - mean) / std)[0].astype(np.float32)
