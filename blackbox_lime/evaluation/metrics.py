"""Saliency metrics of the benchmark protocol (../shared/DESIGN.md): AUPRC, MoRF/LeRF, consistency, CIs.

- :func:`pixel_auprc`: average precision of the saliency against the lesion mask over all pixels,
  the same number as ``sklearn.metrics.average_precision_score(mask.ravel(), saliency.ravel())``
  (tested), computed without scikit-learn.
- :func:`perturbation_curves`: MoRF (most relevant first; lower is better) and LeRF (least relevant
  first; higher is better): the mean P(target) as patches are replaced, in saliency order, by a blurred
  copy of the image. The substrate is the same for every method and is never the MAE.
- :func:`consistency`: the mean pairwise Pearson correlation of maps from different seeds.
- :func:`bootstrap_ci`: mean and a percentile bootstrap 95 % CI over images, seeded.
"""

from __future__ import annotations

from itertools import combinations
from typing import Callable, Sequence

import cv2
import numpy as np


def pixel_auprc(saliency: np.ndarray, mask: np.ndarray) -> float:
    """Average precision of ``saliency`` as a score for the lesion pixels in ``mask``.

    AP = sum_n (R_n - R_{n-1}) P_n over the distinct score thresholds, highest first (ties count
    together), as scikit-learn defines it. NaN if the mask is empty.
    """
    y = np.asarray(mask, bool).ravel()
    s = np.asarray(saliency, np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"saliency and mask must have the same number of pixels. Got {s.size} and {y.size} instead.")
    positives = int(y.sum())
    if positives == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # last index of each distinct score
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def blurred_substrate(image: np.ndarray, sigma: float = 8.0) -> np.ndarray:
    """The MoRF/LeRF substrate: a Gaussian blur of the image (sigma in pixels)."""
    return cv2.GaussianBlur(np.ascontiguousarray(image, np.float32), (0, 0), sigma).reshape(image.shape)


def patch_order(saliency: np.ndarray, patch: int) -> np.ndarray:
    """Patch indices (row-major on the patch grid) from most to least relevant (mean saliency per patch).

    Ties are broken by a fixed pseudo-random permutation, so a constant map does not favour
    the image's top rows.
    """
    h, w = saliency.shape
    rows, cols = h // patch, w // patch
    score = saliency[: rows * patch, : cols * patch].reshape(rows, patch, cols, patch).mean(axis=(1, 3)).ravel()
    tiebreak = np.random.default_rng(0).permutation(score.size)
    return np.lexsort((tiebreak, -score))


def perturbation_curves(image: np.ndarray, saliency: np.ndarray, predict: Callable[[np.ndarray], np.ndarray],
                        target: int, patch: int = 16, steps: int = 14,
                        substrate: np.ndarray | None = None) -> dict[str, np.ndarray | float]:
    """MoRF and LeRF curves and their areas.

    Parameters
    ----------
    image : float32 (H, W, C), at the classifier's input size.
    saliency : (H, W).
    predict : images (N, H, W, C) -> probabilities (N, K).
    steps : the curve is sampled after removing round(k / steps * P) patches, k = 0..steps.

    Returns
    -------
    dict with ``morf`` and ``lerf`` curves (steps + 1,), and their areas ``morf_auc`` / ``lerf_auc``
    (the mean of the curve: the trapezoid area on [0, 1]).
    """
    h, w, _ = image.shape
    sub = blurred_substrate(image) if substrate is None else substrate
    order = patch_order(saliency, patch)
    n = order.size
    counts = np.round(np.linspace(0, n, steps + 1)).astype(int)
    cols = w // patch
    out: dict[str, np.ndarray | float] = {}
    for name, seq in (("morf", order), ("lerf", order[::-1])):
        batch = np.empty((len(counts),) + image.shape, np.float32)
        for i, k in enumerate(counts):
            x = image.copy()
            for p in seq[:k]:
                r, c = divmod(int(p), cols)
                x[r * patch:(r + 1) * patch, c * patch:(c + 1) * patch] = sub[r * patch:(r + 1) * patch,
                                                                              c * patch:(c + 1) * patch]
            batch[i] = x
        curve = predict(batch)[:, target]
        out[name] = curve
        out[f"{name}_auc"] = float((curve[:-1] + curve[1:]).sum() / (2.0 * steps))  # trapezoid on [0, 1]
    return out


def consistency(maps: Sequence[np.ndarray]) -> float:
    """Mean pairwise Pearson correlation of saliency maps (e.g. from 3 seeds).

    NaN when a map is constant (e.g. all zero): a map that ranks no pixel above another has no
    correlation to speak of, and calling two empty maps "consistent" would reward saying nothing.
    """
    if len(maps) < 2:
        raise ValueError(f"consistency needs at least 2 maps. Got {len(maps)} instead.")
    rs = []
    for a, b in combinations(maps, 2):
        a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
        if a.std() == 0 or b.std() == 0:
            return float("nan")
        else:
            rs.append(float(np.corrcoef(a, b)[0, 1]))
    return float(np.mean(rs))


def bootstrap_ci(values: Sequence[float], n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the mean and a percentile bootstrap CI over the values (NaNs dropped)."""
    v = np.asarray([x for x in values if np.isfinite(x)], np.float64)
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, (n_boot, v.size))].mean(axis=1)
    a = (1 - level) / 2
    return float(v.mean()), float(np.quantile(means, a)), float(np.quantile(means, 1 - a))
