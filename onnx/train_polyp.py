"""Train the colonoscopy polyp classifier on real frames and export it to ONNX: the second real-image family.

    python onnx/train_polyp.py --kvasir DATA/Kvasir-SEG
        # -> onnx/kvasir_polyp_cnn.onnx (+ .pt): "is there a polyp in this field of view?" on colour colonoscopy

The data is Kvasir-SEG (Jha et al. 2020; 1,000 colonoscopy frames, each polyp outlined by endoscopists; see
blackbox_lime/evaluation/real_data.py), never bundled: give a local copy. A sample is a field of view, a crop of half
the frame's side: "polyp" when it holds at least half of the polyp (or the polyp fills a quarter of it), "no polyp"
when no polyp pixel lies within 8 px of it; never a view that holds more than 3 % of the frame's black border
(``crop_label``: without that rule, "border" alone told the classes apart). The outlines decide only these labels;
the model sees the label alone, as a frame classifier of a computer-aided detection product would be trained. Views
are drawn afresh every epoch: a polyp view from every train frame, each paired with a polyp-free view at the same
place in another train frame (``epoch_views``); flips, quarter turns and a colour jitter. The model is the unseen
families' residual CNN
(onnx/train_unseen.py) with two classes, without the patch-fill augmentation of the phantom models (a vendor's model
has not been taught to ignore fills). The epoch with the best val balanced accuracy (on the fixed val views of
``kvasir_polyp``) is kept; test is never seen. Seeded; CPU.
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
import torch

from common import BestEpoch, label_epoch, save_classifier, seeded, to_tensor, training_options
from train_unseen import LabelOnlyCNN

from blackbox_lime.evaluation.real_data import (KVASIR_CLASSES, KVASIR_CROP, kvasir_images,  # noqa: E402
                                                kvasir_polyp, kvasir_views)

NAME = "kvasir_polyp_cnn"
SIZE = 224


def epoch_views(frames: list, where: list[dict[int, list[tuple[int, int]]]],
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One polyp view from every frame, each paired with a polyp-free view at the same place in another frame: the
    two classes have one distribution of positions in the frame, so neither the endoscope's fall-off of light towards
    the frame's edge nor the border can tell them apart."""
    free_at: dict[tuple[int, int], list[int]] = {}
    for k, pos in enumerate(where):
        for p in pos[0]:
            free_at.setdefault(p, []).append(k)
    images, labels = [], []
    for k, (frame, pos) in enumerate(zip(frames, where)):
        if not pos[1]:
            continue
        order = rng.permutation(len(pos[1]))
        match = next(((pos[1][i], others) for i in order
                      if len(others := [j for j in free_at.get(pos[1][i], []) if j != k])), None)
        if match is None:
            continue
        (y, x), others = match
        for label, src in ((1, frame), (0, frames[others[rng.integers(len(others))]])):
            view = src.image[y:y + KVASIR_CROP, x:x + KVASIR_CROP]
            images.append(cv2.resize(view, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR))
            labels.append(label)
    return np.stack(images), np.array(labels)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Flips, quarter turns (a colonoscope has no up) and a per-image gain, contrast and colour balance."""
    n = x.shape[0]
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    x = torch.rot90(x, int(torch.randint(0, 4, (1,), generator=gen)), dims=(2, 3))
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    contrast = 0.8 + 0.4 * torch.rand(n, 1, 1, 1, generator=gen)
    gain = (0.85 + 0.3 * torch.rand(n, 1, 1, 1, generator=gen)) * (0.92 + 0.16 * torch.rand(n, 3, 1, 1, generator=gen))
    return ((x - mean) * contrast + mean).mul(gain).clamp(0, 1)


def balanced_accuracy(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, batch: int = 128) -> float:
    model.eval()
    with torch.no_grad():
        pred = np.concatenate([model(to_tensor(images[i:i + batch])).argmax(-1).numpy()
                               for i in range(0, len(labels), batch)])
    return float(np.mean([(pred[labels == k] == k).mean() for k in (0, 1)]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kvasir", required=True, help="the Kvasir-SEG folder holding images/ and masks/")
    training_options(ap, epochs=16)
    a = ap.parse_args()
    gen, rng = seeded(a)
    frames = kvasir_images(a.kvasir, "train")
    where = [kvasir_views(f) for f in frames]
    val = kvasir_polyp(a.kvasir, "val", size=SIZE)
    xv, yv = np.stack([c.image for c in val]), np.array([c.label for c in val])
    print(f"train frames {len(frames)} ({sum(bool(w[0]) for w in where)} with polyp-free views), "
          f"val views {len(yv)} (per class {np.bincount(yv).tolist()})", flush=True)
    model = LabelOnlyCNN(classes=2)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=1e-4)
    xt, yt = epoch_views(frames, where, rng)
    steps_per_epoch = len(yt) // a.batch
    total = a.epochs * steps_per_epoch
    best, step, t0 = BestEpoch(), 0, time.time()
    for epoch in range(a.epochs):
        if epoch:
            xt, yt = epoch_views(frames, where, rng)
        weights = torch.tensor(len(yt) / (2 * np.bincount(yt, minlength=2)), dtype=torch.float32)
        loss, step = label_epoch(model, opt, xt, yt, weights, augment, rng, gen, a, step, total,
                                 warmup=steps_per_epoch // 2, steps=steps_per_epoch)
        acc = balanced_accuracy(model, xv, yv)
        print(f"epoch {epoch + 1}/{a.epochs} views {len(yt)} loss {loss:.4f} val balanced accuracy "
              f"{acc:.4f}  {time.time() - t0:.0f}s", flush=True)
        best.offer(acc, model)
    save_classifier(model, best, NAME, {
        "class_names": list(KVASIR_CLASSES), "abnormal_index": 1, "family": "kvasir_polyp",
        "intended_use": "benchmarking explanation methods on real colonoscopy; never diagnosis",
        "training": {"seed": a.seed, "epochs": a.epochs, "train_frames": len(frames),
                     "best_val_balanced_accuracy": round(best.score, 4), "train_seconds": round(time.time() - t0),
                     "supervision": "field-of-view label only", "data": "Kvasir-SEG, train split (hash of the id)"}},
                    size=SIZE)
    print(f"done in {time.time() - t0:.0f}s; best val balanced accuracy {best.score:.4f}")


if __name__ == "__main__":
    main()
