"""Export an MAE to the ONNX contract (``mae_recon.onnx`` + ``mae_embed.onnx``), and convert a
facebookresearch/mae-layout checkpoint.

A site with its own MAE (trained on raw pixels, i.e. without ``norm_pix_loss``) converts it with

    python onnx/export_mae.py CHECKPOINT.pth --out-dir my_mae/ --mean 0.485 0.456 0.406 --std 0.229 0.224 0.225

The architecture (width, depth, patch and image size, channels, MLP ratio) is read from the weights;
head counts cannot be, so they default to the mae repository's convention (64-dim encoder heads,
16 decoder heads at width 512) and can be given with ``--num-heads`` / ``--decoder-num-heads``.
After export the graphs are checked against torch (max abs difference <= 1e-4) and against the
drop-token forward.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import torch

from common import MAE
from blackbox_lime.mae_torch import check_export, export_mae  # noqa: F401 (the scripts' and tests' import path)


def infer_config(state: dict[str, torch.Tensor], num_heads: int | None = None,
                 decoder_num_heads: int | None = None) -> dict[str, Any]:
    """Read the MAE architecture from a facebookresearch/mae-layout state dict."""
    required = ["patch_embed.proj.weight", "pos_embed", "cls_token", "mask_token", "decoder_embed.weight",
                "decoder_pred.weight", "blocks.0.mlp.fc1.weight"]
    missing = [k for k in required if k not in state]
    if missing:
        raise ValueError(
            f"This checkpoint is not in the facebookresearch/mae layout: missing {', '.join(missing)}. "
            "Expected keys such as patch_embed.proj.weight, blocks.N.*, decoder_embed.*, decoder_pred.*, mask_token.")
    w = state["patch_embed.proj.weight"]  # (D, C, p, p)
    dim, chans, patch = int(w.shape[0]), int(w.shape[1]), int(w.shape[2])
    grid = int(round((state["pos_embed"].shape[1] - 1) ** 0.5))
    dec_dim = int(state["decoder_embed.weight"].shape[0])
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    dec_depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"decoder_blocks\.(\d+)\.", k)))
    mlp_ratio = state["blocks.0.mlp.fc1.weight"].shape[0] / dim
    return {
        "img_size": grid * patch, "patch_size": patch, "in_chans": chans, "embed_dim": dim, "depth": depth,
        "num_heads": num_heads or max(1, dim // 64), "decoder_embed_dim": dec_dim, "decoder_depth": dec_depth,
        "decoder_num_heads": decoder_num_heads or (16 if dec_dim == 512 else max(1, dec_dim // 32)),
        "mlp_ratio": float(mlp_ratio),
    }


def load_mae_layout(state: dict[str, torch.Tensor], **heads: int | None) -> MAE:
    """Build an :class:`MAE` from a facebookresearch/mae-layout state dict (strict key match)."""
    if "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    cfg = infer_config(state, **heads)
    mae = MAE(**cfg)
    own = mae.state_dict()
    unexpected = sorted(set(state) - set(own))
    missing = sorted(set(own) - set(state))
    if unexpected or missing:
        raise ValueError(f"Checkpoint keys do not match the MAE layout: unexpected {unexpected[:5]}, missing {missing[:5]}.")
    for k, v in state.items():
        if own[k].shape != v.shape:
            raise ValueError(f"Checkpoint tensor {k} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}.")
    mae.load_state_dict(state)
    return mae.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", help="a .pth/.pt file: a facebookresearch/mae state dict, or {'model': state_dict}")
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--mean", type=float, nargs="+", required=True)
    ap.add_argument("--std", type=float, nargs="+", required=True)
    ap.add_argument("--num-heads", type=int, default=None)
    ap.add_argument("--decoder-num-heads", type=int, default=None)
    a = ap.parse_args()
    state = torch.load(a.checkpoint, map_location="cpu", weights_only=True)
    mae = load_mae_layout(state, num_heads=a.num_heads, decoder_num_heads=a.decoder_num_heads)
    mean = a.mean[0] if len(a.mean) == 1 else a.mean
    std = a.std[0] if len(a.std) == 1 else a.std
    export_mae(mae, mean, std, Path(a.out_dir), extra={"source_checkpoint": Path(a.checkpoint).name})


if __name__ == "__main__":
    main()
