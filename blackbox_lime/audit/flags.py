"""Per-case audit flags: where a model's positive evidence lies, and how far its map can be trusted.

Shortcut flags read the saliency map (H, W) of the explained class. Of the positive evidence (the
sum of the map's positive values), they measure the share that lies

- ``shortcut_border``: in the image's border band, the outer ``BORDER_BAND`` of each side, where
  laterality markers, burnt-in text, collimator edges and the scanner's frame sit;
- ``shortcut_outside_anatomy``: outside the anatomy, a label-free foreground mask
  (:func:`anatomy_mask`: Otsu's threshold, holes filled, the largest component, dilated a little);
- ``shortcut_outside_roi``: outside the region of interest, when the manifest gives one (``mask``).

A flag is raised when its share exceeds its threshold, unless the answer hardly moved under masking
(``flat_answer``): such a map places noise, not evidence. The thresholds were chosen on the val split of
phantoms with planted shortcuts (``python -m blackbox_lime.evaluation.bench_audit --split val``;
docs/audit.md): a model that reads a burnt-in laterality marker against the demo models on clean
phantoms. The other flags come from the explanation itself:

- ``no_focal_evidence``: the answer moved under masking, but no patch-wise effect explains how (the signed fit's
  held-out R^2 below the explainer's ``NO_FOCAL_R2``): the answer rests on no one region of this image, a finding
  about the model (typical of confident "normal" answers), not a failure of the map;
- ``low_fidelity``: some region does move the answer, but the evidence fit's held-out R^2 is below
  ``LOW_FIDELITY_R2``: the map's evidence does not explain it (the map is unreliable);
- ``flat_answer``: P(target) hardly moved under masking (sd below ``WEAK_RESPONSE_SD``);
- ``stta_changed_class``: STTA's adapted input changed the predicted class.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from scipy import ndimage

from blackbox_lime.map_warnings import LOW_FIDELITY_R2, NO_FOCAL_R2, WEAK_RESPONSE_SD

BORDER_BAND = 0.125  # of each side: 28 px of a 224 px image

# Thresholds on the share of positive evidence, chosen on val (docs/audit.md, "Choosing the thresholds").
SHORTCUT_THRESHOLDS = {"shortcut_border": 0.70, "shortcut_outside_anatomy": 0.70, "shortcut_outside_roi": 0.90}

FLAG_HELP = {
    "shortcut_border": "a large share of the positive evidence lies in the image's border band (markers, text, frame)",
    "shortcut_outside_anatomy": "a large share of the positive evidence lies outside the anatomy",
    "shortcut_outside_roi": "a large share of the positive evidence lies outside the manifest's region of interest",
    "no_focal_evidence": f"the answer moved under masking but no region explains how (held-out R^2 below "
                         f"{NO_FOCAL_R2:g}): it rests on no one region of the image, a finding about the model",
    "low_fidelity": f"a region moves the answer but the map's evidence does not explain it (fidelity, the evidence "
                    f"fit's held-out R^2, below {LOW_FIDELITY_R2:g}): the map is unreliable",
    "flat_answer": f"P(target) hardly moved under masking (sd below {WEAK_RESPONSE_SD:g})",
    "stta_changed_class": "STTA's adapted input changed the predicted class",
}
FLAGS = tuple(FLAG_HELP)


def anatomy_mask(image: np.ndarray) -> np.ndarray | None:
    """A label-free foreground mask (bool (H, W)) of the anatomy in ``image`` (float (H, W[, C]) in [0, 1]).

    Otsu's threshold on the grey image, closed, holes filled, the largest connected component kept
    (a burnt-in marker is a separate small component) and dilated by 1 % of the side. None when the
    image has no usable foreground (under 5 % of the image, or flat)."""
    g = image.mean(axis=2) if image.ndim == 3 else image
    g = cv2.GaussianBlur(g.astype(np.float32), (0, 0), max(1.0, min(g.shape) / 200))
    if float(g.max() - g.min()) < 1e-3:
        return None
    from skimage.filters import threshold_otsu

    fg = g > threshold_otsu(g)
    side = min(g.shape)
    r = max(1, side // 100)
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    fg = cv2.morphologyEx(fg.astype(np.uint8), cv2.MORPH_CLOSE, disk).astype(bool)
    fg = ndimage.binary_fill_holes(fg)
    labels, n = ndimage.label(fg)
    if n == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    fg = labels == (1 + int(np.argmax(sizes)))
    fg = ndimage.binary_fill_holes(fg)
    fg = cv2.dilate(fg.astype(np.uint8), disk).astype(bool)
    if fg.mean() < 0.05:
        return None
    return fg


def border_mask(shape: tuple[int, int], band: float = BORDER_BAND) -> np.ndarray:
    h, w = shape
    bh, bw = max(1, round(h * band)), max(1, round(w * band))
    m = np.ones((h, w), bool)
    m[bh:h - bh, bw:w - bw] = False
    return m


def evidence_share(saliency: np.ndarray, region: np.ndarray) -> float | None:
    """The share of the map's positive evidence that lies in ``region`` (bool, same shape); None if none."""
    pos = np.clip(saliency.astype(np.float64), 0, None)
    total = float(pos.sum())
    if total <= 0:
        return None
    return float(pos[region].sum() / total)


_COMPUTE = object()


def case_flags(image: np.ndarray, saliency: np.ndarray, summary: dict[str, Any], roi: np.ndarray | None = None,
               predicted_before_stta: int | None = None, anatomy: Any = _COMPUTE) -> dict[str, Any]:
    """The flags of one explained case.

    image : float (H, W, C) in [0, 1], the input at its own resolution; saliency : (H, W), the map.
    summary : the explanation's ``summary()`` (its warning codes, or for an older record its R^2 and response sd;
        the probabilities).
    roi : bool (H, W), the manifest's region of interest, or None.
    predicted_before_stta : the predicted class on the unadapted image, when STTA ran.
    anatomy : the image's :func:`anatomy_mask`, when the caller has it (several findings of one image share it).

    Returns {"flags": [names], "shares": {region: share or None}, "anatomy_fraction": float or None}."""
    shares: dict[str, float | None] = {"border": evidence_share(saliency, border_mask(saliency.shape))}
    if anatomy is _COMPUTE:
        anatomy = anatomy_mask(image)
    shares["outside_anatomy"] = None if anatomy is None else evidence_share(saliency, ~anatomy)
    if roi is not None:
        shares["outside_roi"] = evidence_share(saliency, ~roi)
    codes = summary.get("warning_codes")
    if codes is not None:  # the explanation's own coded warnings (blackbox_lime/map_warnings.py)
        flat = "flat_answer" in codes
        fidelity = [c for c in codes if c in ("no_focal_evidence", "low_fidelity")]
    else:  # a record written before coded warnings: the explainer's rules on its numbers
        flat = summary.get("response_sd", 1.0) < WEAK_RESPONSE_SD
        r2e, r2h = summary.get("r2_evidence"), summary.get("r2_heldout")
        fidelity = ([] if r2e is None or not r2e < LOW_FIDELITY_R2 else
                    ["no_focal_evidence" if r2h is not None and r2h < NO_FOCAL_R2 else "low_fidelity"])
    flags = [] if flat else [f"shortcut_{k}" for k, v in shares.items()  # a flat answer's map places only noise
                             if v is not None and v > SHORTCUT_THRESHOLDS[f"shortcut_{k}"]]
    flags += fidelity
    if flat:
        flags.append("flat_answer")
    if predicted_before_stta is not None and predicted_before_stta != int(np.argmax(summary["probs"])):
        flags.append("stta_changed_class")
    return {"flags": flags, "shares": {k: None if v is None else round(v, 4) for k, v in shares.items()},
            "anatomy_fraction": None if anatomy is None else round(float(anatomy.mean()), 4)}
