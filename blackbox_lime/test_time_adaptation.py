"""STTA: supervised test-time adaptation of the *input*, found by SPSA (no gradients exist).

The classifier stays frozen and is reached only through its adapter. A photometric transform f_phi
is tuned so that the frozen model's cross-entropy against the label Y, averaged over S views of the
image (the image itself, small rotations and resized crops), is as low as it gets:

    phi* = argmin_phi  (1/S) sum_s  -log P(Y | f_phi(view_s))  +  beta ||u||^2 / d

Every perturbed sample of the explanation then passes through f_phi* before it is queried, so an
image acquired differently from the model's training data (a darker exposure, stronger noise, a
lower ultrasound gain) is explained where the model is competent.

The parameters phi, each reached from a normalised coordinate u_i in [-1, 1] (u = 0 is the identity):

    sigma   Gaussian blur, sigma = SIGMA_MAX * max(u, 0) px; kernel k = 2 * ceil(3 sigma) + 1
    dh      hue rotation, a fraction of the hue circle, |dh| <= 0.05        (colour images only)
    ds      saturation gain, s * (1 + ds), |ds| <= 0.5                       (colour images only)
    dv      value gain, v * (1 + dv), |dv| <= 0.5
    dr, dg, db  RGB shift, x_c + d_c, |d_c| <= 0.15 (one shared shift for a grayscale image)

A grayscale image (one channel, or three equal ones) has no hue or saturation and must stay gray,
so it is adapted in (sigma, dv, shift) only. The blur's kernel size is tied to sigma, as OpenCV does
for ksize 0, so the search is continuous.

SPSA (Spall 1998): each iteration draws a Rademacher direction Delta and queries the S views at
u + c_k Delta and u - c_k Delta in one request; g = (L+ - L-) / (2 c_k) * Delta. The step is
a_k = a / (k + 1 + A)^0.602 with c_k = c / (k + 1)^0.101, and a is calibrated on the first gradient
estimate so that the first step moves at most ``FIRST_STEP`` in u. The views are drawn once, so every
evaluation sees the same images (common random numbers). The result is the best point evaluated,
the identity included, so adaptation never makes the loss worse than no adaptation.

The cross-entropy against Y alone can also be lowered by a transform that makes the model answer Y
whatever the image shows (a strong gain that makes a whole radiograph look abnormal): then hiding
patches no longer moves the answer and the explanation degrades. An optional check guards against
it: on K probe images (the explainer's own perturbations, half of the patches hidden and filled), the
standard deviation of P(Y) under phi* must keep at least ``MIN_SENSITIVITY`` (one half) of its
unadapted value, or the identity is kept and the report says why. It is off by default
(``stta_probes=0``): on 24 abnormal val cases at 1000 queries (``python -m blackbox_lime.evaluation.tune --part
stta``, docs/tune_val/stta.md) the mean AUPRC was 0.554 without STTA, 0.554 with STTA (11 cases
adapted) and 0.552 with STTA and the check, which dropped 7 adaptations. (With STTA drawing from the
explanation's generator, before ``stta_seed``: 0.554, 0.568 and 0.545, docs/tune_val/stta_unseeded.md.)
On these in-distribution val cases STTA is neutral on average; it is meant for shifted inputs.

Query cost: S (identity) + 2 S T (T iterations) + S (the last iterate) + 2 K (the check, with K
probes) = S (2 T + 2) + 2 K.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

from blackbox_lime.adapters.base import ClassifierAdapter
from blackbox_lime.adapters.censoring import predict_complete

log = logging.getLogger(__name__)

SIGMA_MAX = 2.0  # px of the model's input
HUE_MAX, SAT_MAX, VALUE_MAX, SHIFT_MAX = 0.05, 0.5, 0.5, 0.15
ROTATION_MAX_DEG = 10.0
CROP_MIN = 0.8  # a resized crop keeps at least this fraction of each side
PRIOR_BETA = 0.05  # pull towards the identity: with a flat loss, the image is left as it is
SPSA_C, SPSA_GAMMA, SPSA_ALPHA = 0.15, 0.101, 0.602
FIRST_STEP = 0.3
MIN_SENSITIVITY = 0.5  # keep phi* only if sd of P(Y) over the probes keeps half of its unadapted value
EPS = 1e-6

GRAY_PARAMS = ("sigma", "dv", "shift")
COLOUR_PARAMS = ("sigma", "dh", "ds", "dv", "dr", "dg", "db")


def is_grayscale(image: np.ndarray) -> bool:
    """One channel, or channels equal to each other everywhere. image: (H, W, C)."""
    return image.shape[-1] == 1 or all(np.array_equal(image[..., 0], image[..., c]) for c in range(1, image.shape[-1]))


def query_cost(views: int, iterations: int, probes: int = 0) -> int:
    """Images STTA sends to the classifier: S (2 T + 2) + 2 K."""
    return views * (2 * iterations + 2) + 2 * probes


@dataclass(frozen=True)
class PhotometricTransform:
    """f_phi: blur, then the HSV gains and hue rotation, then the RGB shift; clipped to [0, 1].

    The identity is ``PhotometricTransform()``.
    """

    sigma: float = 0.0
    dh: float = 0.0
    ds: float = 0.0
    dv: float = 0.0
    dr: float = 0.0
    dg: float = 0.0
    db: float = 0.0

    @classmethod
    def from_normalised(cls, u: np.ndarray, grayscale: bool) -> "PhotometricTransform":
        """u in [-1, 1]^d: (sigma, dv, shift) for a grayscale image, COLOUR_PARAMS otherwise."""
        u = np.clip(np.asarray(u, np.float64), -1.0, 1.0)
        if grayscale:
            s, v, shift = u
            d = float(shift * SHIFT_MAX)
            return cls(sigma=float(SIGMA_MAX * max(s, 0.0)), dv=float(v * VALUE_MAX), dr=d, dg=d, db=d)
        s, h, sat, v, r, g, b = u
        return cls(sigma=float(SIGMA_MAX * max(s, 0.0)), dh=float(h * HUE_MAX), ds=float(sat * SAT_MAX),
                   dv=float(v * VALUE_MAX), dr=float(r * SHIFT_MAX), dg=float(g * SHIFT_MAX), db=float(b * SHIFT_MAX))

    @property
    def kernel(self) -> int:
        """The blur's kernel size k (1: no blur)."""
        return 1 if self.sigma <= 0.0 else 2 * math.ceil(3.0 * self.sigma) + 1

    def is_identity(self) -> bool:
        return all(v == 0.0 for v in asdict(self).values())

    def to_dict(self) -> dict[str, float]:
        return {**{k: round(v, 6) for k, v in asdict(self).items()}, "kernel": self.kernel}

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """images: float32 (N, H, W, C) in [0, 1] -> float32 (N, H, W, C) in [0, 1]."""
        if self.is_identity():
            return images
        x = np.asarray(images, np.float32)
        if self.sigma > 0.0:
            k = self.kernel
            x = np.stack([cv2.GaussianBlur(im, (k, k), self.sigma, borderType=cv2.BORDER_REFLECT).reshape(im.shape)
                          for im in x])
        else:
            x = x.copy()
        c = x.shape[-1]
        if c == 3 and (self.dh or self.ds):
            for i in range(len(x)):
                hsv = cv2.cvtColor(np.clip(x[i], 0.0, 1.0), cv2.COLOR_RGB2HSV)  # H in [0, 360), S, V in [0, 1]
                hsv[..., 0] = np.mod(hsv[..., 0] + 360.0 * self.dh, 360.0)
                hsv[..., 1] = np.clip(hsv[..., 1] * (1.0 + self.ds), 0.0, 1.0)
                hsv[..., 2] = hsv[..., 2] * (1.0 + self.dv)
                x[i] = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        elif self.dv:
            x *= 1.0 + self.dv  # V = max(r, g, b) scales with the pixel when hue and saturation are kept
        if c == 3:
            x += np.array([self.dr, self.dg, self.db], np.float32)
        elif self.dr:
            x += self.dr
        return np.clip(x, 0.0, 1.0, out=x)


def draw_views(image: np.ndarray, n_views: int, rng: np.random.Generator) -> np.ndarray:
    """The S views: the image itself, then rotations by up to ±10° of resized crops keeping >= 80 % of
    each side, mapped back to the image's size. image: float32 (H, W, C) -> (S, H, W, C)."""
    h, w, c = image.shape
    views = [image]
    for _ in range(n_views - 1):
        angle = rng.uniform(-ROTATION_MAX_DEG, ROTATION_MAX_DEG)
        scale = rng.uniform(CROP_MIN, 1.0)
        cx = w / 2 + rng.uniform(-1, 1) * (1 - scale) * w / 2
        cy = h / 2 + rng.uniform(-1, 1) * (1 - scale) * h / 2
        m = cv2.getRotationMatrix2D((cx, cy), angle, 1.0 / scale)  # zoom in on the crop about its centre
        m[:, 2] += (w / 2 - cx, h / 2 - cy)
        view = cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        views.append(view.reshape(h, w, c))
    return np.stack(views).astype(np.float32)


@dataclass
class Adaptation:
    """What STTA found for one image.

    Attributes
    ----------
    transform : f_phi*, applied to every perturbed image before it is queried.
    label : the class Y whose cross-entropy was minimised.
    loss_before, loss_after : mean cross-entropy over the views at the identity and at phi*.
    p_before, p_after : P(Y) of the unperturbed image (view 0) before and after.
    queries : images sent (S (2T + 2) + 2K).
    iterations, views, probes : T, S and K.
    history : the loss at each evaluated point, in order (identity first).
    sensitivity_before, sensitivity_after : sd of P(Y) over the K probes without and with the best
        transform found (NaN without probes).
    rejected : why the best transform found was not kept ("" when it was kept or none was found).
    """

    transform: PhotometricTransform
    label: int
    loss_before: float
    loss_after: float
    p_before: float
    p_after: float
    queries: int
    iterations: int
    views: int
    history: list[float]
    probes: int = 0
    sensitivity_before: float = float("nan")
    sensitivity_after: float = float("nan")
    rejected: str = ""

    def summary(self) -> dict[str, Any]:
        return {"transform": self.transform.to_dict(), "label": self.label,
                "loss_before": round(self.loss_before, 6), "loss_after": round(self.loss_after, 6),
                "p_label_before": round(self.p_before, 6), "p_label_after": round(self.p_after, 6),
                "queries": self.queries, "iterations": self.iterations, "views": self.views, "probes": self.probes,
                "sensitivity_before": _round(self.sensitivity_before), "sensitivity_after": _round(self.sensitivity_after),
                "adapted": not self.transform.is_identity(), "rejected": self.rejected}


def _round(x: float) -> float | None:
    return None if not np.isfinite(x) else round(float(x), 6)


def adapt(adapter: ClassifierAdapter, image: np.ndarray, label: int | None, rng: np.random.Generator,
          iterations: int = 8, views: int = 4, probes: np.ndarray | None = None) -> Adaptation:
    """Find f_phi* for ``image`` (at the model's input size, float32 (H, W, C) in [0, 1]).

    Parameters
    ----------
    adapter : the frozen classifier.
    label : the class Y; None takes the model's answer on the unadapted image.
    rng : the only source of randomness (views and SPSA directions).
    iterations, views : T >= 1 and S >= 1; the cost is S (2T + 2) queries.
    probes : K perturbed copies of the image (K, H, W, C) for the sensitivity check (2K queries, only
        when a transform other than the identity is found); None skips the check.
    """
    if iterations < 1 or views < 1:
        raise ValueError(f"STTA needs iterations >= 1 and views >= 1. Got {iterations} and {views} instead.")
    gray = is_grayscale(image)
    d = len(GRAY_PARAMS if gray else COLOUR_PARAMS)
    stack = draw_views(image, views, rng)  # (S, H, W, C)

    def query(points: list[np.ndarray]) -> np.ndarray:
        """Every view at every point, in one call -> probabilities (len(points), S, K)."""
        batch = np.concatenate([PhotometricTransform.from_normalised(u, gray)(stack) for u in points])
        return predict_complete(adapter, batch).reshape(len(points), views, -1)

    u = np.zeros(d)
    probs0 = query([u])[0]  # (S, K) at the identity
    y = int(np.argmax(probs0[0])) if label is None else int(label)

    def objective(p: np.ndarray, point: np.ndarray) -> float:
        ce = -np.log(np.clip(p[:, y], EPS, 1.0)).mean()
        return float(ce + PRIOR_BETA * float(point @ point) / d)

    best_u, best_loss = u.copy(), objective(probs0, u)
    loss0, p0 = best_loss, float(probs0[0, y])
    best_p = p0
    history = [loss0]
    a = None
    big_a = max(1.0, 0.1 * iterations)
    for k in range(iterations):
        ck = SPSA_C / (k + 1) ** SPSA_GAMMA
        delta = rng.choice([-1.0, 1.0], size=d)
        plus, minus = np.clip(u + ck * delta, -1, 1), np.clip(u - ck * delta, -1, 1)
        pr = query([plus, minus])
        lp, lm = objective(pr[0], plus), objective(pr[1], minus)
        history += [lp, lm]
        for point, loss, p in ((plus, lp, pr[0]), (minus, lm, pr[1])):
            if loss < best_loss:
                best_u, best_loss, best_p = point.copy(), loss, float(p[0, y])
        g = (lp - lm) / (2.0 * ck) * delta  # 1 / delta_i = delta_i for Rademacher directions
        if a is None:  # calibrate the gain on the first estimate: its step moves at most FIRST_STEP
            gmax = float(np.abs(g).max())
            a = FIRST_STEP * (big_a + 1) ** SPSA_ALPHA / gmax if gmax > 0 else 0.0
        u = np.clip(u - a / (k + 1 + big_a) ** SPSA_ALPHA * g, -1, 1)
    pl = query([u])
    last = objective(pl[0], u)
    history.append(last)
    if last < best_loss:
        best_u, best_loss, best_p = u.copy(), last, float(pl[0][0, y])
    transform = PhotometricTransform.from_normalised(best_u, gray)
    k = 0 if probes is None else len(probes)
    result = Adaptation(transform=transform, label=y, loss_before=loss0, loss_after=best_loss, p_before=p0,
                        p_after=best_p, queries=query_cost(views, iterations), iterations=iterations, views=views,
                        history=history, probes=k)
    if k and probes is not None and not transform.is_identity():
        both = predict_complete(adapter, np.concatenate([probes, transform(probes)]))[:, y]
        result.queries += 2 * k
        result.sensitivity_before, result.sensitivity_after = float(both[:k].std()), float(both[k:].std())
        if result.sensitivity_after < MIN_SENSITIVITY * result.sensitivity_before:
            result.rejected = (f"P(class {y}) stopped depending on the image under the transform found (sd over "
                               f"{k} probes {result.sensitivity_before:.3f} -> {result.sensitivity_after:.3f}); "
                               "the image was left as it is")
            result.transform, result.loss_after, result.p_after = PhotometricTransform(), loss0, p0
    log.info("STTA: loss %.4f -> %.4f, P(class %d) %.3f -> %.3f, %s%s", loss0, result.loss_after, y, p0,
             result.p_after, result.transform.to_dict(), f" ({result.rejected})" if result.rejected else "")
    return result
