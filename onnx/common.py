"""Shared pieces of the training/export scripts: cached phantom data, the torch models, ONNX export.

torch is a training-time extra (``pip install .[train]``); nothing at runtime imports this file.
The MAE follows the layer names of facebookresearch/mae (``patch_embed.proj``, ``blocks.N.*``,
``decoder_embed``, ``decoder_blocks.N.*``, ``decoder_pred``, ``mask_token``), so a site's own MAE
checkpoint in that layout loads into :class:`MAE` and exports through the same code.
"""

from __future__ import annotations

import json
import math
import os
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

from blackbox_lime.phantoms import MODALITIES  # noqa: E402,F401
from data import GRID, IMG, L, PATCH, auroc, load_split  # noqa: E402,F401


# ----------------------------------------------------------------------------- data


def to_tensor(images_u8: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W] -> float32 [N, 3, H, W] in [0, 1] (grayscale replicated)."""
    x = torch.from_numpy(images_u8).float().div_(255.0)
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


class Attention(nn.Module):
    """Multi-head self-attention with the timm/MAE parameter names (``qkv``, ``proj``).

    ``key_hidden``: optional bool (N, T); True keys are excluded from every query's softmax.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, key_hidden: torch.Tensor | None = None) -> torch.Tensor:
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (N, heads, T, d_head)
        attn = (q * self.scale) @ k.transpose(-2, -1)  # (N, heads, T, T)
        if key_hidden is not None:
            attn = attn.masked_fill(key_hidden[:, None, None, :], float("-inf"))
        attn = attn.softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(n, t, d)
        return self.proj(out)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block, parameter names as in timm / facebookresearch/mae."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, key_hidden: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), key_hidden)
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, chans: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(chans, dim, patch, patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (N, L, D)


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


def sincos_pos_embed(dim: int, grid: int, cls_token: bool = True) -> np.ndarray:
    """Fixed 2-D sine-cosine position embedding as in facebookresearch/mae; (1 + grid*grid, dim)."""
    gh, gw = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64), indexing="xy")

    def one_d(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([one_d(dim // 2, gh), one_d(dim // 2, gw)], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros([1, dim]), emb], axis=0)
    return emb.astype(np.float32)


class MAE(nn.Module):
    """Masked autoencoder on raw pixels with the facebookresearch/mae parameter layout.

    ``forward_train`` drops hidden tokens (the MAE recipe). ``forward_keymasked`` keeps every token
    and masks hidden keys in the encoder's attention instead: with the same weights the visible
    tokens get exactly the drop-token result, and each row may hide a different number of patches.
    """

    def __init__(self, img_size: int = IMG, patch_size: int = PATCH, in_chans: int = 3, embed_dim: int = 192,
                 depth: int = 4, num_heads: int = 3, decoder_embed_dim: int = 128, decoder_depth: int = 2,
                 decoder_num_heads: int = 4, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.grid = img_size // patch_size
        n = self.grid ** 2
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.from_numpy(sincos_pos_embed(embed_dim, self.grid))[None], requires_grad=False)
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(
            torch.from_numpy(sincos_pos_embed(decoder_embed_dim, self.grid))[None], requires_grad=False)
        self.decoder_blocks = nn.ModuleList([Block(decoder_embed_dim, decoder_num_heads, mlp_ratio) for _ in range(decoder_depth)])
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size ** 2 * in_chans)
        assert n == self.pos_embed.shape[1] - 1
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, L, p*p*C), the mae repository's order (row, col, channel)."""
        p, g, c = self.patch_size, self.grid, self.in_chans
        x = imgs.reshape(imgs.shape[0], c, g, p, g, p)
        x = torch.einsum("nchpwq->nhwpqc", x)
        return x.reshape(imgs.shape[0], g * g, p * p * c)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, L, p*p*C) -> (N, C, H, W)."""
        p, g, c = self.patch_size, self.grid, self.in_chans
        x = x.reshape(x.shape[0], g, g, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, g * p, g * p)

    def _decode(self, latent: torch.Tensor) -> torch.Tensor:
        """latent (N, 1 + L, D_dec) in patch order -> predicted patches (N, L, p*p*C)."""
        x = latent + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def forward_train(self, imgs: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """Drop-token forward. hidden: bool (N, L) with the same count in every row. -> (N, L, p*p*C)."""
        n, l_ = hidden.shape
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:]
        keep_idx = torch.argsort(hidden.int(), dim=1, stable=True)  # visible first, in patch order
        n_keep = int((~hidden[0]).sum())
        ids_keep = keep_idx[:, :n_keep]
        x = torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, x.shape[-1]))
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(n, -1, -1)
        x = torch.cat([cls, x], 1)
        for blk in self.blocks:
            x = blk(x)
        x = self.decoder_embed(self.norm(x))
        full = self.mask_token.expand(n, l_, -1).clone()
        full.scatter_(1, ids_keep[..., None].expand(-1, -1, x.shape[-1]), x[:, 1:])
        return self._decode(torch.cat([x[:, :1], full], 1))

    def encode_keymasked(self, imgs: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """All tokens, hidden keys masked out of attention. -> normed tokens (N, 1 + L, D)."""
        n = imgs.shape[0]
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:]
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(n, -1, -1)
        x = torch.cat([cls, x], 1)
        key_hidden = torch.cat([torch.zeros_like(hidden[:, :1]), hidden], 1)
        for blk in self.blocks:
            x = blk(x, key_hidden)
        return self.norm(x)

    def forward_keymasked(self, imgs: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: bool (N, L), any count per row. -> predicted patches (N, L, p*p*C)."""
        x = self.decoder_embed(self.encode_keymasked(imgs, hidden))
        tok = torch.where(hidden[..., None], self.mask_token.to(x.dtype), x[:, 1:])
        return self._decode(torch.cat([x[:, :1], tok], 1))


class MAEReconGraph(nn.Module):
    """The ``mae_recon.onnx`` contract: (image, patch_mask) -> recon with visible pixels copied."""

    def __init__(self, mae: MAE) -> None:
        super().__init__()
        self.mae = mae

    def forward(self, image: torch.Tensor, patch_mask: torch.Tensor) -> torch.Tensor:
        hidden = patch_mask > 0.5  # (N, L)
        g, p = self.mae.grid, self.mae.patch_size
        hidden_px = hidden.reshape(-1, 1, g, 1, g, 1).expand(-1, 1, g, p, g, p).reshape(-1, 1, g * p, g * p)
        # Hidden pixels never reach the network: zeroed here, and their tokens are masked as keys.
        clean = torch.where(hidden_px, torch.zeros_like(image), image)
        pred = self.mae.unpatchify(self.mae.forward_keymasked(clean, hidden))
        return torch.where(hidden_px, pred, image)


class MAEEmbedGraph(nn.Module):
    """The ``mae_embed.onnx`` contract: image -> mean of the encoder patch tokens (N, D)."""

    def __init__(self, mae: MAE) -> None:
        super().__init__()
        self.mae = mae

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        hidden = torch.zeros(image.shape[0], self.mae.grid ** 2, dtype=torch.bool, device=image.device)
        return self.mae.encode_keymasked(image, hidden)[:, 1:].mean(1)


# ----------------------------------------------------------------------------- export


def export_onnx(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, input_names: list[str],
                output_names: list[str], metadata: dict[str, object]) -> None:
    """Export with the dynamo exporter (dynamic batch) into one self-contained file with metadata."""
    import onnx

    module.eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    dyn = {name: {0: batch} for name in input_names}
    prog = torch.onnx.export(module, args, dynamo=True, input_names=input_names, output_names=output_names,
                             dynamic_shapes=dyn, optimize=True)
    model = prog.model_proto
    strip_node_metadata(model)
    del model.metadata_props[:]
    for k, v in metadata.items():
        entry = model.metadata_props.add()
        entry.key = k
        entry.value = v if isinstance(v, str) else json.dumps(v)
    onnx.checker.check_model(model)
    tmp = path.with_suffix(".onnx.part")
    onnx.save_model(model, str(tmp), save_as_external_data=False)
    os.replace(tmp, path)
    print(f"wrote {path.name} ({path.stat().st_size / 1e6:.1f} MB)", flush=True)


def strip_node_metadata(model: "onnx.ModelProto") -> None:  # noqa: F821
    """Drop per-node metadata (the exporter records stack traces with this machine's file paths)."""
    graphs = [model.graph] + [f for f in model.functions]
    while graphs:
        g = graphs.pop()
        for node in g.node:
            del node.metadata_props[:]
            for attr in node.attribute:
                if attr.g is not None and attr.HasField("g"):
                    graphs.append(attr.g)
                graphs.extend(attr.graphs)
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        del vi.metadata_props[:]
    for init in model.graph.initializer:
        del init.metadata_props[:]
    del model.graph.metadata_props[:]


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


def cosine_lr(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return 0.5 * base * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
