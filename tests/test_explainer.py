from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.stats import spearmanr

from blackbox_lime.adapters.onnx import OnnxAdapter
from blackbox_lime import ExplainConfig, Explainer
from blackbox_lime.fill.fillers import Filler
from blackbox_lime.patches import PatchGrid, guided_filter
from graphs import true_attribution


def test_known_answer_linear_classifier_is_recovered(linear_model: Path, linear_weights: np.ndarray,
                                                     phantom_image: np.ndarray) -> None:
    """A classifier exactly linear in the patches: the surrogate must recover its true weights."""
    cfg = ExplainConfig(fill="zero", n_samples=600, lambda1=1e-5, kernel_width=0.5)  # near-unpenalised
    with OnnxAdapter(linear_model) as model:
        exp = Explainer(model, cfg).explain(phantom_image, target=1, rng=0)
    truth = true_attribution(phantom_image, linear_weights)
    got = exp.patch_weights.reshape(-1)
    assert spearmanr(got, truth).statistic >= 0.95
    top = set(np.argsort(-np.abs(truth))[:5])
    assert set(np.argsort(-np.abs(got))[:5]) == top
    assert exp.r2 > 0.999
    assert np.abs(got - truth).max() < 2e-3  # only the small L1/L2 shrinkage remains


def test_default_l1_keeps_the_strong_patches_and_zeroes_the_noise(linear_model: Path, linear_weights: np.ndarray,
                                                                   phantom_image: np.ndarray) -> None:
    """With the default lambda1 the five strong patches survive (with their signs) and the tiny ones are 0."""
    with OnnxAdapter(linear_model) as model:
        exp = Explainer(model, ExplainConfig(fill="zero", n_samples=600)).explain(phantom_image, target=1, rng=0)
    truth = true_attribution(phantom_image, linear_weights)
    got = exp.patch_weights.reshape(-1)
    top = np.argsort(-np.abs(truth))[:5]
    assert np.all(np.sign(got[top]) == np.sign(truth[top]))  # shrunk by the L1 penalty, but kept, with their signs
    assert int(np.argmax(np.abs(got))) == int(top[0])
    rest = np.setdiff1d(np.arange(got.size), top)
    assert np.mean(got[rest] == 0.0) > 0.9


def test_known_answer_exact_without_penalties(linear_model: Path, linear_weights: np.ndarray,
                                              phantom_image: np.ndarray) -> None:
    cfg = ExplainConfig(fill="mean", n_samples=400, lambda1=0.0, lambda2=0.0)
    with OnnxAdapter(linear_model) as model:
        exp = Explainer(model, cfg).explain(phantom_image, target=1, rng=3)
    truth = true_attribution(phantom_image, linear_weights, fill_value=float(phantom_image.mean()))
    assert np.abs(exp.patch_weights.reshape(-1) - truth).max() < 1e-5  # float32 model, float64 fit


def test_same_seed_bit_identical_other_seed_correlated(linear_model: Path, phantom_image: np.ndarray) -> None:
    cfg = ExplainConfig(fill="blur", n_samples=200, lambda1=1e-5)  # the test model's effects are below the default L1
    with OnnxAdapter(linear_model) as model:
        ex = Explainer(model, cfg)
        a, b, c = (ex.explain(phantom_image, rng=s).saliency for s in (7, 7, 8))
    assert a.tobytes() == b.tobytes()
    assert not np.array_equal(a, c)
    assert np.corrcoef(a.ravel(), c.ravel())[0, 1] > 0.8


def test_explanation_contract(linear_model: Path, phantom_image: np.ndarray) -> None:
    image = phantom_image[:200, :180, :1]  # another size, one channel
    with OnnxAdapter(linear_model, max_batch=32) as model:
        exp = Explainer(model, ExplainConfig(fill="mean", n_samples=100)).explain(image, rng=1)
    assert exp.saliency.shape == (200, 180) and exp.saliency.dtype == np.float32
    assert exp.patch_weights.shape == (14, 14) and exp.patch_stderr.shape == (14, 14)
    assert exp.queries == 100 and exp.requests == 5  # 1 + ceil(99 / 32) requests of at most 32 images
    assert exp.target == int(np.argmax(exp.probs)) and exp.target_name in ("normal", "abnormal")
    assert exp.seed == 1 and exp.config["n_samples"] == 100 and exp.neighbours == []
    assert set(exp.timings) >= {"masks", "fill", "classifier", "surrogate", "total"}
    assert "image resized from 180x200 to the model's 224x224" in exp.notes
    assert "grayscale image replicated to the model's 3 channels" in exp.notes


def test_target_override_flips_the_sign(linear_model: Path, phantom_image: np.ndarray) -> None:
    cfg = ExplainConfig(fill="zero", n_samples=150)
    with OnnxAdapter(linear_model) as model:
        ex = Explainer(model, cfg)
        w1 = ex.explain(phantom_image, target=1, rng=0).patch_weights
        w0 = ex.explain(phantom_image, target=0, rng=0).patch_weights
    assert np.allclose(w0, -w1, atol=1e-6)  # p0 = 1 - p1 in this model


def test_saliency_is_smooth_not_blocky(linear_model: Path, phantom_image: np.ndarray) -> None:
    with OnnxAdapter(linear_model) as model:
        plain = Explainer(model, ExplainConfig(fill="zero", n_samples=300, map_sigma=0.0)).explain(phantom_image,
                                                                                                    target=1, rng=0)
        smooth = Explainer(model, ExplainConfig(fill="zero", n_samples=300)).explain(phantom_image, target=1, rng=0)
        guided = Explainer(model, ExplainConfig(fill="zero", n_samples=300, map_guide=0.75)).explain(phantom_image,
                                                                                                     target=1, rng=0)
    s = plain.saliency
    jumps = np.abs(np.diff(s, axis=1))
    # A nearest-neighbour upsampling puts all change on patch borders; a smooth map spreads it.
    border = jumps[:, 15::16].mean()
    inside = np.delete(jumps, np.s_[15::16], axis=1).mean()
    assert border < 3 * inside
    centres = s[8::16, 8::16]
    assert np.corrcoef(centres.ravel(), plain.patch_weights.ravel())[0, 1] > 0.95
    # map_sigma (default one patch) smooths that map with a Gaussian of one patch; the fit is the same
    assert np.array_equal(smooth.patch_weights, plain.patch_weights)
    want = cv2.GaussianBlur(plain.saliency, (0, 0), 16.0, borderType=cv2.BORDER_REFLECT_101)
    assert np.allclose(smooth.saliency, want, atol=1e-7)
    assert not np.allclose(smooth.saliency, plain.saliency, atol=1e-3)
    # map_guide=0.75 (off by default) then passes it through a guided filter of 12 px, the canvas as the guide
    assert np.array_equal(guided.patch_weights, plain.patch_weights)
    grey = phantom_image.mean(axis=2) if phantom_image.ndim == 3 else phantom_image
    assert np.allclose(guided.saliency, guided_filter(grey.astype(np.float32), smooth.saliency, 12, 1e-3), atol=1e-6)


def test_guided_filter_follows_the_guide_edge() -> None:
    # A map that a patch grid blurred across an edge of the image: the guided filter puts its step back on the edge.
    x = np.arange(224, dtype=np.float32)
    guide = np.tile((x >= 100).astype(np.float32), (224, 1))
    blurred = cv2.GaussianBlur(guide, (0, 0), 16.0, borderType=cv2.BORDER_REFLECT_101)
    out = guided_filter(guide, blurred, 12, 1e-3)
    row_in, row_out = blurred[112], out[112]
    assert row_in[100] - row_in[99] < 0.03 and row_out[100] - row_out[99] > 0.25  # the step is back on the edge
    assert np.allclose(out, out[:1], atol=1e-5)  # nothing along the edge that the guide does not have
    assert blurred.min() - 1e-3 < out.min() and out.max() < blurred.max() + 1e-3  # within the map's range
    # linear in the map: scale and sign pass through
    assert np.allclose(guided_filter(guide, -3 * blurred, 12, 1e-3), -3 * out, atol=1e-5)
    # a flat guide: a box filter of the box filter (no edge to follow)
    flat = np.full((224, 224), 0.5, np.float32)
    box = lambda a: cv2.boxFilter(a, -1, (25, 25), borderType=cv2.BORDER_REFLECT_101)  # noqa: E731
    assert np.allclose(guided_filter(flat, blurred, 12, 1e-3), box(box(blurred)), atol=1e-5)
    # the radius is in patches on the canvas; 0 leaves the smoothed map as it was
    grid = PatchGrid(224, 224, 16)
    w = np.random.default_rng(0).normal(size=grid.n_patches)
    assert np.array_equal(grid.upsample(w, (224, 224), 1.0, guide, 0.0), grid.upsample(w, (224, 224), 1.0))
    assert np.allclose(grid.upsample(w, (224, 224), 1.0, guide, 0.75),
                       guided_filter(guide, grid.upsample(w, (224, 224), 1.0), 12, 1e-3), atol=1e-6)


class RecordingFiller(Filler):
    """Records every fill request, to check that no sample's fill sees its own hidden pixels."""

    def __init__(self) -> None:
        self.name, self.notes, self.requests = "recording", [], []

    def fill(self, canvas: np.ndarray, hidden_px: np.ndarray) -> np.ndarray:
        self.requests.append(hidden_px.copy())
        return np.zeros((hidden_px.shape[0],) + canvas.shape, np.float32)


def test_nested_fills_only_condition_on_visible_pixels(linear_model: Path, phantom_image: np.ndarray) -> None:
    filler = RecordingFiller()
    cfg = ExplainConfig(n_samples=61, nested_samples=3, batch_size=8)
    with OnnxAdapter(linear_model) as model:
        ex = Explainer(model, cfg, filler=filler)
        from blackbox_lime.patches import draw_masks

        visible, group = draw_masks(np.random.default_rng(5), 196, 61, cfg.mask_ratios, 3)
        ex.explain(phantom_image, rng=5)
    fills = np.concatenate(filler.requests)  # one per group, in group order
    assert len(fills) == group.max() + 1 == 20
    hidden_px = ex.grid.hidden_pixels(visible)
    for i in range(1, 61):
        # every pixel hidden in sample i is hidden in the fill it uses => the fill never saw it
        assert np.all(fills[group[i]][hidden_px[i]])


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"patch_size": 0}, r"The 'patch_size' parameter must be an integer >= 2\. Got 0 instead\."),
    ({"n_samples": 5}, r"The 'n_samples' parameter must be an integer >= 10 or 'auto'\. Got 5 instead\."),
    ({"mask_ratios": (0.5, 1.0)}, r"The 'mask_ratios' parameter must be a non-empty tuple of floats in the range \(0, 1\)\."),
    ({"fill": "noise"}, r"The 'fill' parameter must be one of auto, mae, mean, blur, zero, telea\. Got 'noise' instead\."),
    ({"fill_candidates": ("mae",)}, r"The 'fill_candidates' parameter must be a tuple of two or more distinct fills "
                                    r"from mae, mean, blur, zero, telea\. Got \('mae',\) instead\."),
    ({"fill_candidates": ("mae", "auto")}, r"The 'fill_candidates' parameter must be a tuple of two or more"),
    ({"pilot_samples": 4}, r"The 'pilot_samples' parameter must be 0 or an integer >= 8\. Got 4 instead\."),
    ({"fill_margin": -0.1}, r"The 'fill_margin' parameter must be a float in the range \[0, inf\)\. Got -0\.1 instead\."),
    ({"n_samples": 30, "pilot_samples": 32}, r"The 'n_samples' parameter must be at least 33 with fill 'auto' \(2 piloted candidates x 8 "
                        r"pilot samples, as many again for the chosen fill, and the image\), or choose a fill\. "
                        r"Got 30 instead\."),
    ({"lambda1": -1}, r"The 'lambda1' parameter must be a float in the range \[0, inf\)\. Got -1 instead\."),
    ({"kernel_width": float("nan")}, r"The 'kernel_width' parameter must be a float in the range \(0, inf\)\."),
])
def test_config_validation_messages(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ExplainConfig(**kwargs)


def test_bad_images_are_refused(linear_model: Path) -> None:
    with OnnxAdapter(linear_model) as model:
        ex = Explainer(model, ExplainConfig(fill="zero", n_samples=20))
        with pytest.raises(ValueError, match=r"The image \(8x10 px\) is smaller than one patch \(16 px\)"):
            ex.explain(np.zeros((10, 8), np.float32))
        bad = np.zeros((32, 32, 3), np.float32)
        bad[0, 0, 0] = np.nan
        with pytest.raises(ValueError, match="The image contains NaN or infinite values"):
            ex.explain(bad)
        with pytest.raises(ValueError, match=r"Got shape \(32, 32, 2\) instead; convert it to grayscale or RGB"):
            ex.explain(np.zeros((32, 32, 2), np.float32))
        with pytest.raises(ValueError, match=r"target must be a class index in \[0, 1\]"):
            ex.explain(np.zeros((32, 32, 3), np.float32), target=5)


def test_mae_fill_for_a_grayscale_model_reports_the_channel_mapping(tmp_path: Path, linear_weights: np.ndarray,
                                                                     phantom_image: np.ndarray) -> None:
    from graphs import linear_patch_model

    gray_model = linear_patch_model(tmp_path / "gray.onnx", linear_weights, 0.3, channels=1)
    with OnnxAdapter(gray_model) as model:
        assert model.info.channels == 1
        exp = Explainer(model, ExplainConfig(fill="mae", n_samples=30)).explain(phantom_image, target=1, rng=0)
    assert "colour image converted to grayscale (luma) for a 1-channel model" in exp.notes
    assert "grayscale image replicated to the MAE's 3 channels" in exp.notes
    assert exp.config["fill_model"]["path"] == "mae_recon.onnx"


@pytest.mark.parametrize("height, width, patch, channels", [(224, 224, 16, 3), (50, 37, 8, 1), (64, 64, 16, 3)])
def test_composite_equals_a_per_pixel_where(height: int, width: int, patch: int, channels: int) -> None:
    from blackbox_lime.patches import PatchGrid

    rng = np.random.default_rng(3)
    grid = PatchGrid(height, width, patch)
    n = 20  # >= 16: the two-thread path
    visible = rng.random((n, grid.n_patches)) < 0.5
    canvas = rng.random((height, width, channels), dtype=np.float32)
    fills = rng.random((4, height, width, channels), dtype=np.float32)
    which = rng.integers(0, 4, n)
    expected = np.where(grid.hidden_pixels(visible)[..., None], fills[which], canvas[None])
    got = grid.composite(visible, canvas, fills, which, out=np.full((n, height, width, channels), -1, np.float32))
    np.testing.assert_array_equal(got, expected)
    one_fill = np.where(grid.hidden_pixels(visible[:3])[..., None], fills[0], canvas[None])  # which=None, one thread
    np.testing.assert_array_equal(grid.composite(visible[:3], canvas, fills[:1], None), one_fill)


def test_response_scaled_lambda1_makes_the_map_invariant_to_how_far_the_answer_moves(
        tmp_path: Path, linear_weights: np.ndarray, phantom_image: np.ndarray) -> None:
    from graphs import linear_patch_model

    # probs * 0.1 + 0.45: the same model, but its answer moves ten times less (still sums to 1).
    small = linear_patch_model(tmp_path / "small.onnx", linear_weights, 0.3, scale=0.1, offset=0.45)
    full = linear_patch_model(tmp_path / "full.onnx", linear_weights, 0.3)
    maps = {}
    for scale in ("response", "absolute"):
        cfg = ExplainConfig(fill="zero", n_samples=300, lambda1=0.05 if scale == "response" else 3e-3,
                            lambda1_scale=scale)
        for name, path in (("full", full), ("small", small)):
            with OnnxAdapter(path) as m:
                maps[scale, name] = Explainer(m, cfg).explain(phantom_image, target=1, rng=0)
    big, little = maps["response", "full"], maps["response", "small"]
    assert little.response_sd == pytest.approx(0.1 * big.response_sd, rel=1e-4)
    assert little.lambda1_effective == pytest.approx(0.1 * big.lambda1_effective, rel=1e-4)
    np.testing.assert_array_equal(little.patch_weights != 0, big.patch_weights != 0)
    np.testing.assert_allclose(little.patch_weights, 0.1 * big.patch_weights, atol=1e-6 * np.abs(big.patch_weights).max())
    assert 3 <= np.count_nonzero(big.patch_weights) < 100
    # An absolute lambda1 keeps fewer patches when the answer moves less.
    assert np.count_nonzero(maps["absolute", "small"].patch_weights) < np.count_nonzero(maps["absolute", "full"].patch_weights)


def test_weak_maps_carry_warnings(tmp_path: Path, linear_weights: np.ndarray, phantom_image: np.ndarray) -> None:
    from graphs import linear_patch_model

    flat = linear_patch_model(tmp_path / "flat.onnx", linear_weights * 1e-3, 0.3)
    with OnnxAdapter(flat) as m:
        exp = Explainer(m, ExplainConfig(fill="zero", n_samples=100)).explain(phantom_image, target=1, rng=0)
        assert exp.response_sd < 1e-3
        assert exp.warnings[0].startswith("P(abnormal) hardly moved under masking (kernel-weighted sd 0.000")
        assert exp.summary()["warnings"] == exp.warnings
        heavy = dict(fill="zero", n_samples=100, lambda1=1.0, lambda1_scale="absolute")
        exp = Explainer(m, ExplainConfig(**heavy, lambda1_cap=1.0)).explain(phantom_image, target=1, rng=0)
        assert not exp.patch_weights.any() and not exp.lambda1_capped
        assert exp.warnings[-1] == ("No patch's evidence survived the L1 penalty (effective lambda1 1), so the map is "
                                    "empty. Lower `lambda1`, or `lambda1_cap` below 1.")
        # The default cap keeps the strongest patches instead of returning an empty map.
        exp = Explainer(m, ExplainConfig(**heavy)).explain(phantom_image, target=1, rng=0)
        assert exp.lambda1_capped and exp.summary()["lambda1_capped"] is True and exp.lambda1_effective < 1e-3
        assert exp.patch_weights.any() and not any(w.startswith("No patch") for w in exp.warnings)
    with pytest.raises(ValueError, match=r"The 'lambda1_scale' parameter must be one of response, absolute\. "
                                         r"Got 'relative' instead\."):
        ExplainConfig(lambda1_scale="relative")
    for bad in (0, 1.5):
        with pytest.raises(ValueError, match=rf"The 'lambda1_cap' parameter must be a float in the range \(0, 1\]\. "
                                             rf"Got {bad} instead\."):
            ExplainConfig(lambda1_cap=bad)


class _RecordingFiller(Filler):
    """A mask-dependent fill that records which thread made each chunk's fills, and when."""

    name = "recording"

    def __init__(self) -> None:
        import threading

        self.threads: list[str] = []
        self._threading = threading

    def depends_on_mask(self) -> bool:
        return True

    def fill(self, image: np.ndarray, hidden: np.ndarray) -> np.ndarray:
        self.threads.append(self._threading.current_thread().name)
        return np.repeat(image[None] * 0.5, len(hidden), axis=0)  # depends on nothing but the image: deterministic


def test_overlapped_fills_give_the_serial_maps_bit_for_bit(linear_model: Path, phantom_image: np.ndarray) -> None:
    """With overlap the chunks' fills run on the worker thread while the previous chunk is queried; the
    design, the answers and the map are those of the serial run, and every sample is queried once."""
    cfg = ExplainConfig(n_samples=240, batch_size=8, nested_samples=3)  # 10 chunks of 8 groups of 3
    maps = {}
    for overlap in (True, False):
        filler = _RecordingFiller()
        with OnnxAdapter(linear_model) as model:
            exp = Explainer(model, cfg, filler=filler, overlap=overlap).explain(phantom_image, rng=5, keep_samples=True)
        maps[overlap] = exp
        assert exp.queries == 240 and model.queries == 240
        threads = set(filler.threads)
        assert len(filler.threads) == 10
        assert all(t.startswith("blackbox-lime-fill") for t in threads) if overlap else threads == {"MainThread"}
    assert np.array_equal(maps[True].saliency, maps[False].saliency)
    assert np.array_equal(maps[True].samples["probs"], maps[False].samples["probs"])


def test_with_overlap_the_image_s_own_answer_is_asked_while_the_first_chunk_is_filled(
        linear_model: Path, phantom_image: np.ndarray) -> None:
    """The answer for the whole image (row 0) is the first query either way, on the caller's thread; with overlap
    the first chunk's fills have started on the worker when it is asked, so a remote latency hides behind them."""
    import threading

    for overlap in (True, False):
        started = threading.Event()
        asked: list[tuple[str, int, bool]] = []

        class Signalling(_RecordingFiller):
            def fill(self, image: np.ndarray, hidden: np.ndarray) -> np.ndarray:
                started.set()
                return super().fill(image, hidden)

        class Watching(OnnxAdapter):
            def predict(self, images: np.ndarray) -> np.ndarray:
                filling = started.wait(5.0) if overlap and not asked else started.is_set()
                asked.append((threading.current_thread().name, len(images), filling))
                return super().predict(images)

        with Watching(linear_model) as model:
            exp = Explainer(model, ExplainConfig(n_samples=48, batch_size=8), filler=Signalling(),  # 2 chunks of 8 x 3
                            overlap=overlap).explain(phantom_image, rng=5)
        assert asked[0] == ("MainThread", 1, overlap)  # with overlap: asked while chunk 0 is being filled
        assert [a[1] for a in asked[1:]] == [24, 23] and {a[0] for a in asked} == {"MainThread"}
        assert exp.queries == 48 and exp.timings["classifier"] > 0


def test_an_error_in_a_chunk_s_fill_reaches_the_caller(linear_model: Path, phantom_image: np.ndarray) -> None:
    class Broken(_RecordingFiller):
        def fill(self, image: np.ndarray, hidden: np.ndarray) -> np.ndarray:
            if len(self.threads) == 3:
                raise RuntimeError("fill broke on chunk 4")
            return super().fill(image, hidden)

    with OnnxAdapter(linear_model) as model:
        with pytest.raises(RuntimeError, match="fill broke on chunk 4"):
            Explainer(model, ExplainConfig(n_samples=240, batch_size=8), filler=Broken()).explain(phantom_image, rng=0)
        assert model.queries == 1 + 3 * 24  # the answer, then the three chunks made before the failure
