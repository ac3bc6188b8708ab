"""Train a classifier on real images and export it to ONNX: the real-image benchmark's own model.

    python onnx/train_real.py --figshare DATA/dataset-brain-tumor/categorized
        # -> onnx/figshare_brain_cnn.onnx (+ .pt): pituitary / meningioma / glioma on T1-CE brain MRI

The data is the figshare brain-tumour set (see blackbox_lime/evaluation/real_data.py), which is not bundled:
give a local copy. The model is the unseen families' residual CNN (onnx/train_unseen.py) with a three-class
head, trained with the image label alone (never the tumour boxes, which only the benchmark reads), on the train
split; the epoch with the best val accuracy is kept; test is never seen. Seeded; CPU.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from common import BestEpoch, label_epoch, save_classifier, seeded, to_tensor, training_options
from train_unseen import LabelOnlyCNN

from blackbox_lime.evaluation.real_data import FIGSHARE_CLASSES, figshare_brain  # noqa: E402  (common puts ROOT on the path)

NAME = "figshare_brain_cnn"


def evaluate(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, batch: int = 128) -> float:
    model.eval()
    with torch.no_grad():
        pred = np.concatenate([model(to_tensor(images[i:i + batch])).argmax(-1).numpy()
                               for i in range(0, len(labels), batch)])
    return float((pred == labels).mean())


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Flips, a brightness gain and a shift of up to 16 px: what varies between scanners and slices."""
    n = x.shape[0]
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    x = x * (0.85 + 0.3 * torch.rand(n, 1, 1, 1, generator=gen))
    dy, dx = (int(v) for v in torch.randint(-16, 17, (2,), generator=gen))
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3)).clamp(0, 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--figshare", required=True, help="the folder holding 0/, 1/ and 2/ (ID.jpg + ID.txt)")
    training_options(ap, epochs=10)
    a = ap.parse_args()
    gen, rng = seeded(a)
    train, val = figshare_brain(a.figshare, "train"), figshare_brain(a.figshare, "val")
    xt, yt = np.stack([c.image for c in train]), np.array([c.label for c in train])
    xv, yv = np.stack([c.image for c in val]), np.array([c.label for c in val])
    print(f"train {len(yt)} (per class {np.bincount(yt).tolist()}), val {len(yv)}", flush=True)
    model = LabelOnlyCNN(classes=len(FIGSHARE_CLASSES))
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=1e-4)
    steps_per_epoch = len(yt) // a.batch
    total = a.epochs * steps_per_epoch
    weights = torch.tensor(len(yt) / (len(FIGSHARE_CLASSES) * np.bincount(yt)), dtype=torch.float32)
    best, step, t0 = BestEpoch(), 0, time.time()
    for epoch in range(a.epochs):
        loss, step = label_epoch(model, opt, xt, yt, weights, augment, rng, gen, a, step, total,
                                 warmup=steps_per_epoch // 2, steps=steps_per_epoch)
        acc = evaluate(model, xv, yv)
        print(f"epoch {epoch + 1}/{a.epochs} loss {loss:.4f} val accuracy {acc:.4f}  "
              f"{time.time() - t0:.0f}s", flush=True)
        best.offer(acc, model)
    save_classifier(model, best, NAME, {
        "class_names": list(FIGSHARE_CLASSES), "abnormal_index": 0, "family": "figshare_brain",
        "intended_use": "benchmarking explanation methods on real MRI; never diagnosis",
        "training": {"seed": a.seed, "epochs": a.epochs, "train_cases": int(len(yt)),
                     "best_val_accuracy": round(best.score, 4), "train_seconds": round(time.time() - t0),
                     "supervision": "image label only", "data": "figshare brain tumour, train split"}})
    print(f"done in {time.time() - t0:.0f}s; best val accuracy {best.score:.4f}")


if __name__ == "__main__":
    main()
