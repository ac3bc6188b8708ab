"""The sparse local surrogate, solved with scipy.

    min_{w, b}  sum_i p_i (y_i - b - w.m_i)^2 + lambda1 ||w||_1 + lambda2 ||w - w_ref||^2,   p_i = pi_i / sum(pi)

The intercept is unpenalised, so it is eliminated by weighted centring. What remains is a
bound-constrained smooth problem in (u, v) with w = u - v, u, v >= 0, solved by L-BFGS-B on the
Gram matrix (cheap: the design enters only through a P x P matrix). The solution is then polished
on its active set by solving the KKT equations exactly, which makes it accurate to rounding error
whenever the active set is right (checked by the KKT conditions; otherwise L-BFGS-B's answer stays).
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from typing import Callable

import numpy as np
from scipy import linalg, optimize
from threadpoolctl import ThreadpoolController

# Below this many patches the solver's matrices are small (P x P), and a second BLAS thread only adds
# wake-up latency: on 2 cores a 196-patch fit took 40-160 ms with two OpenBLAS threads and a steady
# 16-19 ms with one.
SINGLE_THREAD_MAX_PATCHES = 1024


@functools.lru_cache(maxsize=1)
def _controller() -> ThreadpoolController:
    return ThreadpoolController()  # inspects the loaded BLAS libraries once


def _blas_threads_for(p: int) -> contextlib.AbstractContextManager:
    if p > SINGLE_THREAD_MAX_PATCHES:
        return contextlib.nullcontext()
    return _controller().limit(limits=1, user_api="blas")


def proximity_kernel(visible: np.ndarray, kernel_width: float) -> np.ndarray:
    """pi(m) = exp(-D(m, 1)^2 / sigma^2) per sample, D = the fraction of hidden patches; visible: (n, P)."""
    hidden_frac = 1.0 - np.asarray(visible).mean(axis=1)
    return np.exp(-(hidden_frac ** 2) / kernel_width ** 2)


class ConvergenceWarning(UserWarning):
    """The surrogate solver stopped before meeting its tolerance."""


class SparseSurrogate:
    """Weighted least squares with an intercept, L1 and a pull towards a reference map.

    Parameters
    ----------
    lambda1 : float, L1 weight (>= 0).
    lambda1_scale : "absolute" (``lambda1`` as is) or "response" (``lambda1`` times the weighted
        standard deviation of ``y``, so the kept patches do not depend on the scale of the response).
    lambda1_cap : float in (0, 1] or None. The L1 weight used is at most this fraction of
        ``lambda1_max_``, the smallest L1 weight at which every coefficient is zero, so at least the
        strongest patch survives and the map is never empty by accident. None (or 1.0): no cap.
    lambda2 : float, weight of ||w - reference||^2 (>= 0).
    reference : (P,) array or None (zeros).
    reference_scale : "fixed" (``reference`` as is) or "fit": the reference is first multiplied by
        alpha = max(0, argmin_a sum_i p_i (y_i - b - a reference.m_i)^2), the least-squares scale of its
        shape on these samples. A prior map in other units (an evidence map scaled to max 1) is then
        pulled towards in the answer's units, and a prior the samples contradict pulls towards zero.
    max_iter : L-BFGS-B iteration limit.
    tol : KKT tolerance relative to the scale of the problem.

    Attributes (after ``fit``)
    --------------------------
    coef_ : (P,) float64, intercept_ : float, n_iter_ : int, r2_ : weighted R^2 (local fidelity),
    response_sd_ : weighted standard deviation of ``y``, lambda1_effective_ : the L1 weight used,
    lambda1_max_ : the smallest L1 weight that zeroes every coefficient, lambda1_capped_ : whether
    ``lambda1_cap`` lowered the L1 weight, reference_scale_ : the alpha the reference was multiplied by,
    stderr_ : (P,) heteroscedasticity-robust (HC0 sandwich) standard errors of ``coef_``,
    converged_ : bool.
    """

    def __init__(self, lambda1: float = 1e-4, lambda2: float = 0.0, reference: np.ndarray | None = None,
                 max_iter: int = 5000, tol: float = 1e-9, lambda1_scale: str = "absolute",
                 lambda1_cap: float | None = None, reference_scale: str = "fixed") -> None:
        self.lambda1 = lambda1
        self.reference_scale = reference_scale
        self.lambda1_scale = lambda1_scale
        self.lambda1_cap = lambda1_cap
        self.lambda2 = lambda2
        self.reference = reference
        self.max_iter = max_iter
        self.tol = tol

    def fit(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> "SparseSurrogate":
        with _blas_threads_for(np.shape(X)[-1] if np.ndim(X) == 2 else 0):
            return self._fit(X, y, sample_weight)

    def _fit(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None) -> "SparseSurrogate":
        X = np.asarray(X, np.float64)
        y = np.asarray(y, np.float64)
        if X.ndim != 2 or y.ndim != 1 or X.shape[0] != y.shape[0]:
            raise ValueError(f"fit expects X of shape (n, p) and y of shape (n,). Got {X.shape} and {y.shape} instead.")
        if not (np.all(np.isfinite(X)) and np.all(np.isfinite(y))):
            raise ValueError("fit got NaN or infinite values in X or y.")
        n, p = X.shape
        sw = np.ones(n) if sample_weight is None else np.asarray(sample_weight, np.float64)
        if sw.shape != (n,) or np.any(sw < 0) or not np.isfinite(sw).all() or sw.sum() <= 0:
            raise ValueError("sample_weight must be n finite, non-negative values with a positive sum.")
        if self.lambda1 < 0 or self.lambda2 < 0:
            raise ValueError(f"lambda1 and lambda2 must be >= 0. Got {self.lambda1!r} and {self.lambda2!r} instead.")
        if self.lambda1_scale not in ("absolute", "response"):
            raise ValueError(f"lambda1_scale must be 'absolute' or 'response'. Got {self.lambda1_scale!r} instead.")
        if self.lambda1_cap is not None and not 0.0 < self.lambda1_cap <= 1.0:
            raise ValueError(f"lambda1_cap must be in the range (0, 1] or None. Got {self.lambda1_cap!r} instead.")
        if self.reference_scale not in ("fixed", "fit"):
            raise ValueError(f"reference_scale must be 'fixed' or 'fit'. Got {self.reference_scale!r} instead.")
        ref = np.zeros(p) if self.reference is None else np.asarray(self.reference, np.float64).reshape(-1)
        if ref.shape != (p,):
            raise ValueError(f"reference must have {p} entries, one per patch. Got {ref.shape} instead.")
        if not np.all(np.isfinite(ref)):
            raise ValueError("reference holds NaN or infinite values.")

        wn = sw / sw.sum()
        xm, ym = wn @ X, wn @ y
        Xc, yc = X - xm, y - ym
        G = Xc.T @ (wn[:, None] * Xc)  # (P, P)
        c = Xc.T @ (wn * yc)  # (P,)
        self.response_sd_ = float(np.sqrt(wn @ yc ** 2))
        self.reference_scale_ = 1.0
        if self.reference_scale == "fit":
            curvature = float(ref @ G @ ref)
            self.reference_scale_ = max(0.0, float(ref @ c) / curvature) if curvature > 0 else 0.0
            ref = self.reference_scale_ * ref
        l1 = float(self.lambda1) * (self.response_sd_ if self.lambda1_scale == "response" else 1.0)
        l2 = float(self.lambda2)
        A = G + l2 * np.eye(p)
        rhs = c + l2 * ref
        # The objective is w'Aw - 2 rhs'w + l1 |w|_1: w = 0 is optimal iff l1 >= 2 max|rhs|.
        self.lambda1_max_ = 2.0 * float(np.abs(rhs).max())
        cap = np.inf if self.lambda1_cap is None or self.lambda1_cap >= 1.0 else self.lambda1_cap * self.lambda1_max_
        self.lambda1_capped_ = bool(l1 > cap)
        l1 = min(l1, cap)
        self.lambda1_effective_ = l1

        if l1 == 0.0:
            w = linalg.lstsq(A, rhs)[0] if l2 == 0.0 else linalg.solve(A, rhs, assume_a="sym")
            self.n_iter_, self.converged_ = 0, True
        else:
            scale = max(1e-12, float(np.abs(rhs).max()), l1)

            def fun(z: np.ndarray) -> tuple[float, np.ndarray]:
                w_ = z[:p] - z[p:]
                Aw = A @ w_
                f = w_ @ Aw - 2.0 * rhs @ w_ + l1 * z.sum()
                g = 2.0 * (Aw - rhs)
                return f / scale, np.concatenate([g + l1, -g + l1]) / scale

            # Warm start from the smooth (lambda1 = 0) solution: close when lambda1 is small.
            w0 = linalg.lstsq(A, rhs)[0]
            z0 = np.concatenate([np.maximum(w0, 0.0), np.maximum(-w0, 0.0)])
            res = optimize.minimize(fun, z0, jac=True, method="L-BFGS-B",
                                    bounds=[(0.0, None)] * (2 * p),
                                    options={"maxiter": self.max_iter, "ftol": 1e-15, "gtol": 1e-12})
            w = res.x[:p] - res.x[p:]
            self.n_iter_ = int(res.nit)
            w, polished = self._polish(w, A, rhs, l1)
            self.converged_ = bool(polished or res.success)
            if not self.converged_:
                warnings.warn(f"The surrogate solver did not converge in {self.max_iter} iterations ({res.message}); "
                              "raise max_iter or lambda1.", ConvergenceWarning, stacklevel=3)

        self.coef_ = w
        self.intercept_ = float(ym - xm @ w)
        pred = X @ w + self.intercept_
        resid = y - pred
        ss_res = float(wn @ resid ** 2)
        ss_tot = float(wn @ (y - ym) ** 2)
        self.r2_ = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
        meat = Xc.T @ ((wn ** 2 * resid ** 2)[:, None] * Xc)
        try:
            A_inv = linalg.cho_solve(linalg.cho_factor(A), np.eye(p))
        except linalg.LinAlgError:  # singular without ridge: fall back to the pseudo-inverse
            A_inv = linalg.pinvh(A)
        self.stderr_ = np.sqrt(np.clip(((A_inv @ meat) * A_inv).sum(axis=1), 0.0, None))  # diag(A^-1 M A^-1), A symmetric
        return self

    def _polish(self, w: np.ndarray, A: np.ndarray, rhs: np.ndarray, l1: float) -> tuple[np.ndarray, bool]:
        """Solve the KKT system on the active set; keep it only if the KKT conditions hold."""
        thresh = 1e-7 * max(1e-12, float(np.abs(w).max(initial=0.0)))
        active = np.abs(w) > thresh
        if not active.any():
            grad = 2.0 * (-rhs)
            ok = bool(np.all(np.abs(grad) <= l1 * (1 + 1e-6) + self.tol))
            return np.zeros_like(w), ok
        s = np.sign(w[active])
        AA = A[np.ix_(active, active)]
        try:
            wa = linalg.solve(AA, rhs[active] - 0.5 * l1 * s, assume_a="sym")
        except linalg.LinAlgError:
            return w, False
        cand = np.zeros_like(w)
        cand[active] = wa
        if np.any(np.sign(wa) != s):
            return w, False
        grad = 2.0 * (A @ cand - rhs)
        inactive = ~active
        if np.any(np.abs(grad[inactive]) > l1 * (1 + 1e-6) + self.tol * max(1.0, float(np.abs(rhs).max()))):
            return w, False
        return cand, True

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(X, np.float64) @ self.coef_ + self.intercept_


def censored_fit(make: Callable[[], SparseSurrogate], X: np.ndarray, y: np.ndarray, upper: np.ndarray,
                 sample_weight: np.ndarray, max_rounds: int = 30, tol: float = 1e-6
                 ) -> tuple[SparseSurrogate, np.ndarray, int]:
    """The surrogate where some answers are known only as bounds: an endpoint that lists its top k labels, or
    those above a threshold, leaves the explained label's score out of some answers, and that score is then only
    known to lie in [0, ``upper``] (``upper`` finite there, +inf where the score was measured).

    The fit minimises the kernel-weighted squared error on measured answers plus, on censored ones, the squared
    distance of the prediction from [0, upper] (zero inside it: a one-sided, Tobit-like loss without a noise model),
    with the same L1 and prior terms. It does so by majorisation: each round sets every censored answer to its
    prediction projected onto [0, upper] and refits, which can only lower that objective; it stops when no censored
    value moves by more than ``tol`` (or after ``max_rounds``). A missing score is therefore never read as 0, nor as
    the bound: it takes the value the measured answers predict, within what the endpoint's answer allows.

    ``y`` holds a starting value for every censored answer (:meth:`Censoring.impute
    <blackbox_lime.adapters.censoring.Censoring.impute>`). Returns the model, the completed answers and the rounds
    run (0: nothing censored).
    """
    censored = np.isfinite(upper)
    y = np.clip(np.asarray(y, np.float64).copy(), 0.0, np.where(censored, upper, np.inf))
    model = make().fit(X, y, sample_weight)
    if not censored.any():
        return model, y, 0
    rounds = 0
    for rounds in range(1, max_rounds + 1):
        new = np.clip(model.predict(X[censored]), 0.0, upper[censored])
        moved = float(np.max(np.abs(new - y[censored])))
        y[censored] = new
        if moved <= tol:
            break
        model = make().fit(X, y, sample_weight)
    return model, y, rounds
