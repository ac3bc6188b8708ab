"""The MAE in torch, for fitting it to a site's images and exporting the ONNX contract (GM's fill).

torch (and onnxscript for the export) come from the ``train`` extra; the explain path never imports
this module. The layer names follow facebookresearch/mae (``patch_embed.proj``, ``blocks.N.*``,
``decoder_embed``, ``decoder_blocks.N.*``, ``decoder_pred``, ``mask_token``), so a site's own MAE
checkpoint in that layout loads into :class:`MAE` and exports through the same code
(``onnx/export_mae.py``). ``onnx/train_mae.py`` trains the bundled one; ``blackbox-lime mae fit``
(:mod:`blackbox_lime.mae_fit`) fine-tunes it on a site's images.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn as nn

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

IMG, PATCH = 224, 16
MASK_CONVENTION = "patch_mask float32 [N, L]: 1 = hidden, 0 = visible; patches numbered row by row"


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
    # The exporter narrates its steps on stdout and warns about optional packages (torchvision): keep both
    # out of a command's output; errors still raise.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        level = logging.getLogger("torch.onnx").level
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        try:
            prog = torch.onnx.export(module, args, dynamo=True, input_names=input_names, output_names=output_names,
                                     dynamic_shapes=dyn, optimize=True, verbose=False)
        finally:
            logging.getLogger("torch.onnx").setLevel(level)
    if prog is None:
        raise RuntimeError(f"torch.onnx.export returned no program for {path.name}.")
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
    log.info("wrote %s (%.1f MB)", path.name, path.stat().st_size / 1e6)


def strip_node_metadata(model: onnx.ModelProto) -> None:
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


def export_mae(mae: MAE, mean: float | list[float], std: float | list[float], out_dir: Path,
               extra: dict[str, Any] | None = None, check: bool = True,
               names: tuple[str, str] = ("mae_recon.onnx", "mae_embed.onnx")) -> tuple[Path, Path]:
    """Write the reconstruction and embedding graphs (``names`` in ``out_dir``) with metadata, then check them."""
    c = mae.in_chans
    mean_l = [float(mean)] * c if isinstance(mean, (int, float)) else [float(m) for m in mean]
    std_l = [float(std)] * c if isinstance(std, (int, float)) else [float(s) for s in std]
    meta: dict[str, Any] = {
        "blackbox_lime.kind": "mae", "image_size": mae.img_size, "patch_size": mae.patch_size, "channels": c,
        "mean": mean_l, "std": std_l, "mask_convention": MASK_CONVENTION,
        "input_normalisation": "image = (pixels in [0, 1] - mean) / std, per channel", **(extra or {}),
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mae.eval()
    s, L = mae.img_size, mae.grid ** 2
    gen = torch.Generator().manual_seed(0)
    img = torch.randn(3, c, s, s, generator=gen)
    pm = (torch.rand(3, L, generator=gen) < torch.tensor([[0.1], [0.5], [0.9]])).float()
    recon_path, embed_path = out_dir / names[0], out_dir / names[1]
    export_onnx(MAEReconGraph(mae), (img, pm), recon_path, ["image", "patch_mask"], ["recon"], meta)
    export_onnx(MAEEmbedGraph(mae), (img,), embed_path, ["image"], ["embedding"],
                {**meta, "embedding_dim": mae.norm.normalized_shape[0],
                 "embedding": "mean of the encoder's normed patch tokens on the unmasked image"})
    if check:
        check_export(mae, recon_path, embed_path)
    return recon_path, embed_path


def check_export(mae: MAE, recon_path: Path, embed_path: Path) -> dict[str, float]:
    """onnxruntime vs torch, and key-masked vs drop-token; raises if a contract is broken."""
    import onnxruntime as ort

    c, s, L = mae.in_chans, mae.img_size, mae.grid ** 2
    gen = torch.Generator().manual_seed(1)
    img = torch.randn(4, c, s, s, generator=gen)
    pm = torch.zeros(4, L)
    for i, r in enumerate([0.0, 0.25, 0.6, 0.9]):
        pm[i, torch.randperm(L, generator=gen)[: int(r * L)]] = 1.0
    with torch.no_grad():
        ref = MAEReconGraph(mae)(img, pm).numpy()
        emb = MAEEmbedGraph(mae)(img).numpy()
        # Key-masked encoder == drop-token encoder on rows with the same hidden count.
        hid = torch.zeros(2, L, dtype=torch.bool)
        hid[:, torch.randperm(L, generator=gen)[:98]] = True
        drop = mae.forward_train(img[:2], hid)
        keym = mae.forward_keymasked(img[:2], hid)
    sess = ort.InferenceSession(str(recon_path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"image": img.numpy(), "patch_mask": pm.numpy()})[0]
    emb_o = ort.InferenceSession(str(embed_path), providers=["CPUExecutionProvider"]).run(None, {"image": img.numpy()})[0]
    res = {
        "recon_ort_vs_torch": float(np.abs(out - ref).max()),
        "embed_ort_vs_torch": float(np.abs(emb_o - emb).max()),
        "keymasked_vs_droptoken": float((drop - keym).abs().max()),
    }
    visible = np.repeat(np.repeat(pm.numpy().reshape(4, 1, mae.grid, mae.grid) == 0, mae.patch_size, 2), mae.patch_size, 3)
    visible = np.broadcast_to(visible, out.shape)
    res["visible_max_abs_diff"] = float(np.abs(out[visible] - img.numpy()[visible]).max())
    if res["recon_ort_vs_torch"] > 1e-4 or res["embed_ort_vs_torch"] > 1e-4:
        raise RuntimeError(f"onnxruntime does not match torch: {res}")
    if res["keymasked_vs_droptoken"] > 1e-4:
        raise RuntimeError(f"key-masked attention does not match drop-token: {res}")
    if res["visible_max_abs_diff"] != 0.0:
        raise RuntimeError(f"visible patches are not copied exactly: {res}")
    return res
