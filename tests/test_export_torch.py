"""Export and conversion tests that need torch (the train extra); skipped cleanly without it."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "onnx"))

from common import MAE, DemoCNN, DemoViT, Softmaxed  # noqa: E402
from export_mae import export_mae, load_mae_layout  # noqa: E402

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def tiny_mae_state() -> dict:
    """A tiny randomly initialised MAE in the facebookresearch/mae key layout, saved as {'model': ...}."""
    torch.manual_seed(0)
    mae = MAE(img_size=64, patch_size=16, in_chans=3, embed_dim=32, depth=2, num_heads=2,
              decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2, mlp_ratio=2.0)
    with torch.no_grad():
        for p in mae.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return {"model": mae.state_dict()}


def test_converter_reads_the_architecture_from_the_keys(tiny_mae_state: dict) -> None:
    keys = set(tiny_mae_state["model"])
    assert {"patch_embed.proj.weight", "blocks.1.attn.qkv.weight", "decoder_embed.weight",
            "decoder_blocks.0.mlp.fc2.bias", "decoder_pred.weight", "mask_token"} <= keys
    mae = load_mae_layout(tiny_mae_state, num_heads=2, decoder_num_heads=2)
    assert (mae.img_size, mae.patch_size, mae.in_chans, len(mae.blocks), len(mae.decoder_blocks)) == (64, 16, 3, 2, 1)


def test_converter_exports_the_onnx_contract(tiny_mae_state: dict, tmp_path: Path) -> None:
    import onnxruntime as ort

    mae = load_mae_layout(tiny_mae_state, num_heads=2, decoder_num_heads=2)
    # export_mae itself checks ORT vs torch <= 1e-4, key-masked == drop-token, and the visible copy.
    recon_path, embed_path = export_mae(mae, [0.4, 0.4, 0.4], [0.2, 0.2, 0.2], tmp_path)
    sess = ort.InferenceSession(str(recon_path), providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    assert meta["image_size"] == "64" and meta["patch_size"] == "16" and meta["mean"] == "[0.4, 0.4, 0.4]"
    rng = np.random.default_rng(0)
    img = rng.normal(size=(3, 3, 64, 64)).astype(np.float32)
    pm = np.zeros((3, 16), np.float32)
    pm[0, :4], pm[1, 5:13], pm[2, :] = 1, 1, 1  # a different number hidden in each row, even all
    out = sess.run(None, {"image": img, "patch_mask": pm})[0]
    with torch.no_grad():
        from common import MAEReconGraph

        ref = MAEReconGraph(mae)(torch.from_numpy(img), torch.from_numpy(pm)).numpy()
    assert np.abs(out - ref).max() <= 1e-4
    emb = ort.InferenceSession(str(embed_path), providers=["CPUExecutionProvider"]).run(None, {"image": img})[0]
    assert emb.shape == (3, 32)


def test_converter_rejects_other_layouts() -> None:
    with pytest.raises(ValueError, match="This checkpoint is not in the facebookresearch/mae layout: missing patch_embed.proj.weight"):
        load_mae_layout({"model": {"encoder.weight": torch.zeros(1)}})


def test_keymasked_equals_droptoken_with_the_same_weights(tiny_mae_state: dict) -> None:
    mae = load_mae_layout(tiny_mae_state, num_heads=2, decoder_num_heads=2)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 3, 64, 64, generator=g)
    hidden = torch.zeros(4, 16, dtype=torch.bool)
    for i in range(4):
        hidden[i, torch.randperm(16, generator=g)[:9]] = True
    with torch.no_grad():
        assert (mae.forward_train(x, hidden) - mae.forward_keymasked(x, hidden)).abs().max() < 1e-5


@pytest.mark.parametrize(("name", "cls"), [("demo_cnn", DemoCNN), ("demo_vit", DemoViT)])
def test_shipped_torch_weights_match_shipped_onnx(name: str, cls: type) -> None:
    import onnxruntime as ort

    pt, onnx_path = ROOT / "onnx" / f"{name}.pt", ROOT / "onnx" / f"{name}.onnx"
    model = cls()
    model.load_state_dict(torch.load(pt, map_location="cpu", weights_only=True))
    model.eval()
    x = np.random.default_rng(0).random((3, 3, 224, 224), dtype=np.float32)
    with torch.no_grad():
        ref = Softmaxed(model)(torch.from_numpy(x)).numpy()
    out = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    assert np.abs(out - ref).max() <= 1e-4


def test_shipped_mae_weights_match_shipped_onnx() -> None:
    import onnxruntime as ort
    from common import MAEReconGraph

    ckpt = torch.load(ROOT / "onnx" / "mae.pt", map_location="cpu", weights_only=True)
    mae = load_mae_layout(ckpt["model"])  # the shipped MAE uses the mae repository's head convention
    rng = np.random.default_rng(0)
    img = rng.normal(size=(2, 3, 224, 224)).astype(np.float32)
    pm = (rng.random((2, 196)) < np.array([[0.3], [0.8]])).astype(np.float32)
    with torch.no_grad():
        ref = MAEReconGraph(mae)(torch.from_numpy(img), torch.from_numpy(pm)).numpy()
    sess = ort.InferenceSession(str(ROOT / "onnx" / "mae_recon.onnx"), providers=["CPUExecutionProvider"])
    assert np.abs(sess.run(None, {"image": img, "patch_mask": pm})[0] - ref).max() <= 1e-4
