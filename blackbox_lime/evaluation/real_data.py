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
