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

import numpy as np
import torch

from common import MAE, MAEEmbedGraph, MAEReconGraph, export_onnx

MASK_CONVENTION = "patch_mask float32 [N, L]: 1 = hidden, 0 = visible; patches numbered row by row"


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


def export_mae(mae: MAE, mean: float | list[float], std: float | list[float], out_dir: Path,
               extra: dict[str, Any] | None = None, check: bool = True) -> tuple[Path, Path]:
    """Write ``mae_recon.onnx`` and ``mae_embed.onnx`` with metadata, then check them."""
    c = mae.in_chans
    mean_l = [float(mean)] * c if np.isscalar(mean) else [float(m) for m in mean]  # type: ignore[arg-type]
    std_l = [float(std)] * c if np.isscalar(std) else [float(s) for s in std]  # type: ignore[arg-type]
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
    recon_path, embed_path = out_dir / "mae_recon.onnx", out_dir / "mae_embed.onnx"
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
    print("export checks:", res, flush=True)
    if res["recon_ort_vs_torch"] > 1e-4 or res["embed_ort_vs_torch"] > 1e-4:
        raise RuntimeError(f"onnxruntime does not match torch: {res}")
    if res["keymasked_vs_droptoken"] > 1e-4:
        raise RuntimeError(f"key-masked attention does not match drop-token: {res}")
    if res["visible_max_abs_diff"] != 0.0:
        raise RuntimeError(f"visible patches are not copied exactly: {res}")
    return res


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
