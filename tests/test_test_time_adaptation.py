"""STTA: the photometric transform, the views, SPSA on a model whose best transform is known, and the
explainer's use of it (every queried image adapted, the cost counted, the design unchanged)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from blackbox_lime.adapters.onnx import OnnxAdapter
from blackbox_lime import ExplainConfig, Explainer
from blackbox_lime.test_time_adaptation import (
    PhotometricTransform,
    adapt,
    draw_views,
    is_grayscale,
    query_cost,
)
from graphs import brightness_model


@pytest.fixture(scope="module")
def bright_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return brightness_model(tmp_path_factory.mktemp("stta") / "brightness.onnx", centre=0.5, width=0.1)


@pytest.fixture(scope="module")
def dim_image() -> np.ndarray:
    """A smooth gray image with mean 0.4: P(abnormal) = exp(-1) = 0.368 under the brightness model."""
    yy, xx = np.mgrid[0:224, 0:224].astype(np.float32) / 223.0
    g = 0.3 + 0.1 * xx + 0.1 * yy
    return np.repeat(g[..., None], 3, axis=2)


def test_identity_returns_the_images_untouched(dim_image: np.ndarray) -> None:
    batch = dim_image[None]
    assert PhotometricTransform()(batch) is batch
    assert PhotometricTransform.from_normalised(np.zeros(3), grayscale=True).is_identity()
    assert PhotometricTransform.from_normalised(np.zeros(7), grayscale=False).is_identity()


def test_grayscale_transform_is_blur_then_gain_then_shift(dim_image: np.ndarray) -> None:
    t = PhotometricTransform(sigma=1.3, dv=0.2, dr=0.05, dg=0.05, db=0.05)
    assert t.kernel == 2 * 4 + 1  # 2 ceil(3 sigma) + 1
    want = cv2.GaussianBlur(dim_image, (9, 9), 1.3, borderType=cv2.BORDER_REFLECT) * 1.2 + 0.05
    np.testing.assert_allclose(t(dim_image[None])[0], np.clip(want, 0, 1), atol=1e-6)
    assert is_grayscale(t(dim_image[None])[0])  # a gray image stays gray


def test_normalised_coordinates_map_to_the_documented_ranges() -> None:
    g = PhotometricTransform.from_normalised(np.array([1.0, -1.0, 2.0]), grayscale=True)  # 2.0 is clipped to 1
    assert (g.sigma, g.dv, g.dr, g.dg, g.db) == (2.0, -0.5, 0.15, 0.15, 0.15)
    assert PhotometricTransform.from_normalised(np.array([-0.7, 0.0, 0.0]), grayscale=True).sigma == 0.0
    c = PhotometricTransform.from_normalised(np.array([0.5, 1, -1, 0.5, 1, 0, -1]), grayscale=False)
    assert (c.sigma, c.dh, c.ds, c.dv, c.dr, c.dg, c.db) == (1.0, 0.05, -0.5, 0.25, 0.15, 0.0, -0.15)


def test_hue_rotation_and_saturation_on_a_colour_image() -> None:
    red = np.zeros((1, 8, 8, 3), np.float32)
    red[..., 0] = 1.0
    np.testing.assert_allclose(PhotometricTransform(dh=1 / 3)(red)[0, 0, 0], [0.0, 1.0, 0.0], atol=1e-5)
    np.testing.assert_allclose(PhotometricTransform(ds=-1.0)(red)[0, 0, 0], [1.0, 1.0, 1.0], atol=1e-5)  # no colour left
    np.testing.assert_allclose(PhotometricTransform(dr=-0.25, db=0.5)(red)[0, 0, 0], [0.75, 0.0, 0.5], atol=1e-6)


def test_views_are_the_image_then_seeded_rotated_crops(dim_image: np.ndarray) -> None:
    v1 = draw_views(dim_image, 4, np.random.default_rng(3))
    v2 = draw_views(dim_image, 4, np.random.default_rng(3))
    assert v1.shape == (4, 224, 224, 3) and v1.dtype == np.float32
    assert np.array_equal(v1[0], dim_image) and np.array_equal(v1, v2)
    assert all(not np.array_equal(v1[i], dim_image) for i in (1, 2, 3))
    assert all(abs(float(v1[i].mean()) - 0.4) < 0.03 for i in range(4))  # crops of a smooth ramp keep its mean


def test_spsa_finds_the_brightness_the_model_wants(bright_model: Path, dim_image: np.ndarray) -> None:
    """Known answer: P peaks where the mean is 0.5. STTA must get there, and pay exactly S (2T + 2) queries."""
    with OnnxAdapter(bright_model, max_batch=64) as model:
        r = adapt(model, dim_image, label=1, rng=np.random.default_rng(0), iterations=8, views=4)
        assert model.queries == query_cost(4, 8) == 72 and r.queries == 72
        assert model.requests == 1 + 8 + 1  # the identity, one request per iteration (both sides), the last iterate
        adapted = r.transform(dim_image[None])[0]
        p = float(model.predict(adapted[None])[0, 1])
    assert r.p_before == pytest.approx(np.exp(-1.0), abs=1e-3)
    assert r.p_after > 0.95 and p == pytest.approx(r.p_after, abs=1e-6)
    assert abs(float(adapted.mean()) - 0.5) < 0.03
    assert r.loss_after < r.loss_before == r.history[0] and min(r.history) == r.loss_after
    assert r.label == 1 and r.summary()["adapted"] is True


def test_a_flat_loss_keeps_the_identity(bright_model: Path) -> None:
    """Far from the peak P is ~0 everywhere in reach: no direction helps, so the image is left as it is."""
    black = np.zeros((224, 224, 3), np.float32)
    with OnnxAdapter(bright_model) as model:
        r = adapt(model, black, label=1, rng=np.random.default_rng(0), iterations=4, views=2)
    assert r.transform.is_identity() and r.loss_after == r.loss_before


def test_same_seed_same_transform(bright_model: Path, dim_image: np.ndarray) -> None:
    with OnnxAdapter(bright_model) as model:
        a, b = (adapt(model, dim_image, 1, np.random.default_rng(9), 5, 3).transform for _ in range(2))
        c = adapt(model, dim_image, 1, np.random.default_rng(10), 5, 3).transform
    assert a == b and a != c


def test_explainer_adapts_every_query_and_counts_the_cost(bright_model: Path, dim_image: np.ndarray) -> None:
    cfg = ExplainConfig(fill="mean", n_samples=100, stta=True, stta_iterations=6, stta_views=3, stta_probes=0)
    with OnnxAdapter(bright_model) as model:
        ex = Explainer(model, cfg)
        exp = ex.explain(dim_image, target=1, rng=4, keep_samples=True)
        plain = Explainer(model, ExplainConfig(fill="mean", n_samples=100)).explain(dim_image, target=1, rng=4,
                                                                                    keep_samples=True)
    assert exp.queries == 100 + 3 * 14 and cfg.total_queries == 142
    assert exp.adaptation is not None and exp.adaptation["queries"] == 42
    # the unperturbed sample is queried through phi*: its P is STTA's "after", not the raw image's
    assert exp.target_prob == pytest.approx(exp.adaptation["p_label_after"], abs=1e-6)
    assert plain.target_prob == pytest.approx(exp.adaptation["p_label_before"], abs=1e-6)
    assert exp.target_prob > 0.9 > 0.4 > plain.target_prob
    assert np.array_equal(exp.samples["visible"], plain.samples["visible"])  # same design with and without STTA
    assert exp.timings["stta"] > 0 and plain.adaptation is None
    assert exp.summary()["adaptation"]["transform"]["kernel"] >= 1


def test_the_adaptation_does_not_depend_on_the_explanation_seed(linear_model: Path, phantom_image: np.ndarray) -> None:
    cfg = ExplainConfig(fill="zero", n_samples=40, stta=True, stta_iterations=3, stta_views=2)
    with OnnxAdapter(linear_model) as model:
        ex = Explainer(model, cfg)
        a, b = (ex.explain(phantom_image, target=1, rng=s).adaptation for s in (0, 1))
        c = Explainer(model, ExplainConfig(**{**cfg.to_dict(), "mask_ratios": cfg.mask_ratios, "stta_seed": 5})).explain(
            phantom_image, target=1, rng=0).adaptation
    assert a == b and a["adapted"] and c["transform"] != a["transform"]


def test_a_transform_that_makes_the_answer_insensitive_is_dropped(bright_model: Path, dim_image: np.ndarray) -> None:
    """At the brightness model's peak, hiding patches hardly moves P any more (its slope is zero there):
    the check must see the sensitivity collapse, keep the identity and say why, at 2K more queries."""
    cfg = ExplainConfig(fill="mean", n_samples=100, stta=True, stta_iterations=6, stta_views=3, stta_probes=8)
    with OnnxAdapter(bright_model) as model:
        exp = Explainer(model, cfg).explain(dim_image, target=1, rng=4)
    a = exp.adaptation
    assert exp.queries == 100 + 42 + 16 == cfg.total_queries
    assert a["adapted"] is False and a["transform"]["dv"] == 0.0
    assert a["sensitivity_after"] < 0.5 * a["sensitivity_before"]
    assert a["rejected"] == (f"P(class 1) stopped depending on the image under the transform found (sd over 8 probes "
                             f"{a['sensitivity_before']:.3f} -> {a['sensitivity_after']:.3f}); the image was left as it is")
    assert exp.target_prob == pytest.approx(a["p_label_before"], abs=1e-6)


def test_a_transform_that_keeps_the_answer_sensitive_is_kept(linear_model: Path, phantom_image: np.ndarray) -> None:
    """A model linear in the patch means: a gain scales every patch's effect, so the sensitivity grows with
    the adaptation and the check passes."""
    cfg = ExplainConfig(fill="zero", n_samples=60, stta=True, stta_iterations=6, stta_views=3, stta_probes=8)
    with OnnxAdapter(linear_model) as model:
        exp = Explainer(model, cfg).explain(phantom_image, target=1, rng=2)
    a = exp.adaptation
    assert a["adapted"] is True and a["rejected"] == "" and a["p_label_after"] > a["p_label_before"]
    assert a["sensitivity_after"] >= 0.5 * a["sensitivity_before"] > 0
    assert exp.queries == 60 + 3 * 14 + 16


def test_stta_target_defaults_to_the_model_s_answer(linear_model: Path, phantom_image: np.ndarray) -> None:
    with OnnxAdapter(linear_model) as model:
        exp = Explainer(model, ExplainConfig(fill="zero", n_samples=50, stta=True, stta_iterations=2,
                                             stta_views=2)).explain(phantom_image, rng=0)
        p = model.predict(phantom_image[None])[0]
    assert exp.target == exp.adaptation["label"] == int(np.argmax(p))


@pytest.mark.parametrize("kwargs, message", [
    ({"stta_views": 0}, "The 'stta_views' parameter must be an integer >= 1. Got 0 instead."),
    ({"stta_iterations": 1.5}, "The 'stta_iterations' parameter must be an integer >= 1. Got 1.5 instead."),
    ({"stta": "yes"}, "The 'stta' parameter must be True or False. Got 'yes' instead."),
])
def test_bad_stta_options(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.") + "$"):
        ExplainConfig(**kwargs)


def test_a_budget_is_split_between_stta_and_the_samples() -> None:
    assert ExplainConfig.n_samples_for_budget(1000, stta=True) == 928  # 4 (2 * 8 + 2) = 72
    assert ExplainConfig.n_samples_for_budget(1000, stta=True, stta_probes=8) == 912  # + 2 * 8 for the check
    assert ExplainConfig.n_samples_for_budget(250, stta=False) == 250
    assert ExplainConfig(stta=True).stta_queries == 72 and ExplainConfig().stta_queries == 0
    assert ExplainConfig(stta=True, stta_probes=8).stta_queries == 88
    with pytest.raises(ValueError, match=r"^A budget of 80 queries leaves 8 samples after STTA's 72; at least 10"):
        ExplainConfig.n_samples_for_budget(80, stta=True)


def test_stta_queries_count_against_the_hard_budget(linear_model: Path, phantom_image: np.ndarray) -> None:
    from blackbox_lime.adapters.errors import BudgetExhausted

    cfg = ExplainConfig(fill="zero", n_samples=50, stta=True)  # 72 + 50 = 122 images; STTA, then the image, then 49
    with OnnxAdapter(linear_model, budget=121) as model:
        with pytest.raises(BudgetExhausted, match=r"^Query budget exhausted: 73 of 121 queries used, and the next call needs 49\."):
            Explainer(model, cfg).explain(phantom_image, target=1, rng=0)
    with OnnxAdapter(linear_model, budget=122) as model:
        assert Explainer(model, cfg).explain(phantom_image, target=1, rng=0).queries == 122
