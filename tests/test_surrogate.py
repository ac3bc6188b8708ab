from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.linalg import hadamard

from blackbox_lime.surrogate import ConvergenceWarning, SparseSurrogate


def orthogonal_design(p: int = 15) -> np.ndarray:
    """0/1 design whose centred columns are orthogonal (rows of a Hadamard matrix)."""
    h = hadamard(p + 1)[:, 1:]
    return (h + 1) / 2.0  # (p+1, p), each column half ones


def soft_threshold(z: np.ndarray, t: float) -> np.ndarray:
    return np.sign(z) * np.maximum(np.abs(z) - t, 0.0)


@pytest.mark.parametrize(("lambda1", "lambda2"), [(0.1, 0.0), (0.2, 0.0), (0.15, 0.3)])
def test_orthogonal_design_matches_closed_form_soft_threshold(lambda1: float, lambda2: float) -> None:
    rng = np.random.default_rng(0)
    X = orthogonal_design()
    y = rng.normal(size=X.shape[0])
    ref = rng.normal(size=X.shape[1]) * 0.1
    model = SparseSurrogate(lambda1, lambda2, reference=ref).fit(X, y)
    Xc = X - X.mean(0)
    g = (Xc ** 2).mean(0)  # 1/4 for every column
    c = Xc.T @ (y - y.mean()) / len(y)
    expected = soft_threshold(c + lambda2 * ref, lambda1 / 2) / (g + lambda2)
    assert np.abs(model.coef_ - expected).max() < 1e-6
    assert abs(model.intercept_ - (y.mean() - X.mean(0) @ expected)) < 1e-6
    assert (expected == 0).any() and np.all(model.coef_[expected == 0] == 0)  # exact zeros survive


def test_no_penalty_equals_weighted_least_squares() -> None:
    rng = np.random.default_rng(1)
    X = rng.integers(0, 2, size=(200, 12)).astype(float)
    y = X @ rng.normal(size=12) + 0.3 + rng.normal(scale=0.05, size=200)
    w = rng.uniform(0.1, 1.0, 200)
    model = SparseSurrogate(0.0, 0.0).fit(X, y, w)
    A = np.hstack([X, np.ones((200, 1))])
    sol = np.linalg.lstsq(A * np.sqrt(w)[:, None], y * np.sqrt(w), rcond=None)[0]
    assert np.allclose(model.coef_, sol[:-1], atol=1e-9) and abs(model.intercept_ - sol[-1]) < 1e-9


def test_estimator_contract_and_fidelity() -> None:
    rng = np.random.default_rng(2)
    X = rng.integers(0, 2, size=(300, 20)).astype(float)
    true = np.zeros(20)
    true[[3, 7]] = [0.5, -0.4]
    y = X @ true + 0.1
    est = SparseSurrogate(1e-4, 0.0)
    assert est.fit(X, y) is est
    assert est.n_iter_ > 0 and est.converged_
    assert est.r2_ > 0.999
    assert np.abs(est.coef_ - true).max() < 1e-3
    assert est.stderr_.shape == (20,) and np.all(est.stderr_ >= 0)


def test_stderr_grows_with_noise() -> None:
    rng = np.random.default_rng(3)
    X = rng.integers(0, 2, size=(400, 10)).astype(float)
    base = X @ rng.normal(size=10)
    quiet = SparseSurrogate(0, 0).fit(X, base + rng.normal(scale=0.01, size=400)).stderr_
    loud = SparseSurrogate(0, 0).fit(X, base + rng.normal(scale=0.5, size=400)).stderr_
    assert np.all(loud > 10 * quiet)


def test_warns_when_not_converged() -> None:
    rng = np.random.default_rng(4)
    X = rng.integers(0, 2, size=(100, 60)).astype(float)
    y = rng.normal(size=100)
    with pytest.warns(ConvergenceWarning, match="did not converge in 1 iterations"):
        SparseSurrogate(5e-2, 0.0, max_iter=1).fit(X, y)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"X": np.ones((3, 2)), "y": np.ones(4)}, r"fit expects X of shape \(n, p\) and y of shape \(n,\)\. Got \(3, 2\) and \(4,\) instead\."),
    ({"X": np.array([[np.nan, 1.0]]), "y": np.ones(1)}, r"fit got NaN or infinite values in X or y\."),
    ({"X": np.ones((2, 2)), "y": np.ones(2), "sample_weight": np.array([-1.0, 1.0])},
     r"sample_weight must be n finite, non-negative values with a positive sum\."),
])
def test_bad_input_messages(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SparseSurrogate().fit(**kwargs)


def test_reference_pulls_coefficients() -> None:
    rng = np.random.default_rng(5)
    X = rng.integers(0, 2, size=(30, 8)).astype(float)
    y = rng.normal(scale=0.01, size=30)
    ref = np.full(8, 0.7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        w = SparseSurrogate(0.0, 10.0, reference=ref).fit(X, y).coef_
    assert np.allclose(w, ref, atol=0.05)


def test_response_scale_multiplies_lambda1_by_the_weighted_sd_of_y() -> None:
    rng = np.random.default_rng(5)
    X = (rng.random((300, 12)) < 0.5).astype(float)
    y = X @ rng.normal(0, 0.1, 12) + rng.normal(0, 0.01, 300)
    sw = rng.uniform(0.2, 1.0, 300)
    rel = SparseSurrogate(0.05, 0.0, lambda1_scale="response").fit(X, y, sw)
    wn = sw / sw.sum()
    sd = float(np.sqrt(wn @ (y - wn @ y) ** 2))
    assert rel.response_sd_ == pytest.approx(sd, rel=1e-12) and rel.lambda1_effective_ == pytest.approx(0.05 * sd)
    np.testing.assert_allclose(rel.coef_, SparseSurrogate(0.05 * sd, 0.0).fit(X, y, sw).coef_, atol=1e-9)
    with pytest.raises(ValueError, match="lambda1_scale must be 'absolute' or 'response'. Got 'x' instead."):
        SparseSurrogate(0.05, lambda1_scale="x").fit(X, y)


def test_lambda1_max_is_the_smallest_weight_that_zeroes_every_patch_and_the_cap_keeps_a_patch() -> None:
    rng = np.random.default_rng(6)
    X = (rng.random((400, 20)) < 0.5).astype(float)
    y = X @ rng.normal(0, 0.05, 20) + rng.normal(0, 0.01, 400)
    sw = rng.uniform(0.2, 1.0, 400)
    lam_max = SparseSurrogate(0.0, 0.0).fit(X, y, sw).lambda1_max_
    assert not SparseSurrogate(lam_max * (1 + 1e-6), 0.0).fit(X, y, sw).coef_.any()
    assert np.count_nonzero(SparseSurrogate(lam_max * (1 - 1e-3), 0.0).fit(X, y, sw).coef_) == 1
    capped = SparseSurrogate(10 * lam_max, 0.0, lambda1_cap=0.5).fit(X, y, sw)
    assert capped.lambda1_capped_ and capped.lambda1_effective_ == pytest.approx(0.5 * lam_max, rel=1e-12)
    np.testing.assert_allclose(capped.coef_, SparseSurrogate(0.5 * lam_max, 0.0).fit(X, y, sw).coef_, atol=1e-12)
    assert capped.coef_.any()
    # Below the cap the weight is used as is; a cap of 1 is no cap.
    small = SparseSurrogate(0.1 * lam_max, 0.0, lambda1_cap=0.5).fit(X, y, sw)
    assert not small.lambda1_capped_ and small.lambda1_effective_ == pytest.approx(0.1 * lam_max, rel=1e-12)
    assert not SparseSurrogate(10 * lam_max, 0.0, lambda1_cap=1.0).fit(X, y, sw).coef_.any()
    with pytest.raises(ValueError, match=r"lambda1_cap must be in the range \(0, 1\] or None. Got 0 instead."):
        SparseSurrogate(0.1, lambda1_cap=0).fit(X, y)
