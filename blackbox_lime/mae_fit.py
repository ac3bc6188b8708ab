"""``blackbox-lime mae fit``: fit GM's MAE to a site's own unlabelled images, on this machine.

GM keeps perturbed images on the data manifold only where the MAE knows the images. A site whose
images are a domain the bundled MAE never saw fine-tunes it (or trains one from scratch) on its own
images, within a time budget, and gets an MAE under the same ONNX contract as ``mae_recon.onnx``
(plus the embedding graph EBR's banks use), with the training facts in its metadata and a small
model-card JSON beside it:

    site_mae.onnx          the reconstruction graph (explain --mae site_mae.onnx)
    site_mae.embed.onnx    the embedding graph (bank build --embed site_mae.embed.onnx)
    site_mae.card.json     what it was fitted on, how long, and how well it fills held-out images

Recipe: the MAE's own (masking ratio uniform in [0.1, 0.9] per batch, MSE on hidden patches of the
normalised image, horizontal flips), AdamW, warm-up then a cosine decay over the time budget. A
fine-tune keeps the bundled normalisation (its weights expect it); from scratch the site's pixel
mean and standard deviation are used. A tenth of the images (at least 4) is held out: the card
reports the PSNR on hidden pixels (half of the patches hidden, the same masks for every method) of
the fitted MAE, the MAE it started from, a Gaussian blur (GM's blur fill) and Telea inpainting.

The images never leave the machine; the metadata records how many there were and one SHA-256 over
their contents (never their names). torch is needed (the ``train`` extra); the explain path is not.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from blackbox_lime._version import __version__
from blackbox_lime.models import bundled_model

HELD_OUT_FRACTION = 0.1
LR = {"bundled": 3e-4, "scratch": 1.5e-3}
WARMUP_STEPS = 20


class MAEFitError(ValueError):
    """A request ``mae fit`` cannot carry out (too few images, unknown start)."""


def _bundled_start() -> tuple[Any, list[float], list[float]]:
    import torch

    from blackbox_lime.mae_torch import MAE

    ckpt = torch.load(bundled_model("mae.pt"), map_location="cpu", weights_only=True)
    mae = MAE()
    mae.load_state_dict(ckpt["model"])
    c = mae.in_chans
    mean, std = ckpt["mean"], ckpt["std"]
    def per_channel(v: Any) -> list[float]:
        return [float(v)] * c if np.ndim(v) == 0 else [float(x) for x in v]

    return mae, per_channel(mean), per_channel(std)


def held_out_psnr(recon: Callable[[np.ndarray, np.ndarray], np.ndarray], images: np.ndarray, hidden: np.ndarray,
                  patch: int) -> float:
    """PSNR (dB, pixels in [0, 1]) on hidden pixels only, pooled over images.

    recon(images float32 (N, S, S, C), hidden bool (N, L)) -> (N, S, S, C)."""
    out = recon(images, hidden)
    g = images.shape[1] // patch
    px = np.repeat(np.repeat(hidden.reshape(-1, g, g), patch, 1), patch, 2)  # (N, S, S)
    mse = float(np.mean((out[px] - images[px]) ** 2))
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def _blur(images: np.ndarray, hidden: np.ndarray, sigma: float) -> np.ndarray:
    return np.stack([cv2.GaussianBlur(im, (0, 0), sigma, borderType=cv2.BORDER_REFLECT).reshape(im.shape)
                     for im in images])


def _telea(images: np.ndarray, hidden: np.ndarray, patch: int) -> np.ndarray:
    g = images.shape[1] // patch
    outs = []
    for im, h in zip(images, hidden):
        m = np.repeat(np.repeat(h.reshape(g, g), patch, 0), patch, 1).astype(np.uint8)
        u8 = np.round(im * 255).astype(np.uint8)
        out = cv2.inpaint(u8, m, 3, cv2.INPAINT_TELEA).reshape(im.shape)
        outs.append(out.astype(np.float32) / 255.0)
    return np.stack(outs)


def _mae_recon(mae: Any, mean: Any, std: Any, device: Any) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    import torch

    from blackbox_lime.mae_torch import MAEReconGraph

    graph = MAEReconGraph(mae).eval()

    def run(images: np.ndarray, hidden: np.ndarray) -> np.ndarray:
        outs = []
        with torch.no_grad():
            for i in range(0, len(images), 16):
                x = (torch.from_numpy(images[i:i + 16]).permute(0, 3, 1, 2) - mean) / std
                pm = torch.from_numpy(hidden[i:i + 16].astype(np.float32))
                r = graph(x.to(device), pm.to(device)).cpu() * std + mean
                outs.append(r.clamp(0, 1).permute(0, 2, 3, 1).numpy())
        return np.concatenate(outs)

    return run


def fit_mae(images: np.ndarray, out: str | Path, *, minutes: float = 6.0, start: str = "bundled", seed: int = 0,
            batch: int = 32, device: str = "auto", images_sha256: str = "", threads: int | None = None,
            progress: Callable[[float, int, float], None] | None = None) -> dict[str, Any]:
    """Fit the MAE on ``images`` and write ``out`` (.onnx), its ``.embed.onnx`` and ``.card.json``.

    images : uint8 (N, S, S, C), the site's images on the MAE's canvas (S = 224, C = 3 for the bundled one).
    minutes : the training time budget (wall clock; loading, evaluation and export come on top).
    start : "bundled" (fine-tune the bundled MAE) or "scratch".
    progress : called after every step with (seconds elapsed, steps, loss).
    Returns the model card (also written as JSON).
    """
    import torch

    from blackbox_lime.mae_torch import MAE, export_mae

    if start not in LR:
        raise MAEFitError(f"--from must be bundled or scratch. Got {start!r} instead.")
    n = len(images)
    if n < 8:
        raise MAEFitError(f"mae fit needs at least 8 images to hold some out. Got {n}.")
    t_all = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    dev = torch.device("cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    if device == "cuda" and dev.type != "cuda":
        raise MAEFitError("--device cuda was asked for, but torch sees no CUDA device; use --device cpu or auto.")
    order = rng.permutation(n)
    n_hold = max(4, int(round(HELD_OUT_FRACTION * n)))
    hold, train = order[:n_hold], order[n_hold:]

    if start == "bundled":
        mae, mean_l, std_l = _bundled_start()
    else:
        mae = MAE()
        pix = images[train[:256]].astype(np.float64) / 255.0
        mean_l = [round(float(pix[..., c].mean()), 4) for c in range(pix.shape[-1])]
        std_l = [round(float(pix[..., c].std()) + 1e-4, 4) for c in range(pix.shape[-1])]
    if images.shape[1:] != (mae.img_size, mae.img_size, mae.in_chans):
        raise MAEFitError(f"The images must be {mae.img_size}x{mae.img_size}x{mae.in_chans} canvases. "
                          f"Got {images.shape[1:]} instead.")
    mae = mae.to(dev)
    mean = torch.tensor(mean_l, dtype=torch.float32).reshape(1, -1, 1, 1)
    std = torch.tensor(std_l, dtype=torch.float32).reshape(1, -1, 1, 1)
    L, patch = mae.grid ** 2, mae.patch_size

    held = images[hold].astype(np.float32) / 255.0
    eval_hidden = np.zeros((len(held), L), bool)
    eval_rng = np.random.default_rng(12345)
    for row in eval_hidden:
        row[eval_rng.permutation(L)[: L // 2]] = True
    psnr: dict[str, float] = {
        "blur": held_out_psnr(lambda x, h: _blur(x, h, patch / 2.0), held, eval_hidden, patch),
        "telea": held_out_psnr(lambda x, h: _telea(x, h, patch), held, eval_hidden, patch)}
    if start == "bundled":
        psnr["mae_before"] = held_out_psnr(_mae_recon(mae, mean.to(dev), std.to(dev), dev), held, eval_hidden, patch)

    lr = LR[start]
    opt = torch.optim.AdamW([p for p in mae.parameters() if p.requires_grad], lr=lr, betas=(0.9, 0.95),
                            weight_decay=0.05)
    budget = minutes * 60.0
    mae.train()
    t0 = time.perf_counter()
    step, losses = 0, []
    mean_d, std_d = mean.to(dev), std.to(dev)
    while True:
        elapsed = time.perf_counter() - t0
        if elapsed >= budget and step > 0:
            break
        idx = np.sort(rng.choice(train, min(batch, len(train)), replace=False))
        x = torch.from_numpy(images[idx]).to(dev).permute(0, 3, 1, 2).float().div_(255.0)
        x = (x - mean_d) / std_d
        flip = (torch.rand(len(idx), generator=gen) < 0.5).to(dev)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        n_hide = max(1, int(round(float(rng.uniform(0.1, 0.9)) * L)))
        ranks = torch.rand(len(idx), L, generator=gen).argsort(1).argsort(1)
        hidden = (ranks < n_hide).to(dev)
        pred = mae.forward_train(x, hidden)
        loss = (((pred - mae.patchify(x)) ** 2).mean(-1) * hidden).sum() / hidden.sum()
        frac = min(1.0, elapsed / budget) if budget > 0 else 1.0
        scale = (step + 1) / WARMUP_STEPS if step < WARMUP_STEPS else 0.5 * (1 + math.cos(math.pi * frac))
        for g in opt.param_groups:
            g["lr"] = lr * max(scale, 0.02)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(time.perf_counter() - t0, step, losses[-1])
    train_seconds = time.perf_counter() - t0
    mae.eval()
    psnr["mae"] = held_out_psnr(_mae_recon(mae, mean_d, std_d, dev), held, eval_hidden, patch)
    mae = mae.cpu()

    out = Path(out)
    facts = {"tool_version": __version__, "start": start, "images": n, "train_images": len(train),
             "held_out_images": n_hold, "images_sha256": images_sha256, "minutes_budget": minutes,
             "train_seconds": round(train_seconds, 1), "steps": step, "batch": min(batch, len(train)),
             "learning_rate": lr, "seed": seed, "device": dev.type,
             "final_loss": round(float(np.mean(losses[-20:])), 5),
             "held_out_psnr_db": {k: round(v, 2) for k, v in psnr.items()},
             "psnr_protocol": "hidden pixels only, half of the patches hidden, the same masks for every method; "
                              "blur = Gaussian sigma patch/2 (GM's blur fill); telea = OpenCV Telea inpainting"}
    embed_name = out.stem + ".embed.onnx"
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".mae_fit.") as tmp:
        # Both graphs are written and checked in a private folder, then moved into place together.
        export_mae(mae, mean_l, std_l, Path(tmp), extra={"training": facts}, names=(out.name, embed_name))
        card = {"kind": "blackbox-lime site MAE", "files": {"recon": out.name, "embed": embed_name},
                "contract": "mae_recon.onnx (image, patch_mask) -> recon; mae_embed.onnx image -> embedding",
                "normalisation": {"mean": mean_l, "std": std_l}, "training": facts,
                "total_seconds": round(time.perf_counter() - t_all, 1)}
        card_path = Path(tmp) / (out.stem + ".card.json")
        card_path.write_text(json.dumps(card, indent=1))
        for name in (out.name, embed_name, card_path.name):
            os.replace(Path(tmp) / name, out.parent / name)
    return card
