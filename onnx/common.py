"""Shared pieces of the training/export scripts: cached phantom data, the torch models, ONNX export.

torch is a training-time extra (``pip install .[train]``); nothing at runtime imports this file.
The MAE's torch code and the ONNX export live in blackbox_lime/mae_torch.py (``blackbox-lime mae fit``
uses them too) and are re-exported here for the training scripts.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from blackbox_lime.mae_torch import (MAE, Attention, Block, MAEEmbedGraph, MAEReconGraph, Mlp,  # noqa: E402,F401
                                     PatchEmbed, export_onnx, sincos_pos_embed, strip_node_metadata)
from blackbox_lime.evaluation.phantoms import MODALITIES  # noqa: E402,F401
from data import GRID, IMG, L, PATCH, auroc, load_split  # noqa: E402,F401


# ----------------------------------------------------------------------------- data


def to_tensor(images_u8: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W] (grey, replicated) or [N, H, W, 3] (colour) -> float32 [N, 3, H, W] in [0, 1]."""
    x = torch.from_numpy(images_u8).float().div_(255.0)
    if x.ndim == 4:
        return x.permute(0, 3, 1, 2).contiguous()
    return x[:, None].expand(-1, 3, -1, -1).contiguous()


def patch_fill_augment(x: torch.Tensor, masks: torch.Tensor, gen: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Replace random 16-px patches that do not touch a lesion with a blurred copy of the image.

    Explanations perturb images by filling patches; this teaches the classifiers that a smooth
    fill is not evidence of disease, so only hiding the lesion itself changes the answer.
    x: (N, 3, H, W); masks: (N, H, W) bool.
    """
    n = x.shape[0]
    blurred = F.avg_pool2d(F.avg_pool2d(x, 9, 1, 4, count_include_pad=False), 9, 1, 4, count_include_pad=False)
    lesion_patch = F.max_pool2d(masks[:, None].float(), PATCH)  # (N, 1, 14, 14)
    ratio = torch.rand(n, 1, 1, 1, generator=gen) * 0.6
    hide = (torch.rand(n, 1, GRID, GRID, generator=gen) < ratio) & (lesion_patch == 0)
    hide &= torch.rand(n, 1, 1, 1, generator=gen) < p
    hide_px = F.interpolate(hide.float(), scale_factor=PATCH, mode="nearest").bool()
    return torch.where(hide_px, blurred, x)


# ----------------------------------------------------------------------------- training runs


def training_options(ap: "argparse.ArgumentParser", epochs: int) -> None:
    """The options every classifier script shares: epochs, batch, learning rate, seed, CPU threads."""
    ap.add_argument("--epochs", type=int, default=epochs)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)


class BestEpoch:
    """The epoch with the best validation score so far: its weights, restored into the model after training."""

    def __init__(self) -> None:
        self.score, self.state = -math.inf, None

    def offer(self, score: float, model: nn.Module) -> None:
        if score > self.score:
            self.score, self.state = score, {k: v.clone() for k, v in model.state_dict().items()}

    def restore(self, model: nn.Module) -> dict:
        if self.state is None:
            raise RuntimeError("no epoch was scored")
        model.load_state_dict(self.state)
        return self.state


def seeded(a: "argparse.Namespace") -> tuple[torch.Generator, np.random.Generator]:
    """Seed torch, fix its threads; the run's torch and numpy generators."""
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    return torch.Generator().manual_seed(a.seed), np.random.default_rng(a.seed)


# ----------------------------------------------------------------------------- classifiers


class DemoCNN(nn.Module):
    """A compact CNN: 7 conv layers to a 14x14x128 map, then average+max pooling and a linear head.

    Training adds a 1x1-conv head that predicts which 16-px patches hold lesion pixels (deep
    supervision from the phantom masks); it is not part of the exported classifier.

    Input: float32 (N, 3, 224, 224) in [0, 1]. Output: logits (N, 2).
    ``features`` is the last conv block (the Grad-CAM layer).
    """

    def __init__(self) -> None:
        super().__init__()

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

        self.features = nn.Sequential(
            block(3, 16, 2), block(16, 32, 2), block(32, 32, 1), block(32, 64, 2),
            block(64, 64, 1), block(64, 128, 2), block(128, 128, 1),
        )
        self.head = nn.Linear(256, 2)
        self.aux = nn.Conv2d(128, 1, 1)  # training-only lesion-location head (not exported)

    def forward(self, x: torch.Tensor, with_aux: bool = False):  # type: ignore[no-untyped-def]
        f = self.features((x - 0.5) / 0.25)  # (N, 128, 14, 14)
        pooled = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)
        logits = self.head(pooled)
        return (logits, self.aux(f)[:, 0]) if with_aux else logits


class ConvStem(nn.Module):
    """Tokenizer of 16x16 patches by four stride-2 3x3 convolutions (Xiao et al. 2021, "Early
    convolutions help transformers see better"): (N, 3, 224, 224) -> (N, 196, dim) tokens."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for cin, cout in ((3, 24), (24, 48), (48, 96)):
            layers += [nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(96, dim, 3, 2, 1))
        self.proj = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (N, L, D)


class DemoViT(nn.Module):
    """A small ViT classifier on 16x16 patches (a 14x14 token grid): convolutional patch stem,
    4 transformer blocks of width 144, mean+max token pooling.

    A plain linear patch embedding trained from scratch on 5,000 phantoms did not learn the small
    lesions in the training budget (validation AUROC ~0.6 after 4 epochs); the convolutional stem
    does. Input: float32 (N, 3, 224, 224) in [0, 1]. Output: logits (N, 2).
    """

    def __init__(self, dim: int = 144, depth: int = 4, heads: int = 4) -> None:
        super().__init__()
        self.patch_embed = ConvStem(dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, L + 1, dim) * 0.02)
        self.blocks = nn.ModuleList([Block(dim, heads, 3.0) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim * 2, 2)
        self.aux = nn.Linear(dim, 1)  # training-only lesion-location head (not exported)

    def forward(self, x: torch.Tensor, with_aux: bool = False):  # type: ignore[no-untyped-def]
        t = self.patch_embed((x - 0.5) / 0.25)  # (N, L, D)
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1) + self.pos_embed
        for blk in self.blocks:
            t = blk(t)
        t = self.norm(t)
        tokens = t[:, 1:]  # (N, 196, D)
        logits = self.head(torch.cat([tokens.mean(1), tokens.amax(1)], dim=1))
        return (logits, self.aux(tokens)[..., 0].reshape(-1, GRID, GRID)) if with_aux else logits


class Softmaxed(nn.Module):
    """Wraps a logit model so that the exported graph returns class probabilities."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image).softmax(dim=-1)


# ----------------------------------------------------------------------------- MAE


def classifier_metadata(arch: str) -> dict[str, object]:
    return {
        "blackbox_lime.kind": "classifier",
        "architecture": arch,
        "image_size": IMG,
        "channels": 3,
        "layout": "NCHW",
        "input_range": [0.0, 1.0],
        "class_names": ["normal", "abnormal"],
        "abnormal_index": 1,
        "output": "probabilities",
        "intended_use": "demonstration and benchmarking on synthetic phantoms; never diagnosis",
    }


def optimise(model: nn.Module, opt: torch.optim.Optimizer, loss: torch.Tensor, step: int, total: int, base_lr: float,
             warmup: int) -> float:
    """One training step of the classifier scripts: cosine learning rate, backward, gradient norm clipped at 2,
    update. Returns the loss as a float."""
    for g in opt.param_groups:
        g["lr"] = cosine_lr(step, total, base_lr, warmup=warmup)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
    opt.step()
    return float(loss.detach())


def label_epoch(model: nn.Module, opt: torch.optim.Optimizer, images: np.ndarray, labels: np.ndarray,
                weights: torch.Tensor, augment, rng: np.random.Generator, gen: torch.Generator,  # type: ignore[no-untyped-def]
                a: "argparse.Namespace", step: int, total: int, warmup: int, steps: int) -> tuple[float, int]:
    """One epoch of class-weighted cross-entropy on image labels alone (the real-image classifiers): at most ``steps``
    sorted batches of a fresh permutation, each augmented, on the cosine schedule. Returns the mean loss and the next
    step."""
    model.train()
    order = rng.permutation(len(labels))
    losses = []
    for b in range(min(steps, len(labels) // a.batch)):
        idx = np.sort(order[b * a.batch:(b + 1) * a.batch])
        x = augment(to_tensor(images[idx]), gen)
        loss = F.cross_entropy(model(x), torch.from_numpy(labels[idx]), weight=weights)
        losses.append(optimise(model, opt, loss, min(step, total - 1), total, a.lr, warmup=warmup))
        step += 1
    return float(np.mean(losses)), step


def save_classifier(model: nn.Module, best: "BestEpoch", name: str, meta: dict[str, object], size: int = 224) -> None:
    """The best epoch's weights restored into ``model``, saved as ``name``.pt and exported (softmax) as ``name``.onnx
    with the classifier metadata plus ``meta``."""
    torch.save(best.restore(model), HERE / f"{name}.pt")
    full = classifier_metadata("LabelOnlyCNN")
    full.update(meta)
    export_onnx(Softmaxed(model), (torch.rand(2, 3, size, size),), HERE / f"{name}.onnx", ["image"], ["probs"], full)


def cosine_lr(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return 0.5 * base * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
