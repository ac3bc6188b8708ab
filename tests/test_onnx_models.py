"""The shipped ONNX models honour their contracts (onnxruntime only; no torch)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from blackbox_lime.evaluation.phantoms import make_phantom

ONNX_DIR = Path(__file__).resolve().parent.parent / "onnx"


def session(name: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(ONNX_DIR / name), providers=["CPUExecutionProvider"])


def meta(sess: ort.InferenceSession) -> dict:
    return {k: json.loads(v) if v[:1] in "[{0123456789" else v for k, v in sess.get_modelmeta().custom_metadata_map.items()}


@pytest.fixture(scope="module")
def mae() -> ort.InferenceSession:
    return session("mae_recon.onnx")


@pytest.fixture(scope="module")
def normalised_batch(mae: ort.InferenceSession) -> np.ndarray:
    m = meta(mae)
    imgs = np.stack([make_phantom(mod, "test", i).image for mod in ("chest_xray", "breast_us") for i in range(2)])
    x = (imgs.transpose(0, 3, 1, 2) - np.array(m["mean"], np.float32)[:, None, None]) / np.array(m["std"], np.float32)[:, None, None]
    return x.astype(np.float32)  # (4, 3, 224, 224)


def test_mae_recon_signature_and_metadata(mae: ort.InferenceSession) -> None:
    ins, outs = mae.get_inputs(), mae.get_outputs()
    assert [(i.name, i.type) for i in ins] == [("image", "tensor(float)"), ("patch_mask", "tensor(float)")]
    assert ins[0].shape[1:] == [3, 224, 224] and ins[1].shape[1:] == [196] and isinstance(ins[0].shape[0], str)
    assert outs[0].name == "recon" and outs[0].shape[1:] == [3, 224, 224]
    m = meta(mae)
    assert (m["image_size"], m["patch_size"], m["channels"]) == (224, 16, 3)
    assert len(m["mean"]) == 3 and len(m["std"]) == 3 and min(m["std"]) > 0
    assert m["mask_convention"].startswith("patch_mask float32 [N, L]: 1 = hidden, 0 = visible; patches numbered row by row")


def _pixel_hidden(pm: np.ndarray) -> np.ndarray:
    return np.repeat(np.repeat(pm.reshape(-1, 1, 14, 14) > 0.5, 16, 2), 16, 3)


def test_visible_pixels_bit_exact_and_rows_hide_different_counts(mae: ort.InferenceSession, normalised_batch: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    pm = np.zeros((4, 196), np.float32)
    for row, k in enumerate([0, 20, 98, 196]):  # none, some, half, all hidden
        pm[row, rng.permutation(196)[:k]] = 1
    out = mae.run(None, {"image": normalised_batch, "patch_mask": pm})[0]
    hidden = np.broadcast_to(_pixel_hidden(pm), out.shape)
    assert np.array_equal(out[~hidden], normalised_batch[~hidden])  # bit-exact copy
    assert np.array_equal(out[0], normalised_batch[0])
    assert np.all(np.isfinite(out)) and not np.array_equal(out[3], normalised_batch[3])


def test_hidden_input_pixels_do_not_leak(mae: ort.InferenceSession, normalised_batch: np.ndarray) -> None:
    rng = np.random.default_rng(1)
    pm = (rng.random((4, 196)) < np.array([[0.1], [0.4], [0.7], [0.9]])).astype(np.float32)
    hidden = np.broadcast_to(_pixel_hidden(pm), normalised_batch.shape)
    changed = normalised_batch.copy()
    changed[hidden] = rng.normal(size=int(hidden.sum())).astype(np.float32) * 5
    a = mae.run(None, {"image": normalised_batch, "patch_mask": pm})[0]
    b = mae.run(None, {"image": changed, "patch_mask": pm})[0]
    assert np.abs(a - b).max() == 0.0


def test_rows_are_independent_of_the_batch(mae: ort.InferenceSession, normalised_batch: np.ndarray) -> None:
    pm = (np.random.default_rng(2).random((4, 196)) < 0.5).astype(np.float32)
    together = mae.run(None, {"image": normalised_batch, "patch_mask": pm})[0]
    alone = mae.run(None, {"image": normalised_batch[2:3], "patch_mask": pm[2:3]})[0]
    assert np.abs(together[2] - alone[0]).max() < 1e-5


def test_mae_embed_contract(normalised_batch: np.ndarray) -> None:
    emb = session("mae_embed.onnx")
    assert [i.name for i in emb.get_inputs()] == ["image"] and emb.get_outputs()[0].name == "embedding"
    m = meta(emb)
    out = emb.run(None, {"image": normalised_batch})[0]
    assert out.shape == (4, m["embedding_dim"]) and out.dtype == np.float32 and np.all(np.isfinite(out))
    assert np.abs(out - emb.run(None, {"image": normalised_batch})[0]).max() == 0


@pytest.mark.parametrize("name", ["demo_cnn.onnx", "demo_vit.onnx", "brain_cnn.onnx", "fundus_cnn.onnx"])
def test_classifier_contract(name: str) -> None:
    s = session(name)
    i, o = s.get_inputs()[0], s.get_outputs()[0]
    assert i.name == "image" and i.type == "tensor(float)" and i.shape[1:] == [3, 224, 224] and isinstance(i.shape[0], str)
    assert o.name == "probs" and o.shape[1:] == [2]
    m = meta(s)
    assert m["class_names"] == ["normal", "abnormal"] and m["abnormal_index"] == 1 and m["output"] == "probabilities"
    x = np.stack([make_phantom("breast_us", "test", k).image.transpose(2, 0, 1) for k in range(5)])
    p = s.run(None, {"image": x})[0]
    assert p.shape == (5, 2) and np.allclose(p.sum(1), 1, atol=1e-5) and p.min() >= 0


def test_shipped_models_stay_small() -> None:
    shipped = [p for p in ONNX_DIR.iterdir() if p.suffix in (".onnx", ".pt")]
    assert len(shipped) == 18  # the real families' figshare_brain_cnn and kvasir_polyp_cnn (.onnx and .pt) included
    assert sum(p.stat().st_size for p in shipped) < 60e6


def test_the_polyp_model_declares_its_classes_and_answers_probabilities() -> None:
    """onnx/train_polyp.py: two classes, "polyp" the abnormal one; colour input (N, 3, 224, 224)."""
    from blackbox_lime.adapters.onnx import OnnxAdapter

    model = OnnxAdapter(ONNX_DIR / "kvasir_polyp_cnn.onnx")
    assert list(model.info.class_names) == ["no polyp", "polyp"] and model.info.abnormal_index == 1
    p = model.predict(np.random.default_rng(0).random((3, 224, 224, 3), dtype=np.float32))
    assert p.shape == (3, 2) and np.allclose(p.sum(1), 1, atol=1e-5)


def test_the_four_class_model_reads_its_phantoms() -> None:
    """onnx/train_exclusive.py: a softmax over normal, nodule, consolidation, effusion; on the first 60 test
    phantoms (PNG-quantised) it is right at least 85 % of the time (0.925 on 400, onnx/MODEL_CARD.md)."""
    from blackbox_lime.adapters.onnx import OnnxAdapter
    from blackbox_lime.evaluation.phantoms import EXCLUSIVE_CLASSES, make_exclusive_phantom

    model = OnnxAdapter(ONNX_DIR / "chest4_cnn.onnx")
    assert list(model.info.class_names) == list(EXCLUSIVE_CLASSES) == ["normal", "nodule", "consolidation", "effusion"]
    cases = [make_exclusive_phantom("test", i) for i in range(60)]
    p = model.predict(np.stack([np.round(ph.image * 255) / 255 for ph, _ in cases]).astype(np.float32))
    assert np.allclose(p.sum(1), 1, atol=1e-5)
    assert (p.argmax(1) == np.array([label for _, label in cases])).mean() >= 0.85


def test_the_shortcut_model_reads_the_laterality_marker() -> None:
    """onnx/train_shortcut.py: the same test phantoms with the marker forced on and off."""
    from blackbox_lime.evaluation.phantoms import marked_phantom

    s = session("shortcut_marker.onnx")
    on = np.stack([marked_phantom("chest_xray", "test", k, marked=True)[0].image.transpose(2, 0, 1) for k in range(20)])
    off = np.stack([marked_phantom("chest_xray", "test", k, marked=False)[0].image.transpose(2, 0, 1) for k in range(20)])
    p_on, p_off = s.run(None, {"image": on})[0][:, 1], s.run(None, {"image": off})[0][:, 1]
    assert p_on.mean() - p_off.mean() > 0.5 and np.mean(p_on > p_off) > 0.9
    m = meta(s)
    assert m["training"]["marker_effect"] > 0.5 and "shortcut" in m["intended_use"]


@pytest.mark.parametrize(("name", "family"), [("brain_cnn.onnx", "brain_mri"), ("fundus_cnn.onnx", "fundus")])
def test_unseen_family_classifiers_tell_abnormal_phantoms_apart(name: str, family: str) -> None:
    """Each unseen family's own classifier (onnx/train_unseen.py): 40 val phantoms, about half abnormal."""
    from sklearn.metrics import roc_auc_score

    s = session(name)
    cases = [make_phantom(family, "val", k) for k in range(40)]
    p = s.run(None, {"image": np.stack([c.image.transpose(2, 0, 1) for c in cases])})[0][:, 1]
    labels = np.array([c.label for c in cases])
    assert 10 < labels.sum() < 30 and roc_auc_score(labels, p) > 0.9
    assert meta(s)["training"]["supervision"] == "image label only" and meta(s)["family"] == family


@pytest.mark.parametrize("name", ["demo_cnn.onnx", "demo_vit.onnx", "mae_recon.onnx", "mae_embed.onnx", "brain_cnn.onnx",
                                  "fundus_cnn.onnx"])
def test_shipped_models_carry_no_build_machine_paths(name: str) -> None:
    """The exporter records stack traces per node; they name the build machine's files and are stripped."""
    import onnx

    model = onnx.load(str(ONNX_DIR / name))
    assert all(len(node.metadata_props) == 0 for node in model.graph.node)
    assert b"site-packages" not in (ONNX_DIR / name).read_bytes()


def test_the_multilabel_classifier_declares_its_findings_and_tells_each_apart() -> None:
    """onnx/train_multilabel.py: three independent sigmoid outputs, 60 val multi-label phantoms."""
    from sklearn.metrics import roc_auc_score

    from blackbox_lime.evaluation.phantoms import FINDINGS, make_multilabel_phantom

    s = session("multilabel_cnn.onnx")
    m = meta(s)
    assert m["output"] == "multilabel" and m["class_names"] == list(FINDINGS)
    cases = [make_multilabel_phantom("val", k) for k in range(60)]
    p = s.run(None, {"image": np.stack([c.image.transpose(2, 0, 1) for c in cases])})[0]
    assert p.shape == (60, 3) and p.min() >= 0 and p.max() <= 1
    assert np.abs(p.sum(axis=1) - 1).max() > 0.1  # not exclusive probabilities
    for k, name in enumerate(FINDINGS):
        labels = np.array([c.labels[name] for c in cases])
        assert roc_auc_score(labels, p[:, k]) > 0.85, name


def test_the_real_image_classifier_declares_its_three_tumour_types() -> None:
    from blackbox_lime.adapters.onnx import OnnxAdapter

    with OnnxAdapter(ONNX_DIR / "figshare_brain_cnn.onnx") as model:
        assert model.info.class_names == ("pituitary", "meningioma", "glioma") and model.info.input_size == (224, 224)
        p = model.predict(np.full((2, 224, 224, 3), 0.3, np.float32))
    assert p.shape == (2, 3) and np.allclose(p.sum(1), 1, atol=1e-5)
