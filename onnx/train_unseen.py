"""Train an unseen family's own classifier and export it to ONNX.

    python onnx/train_unseen.py --family brain_mri   # -> onnx/brain_cnn.onnx + onnx/brain_cnn.pt
    python onnx/train_unseen.py --family fundus      # -> onnx/fundus_cnn.onnx + onnx/fundus_cnn.pt

A different kind of model from the demo classifiers on purpose: a residual CNN with GroupNorm and a
global-max head, trained with the image label alone (cross-entropy; no patch-level deep supervision,
no fill augmentation), on that family's train phantoms only. The bundled MAE never sees these
families, so they are unseen domains for generative masking. Seeded; CPU; the best epoch by val
AUROC is kept. Times and metrics are in MODEL_CARD.md.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from common import (HERE, BestEpoch, Softmaxed, auroc, classifier_metadata, export_onnx, load_split, optimise, seeded, to_tensor,
                    training_options)

NAMES = {"brain_mri": "brain_cnn", "fundus": "fundus_cnn"}


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = nn.GroupNorm(8, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = nn.GroupNorm(8, cout)
        self.skip = nn.Sequential() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.GroupNorm(8, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.norm1(self.conv1(x)))
        return F.gelu(self.norm2(self.conv2(h)) + self.skip(x))


class LabelOnlyCNN(nn.Module):
    """Stem (stride 2) then four residual stages to a 14x14x96 map, global max pooling, linear head.

    Input: float32 (N, 3, 224, 224) in [0, 1]. Output: logits (N, classes)."""

    def __init__(self, classes: int = 2) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 24, 5, 2, 2, bias=False), nn.GroupNorm(8, 24), nn.GELU())
        self.features = nn.Sequential(ResBlock(24, 32, 2), ResBlock(32, 48, 2), ResBlock(48, 64, 1),
                                      ResBlock(64, 96, 2))
        self.head = nn.Linear(96, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(self.stem((x - 0.3) / 0.25))  # (N, 96, 14, 14)
        return self.head(f.amax(dim=(2, 3)))


def evaluate(model: nn.Module, data: dict[str, np.ndarray], batch: int = 128) -> float:
    model.eval()
    with torch.no_grad():
        p = np.concatenate([model(to_tensor(data["images"][i:i + batch])).softmax(-1)[:, 1].numpy()
                            for i in range(0, len(data["labels"]), batch)])
    return auroc(p, data["labels"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", choices=sorted(NAMES), required=True)
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--val", type=int, default=300)
    training_options(ap, epochs=12)
    a = ap.parse_args()
    gen, rng = seeded(a)
    family = (a.family,)
    train = load_split("train", a.train, modalities=family)
    val = load_split("val", a.val, modalities=family)
    model = LabelOnlyCNN()
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=1e-4)
    n = len(train["labels"])
    steps_per_epoch = n // a.batch
    total = a.epochs * steps_per_epoch
    best, step, t0 = BestEpoch(), 0, time.time()
    for epoch in range(a.epochs):
        model.train()
        order = rng.permutation(n)
        losses = []
        for b in range(steps_per_epoch):
            idx = np.sort(order[b * a.batch:(b + 1) * a.batch])
            x = to_tensor(train["images"][idx])
            y = torch.from_numpy(train["labels"][idx])
            flip = torch.rand(len(idx), generator=gen) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            gain = 0.9 + 0.2 * torch.rand(len(idx), 1, 1, 1, generator=gen)
            x = (x * gain).clamp(0, 1)
            loss = F.cross_entropy(model(x), y)  # the label alone: no lesion masks in training
            losses.append(optimise(model, opt, loss, step, total, a.lr, warmup=steps_per_epoch // 2))
            step += 1
        score = evaluate(model, val)
        print(f"epoch {epoch + 1}/{a.epochs} loss {np.mean(losses):.4f} val AUROC {score:.4f}  "
              f"{time.time() - t0:.0f}s", flush=True)
        best.offer(score, model)
    best_state = best.restore(model)
    name = NAMES[a.family]
    torch.save(best_state, HERE / f"{name}.pt")
    meta = classifier_metadata("LabelOnlyCNN")  # brain_cnn.onnx records "BrainCNN", this class's first name
    meta["family"] = a.family
    meta["training"] = {"seed": a.seed, "epochs": a.epochs, "train_cases": n, "best_val_auroc": round(best.score, 4),
                        "train_seconds": round(time.time() - t0), "supervision": "image label only"}
    export_onnx(Softmaxed(model), (torch.rand(2, 3, 224, 224),), HERE / f"{name}.onnx", ["image"], ["probs"], meta)
    print(f"done in {time.time() - t0:.0f}s; best val AUROC {best.score:.4f}")


if __name__ == "__main__":
    main()
