"""Shortcut flags: known answers on synthetic maps, and on planted-marker phantoms a known positive (a model
that reads the marker) and a known negative (the demo CNN on a clean phantom)."""

from __future__ import annotations

import numpy as np
import pytest

from blackbox_lime.adapters.onnx import OnnxAdapter
from blackbox_lime.audit.flags import SHORTCUT_THRESHOLDS, anatomy_mask, border_mask, case_flags, evidence_share
from blackbox_lime.config import ExplainConfig
from blackbox_lime.explainer import Explainer
from blackbox_lime.models import bundled_model
from blackbox_lime.evaluation.phantoms import (ALL_MODALITIES, MARKER_KINDS, abnormal_cases, burn_in_marker, make_phantom,
                                    marked_phantom)


def test_evidence_share_counts_only_positive_evidence():
    s = np.zeros((10, 10))
    s[0, 0], s[5, 5], s[6, 6] = 3.0, 1.0, -50.0  # negative evidence does not count
    assert evidence_share(s, border_mask((10, 10), 0.1)) == pytest.approx(0.75)
    assert evidence_share(-np.abs(s), border_mask((10, 10), 0.1)) is None


def test_border_band_is_an_eighth_of_each_side():
    m = border_mask((224, 224))
    assert m[27, 100] and not m[28, 100] and m[100, 196] and not m[100, 195]
    assert m.mean() == pytest.approx(1 - (168 / 224) ** 2)


@pytest.mark.parametrize("modality", ALL_MODALITIES)
def test_anatomy_mask_holds_the_lesions_and_leaves_a_marker_out(modality):
    for i in range(4):
        ph, marker = marked_phantom(modality, "val", i, "laterality", marked=True)
        anatomy = anatomy_mask(ph.image)
        assert anatomy is not None and 0.3 < anatomy.mean() < 0.95
        assert not (ph.mask & ~anatomy).any()  # every lesion pixel inside the anatomy
        assert (marker & ~anatomy).mean() / marker.mean() > 0.9  # the marker outside it


def test_a_flat_image_has_no_anatomy_mask():
    assert anatomy_mask(np.full((64, 64, 3), 0.4, np.float32)) is None


@pytest.mark.parametrize("kind", MARKER_KINDS)
def test_markers_are_burnt_into_the_border_band_deterministically(kind):
    image = make_phantom("chest_xray", "val", 0).image
    a, ma = burn_in_marker(image, kind, np.random.default_rng(3))
    b, mb = burn_in_marker(image, kind, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    assert ma.any() and (ma & border_mask(ma.shape)).sum() / ma.sum() > 0.95
    assert not np.array_equal(a, image)
    np.testing.assert_array_equal(a[~ma], image[~ma])  # nothing but the marker changes


def test_the_sites_confounding_marks_most_abnormal_and_few_normal_cases():
    marked = {0: [], 1: []}
    for i in range(200):
        ph, m = marked_phantom("chest_xray", "train", i)
        marked[ph.label].append(m.any())
    assert np.mean(marked[1]) > 0.8 and np.mean(marked[0]) < 0.2


def test_case_flags_for_fidelity_flatness_and_stta():
    img = make_phantom("chest_xray", "val", 0).image
    sal = np.zeros(img.shape[:2], np.float32)
    sal[100:120, 100:120] = 1.0
    base = {"r2_evidence": 0.5, "response_sd": 0.1, "probs": [0.2, 0.8]}
    assert case_flags(img, sal, base)["flags"] == []
    assert case_flags(img, sal, {**base, "r2_evidence": 0.01})["flags"] == ["low_fidelity"]
    assert case_flags(img, sal, {**base, "response_sd": 0.001})["flags"] == ["flat_answer"]
    assert case_flags(img, sal, base, predicted_before_stta=0)["flags"] == ["stta_changed_class"]
    corner = np.zeros_like(sal)
    corner[:20, :20] = 1.0
    out = case_flags(img, corner, base, roi=np.zeros(sal.shape, bool))
    assert out["flags"] == ["shortcut_border", "shortcut_outside_anatomy", "shortcut_outside_roi"]
    assert out["shares"] == {"border": 1.0, "outside_anatomy": 1.0, "outside_roi": 1.0}


@pytest.mark.slow
def test_a_model_that_reads_the_marker_is_flagged_and_the_demo_cnn_on_a_clean_phantom_is_not():
    cfg = ExplainConfig(n_samples=300)  # fill auto, as audit run uses by default
    with OnnxAdapter(bundled_model("shortcut_marker.onnx")) as adapter:
        flagged = []
        for i in range(6):
            ph, marker = marked_phantom("chest_xray", "test", i, marked=True)
            exp = Explainer(adapter, cfg).explain(ph.image, rng=0)
            flagged.append(case_flags(ph.image, exp.saliency, exp.summary())["flags"])
    assert all("shortcut_border" in f for f in flagged), flagged
    with OnnxAdapter(bundled_model("demo_cnn.onnx")) as adapter:
        for ph in [make_phantom("chest_xray", "test", 0)] + abnormal_cases("chest_xray", "test", 3):
            exp = Explainer(adapter, cfg).explain(ph.image, rng=0)
            out = case_flags(ph.image, exp.saliency, exp.summary())
            assert not [f for f in out["flags"] if f.startswith("shortcut_")], out
            if ph.label:  # the lesion's evidence: a map with signal, inside the anatomy, away from the border
                assert "flat_answer" not in out["flags"]
                assert out["shares"]["border"] < SHORTCUT_THRESHOLDS["shortcut_border"]


def test_bench_audit_chooses_the_middle_of_the_thresholds_that_separate_best():
    from blackbox_lime.evaluation.bench_audit import choose

    def rec(kind, border, r2=0.5):
        return {"kind": kind, "r2_evidence": r2, "shares": {"border": border, "outside_anatomy": None, "outside_roi": None}}

    records = [rec("marked", v) for v in (0.82, 0.9, 0.95)] + [rec("clean", v) for v in (0.1, 0.3, 0.41)]
    records.append(rec("clean", 0.99, r2=None))  # a flat answer raises no shortcut flag: not counted
    c = choose(records)["border"]
    # every threshold from 0.45 to 0.8 separates perfectly (J = 1): the middle is 0.6 (0.625 to 0.05 steps)
    assert c["tied_range"] == [0.45, 0.8] and c["youden_j"] == 1.0 and c["threshold"] == 0.6
    assert choose(records)["outside_anatomy"] is None


def test_an_answer_no_region_explains_is_no_focal_evidence_not_low_fidelity():
    """Measured on val (docs/bench_flags/val/table.md): the chest CNN's confident 'normal' answers move under
    masking, but as no patch-wise effect (held-out R^2 ~0.03); the evidence R^2 alone read them as unreliable maps."""
    img = np.full((224, 224, 3), 0.5, np.float32)
    sal = np.zeros((224, 224), np.float32)
    sal[100:120, 100:120] = 1.0
    base = {"response_sd": 0.18, "probs": [0.99, 0.01]}
    assert case_flags(img, sal, {**base, "r2_evidence": -0.016, "r2_heldout": 0.033})["flags"] == ["no_focal_evidence"]
    assert case_flags(img, sal, {**base, "r2_evidence": -0.016, "r2_heldout": 0.6})["flags"] == ["low_fidelity"]
    assert case_flags(img, sal, {**base, "r2_evidence": 0.4, "r2_heldout": 0.45})["flags"] == []
