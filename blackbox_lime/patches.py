"""Fixed square patches and the random patch masks that LIME samples over."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class PatchGrid:
    """A grid of ``patch`` x ``patch`` squares over a ``height`` x ``width`` canvas.

    Patches are numbered row by row. When a side is not a multiple of ``patch`` the last row or
    column of patches is narrower.
    """

    height: int
    width: int
    patch: int

    def __post_init__(self) -> None:
        if self.patch > min(self.height, self.width):
            raise ValueError(
                f"The patch size ({self.patch} px) is larger than the image ({self.height}x{self.width} px). "
                "Use a smaller `patch_size` or a larger image.")

    @property
    def rows(self) -> int:
        return math.ceil(self.height / self.patch)

    @property
    def cols(self) -> int:
        return math.ceil(self.width / self.patch)

    @property
    def n_patches(self) -> int:
        return self.rows * self.cols

    def pixel_index(self) -> np.ndarray:
        """int (height, width): the patch number of every pixel."""
        r = np.arange(self.height) // self.patch
        c = np.arange(self.width) // self.patch
        return r[:, None] * self.cols + c[None, :]

    def hidden_pixels(self, visible: np.ndarray) -> np.ndarray:
        """visible: bool (N, P) -> hidden: bool (N, height, width)."""
        n = visible.shape[0]
        if self.height % self.patch == 0 and self.width % self.patch == 0:
            # Broadcast patch flags instead of gathering through a per-pixel index.
            hid = ~visible.reshape(n, self.rows, 1, self.cols, 1)
            shape5 = (n, self.rows, self.patch, self.cols, self.patch)
            return np.broadcast_to(hid, shape5).reshape(n, self.height, self.width)
        return ~visible[:, self.pixel_index()]

    def composite(self, visible: np.ndarray, canvas: np.ndarray, fills: np.ndarray, which: np.ndarray | None,
                  out: np.ndarray | None = None) -> np.ndarray:
        """Perturbed images: ``canvas`` where a patch is visible, the fill where it is hidden.

        visible: bool (N, P); canvas: (H, W, C); fills: (G, H, W, C); which: int (N,) the fill of
        each sample (None: fill 0 for all); out: an optional float32 (N, H, W, C) buffer to reuse
        (fresh 100 MB allocations per batch cost page faults). -> float32 (N, H, W, C).
        """
        n = visible.shape[0]
        which = np.zeros(n, np.int64) if which is None else which
        out = np.empty((n,) + canvas.shape, np.float32) if out is None else out
        # One uint8 pixel mask per sample and OpenCV's masked copy (SIMD, releases the GIL): about twice
        # as fast as numpy's copyto(where=) over broadcast patch flags, whose inner loop is only C long.
        hidden = np.ascontiguousarray(self.hidden_pixels(visible)).view(np.uint8)
        canvas = np.ascontiguousarray(canvas, np.float32)
        fills = np.ascontiguousarray(fills, np.float32)

        def copy_rows(lo: int, hi: int) -> None:
            for i in range(lo, hi):
                dst = out[i]
                np.copyto(dst, canvas)
                res = cv2.copyTo(fills[which[i]], hidden[i], dst)
                if res is not dst:  # OpenCV could not write into this view in place
                    dst[...] = res.reshape(dst.shape)

        half = n // 2
        if n >= 16:  # two threads: the copies are memory-bound and a second core still adds bandwidth
            worker = threading.Thread(target=copy_rows, args=(half, n))
            worker.start()
            copy_rows(0, half)
            worker.join()
        else:
            copy_rows(0, n)
        return out

    def upsample(self, weights: np.ndarray, out_hw: tuple[int, int], sigma: float = 0.0,
                 guide: np.ndarray | None = None, guide_radius: float = 0.0, guide_eps: float = 1e-3) -> np.ndarray:
        """Patch weights (P,) -> a smooth float32 map (out_h, out_w) without block edges.

        Each weight sits at its patch centre; the map between centres is bicubic, so a patch's
        value is reached at its centre and blends into its neighbours. ``sigma`` > 0 then smooths the
        canvas-sized map with a Gaussian of ``sigma`` patches (reflected at the border). With a ``guide`` (the
        image at the canvas size, (H, W) or (H, W, C) in [0, 1]) and ``guide_radius`` > 0 (in patches), the canvas-sized
        map is then passed through a guided filter (:func:`guided_filter`) of that radius, so that within a patch's
        reach it follows the image's edges.
        """
        grid = np.asarray(weights, np.float32).reshape(self.rows, self.cols)
        # Resize to the canvas first (centres align: cv2 maps pixel centres), then to the output.
        canvas = cv2.resize(grid, (self.width, self.height), interpolation=cv2.INTER_CUBIC)
        if sigma > 0:
            canvas = cv2.GaussianBlur(canvas, (0, 0), sigma * self.patch, borderType=cv2.BORDER_REFLECT_101)
        if guide is not None and guide_radius > 0:
            grey = np.asarray(guide, np.float32)
            grey = grey.mean(axis=2) if grey.ndim == 3 else grey
            if grey.shape != canvas.shape:
                raise ValueError(f"The guide is {grey.shape[1]}x{grey.shape[0]} px; the canvas is "
                                 f"{self.width}x{self.height}.")
            canvas = guided_filter(grey, canvas, max(1, int(round(guide_radius * self.patch))), guide_eps)
        if (self.height, self.width) != tuple(out_hw):
            canvas = cv2.resize(canvas, (out_hw[1], out_hw[0]), interpolation=cv2.INTER_LINEAR)
        return canvas.astype(np.float32)


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He, Sun and Tang's guided filter (ECCV 2010) of ``src`` by a greyscale ``guide``, both float (H, W).

    In every (2 radius + 1)-square window the output is a linear function a * guide + b fitted to ``src`` by least
    squares with a ridge ``eps`` on a; each pixel averages the fits of the windows that hold it. Where the guide is
    flat (its variance well below ``eps``) it is the box filter applied twice; across an edge of the guide that
    ``src`` also changes over, the output's step follows the edge. Linear in ``src``: a map's scale and sign pass
    through.
    """
    def box(x: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(x, -1, (2 * radius + 1, 2 * radius + 1), borderType=cv2.BORDER_REFLECT_101)

    guide, src = guide.astype(np.float32), src.astype(np.float32)
    mean_i, mean_p = box(guide), box(src)
    a = (box(guide * src) - mean_i * mean_p) / (box(guide * guide) - mean_i * mean_i + np.float32(eps))
    b = mean_p - a * mean_i
    return box(a) * guide + box(b)


def draw_masks(rng: np.random.Generator, n_patches: int, n_samples: int, ratios: tuple[float, ...],
               nested: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Draw the LIME design: which patches each sample keeps visible.

    Returns
    -------
    visible : bool (n_samples, n_patches). Row 0 is the unperturbed image (all visible).
    group : int (n_samples,). Samples with the same group share one fill; each group's first
        sample hides the most, and the other samples of the group hide a random subset of its
        hidden patches. Row 0 has group -1 (nothing to fill).

    Ratios are used in equal shares (cycled), each hiding ``max(1, round(ratio * n_patches))``
    patches.
    """
    if n_patches < 2:
        raise ValueError(f"At least 2 patches are needed to explain an image; the grid has {n_patches}. "
                         "Use a smaller `patch_size`.")
    order = sorted(ratios, reverse=True)
    counts = [min(n_patches, max(1, int(round(r * n_patches)))) for r in order]
    visible = np.ones((n_samples, n_patches), bool)
    group = np.full(n_samples, -1, np.int64)
    i, g = 1, 0
    while i < n_samples:
        base_hidden = rng.permutation(n_patches)[: counts[g % len(counts)] if nested == 1 else counts[0]]
        members = [] if nested == 1 else list(range(1, nested))
        visible[i, base_hidden] = False
        group[i] = g
        i += 1
        for j in members:
            if i >= n_samples:
                break
            k = min(counts[j % len(counts)], len(base_hidden))
            visible[i, rng.permutation(base_hidden)[:k]] = False
            group[i] = g
            i += 1
        g += 1
    return visible, group
