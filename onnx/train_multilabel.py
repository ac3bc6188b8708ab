"""Train the multi-label demo classifier and export it to ONNX.

    python onnx/train_multilabel.py      # -> onnx/multilabel_cnn.onnx (about 10 minutes on 2 CPU cores)

Three findings per chest phantom (``blackbox_lime.evaluation.phantoms.make_multilabel_phantom``): nodule,
consolidation and effusion, each present independently with its own exact mask. The model is a small
residual CNN with GroupNorm and a global-max head, three independent sigmoid outputs, trained with
binary cross-entropy on the image's finding labels alone (no masks). The exported graph returns the three
probabilities; its metadata declares ``output = "multilabel"`` and the finding names. The best epoch by
mean val AUROC is kept. Seeded; CPU.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from common import HERE, auroc, classifier_metadata, export_onnx, optimise
from train_unseen import ResBlock

from blackbox_lime.evaluation.phantoms import FINDINGS, make_multilabel_phantom

NAME = "multilabel_cnn"


class MultiLabelCNN(nn.Module):
    """Input float32 (N, 3, 224, 224) in [0, 1]; output logits (N, 3), one per finding."""

    def __init__(self, k: int = len(FINDINGS)) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 24, 5, 2, 2, bias=False), nn.GroupNorm(8, 24), nn.GELU())
        self.features = nn.Sequential(ResBlock(24, 32, 2), ResBlock(32, 48, 2), ResBlock(48, 64, 1),
                                      ResBlock(64, 96, 2))
        self.head = nn.Linear(96, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(self.stem((x - 0.3) / 0.25))  # (N, 96, 14, 14)
        return self.head(f.amax(dim=(2, 3)))


class Sigmoided(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(image))


def _draw(args: tuple[str, int]) -> tuple[np.ndarray, np.ndarray]:
    ph = make_multilabel_phantom(*args)
    return np.round(ph.image[..., 0] * 255).astype(np.uint8), np.array([ph.labels[k] for k in FINDINGS])


def draw(split: str, n: int) -> dict[str, np.ndarray]:
    with ProcessPoolExecutor(2) as ex:
        out = list(ex.map(_draw, [(split, i) for i in range(n)], chunksize=32))
    return {"images": np.stack([o[0] for o in out]), "labels": np.stack([o[1] for o in out]).astype(np.float32)}


def tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).float().div(255)[:, None].expand(-1, 3, -1, -1).contiguous()


def evaluate(model: nn.Module, data: dict[str, np.ndarray]) -> list[float]:
    model.eval()
    with torch.no_grad():
        p = np.concatenate([torch.sigmoid(model(tensor(data["images"][i:i + 128]))).numpy()
                            for i in range(0, len(data["images"]), 128)])
    return [auroc(p[:, k], data["labels"][:, k]) for k in range(len(FINDINGS))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=1600)
    ap.add_argument("--val", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=8)
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
    print(f"drew {a.train} + {a.val} phantoms in {time.time() - t0:.0f}s; train prevalence "
          f"{dict(zip(FINDINGS, train['labels'].mean(0).round(3)))}", flush=True)
    model = MultiLabelCNN()
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=1e-4)
    n = len(train["labels"])
    steps = n // a.batch
    total, step = a.epochs * steps, 0
    best, best_state, best_aucs = -1.0, None, []
    for epoch in range(a.epochs):
        model.train()
        order = rng.permutation(n)
        losses = []
        for b in range(steps):
            idx = np.sort(order[b * a.batch:(b + 1) * a.batch])
            x = tensor(train["images"][idx])
            y = torch.from_numpy(train["labels"][idx])
            gain = 0.9 + 0.2 * torch.rand(len(idx), 1, 1, 1, generator=gen)
            x = (x * gain).clamp(0, 1)
            loss = F.binary_cross_entropy_with_logits(model(x), y)
            losses.append(optimise(model, opt, loss, step, total, a.lr, warmup=steps // 2))
            step += 1
        aucs = evaluate(model, val)
        print(f"epoch {epoch + 1}/{a.epochs} loss {np.mean(losses):.4f} val AUROC "
              f"{dict(zip(FINDINGS, np.round(aucs, 4)))} {time.time() - t0:.0f}s", flush=True)
        if np.mean(aucs) > best:
            best, best_aucs = float(np.mean(aucs)), aucs
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
    assert best_state is not None
    model.load_state_dict(best_state)
    meta = classifier_metadata("MultiLabelCNN")
    meta.update(class_names=list(FINDINGS), abnormal_index=0, output="multilabel", family="chest_xray multi-label")
    meta["training"] = {"seed": a.seed, "epochs": a.epochs, "train_cases": n, "train_seconds": round(time.time() - t0),
                        "best_val_auroc": {k: round(v, 4) for k, v in zip(FINDINGS, best_aucs)},
                        "supervision": "image finding labels only"}
    export_onnx(Sigmoided(model), (torch.rand(2, 3, 224, 224),), HERE / f"{NAME}.onnx", ["image"], ["probs"], meta)
    print(f"done in {time.time() - t0:.0f}s; best mean val AUROC {best:.4f}")


if __name__ == "__main__":
    main()
