"""Train the local MAE on raw pixels of the train phantoms and export the two ONNX graphs.

    python onnx/train_mae.py [--minutes 50] [--out-dir onnx]   # -> mae_recon.onnx, mae_embed.onnx, mae.pt

Masking ratios are drawn uniformly from [0.1, 0.9] per batch (the drop-token recipe needs one count
per batch; the exported graph takes any count per row). The loss is the MSE on hidden patches of the
mean/std-normalised image. Seeded; CPU only.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from common import HERE, MAE, cosine_lr, load_split, to_tensor
from export_mae import export_mae


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-per-modality", type=int, default=2500)
    ap.add_argument("--minutes", type=float, default=50.0, help="training time budget (wall clock)")
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out-dir", default=str(HERE), help="where mae.pt and the two ONNX graphs go")
    a = ap.parse_args()
    out_dir = Path(a.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    gen = torch.Generator().manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)

    train = load_split("train", a.train_per_modality)
    gray = train["images"][:256].astype(np.float64) / 255.0
    mean, std = round(float(gray.mean()), 4), round(float(gray.std()), 4)
    print(f"pixel mean {mean} std {std}", flush=True)

    mae = MAE()
    opt = torch.optim.AdamW([p for p in mae.parameters() if p.requires_grad], lr=a.lr, betas=(0.9, 0.95),
                            weight_decay=0.05)
    n = len(train["labels"])
    # Measure one step to turn the time budget into a step count for the cosine schedule.
    t0 = time.time()
    step, total, losses = 0, None, []
    while True:
        idx = np.sort(rng.choice(n, a.batch, replace=False))
        x = (to_tensor(train["images"][idx]) - mean) / std
        flip = torch.rand(len(idx), generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        ratio = float(rng.uniform(0.1, 0.9))
        n_hide = max(1, int(round(ratio * 196)))
        noise = torch.rand(len(idx), 196, generator=gen)
        ranks = noise.argsort(1).argsort(1)
        hidden = ranks < n_hide
        pred = mae.forward_train(x, hidden)
        target = mae.patchify(x)
        loss = (((pred - target) ** 2).mean(-1) * hidden).sum() / hidden.sum()
        if total is not None:
            for g in opt.param_groups:
                g["lr"] = cosine_lr(step, total, a.lr, warmup=200)
        else:
            for g in opt.param_groups:
                g["lr"] = a.lr * (step + 1) / 200
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss))
        step += 1
        elapsed = time.time() - t0
        if total is None and step == 20:
            total = int(a.minutes * 60 / (elapsed / step))
            print(f"{elapsed / step:.2f}s/step -> {total} steps", flush=True)
        if step % 200 == 0:
            print(f"step {step}/{total} loss {np.mean(losses[-200:]):.4f} {elapsed:.0f}s", flush=True)
        if total is not None and step >= total:
            break
    torch.save({"model": mae.state_dict(), "mean": mean, "std": std, "steps": step}, out_dir / "mae.pt")
    export_mae(mae, mean, std, out_dir, extra={"training": {"seed": a.seed, "steps": step, "batch": a.batch,
                                                        "train_cases": n, "train_seconds": round(time.time() - t0),
                                                        "final_loss": round(float(np.mean(losses[-200:])), 4)}})
    print(f"done in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
