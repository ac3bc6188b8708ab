"""Train the shortcut model the audit's flags are checked against, and export it to ONNX.

    python onnx/train_shortcut.py        # -> onnx/shortcut_marker.onnx (about a minute on 2 CPU cores)

A site burns a laterality marker into 90 % of its abnormal chest radiographs and 10 % of its normal
ones (``blackbox_lime.evaluation.phantoms.marked_phantom``). A model trained on that site's cases learns the
marker: the classic shortcut (Zech et al. 2018; DeGrave et al. 2021). This one is a linear read-out of
the grey image pooled to 28 x 28 (8 px cells) with a softmax: a position-bound model finds a fixed
corner marker far easier to read than lesions that move from case to case, as a shortcut learner
does. The script reports how much it reads the marker: P(abnormal) on the same test cases with the
marker forced on and forced off. Seeded; CPU.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from common import HERE, Softmaxed, auroc, classifier_metadata, export_onnx, optimise

from blackbox_lime.evaluation.phantoms import marked_phantom

NAME = "shortcut_marker"


class PooledLinear(nn.Module):
    """Grey (mean of RGB) pooled to 28 x 28, then one linear layer. Input float32 (N, 3, 224, 224) in [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(28 * 28, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = F.avg_pool2d(x.mean(dim=1, keepdim=True), 8)  # (N, 1, 28, 28)
        return self.head((g.flatten(1) - 0.3) / 0.25)


def _draw(args: tuple[str, int, bool | None]) -> tuple[np.ndarray, int, int]:
    split, i, marked = args
    ph, marker = marked_phantom("chest_xray", split, i, "laterality", marked=marked)
    return np.round(ph.image[..., 0] * 255).astype(np.uint8), ph.label, int(marker.any())


def draw(split: str, n: int, marked: bool | None = None, workers: int = 2) -> dict[str, np.ndarray]:
    with ProcessPoolExecutor(workers) as ex:
        out = list(ex.map(_draw, [(split, i, marked) for i in range(n)], chunksize=32))
    return {"images": np.stack([o[0] for o in out]), "labels": np.array([o[1] for o in out]),
            "marked": np.array([o[2] for o in out])}


def probs(model: nn.Module, images: np.ndarray) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        x = torch.from_numpy(images).float().div(255)[:, None].expand(-1, 3, -1, -1)
        return model(x).softmax(-1)[:, 1].numpy()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=1200)
    ap.add_argument("--test", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    torch.set_num_threads(2)
    rng = np.random.default_rng(a.seed)
    t0 = time.time()
    train = draw("train", a.train)
    print(f"drew {a.train} train phantoms in {time.time() - t0:.0f}s ({train['marked'].mean():.2f} marked)", flush=True)
    model = PooledLinear()
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=1e-3)
    x_all = torch.from_numpy(train["images"]).float().div(255)[:, None].expand(-1, 3, -1, -1)
    y_all = torch.from_numpy(train["labels"])
    n = len(y_all)
    steps = n // a.batch
    total, step = a.epochs * steps, 0
    for epoch in range(a.epochs):
        model.train()
        order = rng.permutation(n)
        for b in range(steps):
            idx = torch.from_numpy(np.sort(order[b * a.batch:(b + 1) * a.batch]))
            loss = F.cross_entropy(model(x_all[idx]), y_all[idx])
            optimise(model, opt, loss, step, total, a.lr, warmup=steps)
            step += 1
    test = draw("test", a.test)
    on, off = draw("test", a.test, marked=True), draw("test", a.test, marked=False)
    p, p_on, p_off = probs(model, test["images"]), probs(model, on["images"]), probs(model, off["images"])
    lab = test["labels"]
    report = {
        "test_auroc_site": round(auroc(p, lab), 4),  # the confounded site's own test cases
        "test_auroc_unmarked": round(auroc(p_off, lab), 4),  # the same cases with no marker: the lesions alone
        "mean_p_marker_on": round(float(p_on.mean()), 4),
        "mean_p_marker_off": round(float(p_off.mean()), 4),
        "marker_effect": round(float(np.mean(p_on - p_off)), 4),  # what adding the marker does to P(abnormal)
    }
    print(report)
    meta = classifier_metadata("PooledLinear")
    meta["intended_use"] = ("a deliberately shortcut-reading model for testing audits; it reads a burnt-in "
                            "laterality marker. Never for diagnosis")
    meta["training"] = {"seed": a.seed, "epochs": a.epochs, "train_cases": n, "train_seconds": round(time.time() - t0),
                        "site": "chest_xray phantoms with a laterality marker on 90% of abnormal, 10% of normal cases",
                        **report}
    export_onnx(Softmaxed(model), (torch.rand(2, 3, 224, 224),), HERE / f"{NAME}.onnx", ["image"], ["probs"], meta)
    print(f"done in {time.time() - t0:.0f}s -> {HERE / (NAME + '.onnx')}")


if __name__ == "__main__":
    main()
