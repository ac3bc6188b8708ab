"""Train a demo classifier (CNN or small ViT) on the train phantoms and export it to ONNX.

    python onnx/train_classifier.py --arch cnn     # -> onnx/demo_cnn.onnx + onnx/demo_cnn.pt
    python onnx/train_classifier.py --arch vit     # -> onnx/demo_vit.onnx + onnx/demo_vit.pt

Seeded; CPU only; each finishes well under 60 minutes on 2 cores (times are in MODEL_CARD.md).
The best epoch by validation AUROC (mean of the two modalities) is kept. The loss adds deep
supervision: a training-only head predicts which 16-px patches hold lesion pixels (from the
phantom masks), which teaches small, low-contrast lesions quickly; it is not exported.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from common import (HERE, MODALITIES, PATCH, DemoCNN, DemoViT, Softmaxed, auroc, classifier_metadata, optimise,
                    export_onnx, load_split, patch_fill_augment, to_tensor)


def evaluate(model: torch.nn.Module, data: dict[str, np.ndarray], batch: int = 128) -> dict[str, float]:
    model.eval()
    probs = []
    with torch.no_grad():
        for i in range(0, len(data["labels"]), batch):
            probs.append(model(to_tensor(data["images"][i:i + batch])).softmax(-1)[:, 1].numpy())
    p = np.concatenate(probs)
    out = {m: auroc(p[data["modality"] == k], data["labels"][data["modality"] == k]) for k, m in enumerate(MODALITIES)}
    out["mean"] = float(np.mean(list(out.values())))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", choices=["cnn", "vit"], required=True)
    ap.add_argument("--train-per-modality", type=int, default=2500)
    ap.add_argument("--val-per-modality", type=int, default=250)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fill-aug", type=float, default=0.0,
                    help="fraction of samples whose non-lesion patches are partly replaced by a blur (off by default: "
                         "on chest phantoms a blurred patch over lung looks like an opacity and stalls learning)")
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    gen = torch.Generator().manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)

    train = load_split("train", a.train_per_modality)
    val = load_split("val", a.val_per_modality)
    model = DemoCNN() if a.arch == "cnn" else DemoViT()
    epochs = a.epochs or (12 if a.arch == "cnn" else 10)
    lr = a.lr or (2e-3 if a.arch == "cnn" else 1e-3)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05 if a.arch == "vit" else 1e-4)
    n = len(train["labels"])
    steps_per_epoch = n // a.batch
    total = epochs * steps_per_epoch
    best, best_state, step, t0 = -1.0, None, 0, time.time()
    for epoch in range(epochs):
        model.train()
        order = rng.permutation(n)
        losses = []
        for b in range(steps_per_epoch):
            idx = np.sort(order[b * a.batch:(b + 1) * a.batch])
            x = to_tensor(train["images"][idx])
            m = torch.from_numpy(train["masks"][idx])
            y = torch.from_numpy(train["labels"][idx])
            flip = torch.rand(len(idx), generator=gen) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            m = torch.where(flip[:, None, None], m.flip(-1), m)
            if a.fill_aug > 0:
                x = patch_fill_augment(x, m, gen, p=a.fill_aug)
            logits, aux = model(x, with_aux=True)
            lesion_patches = F.max_pool2d(m[:, None].float(), PATCH)[:, 0]  # (N, 14, 14)
            loss = F.cross_entropy(logits, y) + F.binary_cross_entropy_with_logits(aux, lesion_patches)
            losses.append(optimise(model, opt, loss, step, total, lr, warmup=steps_per_epoch // 2))
            step += 1
        score = evaluate(model, val)
        print(f"epoch {epoch + 1}/{epochs} loss {np.mean(losses):.4f} val AUROC "
              f"{score['chest_xray']:.4f} / {score['breast_us']:.4f}  {time.time() - t0:.0f}s", flush=True)
        if score["mean"] > best:
            best, best_state = score["mean"], {k: v.clone() for k, v in model.state_dict().items()}
    assert best_state is not None
    model.load_state_dict(best_state)
    name = f"demo_{a.arch}"
    torch.save(best_state, HERE / f"{name}.pt")
    meta = classifier_metadata("DemoCNN" if a.arch == "cnn" else "DemoViT")
    meta["training"] = {"seed": a.seed, "epochs": epochs, "train_cases": n, "best_val_auroc_mean": round(best, 4),
                        "train_seconds": round(time.time() - t0)}
    export_onnx(Softmaxed(model), (torch.rand(2, 3, 224, 224),), HERE / f"{name}.onnx", ["image"], ["probs"], meta)
    print(f"done in {time.time() - t0:.0f}s; best val AUROC mean {best:.4f}")


if __name__ == "__main__":
    main()
