"""Phantom data for the training and evaluation scripts, cached on disk; torch-free."""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from blackbox_lime.evaluation.phantoms import MODALITIES, make_phantom  # noqa: E402

CACHE = Path(os.environ.get("BLACKBOX_LIME_CACHE", ROOT / ".cache"))
IMG, PATCH = 224, 16
GRID = IMG // PATCH  # 14
L = GRID * GRID  # 196


COLOUR = ("fundus",)  # families drawn in colour: their cache keeps RGB (N, H, W, 3), the others grey (N, H, W)


def _draw(args: tuple[str, str, int]) -> tuple[np.ndarray, np.ndarray, int]:
    ph = make_phantom(*args)
    pixels = ph.image if args[0] in COLOUR else ph.image[..., 0]
    return np.round(pixels * 255).astype(np.uint8), np.packbits(ph.mask), ph.label


def load_split(split: str, per_modality: int, workers: int = 2,
               modalities: tuple[str, ...] = MODALITIES) -> dict[str, np.ndarray]:
    """uint8 images [N, 224, 224] (grey; [N, 224, 224, 3] for a colour family), masks bool [N, 224, 224], labels, modality ids (indices into
    ``modalities``).

    Cached under ``.cache/`` so the training scripts draw the phantoms once.
    """
    CACHE.mkdir(parents=True, exist_ok=True)
    tag = "" if modalities == MODALITIES else "_" + "_".join(modalities)
    path = CACHE / f"phantoms_{split}_{per_modality}{tag}.npz"
    if path.exists():
        z = np.load(path)
        return {k: z[k] for k in z.files}
    keys = [(m, split, i) for m in modalities for i in range(per_modality)]
    t0 = time.time()
    with ProcessPoolExecutor(workers) as ex:
        out = list(ex.map(_draw, keys, chunksize=64))
    images = np.stack([o[0] for o in out])
    masks = np.stack([np.unpackbits(o[1])[: IMG * IMG].reshape(IMG, IMG).astype(bool) for o in out])
    data = {
        "images": images,
        "masks": masks,
        "labels": np.array([o[2] for o in out], np.int64),
        "modality": np.array([modalities.index(k[0]) for k in keys], np.int64),
    }
    np.savez(path, allow_pickle=False, **data)
    print(f"drew {len(keys)} {split} phantoms in {time.time() - t0:.0f}s", flush=True)
    return data



def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney) formula, ties averaged."""
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    pos = labels == 1
    n1, n0 = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))
