"""Real images with expert lesion boxes, for the real-image benchmark (issue 37).

``figshare_brain``: the figshare brain-tumour set of Cheng et al. (2015, 2017): 3,064 T1-weighted
contrast-enhanced MRI slices of 233 patients, each with one tumour (708 meningioma, 1,426 glioma,
930 pituitary), the tumour outlined by radiologists. It is read in the layout of the public
``nanonane/RCS-YOLO`` repository (``dataset-brain-tumor/categorized/{0,1,2}/ID.jpg`` 512 x 512
greyscale, and ``ID.txt`` the outline's bounding box in YOLO form ``class cx cy w h``, normalised;
class 0 pituitary, 1 meningioma, 2 glioma). The data is never bundled or downloaded by this package:
point ``root`` at a local copy of that folder.

Splits are fixed, by blocks of 100 consecutive image ids (the ids run through each patient's slices,
so a block keeps most patients whole): blocks 0-2 mod 5 train, 3 val, 4 test. Only train trains a
model; only val tunes anything; test is held out.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

FIGSHARE_CLASSES = ("pituitary", "meningioma", "glioma")
SPLITS = {"train": (0, 1, 2), "val": (3,), "test": (4,)}


@dataclass(frozen=True)
class RealCase:
    """One real image: ``image`` uint8 (size, size) greyscale, ``mask`` bool (size, size) of the expert box."""

    id: str
    label: int
    image: np.ndarray
    mask: np.ndarray


def split_of(image_id: int) -> str:
    block = (image_id // 100) % 5
    return next(name for name, blocks in SPLITS.items() if block in blocks)


def figshare_brain(root: str | Path, split: str, size: int = 224, limit: int | None = None) -> list[RealCase]:
    """The cases of one split, in id order, at ``size`` x ``size`` (INTER_AREA). ``limit``: the first ones only."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}. Got {split!r} instead.")
    folder = Path(root)
    if not all((folder / str(k)).is_dir() for k in range(3)):
        raise FileNotFoundError(f"{folder} does not hold the figshare brain-tumour folders 0, 1 and 2 "
                                "(dataset-brain-tumor/categorized of nanonane/RCS-YOLO).")
    entries = []
    for label in range(3):
        for jpg in (folder / str(label)).glob("*.jpg"):
            image_id = int(jpg.stem)
            if split_of(image_id) == split:
                entries.append((image_id, label, jpg))
    entries.sort()
    cases = []
    for image_id, label, jpg in entries[:limit]:
        img = cv2.imread(str(jpg), cv2.IMREAD_GRAYSCALE)
        if img is None:
            raise ValueError(f"{jpg.name} is not a readable image.")
        box = (jpg.with_suffix(".txt")).read_text().split()
        cx, cy, w, h = (float(v) for v in box[1:5])
        mask = np.zeros((size, size), bool)
        x0, x1 = int(round((cx - w / 2) * size)), int(round((cx + w / 2) * size))
        y0, y1 = int(round((cy - h / 2) * size)), int(round((cy + h / 2) * size))
        mask[max(0, y0):max(y0 + 1, y1), max(0, x0):max(x0 + 1, x1)] = True
        small = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
        cases.append(RealCase(f"figshare-{image_id}", label, small, mask))
    return cases


# ----------------------------------------------------------------------------- colonoscopy: Kvasir-SEG polyps

KVASIR_CLASSES = ("no polyp", "polyp")
KVASIR_SIDE = 256  # every image is read at this size (the copies in public repositories are often 256 x 256)
KVASIR_CROP = 128  # a field of view: half the frame's side, resized to the model's 224 px
KVASIR_MARGIN = 8  # a negative crop keeps this many pixels away from the polyp's outline
KVASIR_DARK = 0.03  # a view may hold at most this share of the frame's dark border (pixels whose channels are all < 30)


@dataclass(frozen=True)
class ColourImage:
    """One whole colonoscopy frame: ``image`` uint8 (256, 256, 3) RGB, ``mask`` bool (256, 256) of the expert outline."""

    id: str
    image: np.ndarray
    mask: np.ndarray

    @property
    def dark(self) -> np.ndarray:
        """The endoscope's black border and the scope-guide overlay: pixels whose three channels are all below 30."""
        return self.image.max(axis=2) < 30


def kvasir_split_of(image_id: str) -> str:
    """Kvasir-SEG ids are opaque strings: the split is fixed by a hash of the id (blocks 0-2 of 5 train, 3 val, 4 test),
    so it does not depend on which other files a copy holds."""
    block = int(hashlib.sha256(image_id.encode()).hexdigest()[:8], 16) % 5
    return next(name for name, blocks in SPLITS.items() if block in blocks)


def kvasir_images(root: str | Path, split: str) -> list[ColourImage]:
    """The Kvasir-SEG frames of one split, in id order: ``root/images/ID.jpg`` and ``root/masks/ID.jpg``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}. Got {split!r} instead.")
    folder = Path(root)
    if not ((folder / "images").is_dir() and (folder / "masks").is_dir()):
        raise FileNotFoundError(f"{folder} does not hold the Kvasir-SEG folders images and masks.")
    out = []
    for jpg in sorted((folder / "images").glob("*.jpg")):
        if kvasir_split_of(jpg.stem) != split:
            continue
        bgr = cv2.imread(str(jpg), cv2.IMREAD_COLOR)
        outline = cv2.imread(str(folder / "masks" / jpg.name), cv2.IMREAD_GRAYSCALE)
        if bgr is None or outline is None:
            raise ValueError(f"{jpg.name}: the image or its mask is not a readable image.")
        rgb = cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (KVASIR_SIDE, KVASIR_SIDE), interpolation=cv2.INTER_AREA)
        mask = cv2.resize(outline, (KVASIR_SIDE, KVASIR_SIDE), interpolation=cv2.INTER_NEAREST) > 127
        out.append(ColourImage(jpg.stem, rgb, mask))
    return out


def crop_label(mask: np.ndarray, y: int, x: int, crop: int = KVASIR_CROP, dark: np.ndarray | None = None) -> int | None:
    """What a field of view at (y, x) shows: 1 if it holds at least half of the polyp's pixels, or the polyp fills a
    quarter of it; 0 if no polyp pixel lies within ``KVASIR_MARGIN`` of it; None (ambiguous, never used) otherwise,
    and also when more than ``KVASIR_DARK`` of it is the frame's dark border (``dark``). Polyps lie mostly mid-frame
    and the border at the frame's corners, so views with the border would teach a model "border, no polyp": a first
    model trained without this rule gave polyp-free views with the border P(polyp) 0.25 and the one without 0.81."""
    if dark is not None and dark[y:y + crop, x:x + crop].mean() > KVASIR_DARK:
        return None
    inside = int(mask[y:y + crop, x:x + crop].sum())
    total = int(mask.sum())
    if total and (inside >= 0.5 * total or inside >= 0.25 * crop * crop):
        return 1
    m = KVASIR_MARGIN
    if not mask[max(0, y - m):y + crop + m, max(0, x - m):x + crop + m].any():
        return 0
    return None


def _view(frame: ColourImage, y: int, x: int, size: int, crop: int = KVASIR_CROP) -> tuple[np.ndarray, np.ndarray]:
    img = cv2.resize(frame.image[y:y + crop, x:x + crop], (size, size), interpolation=cv2.INTER_LINEAR)
    mask = cv2.resize(frame.mask[y:y + crop, x:x + crop].astype(np.uint8), (size, size),
                      interpolation=cv2.INTER_NEAREST) > 0
    return img, mask


def kvasir_views(frame: ColourImage, step: int = 8) -> dict[int, list[tuple[int, int]]]:
    """The frame's usable views on a ``step``-px raster of corners, row by row, by ``crop_label``'s label (0, 1);
    ambiguous and border views left out."""
    out: dict[int, list[tuple[int, int]]] = {0: [], 1: []}
    dark = frame.dark
    last = KVASIR_SIDE - KVASIR_CROP
    for y in range(0, last + 1, step):
        for x in range(0, last + 1, step):
            label = crop_label(frame.mask, y, x, dark=dark)
            if label is not None:
                out[label].append((y, x))
    return out


def kvasir_polyp(root: str | Path, split: str, size: int = 224, limit: int | None = None) -> list[RealCase]:
    """Fixed fields of view for evaluation, up to two per frame: a polyp view (label 1, ``crop_label``'s rule, the
    polyp at most half of the view), drawn by a hash of the frame's id among the 8-px raster's views, so that the
    polyp lies anywhere in the view (views centred on the polyp let a blob at the view's centre score AUPRC 0.865 on
    test); and the first polyp-free view of a 16-px raster scan (label 0, its mask empty). Every view passes
    ``crop_label``'s border rule. ``image`` uint8 (size, size, 3)."""
    cases = []
    for frame in kvasir_images(root, split)[:limit]:
        views = kvasir_views(frame)
        polyp = [(y, x) for y, x in views[1] if frame.mask[y:y + KVASIR_CROP, x:x + KVASIR_CROP].mean() <= 0.5]
        if polyp:  # a place drawn from the id, so that the polyp lies anywhere in the view
            y, x = polyp[int(hashlib.sha256(f"view:{frame.id}".encode()).hexdigest()[:8], 16) % len(polyp)]
            img, mask = _view(frame, y, x, size)
            cases.append(RealCase(f"kvasir-{frame.id}", 1, img, mask))
        free = next(((y, x) for y, x in views[0] if y % 16 == 0 and x % 16 == 0), None)
        if free is not None:
            img, mask = _view(frame, *free, size)
            cases.append(RealCase(f"kvasir-{frame.id}-free", 0, img, mask))
    return cases
