"""Train the four-class exclusive demo classifier and export it to ONNX.

    python onnx/train_exclusive.py      # -> onnx/chest4_cnn.onnx (about 10 minutes on 2 CPU cores)

Four exclusive classes per chest phantom (``blackbox_lime.evaluation.phantoms.make_exclusive_phantom``): normal, or
exactly one nodule, consolidation or effusion, with its exact mask. The benchmarks that need a softmax over four or
more labels use it (answers cut to the top 2 by a vendor file API: ``bench_truncation --family chest4``). Same
residual CNN as ``multilabel_cnn``, trained with cross-entropy on the image's class alone (no masks); the exported
graph returns the softmax, its metadata declares the four class names. The best epoch by val accuracy is kept.
Seeded; CPU.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from common import HERE, classifier_metadata, export_onnx, optimise
from train_multilabel import MultiLabelCNN, tensor

from blackbox_lime.evaluation.phantoms import EXCLUSIVE_CLASSES, make_exclusive_phantom

NAME = "chest4_cnn"


class Softmaxed(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(image), dim=1)


def _draw(args: tuple[str, int]) -> tuple[np.ndarray, int]:
    ph, label = make_exclusive_phantom(*args)
    return np.round(ph.image[..., 0] * 255).astype(np.uint8), label


def draw(split: str, n: int) -> dict[str, np.ndarray]:
    with ProcessPoolExecutor(2) as ex:
        out = list(ex.map(_draw, [(split, i) for i in range(n)], chunksize=32))
    return {"images": np.stack([o[0] for o in out]), "labels": np.array([o[1] for o in out], np.int64)}


def evaluate(model: nn.Module, data: dict[str, np.ndarray]) -> float:
    model.eval()
    with torch.no_grad():
        logits = np.concatenate([model(tensor(data["images"][i:i + 128])).numpy()
                                 for i in range(0, len(data["images"]), 128)])
    return float((logits.argmax(1) == data["labels"]).mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=2400)
    ap.add_argument("--val", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    t0 = time.time()
    train, val = draw("train", a.train), draw("val", a.val)
    print(f"drew {a.train} + {a.val} phantoms in {time.time() - t0:.0f}s; train class shares "
          f"{np.bincount(train['labels'], minlength=4) / a.train}", flush=True)
    model = MultiLabelCNN(len(EXCLUSIVE_CLASSES))
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=1e-4)
    n = len(train["labels"])
    steps = n // a.batch
    total, step = a.epochs * steps, 0
    best, best_state = -1.0, None
    for epoch in range(a.epochs):
        model.train()
        order = rng.permutation(n)
        losses = []
        for b in range(steps):
            idx = np.sort(order[b * a.batch:(b + 1) * a.batch])
            x = tensor(train["images"][idx])
            gain = 0.9 + 0.2 * torch.rand(len(idx), 1, 1, 1, generator=gen)
            loss = F.cross_entropy(model((x * gain).clamp(0, 1)), torch.from_numpy(train["labels"][idx]))
            losses.append(optimise(model, opt, loss, step, total, a.lr, warmup=steps // 2))
            step += 1
        acc = evaluate(model, val)
        print(f"epoch {epoch + 1}/{a.epochs} loss {np.mean(losses):.4f} val accuracy {acc:.4f} "
              f"{time.time() - t0:.0f}s", flush=True)
        if acc > best:
            best, best_state = acc, {k: v.clone() for k, v in model.state_dict().items()}
    assert best_state is not None
    model.load_state_dict(best_state)
    meta = classifier_metadata("MultiLabelCNN")
    meta.update(class_names=list(EXCLUSIVE_CLASSES), abnormal_index=1, family="chest_xray four-class")
    meta["training"] = {"seed": a.seed, "epochs": a.epochs, "train_cases": n, "train_seconds": round(time.time() - t0),
                        "best_val_accuracy": round(best, 4), "supervision": "image class only"}
    export_onnx(Softmaxed(model), (torch.rand(2, 3, 224, 224),), HERE / f"{NAME}.onnx", ["image"], ["probs"], meta)
    print(f"done in {time.time() - t0:.0f}s; best val accuracy {best:.4f}")


if __name__ == "__main__":
    main()
