"""Synthetic medical phantoms with exact lesion masks.

No public medical dataset with lesion masks can be fetched where this project is built and
benchmarked, so the project draws its own medical-looking images. Every phantom is a pure function
of ``(modality, split, index)``: the same triple always gives the same pixels, mask and label, and
different triples draw from disjoint random streams (``np.random.SeedSequence`` keyed on all three),
so the splits never share a case.

Each phantom is a float32 image ``[224, 224, 3]`` in ``[0, 1]`` (grayscale replicated to three
channels), a boolean lesion mask ``[224, 224]`` and a label (1 = abnormal). A case is abnormal if
and only if its mask is non-empty. Half of all cases are abnormal (a Bernoulli(0.5) draw per case).

Modalities
----------
``chest_xray`` -- a chest-radiograph-like image.
    Anatomy: body outline, two lung fields cut by diaphragm domes, heart and mediastinum, 9-11
    curved posterior ribs per side, clavicles and branching vessels from the hila.
    Acquisition varies per case: exposure x0.85-1.15, offset +-0.03, gamma 0.8-1.25, blur
    sigma 0.4-1.3 px, Gaussian noise sd 0.008-0.025.
    Lesions (abnormal cases; 1 lesion in 80 %, 2 in 20 %), placed inside a lung field:
      * nodules (60 %): round with soft edges, radius 4-22 px (log-uniform), so 0.1-3 % of the image;
      * consolidations (40 %): irregular blobs from thresholded smooth noise, 14-40 px across.
    Lesion contrast is +0.16 to +0.30 over lung (before exposure and gamma), so a lesion reaches
    about soft-tissue density, as real nodules do, and stays darker than the brightest structures
    (ribs over soft tissue, clavicles, heart and mediastinum).
    Distractors in every case: 3-8 vessel end-ons (radius 1.5-3 px, +0.06-0.12), rib crossings,
    and in half the cases bilateral nipple shadows (radius 4-7 px).

``breast_us`` -- a breast-ultrasound-like image in a sector (fan) geometry.
    Tissue layers along depth: skin line, subcutaneous fat (hypoechoic), fibroglandular tissue
    with smooth heterogeneity, retromammary fat, striated pectoral muscle; Cooper's ligaments as
    bright arcs; depth attenuation with a random gain; log compression; fully developed speckle
    (Rayleigh amplitude, laterally elongated).
    Lesions (abnormal cases, one per case) in the fibroglandular layer: hypoechoic (echogenicity
    x0.15-0.3 for lesions under 8 px radius, x0.2-0.5 for larger ones), regular (oval) or irregular (lobulated or angular)
    margins, and posterior acoustic shadowing (40 %), enhancement (30 %) or neither (30 %), with a
    strength of 10-30 %. Radius 4-28 px (log-uniform): about 40 % of lesions cover under 1 % of the
    image, as in BUID.
    Distractors in every case: 1-3 mildly hypoechoic fat lobules (x0.7-0.85, regular, no posterior
    features) and faint ligament shadows.

``brain_mri`` -- an axial FLAIR-like brain MRI slice: the unseen family.
    Neither the bundled MAE nor the demo classifiers ever saw it (they are trained on the two
    families above); it has its own classifier (``onnx/brain_cnn.onnx``, trained without patch-level
    supervision). Anatomy: scalp (bright), skull (dark), a brain ellipse with a bright cortical
    ribbon folded by dark CSF sulci, darker white matter, dark lateral ventricles with bright
    periventricular caps, the midline falx, a smooth bias field and Rician noise.
    Lesions (abnormal cases; 1 in 70 %, 2-3 in 30 %), in the white matter: tumours (60 %,
    irregular, radius 5-18 px, a brighter rim in half of them) and plaques (40 %, ovoid, radius 3-7
    px), contrast +0.12 to +0.28 over white matter, so most lesions cover 0.1-2 % of the image.
    Distractors in every case: the bright cortical ribbon and periventricular caps, 2-6 bright
    vessel flow dots and, in half the cases, a bright motion ghost of the scalp.

``fundus`` -- a colour retinal fundus photograph: the second unseen family, and the only colour one.
    The bundled MAE only ever saw grey images, so it fills a colour image with grey. It has its own
    classifier (``onnx/fundus_cnn.onnx``, same recipe as the brain one). Anatomy: a circular field of
    view on black, an orange-red retina with vignetting and a per-case pigmentation (hue, darkness),
    the bright yellowish optic disc on the left or right with the cup, dark red branching vessels from
    the disc, a darker macula with the fovea. Lesions (abnormal cases): dark red haemorrhages and
    microaneurysms (radius 1.5-7 px, 1-6 of them) and in half the cases a cluster of 2-6 yellow hard
    exudates (radius 1.5-3.5 px), so most cases have lesions on 0.05-1 % of the image. Distractors in
    every case: 2-6 brownish pigment freckles (radius 4-9 px, low contrast), bright specular reflexes
    along the vessels and the vessel crossings.

Splits
------
``train`` builds the demo models and the evidence bank, ``val`` tunes hyperparameters and
``test`` is only for evaluation. ``shifted`` is a held-out acquisition shift (chest: harder
exposure, stronger noise and blur; ultrasound: lower gain and coarser speckle) for robustness
reports.

Measured distributions (``python -m blackbox_lime.evaluation.phantoms --stats``) are in onnx/MODEL_CARD.md.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import cv2
import numpy as np

if TYPE_CHECKING:
    from blackbox_lime.evidence_bank import Embedder, EvidenceBank
    from blackbox_lime.patches import PatchGrid

__all__ = ["ALL_MODALITIES", "MARKER_KINDS", "MODALITIES", "UNSEEN_MODALITIES", "SPLITS", "SIZE", "Phantom", "abnormal_cases",
           "EXCLUSIVE_CLASSES", "FINDINGS", "MultiPhantom", "burn_in_marker", "is_marked", "make_exclusive_phantom", "make_multilabel_phantom", "iter_abnormal_cases", "make_phantom", "marked_phantom", "phantom_bank",
           "write_phantoms"]

MODALITIES: tuple[str, ...] = ("chest_xray", "breast_us")  # the families the bundled MAE and demo models know
UNSEEN_MODALITIES: tuple[str, ...] = ("brain_mri", "fundus")  # no bundled part was trained on it except its own classifier
ALL_MODALITIES: tuple[str, ...] = MODALITIES + UNSEEN_MODALITIES
SPLITS: tuple[str, ...] = ("train", "val", "test", "shifted")
SIZE = 224
_SEED_SALT = 0x6D65646C  # "medl": keeps these streams apart from any other use of SeedSequence

_YY, _XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)


@dataclass(frozen=True)
class Phantom:
    """One synthetic case.

    Attributes
    ----------
    image : float32 [224, 224, 3] in [0, 1], grayscale replicated.
    mask : bool [224, 224], the exact lesion pixels (empty for a normal case).
    label : 1 if abnormal (mask non-empty), else 0.
    modality, split, index : the key the case was drawn from.
    lesions : one dict per lesion (kind, centre, radius, contrast, ...).
    """

    image: np.ndarray
    mask: np.ndarray
    label: int
    modality: str
    split: str
    index: int
    lesions: list[dict[str, Any]] = field(default_factory=list)


def _check_key(modality: str, split: str, index: int) -> None:
    if modality not in ALL_MODALITIES:
        raise ValueError(
            f"Unknown modality {modality!r}. Valid modalities are: {', '.join(ALL_MODALITIES)}."
        )
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}. Valid splits are: {', '.join(SPLITS)}.")
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
        raise ValueError(f"The phantom index must be an integer >= 0. Got {index!r} instead.")


def _rng_for(modality: str, split: str, index: int) -> np.random.Generator:
    key = [_SEED_SALT, ALL_MODALITIES.index(modality), SPLITS.index(split), int(index)]
    return np.random.default_rng(np.random.SeedSequence(key))


def make_phantom(modality: str, split: str, index: int, *, noise_seed: int | None = None) -> Phantom:
    """Draw the phantom for ``(modality, split, index)``; deterministic.

    ``noise_seed`` re-draws only the acquisition noise (radiograph quantum noise, ultrasound
    speckle) from another stream and keeps everything else, anatomy and lesions included. Averaging
    many such realisations gives the noise-free expectation of a case, which bounds how well any
    inpainting can predict hidden pixels (``onnx/evaluate_models.py`` uses it).

    Raises
    ------
    ValueError
        For an unknown modality or split, or an index that is not a non-negative integer.
    """
    _check_key(modality, split, index)
    rng = _rng_for(modality, split, index)
    noise = _Noise(rng, None if noise_seed is None else np.random.default_rng([_SEED_SALT, 1, int(noise_seed)]))
    abnormal = bool(rng.random() < 0.5)
    shifted = split == "shifted"
    if modality == "chest_xray":
        gray, mask, lesions = _chest_xray(rng, abnormal, shifted, noise)
    elif modality == "breast_us":
        gray, mask, lesions = _breast_us(rng, abnormal, shifted, noise)
    elif modality == "brain_mri":
        gray, mask, lesions = _brain_mri(rng, abnormal, shifted, noise)
    else:
        gray, mask, lesions = _fundus(rng, abnormal, shifted, noise)
    if abnormal != bool(mask.any()):  # pragma: no cover - guarded by the samplers' retries
        raise RuntimeError("internal error: phantom label and mask disagree")
    if gray.ndim == 3:  # a colour family
        image = np.clip(gray, 0.0, 1.0).astype(np.float32)
    else:
        image = np.repeat(np.clip(gray, 0.0, 1.0).astype(np.float32)[..., None], 3, axis=2)
    return Phantom(image, mask, int(abnormal), modality, split, int(index), lesions)


def iter_abnormal_cases(modality: str, split: str, first: int = 0) -> Iterator[Phantom]:
    """The split's abnormal phantoms (with a lesion in the mask) from number ``first`` on, in index order."""
    seen = 0
    for i in itertools.count():
        ph = make_phantom(modality, split, i)
        if ph.label == 1 and ph.mask.any():
            if seen >= first:
                yield ph
            seen += 1


def abnormal_cases(modality: str, split: str, n: int, first: int = 0) -> list[Phantom]:
    """The split's abnormal phantoms number ``first`` .. ``first + n - 1``, in index order."""
    return list(itertools.islice(iter_abnormal_cases(modality, split, first), n))


# ----------------------------------------------------------------------------- shared helpers


class _Noise:
    """Acquisition-noise draws. They always advance the case's own stream, so the rest of the case
    is unchanged; with a second generator, its values are used instead."""

    def __init__(self, rng: np.random.Generator, other: np.random.Generator | None) -> None:
        self.rng, self.other = rng, other

    def standard_normal(self, shape: tuple[int, ...]) -> np.ndarray:
        z = self.rng.standard_normal(shape)
        return z if self.other is None else self.other.standard_normal(shape)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _smooth_noise(rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Gaussian noise blurred with ``sigma`` and rescaled to unit standard deviation."""
    n: np.ndarray = rng.standard_normal((SIZE, SIZE)).astype(np.float32)
    n = cv2.GaussianBlur(n, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    return n / (n.std() + 1e-8)


def _soft_ellipse(cx: float, cy: float, ax: float, ay: float, edge: float, angle: float = 0.0) -> np.ndarray:
    """Alpha in [0, 1]: 1 inside the ellipse, a soft ramp of width ~``edge`` px at its border."""
    c, s = np.cos(angle), np.sin(angle)
    dx, dy = _XX - cx, _YY - cy
    u = (c * dx + s * dy) / ax
    v = (-s * dx + c * dy) / ay
    rho = np.sqrt(u * u + v * v)
    return _sigmoid((1.0 - rho) * min(ax, ay) / max(edge, 1e-3) * 4.0)


def _irregular_blob(
    rng: np.random.Generator, cx: float, cy: float, radius: float, roughness: float, edge: float,
    aspect: float = 1.0, angle: float = 0.0,
) -> np.ndarray:
    """Alpha of a blob whose boundary radius is perturbed by random low harmonics."""
    dx, dy = _XX - cx, _YY - cy
    c, s = np.cos(angle), np.sin(angle)
    u = c * dx + s * dy
    v = (-s * dx + c * dy) * aspect
    phi = np.arctan2(v, u)
    rho = np.sqrt(u * u + v * v)
    boundary = np.ones_like(phi)
    for k in range(2, 8):
        amp = roughness * rng.uniform(0.2, 1.0) / (k ** 0.7)
        boundary += amp * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    boundary = radius * np.clip(boundary, 0.45, None)
    return _sigmoid((boundary - rho) / max(edge, 1e-3) * 4.0)


def _consolidation(rng: np.random.Generator, px: float, py: float, radius: float) -> np.ndarray:
    """A consolidation's opacity (alpha, (H, W)): an ellipse about ``radius`` across, its edge broken by smooth noise."""
    field = _soft_ellipse(px, py, radius * rng.uniform(0.8, 1.3), radius * rng.uniform(0.8, 1.3), radius * 0.5)
    return _sigmoid((field + 0.35 * _smooth_noise(rng, 3.0) - 0.55) * 8.0) * (field > 0.02)


def _lesion_mask(alpha: np.ndarray) -> np.ndarray:
    return alpha > 0.5


# ----------------------------------------------------------------------------- chest radiograph


def _chest_xray(
    rng: np.random.Generator, abnormal: bool, shifted: bool, noise_draw: _Noise,
    findings: tuple[str, ...] = (), finding_masks: dict[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    mid = SIZE / 2 + rng.uniform(-5, 5)
    img: np.ndarray = np.full((SIZE, SIZE), 0.03, np.float32)

    body = _soft_ellipse(mid, 128 + rng.uniform(-4, 4), rng.uniform(96, 108), rng.uniform(118, 130), 6)
    img += body * rng.uniform(0.40, 0.48)

    # Lungs: two ellipses cut below by diaphragm domes.
    lungs = np.zeros_like(img)
    lung_centres, lung_fields = [], []
    for side in (-1, 1):
        lcx = mid + side * rng.uniform(40, 47)
        lcy = 104 + rng.uniform(-5, 5)
        lax, lay = rng.uniform(29, 35), rng.uniform(66, 76)
        lung = _soft_ellipse(lcx, lcy, lax, lay, 5, angle=side * rng.uniform(0.02, 0.10))
        dome_y = lcy + lay * rng.uniform(0.55, 0.72) - 0.012 * (_XX - lcx) ** 2 * -1.0
        lung *= _sigmoid((dome_y - _YY) / 2.0)
        lungs = np.maximum(lungs, lung)
        lung_centres.append((lcx, lcy, lax, lay))
        lung_fields.append(lung)
    lung_density = rng.uniform(0.20, 0.26)
    img -= lungs * lung_density * body

    # Heart and mediastinum lie in front of the lungs.
    heart = _soft_ellipse(mid + rng.uniform(8, 18), 152 + rng.uniform(-6, 6), rng.uniform(36, 46),
                          rng.uniform(28, 35), 6, angle=rng.uniform(-0.3, -0.1))
    medi = _sigmoid((rng.uniform(13, 18) - np.abs(_XX - mid)) / 2.0) * _sigmoid((175 - _YY) / 4.0)
    front = np.maximum(heart, medi)
    img += front * lungs * lung_density * 0.9

    # Ribs: curved bands falling away from the spine, brighter at their cortical edges.
    ribs = np.zeros_like(img)
    d = np.abs(_XX - mid)
    for side in (-1, 1):
        n_ribs = int(rng.integers(9, 12))
        y0 = 30 + rng.uniform(-4, 4)
        spacing = rng.uniform(14.0, 16.5)
        on_side = (np.sign(_XX - mid) == side).astype(np.float32)
        for k in range(n_ribs):
            yk = y0 + k * spacing
            curve = yk - 0.30 * d + 0.0062 * d ** 2 + rng.uniform(-1.5, 1.5)
            thick = rng.uniform(3.5, 5.0)
            dist = np.abs(_YY - curve)
            band = np.clip(1.0 - dist / thick, 0.0, 1.0) ** 0.35
            band *= _sigmoid((d - 10.0) / 2.0) * _sigmoid((100.0 - d) / 4.0) * on_side
            ribs = np.maximum(ribs, band)
    img += ribs * rng.uniform(0.06, 0.09) * body

    # Clavicles.
    for side in (-1, 1):
        curve = 34 + rng.uniform(-3, 3) + 0.18 * (d - 20) - 0.0012 * (d - 20) ** 2
        band = np.clip(1.0 - np.abs(_YY - curve) / 4.5, 0, 1) ** 0.4
        band *= _sigmoid((d - 12) / 2.0) * _sigmoid((80 - d) / 4.0) * (np.sign(_XX - mid) == side)
        img += band * 0.07

    # Vessels: random walks from each hilum, thinning and fading outward, only inside the lungs.
    vessels: np.ndarray = np.zeros_like(img)
    for side in (-1, 1):
        hx, hy = mid + side * rng.uniform(18, 26), rng.uniform(100, 115)
        for _ in range(int(rng.integers(6, 11))):
            x, y = hx, hy
            ang = rng.uniform(-np.pi, np.pi) if side < 0 else rng.uniform(-np.pi, np.pi)
            ang = np.arctan2(np.sin(ang), side * abs(np.cos(ang)))
            width = 2.0
            for _step in range(int(rng.integers(6, 12))):
                length = rng.uniform(6, 11)
                nx, ny = x + np.cos(ang) * length, y + np.sin(ang) * length
                cv2.line(vessels, (int(round(x)), int(round(y))), (int(round(nx)), int(round(ny))),
                         float(width / 2.0), thickness=max(1, int(round(width))), lineType=cv2.LINE_AA)
                x, y = nx, ny
                ang += rng.normal(0, 0.35)
                width = max(1.0, width * 0.88)
    vessels = cv2.GaussianBlur(vessels, (0, 0), 0.8)
    img += vessels * rng.uniform(0.035, 0.06) * lungs

    # Distractors: vessel end-ons and nipple shadows.
    inside = np.argwhere(lungs > 0.9)
    for _ in range(int(rng.integers(3, 9))):
        py, px = inside[rng.integers(len(inside))]
        r = rng.uniform(1.5, 3.0)
        img += _soft_ellipse(px, py, r, r, 1.0) * rng.uniform(0.06, 0.12)
    if rng.random() < 0.5:
        ny = rng.uniform(148, 168)
        for side in (-1, 1):
            r = rng.uniform(4, 7)
            img += _soft_ellipse(mid + side * rng.uniform(48, 62), ny + rng.uniform(-4, 4), r, r, 3) * \
                rng.uniform(0.04, 0.08)

    # Lesions.
    mask = np.zeros((SIZE, SIZE), bool)
    lesions: list[dict[str, Any]] = []
    if abnormal:
        n_lesions = 1 if rng.random() < 0.8 else 2
        deep_inside = np.argwhere(lungs > 0.97)
        while len(lesions) < n_lesions:
            py, px = deep_inside[rng.integers(len(deep_inside))]
            contrast = float(rng.uniform(0.16, 0.30))
            if rng.random() < 0.6:
                radius = float(np.exp(rng.uniform(np.log(4.0), np.log(22.0))))
                alpha = _irregular_blob(rng, px, py, radius, roughness=0.08, edge=max(1.5, radius * 0.3))
                kind = "nodule"
            else:
                radius = float(rng.uniform(7, 20))
                alpha = _consolidation(rng, px, py, radius)
                kind = "consolidation"
            alpha = alpha * (lungs > 0.5)
            lesion_mask = _lesion_mask(alpha)
            if lesion_mask.sum() < 12:
                continue  # too small to be a lesion after clipping to the lung: draw again
            img += alpha * contrast * (0.9 + 0.2 * _smooth_noise(rng, 4.0).clip(-0.5, 0.5))
            mask |= lesion_mask
            lesions.append({"kind": kind, "centre": [int(py), int(px)], "radius": round(radius, 2),
                            "contrast": round(contrast, 4), "area_px": int(lesion_mask.sum())})
    for kind in findings:  # the multi-label family: one lesion of each finding present, each with its own mask
        alpha = _finding(rng, kind, lungs, lung_fields, lung_centres)
        lesion_mask = _lesion_mask(alpha)
        contrast = float(rng.uniform(0.16, 0.30))
        img += alpha * contrast * (0.9 + 0.2 * _smooth_noise(rng, 4.0).clip(-0.5, 0.5))
        mask |= lesion_mask
        if finding_masks is not None:
            finding_masks[kind] = lesion_mask
        lesions.append({"kind": kind, "contrast": round(contrast, 4), "area_px": int(lesion_mask.sum())})

    # Acquisition.
    if shifted:
        exposure, gamma = rng.uniform(0.7, 0.85), rng.uniform(1.25, 1.5)
        blur, noise = rng.uniform(1.2, 2.0), rng.uniform(0.025, 0.04)
    else:
        exposure, gamma = rng.uniform(0.85, 1.15), rng.uniform(0.8, 1.25)
        blur, noise = rng.uniform(0.4, 1.3), rng.uniform(0.008, 0.025)
    img = img * exposure + rng.uniform(-0.03, 0.03)
    img = np.clip(img, 0, 1) ** gamma
    img = cv2.GaussianBlur(img, (0, 0), blur)
    img = img + noise_draw.standard_normal(img.shape).astype(np.float32) * noise
    return np.clip(img, 0, 1), mask, lesions


def _finding(rng: np.random.Generator, kind: str, lungs: np.ndarray, fields: list[np.ndarray],
             centres: list[tuple[float, float, float, float]]) -> np.ndarray:
    """The opacity (alpha, (H, W) in [0, 1]) of one multi-label finding, drawn again until it covers >= 12 px."""
    while True:
        if kind == "effusion":  # fluid at one lung's base: a level with a meniscus rising laterally
            side = int(rng.integers(2))
            lcx, lcy, lax, lay = centres[side]
            level = lcy + lay * rng.uniform(0.2, 0.45)
            lateral = (_XX - lcx) * (1 if side else -1)
            surface = level - 0.35 * np.clip(lateral, 0, None) + rng.uniform(-2, 2)
            alpha = _sigmoid((_YY - surface) / 2.5) * (fields[side] > 0.3) * fields[side]
        else:
            inside = np.argwhere(lungs > 0.97)
            py, px = inside[rng.integers(len(inside))]
            if kind == "nodule":
                radius = float(np.exp(rng.uniform(np.log(4.0), np.log(14.0))))
                alpha = _irregular_blob(rng, px, py, radius, roughness=0.08, edge=max(1.5, radius * 0.3))
            else:  # consolidation
                alpha = _consolidation(rng, px, py, float(rng.uniform(9, 20)))
            alpha = alpha * (lungs > 0.5)
        if _lesion_mask(alpha).sum() >= 12:
            return alpha


# ----------------------------------------------------------------------------- multi-label chest radiographs

FINDINGS: tuple[str, ...] = ("nodule", "consolidation", "effusion")
FINDING_RATES: dict[str, float] = {"nodule": 0.4, "consolidation": 0.4, "effusion": 0.35}


@dataclass(frozen=True)
class MultiPhantom:
    """A chest phantom with several independent findings (the multi-label family).

    image : float32 [224, 224, 3] in [0, 1]; masks : per finding, bool [224, 224] (empty when absent);
    labels : per finding, 1 if present; split, index : its key; lesions : one dict per finding present.
    """

    image: np.ndarray
    masks: dict[str, np.ndarray]
    labels: dict[str, int]
    split: str
    index: int
    lesions: list[dict[str, Any]] = field(default_factory=list)


def make_multilabel_phantom(split: str, index: int) -> MultiPhantom:
    """The multi-label chest phantom ``(split, index)``: each of :data:`FINDINGS` present independently
    (nodule 40 %, consolidation 40 %, effusion 35 %), one lesion each, with its own exact mask. The anatomy
    and acquisition are the chest_xray family's; the stream is the family's own. Deterministic."""
    _check_key("chest_xray", split, index)
    rng = np.random.default_rng(np.random.SeedSequence([_SEED_SALT, 3, SPLITS.index(split), int(index)]))
    present = tuple(k for k in FINDINGS if rng.random() < FINDING_RATES[k])
    masks: dict[str, np.ndarray] = {}
    gray, _, lesions = _chest_xray(rng, False, split == "shifted", _Noise(rng, None), present, masks)
    image = np.repeat(np.clip(gray, 0, 1).astype(np.float32)[..., None], 3, axis=2)
    full = {k: masks.get(k, np.zeros((SIZE, SIZE), bool)) for k in FINDINGS}
    return MultiPhantom(image, full, {k: int(full[k].any()) for k in FINDINGS}, split, int(index), lesions)


EXCLUSIVE_CLASSES: tuple[str, ...] = ("normal",) + FINDINGS


def make_exclusive_phantom(split: str, index: int) -> tuple[MultiPhantom, int]:
    """The four-class chest phantom ``(split, index)`` and its class in :data:`EXCLUSIVE_CLASSES`: normal or
    exactly one of :data:`FINDINGS`, each a quarter of the cases, drawn as the multi-label family draws a finding
    (the family of ``chest4_cnn``, an exclusive-softmax model for benchmarks that need four or more classes).
    Deterministic; its stream is its own."""
    _check_key("chest_xray", split, index)
    rng = np.random.default_rng(np.random.SeedSequence([_SEED_SALT, 4, SPLITS.index(split), int(index)]))
    label = int(rng.integers(len(EXCLUSIVE_CLASSES)))
    present = () if label == 0 else (EXCLUSIVE_CLASSES[label],)
    masks: dict[str, np.ndarray] = {}
    gray, _, lesions = _chest_xray(rng, False, split == "shifted", _Noise(rng, None), present, masks)
    image = np.repeat(np.clip(gray, 0, 1).astype(np.float32)[..., None], 3, axis=2)
    full = {k: masks.get(k, np.zeros((SIZE, SIZE), bool)) for k in FINDINGS}
    return MultiPhantom(image, full, {k: int(full[k].any()) for k in FINDINGS}, split, int(index), lesions), label


# ----------------------------------------------------------------------------- breast ultrasound


def _breast_us(
    rng: np.random.Generator, abnormal: bool, shifted: bool, noise_draw: _Noise
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    apex_x, apex_y = SIZE / 2 + rng.uniform(-4, 4), -rng.uniform(55, 70)
    r = np.sqrt((_XX - apex_x) ** 2 + (_YY - apex_y) ** 2)
    theta = np.arctan2(_XX - apex_x, _YY - apex_y)
    r0 = -apex_y + rng.uniform(2, 8)
    half_angle = rng.uniform(0.50, 0.58)
    sector = _sigmoid((half_angle - np.abs(theta)) * 150.0) * _sigmoid((r - r0) * 2.0)
    depth = r - r0  # 0 at the transducer face

    wav = lambda amp, freq: amp * np.sin(freq * theta + rng.uniform(0, 2 * np.pi))  # noqa: E731
    t1 = rng.uniform(28, 48) + wav(4, 6)
    t2 = t1 + rng.uniform(75, 105) + wav(8, 4) + 5 * _smooth_noise(rng, 12)
    t3 = t2 + rng.uniform(12, 22)
    t4 = t3 + rng.uniform(25, 35)
    echo: np.ndarray = np.full((SIZE, SIZE), 0.30, np.float32)
    echo = np.where(depth < 3.0, 0.95, echo)
    fat = (depth >= 3.0) & (depth < t1)
    gland = (depth >= t1) & (depth < t2)
    echo = np.where(fat, 0.32 + 0.05 * _smooth_noise(rng, 6), echo)
    echo = np.where(gland, 0.62 + 0.10 * _smooth_noise(rng, 5) + 0.05 * _smooth_noise(rng, 2), echo)
    echo = np.where((depth >= t2) & (depth < t3), 0.30, echo)
    muscle = (depth >= t3) & (depth < t4)
    echo = np.where(muscle, 0.45 + 0.15 * np.sin(depth * rng.uniform(0.8, 1.1)) ** 2, echo)
    echo = np.where(depth >= t4, 0.18, echo)
    echo = cv2.GaussianBlur(echo.astype(np.float32), (0, 0), 1.2)

    # Cooper's ligaments: bright arcs in the fat.
    for _ in range(int(rng.integers(2, 5))):
        ld = rng.uniform(8, 40)
        lt = rng.uniform(-half_angle, half_angle)
        arc = np.exp(-((depth - ld - 25 * (theta - lt) ** 2 * 10) / 1.2) ** 2) * (np.abs(theta - lt) < 0.2)
        echo += arc.astype(np.float32) * 0.35 * (depth < t1 + 5)

    post = np.ones_like(echo)  # posterior acoustic effects multiply the echo beneath a structure

    def place(alpha: np.ndarray, factor: float) -> None:
        nonlocal echo
        echo = echo * (1.0 - alpha * (1.0 - factor))

    # Distractors: mildly hypoechoic, regular fat lobules; faint ligament shadows.
    for _ in range(int(rng.integers(1, 4))):
        ld = rng.uniform(t1.mean() - 10, t1.mean() + 30)
        lt = rng.uniform(-half_angle * 0.8, half_angle * 0.8)
        cy = apex_y + (r0 + ld) * np.cos(lt)
        cx = apex_x + (r0 + ld) * np.sin(lt)
        rad = rng.uniform(5, 14)
        place(_soft_ellipse(cx, cy, rad * rng.uniform(1.3, 2.0), rad, 2.0, angle=rng.uniform(-0.2, 0.2)),
              rng.uniform(0.70, 0.85))
    for _ in range(int(rng.integers(0, 3))):
        lt = rng.uniform(-half_angle, half_angle)
        shadow = np.exp(-((theta - lt) / 0.012) ** 2) * _sigmoid((depth - rng.uniform(20, 50)) / 3.0)
        post *= 1.0 - 0.15 * shadow.astype(np.float32)

    mask = np.zeros((SIZE, SIZE), bool)
    lesions: list[dict[str, Any]] = []
    if abnormal:
        while not lesions:
            radius = float(np.exp(rng.uniform(np.log(4.0), np.log(28.0))))
            lt = rng.uniform(-half_angle * 0.8, half_angle * 0.8)
            ld = rng.uniform(t1.mean() + radius * 0.6 + 4, t1.mean() + 85)
            cy = apex_y + (r0 + ld) * np.cos(lt)
            cx = apex_x + (r0 + ld) * np.sin(lt)
            if not (radius < cx < SIZE - radius and radius < cy < SIZE - radius - 4):
                continue
            irregular = rng.random() < 0.5
            aspect = rng.uniform(1.0, 1.6) if not irregular else rng.uniform(0.8, 1.3)
            alpha = _irregular_blob(rng, cx, cy, radius * aspect, roughness=0.35 if irregular else 0.05,
                                    edge=1.0 if irregular else 1.8, aspect=aspect)
            alpha *= sector > 0.5
            lesion_mask = _lesion_mask(alpha)
            if lesion_mask.sum() < 12:
                continue
            factor = float(rng.uniform(0.15, 0.3) if radius < 8 else rng.uniform(0.2, 0.5))
            place(alpha, factor)
            kind = rng.choice(["shadowing", "enhancement", "none"], p=[0.4, 0.3, 0.3])
            if kind != "none":
                ang_half = radius / (r0 + ld) * 0.9
                column = np.exp(-((theta - lt) / ang_half) ** 4) * _sigmoid((r - (r0 + ld) - radius * 0.5) / 2.0)
                column *= np.exp(-np.clip(r - (r0 + ld), 0, None) / 120.0)
                strength = rng.uniform(0.10, 0.30)
                post *= (1.0 + (strength if kind == "enhancement" else -strength) * column).astype(np.float32)
            mask |= lesion_mask
            lesions.append({"kind": "irregular" if irregular else "oval", "posterior": str(kind),
                            "centre": [int(cy), int(cx)], "radius": round(radius, 2),
                            "echo_factor": round(factor, 3), "area_px": int(lesion_mask.sum())})

    echo = echo * post
    # Speckle: complex Gaussian field, laterally elongated PSF, Rayleigh amplitude with mean 1.
    coarse = 1.5 if shifted else 1.0
    sx, sy = rng.uniform(1.0, 1.4) * coarse, rng.uniform(0.5, 0.7) * coarse
    re = cv2.GaussianBlur(noise_draw.standard_normal((SIZE, SIZE)).astype(np.float32), (0, 0), sigmaX=sx, sigmaY=sy)
    im = cv2.GaussianBlur(noise_draw.standard_normal((SIZE, SIZE)).astype(np.float32), (0, 0), sigmaX=sx, sigmaY=sy)
    speckle = np.sqrt(re * re + im * im)
    speckle /= speckle.mean()

    attenuation = np.exp(-np.clip(depth, 0, None) * rng.uniform(0.002, 0.006))
    gain = rng.uniform(0.6, 0.8) if shifted else rng.uniform(0.9, 1.2)
    intensity = echo * speckle * attenuation * gain
    k = 6.0
    img = np.log1p(k * np.clip(intensity, 0, None)) / np.log1p(k * 2.2)
    img = img * sector
    return np.clip(img, 0, 1).astype(np.float32), mask, lesions


# ----------------------------------------------------------------------------- brain MRI (FLAIR-like)


def _brain_mri(
    rng: np.random.Generator, abnormal: bool, shifted: bool, noise_draw: _Noise
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    cx, cy = SIZE / 2 + rng.uniform(-5, 5), SIZE / 2 + rng.uniform(-4, 6)
    ax, ay = rng.uniform(72, 82), rng.uniform(90, 100)
    tilt = rng.uniform(-0.12, 0.12)
    head = _soft_ellipse(cx, cy, ax + 12, ay + 12, 2.0, tilt)
    skull = _soft_ellipse(cx, cy, ax + 6, ay + 6, 1.5, tilt)
    brain = _soft_ellipse(cx, cy, ax, ay, 1.5, tilt)
    img = head * 0.55 - skull * 0.5  # bright scalp fat, dark bone
    # Radial distance from the brain's edge (0 at the surface, 1 at the centre) for the cortex and sulci.
    c, s_ = np.cos(tilt), np.sin(tilt)
    u, v = (c * (_XX - cx) + s_ * (_YY - cy)) / ax, (-s_ * (_XX - cx) + c * (_YY - cy)) / ay
    rho = np.sqrt(u * u + v * v)
    phi = np.arctan2(v, u)
    wm_level, gm_level = rng.uniform(0.36, 0.42), rng.uniform(0.50, 0.58)
    cortex_depth = rng.uniform(0.14, 0.2)
    gyri = np.zeros_like(rho)
    for k, amp in ((int(rng.integers(14, 20)), 0.05), (int(rng.integers(30, 40)), 0.025)):
        gyri += amp * np.sin(k * phi + rng.uniform(0, 2 * np.pi) + 0.6 * _smooth_noise(rng, 12.0))
    ribbon = _sigmoid((rho - (1 - cortex_depth + gyri)) * 60.0)
    tissue = wm_level + (gm_level - wm_level) * ribbon + 0.02 * _smooth_noise(rng, 6.0)
    # Sulci: dark CSF clefts running inward from the surface between gyri.
    n_sulci = int(rng.integers(16, 26))
    sulci = np.zeros_like(rho)
    for ang in np.sort(rng.uniform(-np.pi, np.pi, n_sulci)):
        depth = rng.uniform(0.12, 0.3)
        width = rng.uniform(0.03, 0.06)
        dang = np.angle(np.exp(1j * (phi - ang - 0.15 * np.sin(rho * 9))))
        sulci = np.maximum(sulci, _sigmoid((width - np.abs(dang) * rho * 1.3) * 80.0) * _sigmoid((rho - 1 + depth) * 40))
    tissue = tissue * (1 - 0.8 * sulci)
    # Lateral ventricles (dark, FLAIR suppresses CSF) with bright caps, and the falx.
    vent = np.zeros_like(rho)
    caps = np.zeros_like(rho)
    vsep = rng.uniform(6, 10)
    for side in (-1, 1):
        vx = cx + side * vsep
        body = _soft_ellipse(vx, cy - rng.uniform(2, 8), rng.uniform(5, 8), rng.uniform(22, 30), 1.5,
                             side * rng.uniform(0.15, 0.3))
        horn = _soft_ellipse(vx + side * 4, cy + rng.uniform(24, 30), rng.uniform(4, 6), rng.uniform(8, 12), 1.5,
                             -side * 0.5)
        v_ = np.maximum(body, horn)
        vent = np.maximum(vent, v_)
        for end in (-1, 1):
            capy = cy - 4 + end * rng.uniform(26, 32)
            caps = np.maximum(caps, _soft_ellipse(vx + side * 2, capy, rng.uniform(3, 5), rng.uniform(2, 4), 2.0))
    tissue = tissue * (1 - 0.85 * vent) + caps * rng.uniform(0.06, 0.12) * (1 - vent)
    falx = _sigmoid((1.2 - np.abs(c * (_XX - cx) + s_ * (_YY - cy))) * 2.0) * (np.abs(v) > 0.45)
    tissue = tissue * (1 - 0.6 * falx)
    wm = (ribbon < 0.3) & (vent < 0.1) & (rho < 0.78) & (sulci < 0.1) & (falx < 0.1)
    # Distractors: vessel flow dots and a motion ghost.
    for _ in range(int(rng.integers(2, 7))):
        yy, xx = np.argwhere((rho > 0.6) & (rho < 0.95))[rng.integers(int(((rho > 0.6) & (rho < 0.95)).sum()))]
        r = rng.uniform(1.5, 3.0)
        tissue += _soft_ellipse(xx, yy, r, r, 0.8) * rng.uniform(0.12, 0.2)
    img = img * (1 - brain) + tissue * brain
    if rng.random() < 0.5:
        shift = int(rng.integers(18, 40)) * (1 if rng.random() < 0.5 else -1)
        img += np.roll(head - skull, shift, axis=0) * rng.uniform(0.03, 0.06)

    mask = np.zeros((SIZE, SIZE), bool)
    lesions: list[dict[str, Any]] = []
    if abnormal:
        n_lesions = 1 if rng.random() < 0.7 else int(rng.integers(2, 4))
        candidates = np.argwhere(wm)
        while len(lesions) < n_lesions:
            py, px = candidates[rng.integers(len(candidates))]
            contrast = float(rng.uniform(0.12, 0.28))
            if rng.random() < 0.6:
                radius = float(np.exp(rng.uniform(np.log(5.0), np.log(18.0))))
                alpha = _irregular_blob(rng, px, py, radius, roughness=0.25, edge=max(1.2, radius * 0.2))
                kind = "tumour"
                profile = alpha * (0.85 + 0.3 * _smooth_noise(rng, 3.0).clip(-0.5, 0.5))
                if rng.random() < 0.5:  # enhancing rim
                    inner = _irregular_blob(rng, px, py, radius * 0.6, roughness=0.2, edge=1.5)
                    profile = alpha * (1.0 - 0.5 * inner) + 0.25 * (alpha - inner).clip(0, 1)
            else:
                radius = float(rng.uniform(3, 7))
                alpha = _soft_ellipse(px, py, radius * rng.uniform(1.0, 1.6), radius, 1.2, rng.uniform(0, np.pi))
                kind = "plaque"
                profile = alpha
            alpha = alpha * brain * (1 - vent)
            lesion_mask = _lesion_mask(alpha)
            if lesion_mask.sum() < 10:
                continue
            img += profile * (alpha > 0.05) * contrast
            mask |= lesion_mask
            lesions.append({"kind": kind, "centre": [int(py), int(px)], "radius": round(radius, 2),
                            "contrast": round(contrast, 4), "area_px": int(lesion_mask.sum())})

    # Acquisition: smooth bias field, slight blur, Rician noise.
    bias = 1.0 + rng.uniform(0.05, 0.15) * _smooth_noise(rng, 50.0)
    img = np.clip(img, 0, None) * bias * rng.uniform(0.9, 1.1)
    img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), rng.uniform(0.5, 1.0) * (1.6 if shifted else 1.0))
    sd = rng.uniform(0.015, 0.035) * (1.8 if shifted else 1.0)
    n1 = noise_draw.standard_normal(img.shape).astype(np.float32) * sd
    n2 = noise_draw.standard_normal(img.shape).astype(np.float32) * sd
    img = np.sqrt((img + n1) ** 2 + n2 ** 2)
    return np.clip(img, 0, 1), mask, lesions


# ----------------------------------------------------------------------------- retinal fundus (colour)


def _fundus(
    rng: np.random.Generator, abnormal: bool, shifted: bool, noise_draw: _Noise
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    cx, cy = SIZE / 2 + rng.uniform(-3, 3), SIZE / 2 + rng.uniform(-3, 3)
    radius = rng.uniform(100, 108)
    r = np.sqrt((_XX - cx) ** 2 + (_YY - cy) ** 2)
    fov = _sigmoid((radius - r) * 1.5)
    side = 1 if rng.random() < 0.5 else -1
    dx, dy = cx + side * rng.uniform(52, 62), cy + rng.uniform(-8, 8)  # optic disc
    mx, my = cx - side * rng.uniform(8, 16), cy + rng.uniform(-4, 6)  # macula
    # Retina: base colour with a per-case pigmentation, vignetting and smooth mottling.
    base = np.array([rng.uniform(0.72, 0.85), rng.uniform(0.30, 0.40), rng.uniform(0.10, 0.17)], np.float32)
    base *= rng.uniform(0.8, 1.05)
    vignette = 1.0 - 0.35 * (r / radius) ** 2
    mottle = 1.0 + 0.04 * _smooth_noise(rng, 10.0)
    shade = (vignette * mottle)[..., None]
    img = base[None, None, :] * shade
    macula = _soft_ellipse(mx, my, 22, 20, 12.0)
    img *= (1 - 0.25 * macula)[..., None]
    img *= (1 - 0.25 * _soft_ellipse(mx, my, 4, 4, 2.0))[..., None]
    # Vessels: dark red random walks from the disc, thinning outwards.
    vessels = np.zeros((SIZE, SIZE), np.float32)
    for _ in range(int(rng.integers(6, 10))):
        x, y = dx, dy
        ang = rng.uniform(-np.pi, np.pi)
        width = rng.uniform(2.5, 3.5)
        for _step in range(int(rng.integers(10, 16))):
            length = rng.uniform(7, 12)
            nx, ny = x + np.cos(ang) * length, y + np.sin(ang) * length
            cv2.line(vessels, (int(round(x)), int(round(y))), (int(round(nx)), int(round(ny))), 1.0,
                     thickness=max(1, int(round(width))), lineType=cv2.LINE_AA)
            x, y = nx, ny
            ang += rng.normal(0, 0.3)
            width = max(1.0, width * 0.9)
    vessels = cv2.GaussianBlur(vessels, (0, 0), 0.7) * fov
    vessel_colour = np.array([0.45, 0.08, 0.06], np.float32) * rng.uniform(0.85, 1.1)
    img = img * (1 - 0.7 * vessels[..., None]) + vessel_colour * 0.7 * vessels[..., None]
    # Optic disc and cup.
    disc = _soft_ellipse(dx, dy, rng.uniform(12, 16), rng.uniform(13, 17), 2.0)
    img = img * (1 - disc[..., None]) + np.array([0.97, 0.82, 0.55], np.float32) * disc[..., None]
    cup = _soft_ellipse(dx, dy, rng.uniform(4, 7), rng.uniform(5, 8), 1.5)
    img = img + cup[..., None] * np.array([0.03, 0.1, 0.15], np.float32)
    # Distractors: pigment freckles and specular reflexes along the vessels.
    retina = (fov > 0.9) & (disc < 0.05) & (r < radius - 10)
    spots = np.argwhere(retina)
    for _ in range(int(rng.integers(2, 7))):
        py, px = spots[rng.integers(len(spots))]
        rr = rng.uniform(4, 9)
        f = _soft_ellipse(px, py, rr, rr * rng.uniform(0.7, 1.0), rr * 0.6, rng.uniform(0, np.pi))
        img *= (1 - f * rng.uniform(0.08, 0.15))[..., None]
    along = np.argwhere((vessels > 0.6) & retina)
    for _ in range(int(rng.integers(3, 9))):
        if len(along) == 0:
            break
        py, px = along[rng.integers(len(along))]
        f = _soft_ellipse(px, py, rng.uniform(1.0, 2.0), rng.uniform(1.0, 2.0), 0.8)
        img = img + f[..., None] * rng.uniform(0.15, 0.3)

    mask = np.zeros((SIZE, SIZE), bool)
    lesions: list[dict[str, Any]] = []
    if abnormal:
        free = retina & (vessels < 0.2) & (macula < 0.5)
        where = np.argwhere(free)
        while not lesions:
            for _ in range(int(rng.integers(1, 7))):
                py, px = where[rng.integers(len(where))]
                rr = float(np.exp(rng.uniform(np.log(1.5), np.log(7.0))))
                alpha = _irregular_blob(rng, px, py, rr, roughness=0.2, edge=max(0.8, rr * 0.25)) * fov
                lm = _lesion_mask(alpha)
                if lm.sum() < 5:
                    continue
                colour = np.array([0.38, 0.06, 0.05], np.float32) * rng.uniform(0.8, 1.1)
                strength = rng.uniform(0.55, 0.85)
                img = img * (1 - strength * alpha[..., None]) + colour * strength * alpha[..., None]
                mask |= lm
                lesions.append({"kind": "haemorrhage", "centre": [int(py), int(px)], "radius": round(rr, 2),
                                "contrast": round(float(strength), 4), "area_px": int(lm.sum())})
            if rng.random() < 0.5:
                py, px = where[rng.integers(len(where))]
                for _ in range(int(rng.integers(2, 7))):
                    ey, ex = py + rng.normal(0, 6), px + rng.normal(0, 6)
                    rr = rng.uniform(1.5, 3.5)
                    alpha = _soft_ellipse(ex, ey, rr, rr * rng.uniform(0.7, 1.0), 0.7) * fov
                    lm = _lesion_mask(alpha)
                    if lm.sum() < 4:
                        continue
                    img = img * (1 - 0.8 * alpha[..., None]) + np.array([0.95, 0.85, 0.35], np.float32) * 0.8 * alpha[..., None]
                    mask |= lm
                    lesions.append({"kind": "exudate", "centre": [int(ey), int(ex)], "radius": round(float(rr), 2),
                                    "contrast": 0.8, "area_px": int(lm.sum())})

    # Acquisition: blur, sensor noise per channel, the black surround.
    img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), rng.uniform(0.5, 0.9) * (1.6 if shifted else 1.0))
    sd = rng.uniform(0.01, 0.025) * (1.8 if shifted else 1.0)
    img = img + noise_draw.standard_normal(img.shape).astype(np.float32) * sd
    img = img * fov[..., None]
    return np.clip(img, 0, 1), mask, lesions


# ----------------------------------------------------------------------------- planted shortcuts

MARKER_KINDS: tuple[str, ...] = ("laterality", "text")
MARKED_IF_ABNORMAL, MARKED_IF_NORMAL = 0.9, 0.1  # a confounded site: most of its abnormal cases carry the marker


def _marker_rng(modality: str, split: str, index: int, kind: str) -> np.random.Generator:
    key = [_SEED_SALT, 2, ALL_MODALITIES.index(modality), SPLITS.index(split), int(index), MARKER_KINDS.index(kind)]
    return np.random.default_rng(np.random.SeedSequence(key))


def burn_in_marker(image: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Burn a marker into a copy of ``image`` (float32 (H, W, C) in [0, 1]) as scanners and technologists do.

    ``laterality``: a bright "L" or "R" (about 9 % of the side tall) in a top corner, 3-6 % of the side
    from both edges, on a dark square as lead markers print. ``text``: a short burnt-in label ("PORTABLE",
    "AP SUPINE", "SITE 2") in a bottom corner. Returns the marked image and the marker's pixels (bool (H, W)).
    """
    if kind not in MARKER_KINDS:
        raise ValueError(f"Unknown marker kind {kind!r}. Valid kinds are: {', '.join(MARKER_KINDS)}.")
    h, w = image.shape[:2]
    side = min(h, w)
    ink = np.zeros((h, w), np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    right = bool(rng.random() < 0.5)
    if kind == "laterality":
        text, scale, thick = ("L", "R")[int(rng.integers(2))], side / 300.0, max(1, round(side / 110))
        (tw, th), _ = cv2.getTextSize(text, font, scale, thick)
        m = int(rng.uniform(0.03, 0.06) * side)
        x = w - m - tw if right else m
        y = m + th
        box = np.zeros((h, w), np.uint8)
        pad = max(2, side // 60)
        cv2.rectangle(box, (x - pad, y - th - pad), (x + tw + pad, y + pad), 255, -1)
        cv2.putText(ink, text, (x, y), font, scale, 255, thick, cv2.LINE_AA)
        level, background = rng.uniform(0.85, 1.0), rng.uniform(0.0, 0.08)
    else:
        text = ("PORTABLE", "AP SUPINE", "SITE 2")[int(rng.integers(3))]
        scale, thick = side / 560.0, max(1, round(side / 224))
        (tw, th), _ = cv2.getTextSize(text, font, scale, thick)
        m = int(rng.uniform(0.02, 0.05) * side)
        x = w - m - tw if right else m
        y = h - m
        box = np.zeros((h, w), np.uint8)
        cv2.putText(ink, text, (x, y), font, scale, 255, thick, cv2.LINE_AA)
        level, background = rng.uniform(0.8, 1.0), None
    out = image.copy()
    if background is not None:
        b = box > 0
        out[b] = background
    a = (ink.astype(np.float32) / 255.0)[..., None]
    out = (out * (1 - a) + level * a).astype(np.float32)
    mask = (ink > 0) | (box > 0)
    return out, mask


def is_marked(modality: str, split: str, index: int, label: int, kind: str) -> bool:
    """Whether the confounded site marked this case: with probability 0.9 for abnormal cases, 0.1 for normal ones."""
    p = MARKED_IF_ABNORMAL if label else MARKED_IF_NORMAL
    return bool(_marker_rng(modality, split, index, kind).random() < p)


def marked_phantom(modality: str, split: str, index: int, kind: str = "laterality",
                   marked: bool | None = None) -> tuple[Phantom, np.ndarray]:
    """The phantom ``(modality, split, index)`` from a site that burns in a ``kind`` marker.

    ``marked`` None follows the site's confounding (:func:`is_marked`); True or False forces it.
    Returns the phantom (its lesion mask and label unchanged) and the marker's pixels (empty when unmarked).
    Deterministic; the marker's draws come from their own stream, so the anatomy is the plain phantom's."""
    ph = make_phantom(modality, split, index)
    rng = _marker_rng(modality, split, index, kind)
    draw = bool(rng.random() < (MARKED_IF_ABNORMAL if ph.label else MARKED_IF_NORMAL)) if marked is None else marked
    if not draw:
        return ph, np.zeros(ph.mask.shape, bool)
    image, marker = burn_in_marker(ph.image, kind, rng)
    return Phantom(image, ph.mask, ph.label, modality, split, index, ph.lesions), marker


# ----------------------------------------------------------------------------- writing to disk


def write_phantoms(out_dir: str | Path, modality: str, split: str, count: int, start: int = 0,
                   marker: str | None = None) -> Path:
    """Write ``count`` phantoms as PNG images, PNG masks and a ``labels.csv``; returns the CSV path.

    ``marker`` (a :data:`MARKER_KINDS` kind): the phantoms of a site that burns that marker into most of
    its abnormal cases (:func:`marked_phantom`); labels.csv then has a ``marked`` column (1 = marked)."""
    from blackbox_lime.outputs import atomic_write_bytes  # local import keeps phantoms importable alone

    if count < 1:
        raise ValueError(f"The phantom count must be an integer >= 1. Got {count!r} instead.")
    _check_key(modality, split, start)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(start, start + count):
        ph, marker_px = (make_phantom(modality, split, index), None) if marker is None else \
            marked_phantom(modality, split, index, marker)
        stem = f"{modality}_{split}_{index:05d}"
        colour = not np.array_equal(ph.image[..., 0], ph.image[..., 1])
        img8 = np.round((ph.image[..., ::-1] if colour else ph.image[..., 0]) * 255).astype(np.uint8)  # BGR
        ok1, img_png = cv2.imencode(".png", img8)
        ok2, mask_png = cv2.imencode(".png", ph.mask.astype(np.uint8) * 255)
        if not (ok1 and ok2):  # pragma: no cover
            raise RuntimeError("OpenCV could not encode a PNG")
        atomic_write_bytes(out / f"{stem}.png", img_png.tobytes())
        atomic_write_bytes(out / f"{stem}.mask.png", mask_png.tobytes())
        rows.append({"image": f"{stem}.png", "mask": f"{stem}.mask.png", "label": ph.label,
                     "modality": modality, "split": split, "index": index,
                     "lesion_area_px": int(ph.mask.sum())}
                    | ({} if marker_px is None else {"marked": int(marker_px.any())}))
    csv_path = out / "labels.csv"
    existing: list[dict[str, Any]] = []
    if csv_path.exists():
        with open(csv_path, newline="") as f:
            existing = [r for r in csv.DictReader(f) if r["image"] not in {x["image"] for x in rows}]
    import io as _io

    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0].keys()))
    writer.writeheader()
    writer.writerows(existing + rows)
    atomic_write_bytes(csv_path, buf.getvalue().encode())
    return csv_path


def write_multilabel_phantoms(out_dir: str | Path, split: str, count: int, start: int = 0) -> Path:
    """Write ``count`` multi-label chest phantoms: ``STEM.png``, one ``STEM.FINDING.mask.png`` per finding and
    a ``labels.csv`` with a 0/1 column per finding. Returns the CSV path."""
    from blackbox_lime.outputs import atomic_write_bytes

    if count < 1:
        raise ValueError(f"The phantom count must be an integer >= 1. Got {count!r} instead.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(start, start + count):
        ph = make_multilabel_phantom(split, index)
        stem = f"chest_multilabel_{split}_{index:05d}"
        files = {f"{stem}.png": np.round(ph.image[..., 0] * 255).astype(np.uint8)}
        files.update({f"{stem}.{k}.mask.png": ph.masks[k].astype(np.uint8) * 255 for k in FINDINGS})
        for name, arr in files.items():
            ok, png = cv2.imencode(".png", arr)
            if not ok:  # pragma: no cover
                raise RuntimeError("OpenCV could not encode a PNG")
            atomic_write_bytes(out / name, png.tobytes())
        rows.append({"image": f"{stem}.png", **{k: ph.labels[k] for k in FINDINGS}, "split": split, "index": index})
    import io as _io

    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0].keys()))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out / "labels.csv", buf.getvalue().encode())
    return out / "labels.csv"


def phantom_stats(modality: str, split: str, count: int) -> dict[str, float]:
    """Measured lesion size, contrast and abnormal fraction over ``count`` cases."""
    areas, contrasts, labels = [], [], []
    for i in range(count):
        ph = make_phantom(modality, split, i)
        labels.append(ph.label)
        if ph.label:
            g = ph.image[..., 0]
            areas.append(ph.mask.mean())
            ring = cv2.dilate(ph.mask.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool) & ~ph.mask
            contrasts.append(float(g[ph.mask].mean() - g[ring].mean()))
    a = np.array(areas)
    c = np.array(contrasts)
    return {
        "cases": count,
        "abnormal_fraction": float(np.mean(labels)),
        "lesion_area_pct_median": float(np.median(a) * 100),
        "lesion_area_pct_p10": float(np.percentile(a, 10) * 100),
        "lesion_area_pct_p90": float(np.percentile(a, 90) * 100),
        "lesions_under_1pct": float(np.mean(a < 0.01)),
        "contrast_vs_ring_median": float(np.median(c)),
        "contrast_vs_ring_p10": float(np.percentile(c, 10)),
        "contrast_vs_ring_p90": float(np.percentile(c, 90)),
    }


def phantom_bank(modality: str, grid: PatchGrid, embedder: Embedder, count: int = 200, split: str = "train",
                 progress: Callable[[int], None] | None = None) -> EvidenceBank:
    """EBR's evidence bank from phantoms: a mask-source bank of the first ``count`` abnormal phantoms of
    ``split`` (the train split by default)."""
    from itertools import islice

    from blackbox_lime.evidence_bank import build_bank, mask_patch_map

    images, maps, ids = [], [], []
    for ph in islice(iter_abnormal_cases(modality, split), count):
        images.append(ph.image)
        maps.append(mask_patch_map(ph.mask, grid))
        ids.append(f"{modality}/{split}/{ph.index}")
        if progress:
            progress(1)
    return build_bank(images, maps, ids, embedder, grid, "abnormal", "masks",
                      {"phantoms": {"modality": modality, "split": split, "count": count}})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m blackbox_lime.evaluation.phantoms",
                                description="Write synthetic phantoms (PNG + mask PNG + labels.csv).")
    p.add_argument("--out", default="phantoms")
    p.add_argument("--modality", choices=ALL_MODALITIES, default="chest_xray")
    p.add_argument("--split", choices=SPLITS, default="test")
    p.add_argument("--count", type=int, default=10)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--marker", choices=MARKER_KINDS, default=None, help="burn in a confounded marker")
    p.add_argument("--stats", action="store_true", help="print measured distributions instead")
    a = p.parse_args(argv)
    if a.stats:
        import json

        for m in ALL_MODALITIES:
            print(m, json.dumps(phantom_stats(m, a.split, a.count), indent=1))
        return 0
    print(write_phantoms(a.out, a.modality, a.split, a.count, a.start, a.marker))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
