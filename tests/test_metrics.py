"""Benchmark metrics: known answers, and equality with scikit-learn's average precision."""

from __future__ import annotations

import numpy as np
import pytest

from blackbox_lime.evaluation.metrics import (blurred_substrate, bootstrap_ci, consistency, patch_order, perturbation_curves,
                                   pixel_auprc)


@pytest.mark.parametrize("seed", range(6))
def test_pixel_auprc_equals_sklearn_average_precision(seed: int) -> None:
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    mask = rng.random((48, 48)) < rng.uniform(0.01, 0.3)
    sal = rng.random((48, 48)) + 0.5 * mask
    if seed % 2:
        sal = np.round(sal, 1)  # many ties
    assert pixel_auprc(sal, mask) == pytest.approx(sklearn_metrics.average_precision_score(mask.ravel(), sal.ravel()),
                                                   abs=1e-12)


def test_pixel_auprc_known_values() -> None:
    mask = np.zeros((10, 10), bool)
    mask[:2] = True  # 20 % positives
    assert pixel_auprc(mask.astype(float), mask) == 1.0  # a perfect map
    assert pixel_auprc(np.ones((10, 10)), mask) == pytest.approx(0.2)  # a constant map scores the prevalence
    assert np.isnan(pixel_auprc(np.ones((10, 10)), np.zeros((10, 10), bool)))
    with pytest.raises(ValueError, match="saliency and mask must have the same number of pixels. Got 4 and 100 instead."):
        pixel_auprc(np.ones((2, 2)), mask)


def lesion_model(mask: np.ndarray):  # type: ignore[no-untyped-def]
    """P(abnormal) = mean brightness inside the lesion."""
    def predict(x: np.ndarray) -> np.ndarray:
        p = x[:, mask, 0].mean(axis=1)
        return np.stack([1 - p, p], axis=1)
    return predict


def test_morf_and_lerf_rank_a_perfect_map_over_its_inverse() -> None:
    rng = np.random.default_rng(0)
    image = (0.2 + 0.05 * rng.random((64, 64, 3))).astype(np.float32)
    mask = np.zeros((64, 64), bool)
    mask[16:32, 16:32] = True
    image[mask] = 0.9
    predict = lesion_model(mask)
    good = perturbation_curves(image, mask.astype(np.float32), predict, 1, patch=16, steps=16)
    bad = perturbation_curves(image, 1.0 - mask.astype(np.float32), predict, 1, patch=16, steps=16)
    assert good["morf_auc"] < bad["morf_auc"] and good["lerf_auc"] > bad["lerf_auc"]
    sub = blurred_substrate(image)
    p_image, p_sub = predict(image[None])[0, 1], predict(sub[None])[0, 1]
    for c in (good["morf"], good["lerf"]):
        assert c[0] == pytest.approx(p_image, abs=1e-5) and c[-1] == pytest.approx(p_sub, abs=1e-5)
    assert good["morf"][1] == pytest.approx(p_sub, abs=1e-5)  # the lesion patch goes first: 1 of 16 patches per step


def test_patch_order_breaks_ties_without_favouring_the_top_rows() -> None:
    order = patch_order(np.zeros((64, 64)), 16)
    assert sorted(order) == list(range(16)) and list(order[:4]) != [0, 1, 2, 3]
    sal = np.zeros((64, 64))
    sal[48:, 48:] = 1.0
    assert patch_order(sal, 16)[0] == 15


def test_consistency_known_values() -> None:
    a = np.random.default_rng(0).random((8, 8))
    assert consistency([a, a, a]) == pytest.approx(1.0)
    assert consistency([a, -a]) == pytest.approx(-1.0)
    assert consistency([a, 2 * a + 1, a]) == pytest.approx(1.0)
    assert np.isnan(consistency([np.zeros((8, 8)), np.zeros((8, 8))]))  # empty maps are not "consistent"
    with pytest.raises(ValueError, match="consistency needs at least 2 maps. Got 1 instead."):
        consistency([a])


def test_bootstrap_ci() -> None:
    assert bootstrap_ci([0.5] * 10) == (0.5, 0.5, 0.5)
    v = np.random.default_rng(1).normal(0.3, 0.1, 50)
    mean, lo, hi = bootstrap_ci(v)
    assert lo < mean < hi and mean == pytest.approx(v.mean())
    assert (mean, lo, hi) == bootstrap_ci(v)  # seeded
    assert hi - lo == pytest.approx(2 * 1.96 * v.std() / np.sqrt(50), rel=0.25)  # close to the normal CI
    assert np.isnan(bootstrap_ci([float("nan")])[0])
