"""Robust fill: choose how hidden patches are filled so that the map holds up on the site's own domain.

GM's MAE keeps perturbed images on the data manifold only where the MAE fits the site's images. On a
domain it has not seen it can paint content the classifier reads as evidence (grey fills on a colour
image), so hiding a lesion no longer removes it and the map is noise; a classic fill is then the
better choice. ``fill="auto"`` (the default) decides per image, without labels (docs/robust_fill.md):

1. **Reconstruction check, no queries** (:func:`recon_psnr`): the MAE and a blur fill the hidden
   pixels of a fixed set of half-masks of the image itself. The MAE is used when its PSNR is within
   ``recon_margin_db`` of the blur's.
2. **Otherwise a pilot between the classic fills** (mean, blur): masks over coarse blocks
   (:func:`coarse_design`), each fill scored by the held-out R^2 of the evidence fit
   (:func:`evidence_r2`, every patch weight >= 0) and the first kept unless another beats it by
   ``fill_margin`` (:func:`decide`). The chosen fill's pilot samples are valid samples of the final
   design and are reused; only the other fill's pilot queries are spent on the choice.

The signed surrogate's own held-out R^2 (:func:`heldout_r2`) was the first criterion; on the colour
family it rewarded the MAE's grey fills, whose answers a linear model fits well while the maps miss
the lesion, and it is kept as a reported number and for the val comparison of scorers.

A site that wants every map of a study made with the same fill fixes it once with
``blackbox-lime calibrate`` (:func:`summarise_choices`), and ``explain --calibration`` then skips the choice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import optimize

from blackbox_lime.fill.registry import is_generative
from blackbox_lime.patches import PatchGrid, draw_masks
from blackbox_lime.surrogate import SparseSurrogate, proximity_kernel

# Folds of the held-out R^2. Interleaved by row, so the score is a function of the design alone.
CV_FOLDS = 4
# Ridge of the evidence fit (non-negative patch weights): chosen on val with the pilot rule.
EVIDENCE_RIDGE = 0.05
# Below this spread of the answer over a candidate's pilot samples the fill is not scored: the
# answer did not move when patches were hidden (a fill that recreates the evidence it hides).
FLAT_RESPONSE_SD = 0.01


@dataclass(frozen=True)
class FillChoice:
    """What ``fill="auto"`` chose and why.

    Attributes
    ----------
    chosen : the fill used for the explanation.
    scores : the evidence fit's held-out R^2 per piloted candidate; None where the answer did not move;
        empty when no pilot ran (the MAE passed the reconstruction check).
    response_sd : kernel-weighted spread of P(target) per piloted candidate.
    pilot_samples : pilot samples per piloted candidate (0 when none ran).
    queries_spent : pilot queries not reused by the explanation (the other candidates').
    seconds : wall time of the check, the pilot and the scoring; the pilot's fill and classifier time is
        also counted in those stages of the explanation's timings.
    preferred, margin : the pilot's rule: ``preferred`` unless another candidate's score exceeds its by ``margin``.
    reason : the decision in words.
    recon_psnr, recon_margin_db : the reconstruction check (PSNR in dB of the MAE and the blur) and its margin.
    gate : "passed" or "failed" (the MAE's reconstruction check), None without an MAE candidate. When it
        passed, a pilot (if any) was the MAE against its challenger (``ExplainConfig.mae_challenger``).
    """

    chosen: str
    scores: dict[str, float | None]
    response_sd: dict[str, float]
    pilot_samples: int
    queries_spent: int
    seconds: float
    preferred: str
    margin: float
    reason: str = ""
    recon_psnr: dict[str, float] = field(default_factory=dict)
    recon_margin_db: float = float("nan")
    gate: str | None = None

    def summary(self) -> dict[str, Any]:
        return {"mode": "auto", "chosen": self.chosen,
                "recon_psnr_db": {k: round(v, 2) for k, v in self.recon_psnr.items()},
                "scores": {k: None if v is None else round(v, 4) for k, v in self.scores.items()},
                "response_sd": {k: round(v, 5) for k, v in self.response_sd.items()},
                "pilot_samples_per_fill": self.pilot_samples, "queries_spent_on_choice": self.queries_spent,
                "seconds": round(self.seconds, 4),
                "rule": {"recon_margin_db": self.recon_margin_db, "preferred": self.preferred, "margin": self.margin},
                "gate": self.gate, "reason": self.reason}


# The reconstruction check: masks over half the patches, drawn from a fixed seed so that the check (and with it
# the fill) depends on the image alone, never on the explanation's seed.
RECON_MASKS = 8
RECON_SEED = 0


def recon_psnr(canvas: np.ndarray, fillers: dict[str, Any], grid: PatchGrid, n_masks: int = RECON_MASKS
               ) -> dict[str, float]:
    """How well each filler predicts the image's own hidden pixels: PSNR (dB) on the hidden pixels of
    ``n_masks`` masks hiding half of the patches (a fixed draw). No query is sent."""
    visible, _ = draw_masks(np.random.default_rng(RECON_SEED), grid.n_patches, n_masks + 1, (0.5,), 1)
    hidden = grid.hidden_pixels(visible[1:])
    out = {}
    for name, filler in fillers.items():
        fills = filler.fill(canvas, hidden if filler.depends_on_mask() else hidden[:1])
        err = (fills - canvas[None]) ** 2  # (G, H, W, C); a static fill broadcasts
        err = np.broadcast_to(err, (len(hidden),) + canvas.shape)
        mse = float(err[hidden].mean())
        out[name] = 10.0 * math.log10(1.0 / max(mse, 1e-12))
    return out


def coarse_design(rng: np.random.Generator, grid: PatchGrid, n: int, ratios: tuple[float, ...],
                  block: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` pilot masks over blocks of ``block`` x ``block`` patches.

    Returns (coarse visible bool (n, B), fine visible bool (n, P)): a hidden block hides all its patches.
    """
    rows, cols = math.ceil(grid.rows / block), math.ceil(grid.cols / block)
    n_blocks = rows * cols
    if n_blocks < 2:  # a grid too small to coarsen: blocks are the patches themselves
        rows, cols, n_blocks, block = grid.rows, grid.cols, grid.n_patches, 1
    coarse, _ = draw_masks(rng, n_blocks, n + 1, ratios, 1)
    coarse = coarse[1:]  # row 0 of a design is the unperturbed image, queried once for all candidates
    r = np.arange(grid.rows) // block
    c = np.arange(grid.cols) // block
    block_of_patch = (r[:, None] * cols + c[None, :]).reshape(-1)  # (P,)
    return coarse, coarse[:, block_of_patch]


def heldout_r2(visible: np.ndarray, y: np.ndarray, kernel: np.ndarray, anchor: tuple[np.ndarray, float] | None,
               surrogate: dict[str, Any], folds: int = CV_FOLDS) -> float:
    """Cross-validated, kernel-weighted R^2 of a surrogate fit: how well it predicts answers it was not fitted to.

    visible : bool (n, F) the design; y : (n,) the answers; kernel : (n,) proximity weights.
    anchor : the unperturbed image's (visible row (F,), answer), in every training fold, or None.
    surrogate : keyword arguments of :class:`~blackbox_lime.surrogate.SparseSurrogate`, or
        ``{"positive": True, "ridge": r}`` for the evidence fit (non-negative weights, ridge ``r``).
    Rows are split into ``folds`` interleaved folds; each held-out answer is predicted by the fit on the
    others, and 1 - SSE / SST is taken over all held-out rows, SST around each training fold's weighted mean.
    """
    X = np.asarray(visible, np.float64)
    n = len(y)
    if n < 2 * folds:
        raise ValueError(f"heldout_r2 needs at least {2 * folds} samples for {folds} folds. Got {n} instead.")
    fold = np.arange(n) % folds
    sse = sst = 0.0
    for k in range(folds):
        train, test = fold != k, fold == k
        Xt, yt, wt = X[train], y[train], kernel[train]
        if anchor is not None:
            Xt = np.vstack([anchor[0][None].astype(np.float64), Xt])
            yt = np.concatenate([[anchor[1]], yt])
            wt = np.concatenate([[1.0], wt])
        predict = _fit_evidence(Xt, yt, wt, surrogate["ridge"]) if surrogate.get("positive") else \
            SparseSurrogate(**surrogate).fit(Xt, yt, wt).predict
        mean = float(wt @ yt / wt.sum())
        sse += float(kernel[test] @ (y[test] - predict(X[test])) ** 2)
        sst += float(kernel[test] @ (y[test] - mean) ** 2)
    return 1.0 - sse / sst if sst > 0 else 0.0


def _fit_evidence(X: np.ndarray, y: np.ndarray, w: np.ndarray, ridge: float) -> Any:
    """Weighted least squares with an intercept, a ridge and every patch weight >= 0 (keeping a patch visible
    can only add evidence for the answer); returns the predictor X -> y."""
    wn = w / w.sum()
    xm, ym = wn @ X, wn @ y
    sw = np.sqrt(wn)[:, None]
    A = np.vstack([(X - xm) * sw, np.sqrt(ridge) * np.eye(X.shape[1])])
    b = np.concatenate([(y - ym) * sw[:, 0], np.zeros(X.shape[1])])
    coef = optimize.nnls(A, b)[0]
    return lambda Z: (np.asarray(Z, np.float64) - xm) @ coef + ym


def evidence_r2(visible: np.ndarray, y: np.ndarray, kernel: np.ndarray, anchor: tuple[np.ndarray, float] | None,
                folds: int = CV_FOLDS) -> float:
    """Held-out R^2 of the evidence fit: every patch weight >= 0, so only answers that drop when patches are
    hidden are explained. A fill that adds evidence where it hides (grey fill on a colour image that a
    classifier reads as a lesion) moves the answer up; the signed surrogate fits that too, this does not."""
    return heldout_r2(visible, y, kernel, anchor, {"positive": True, "ridge": EVIDENCE_RIDGE}, folds)


def decide(scores: dict[str, float | None], preferred: str, margin: float) -> tuple[str, str]:
    """The rule: ``preferred`` unless another candidate's score beats it by more than ``margin``.

    A candidate without a score (its answer did not move) is never chosen while another has one.
    Returns (chosen, reason)."""
    scored = {k: v for k, v in scores.items() if v is not None}
    if not scored:
        return preferred, "no candidate moved the answer; kept the preferred fill"
    best = max(scored, key=lambda k: (scored[k], k == preferred))
    base = scored.get(preferred)
    if base is None:
        return best, f"the answer did not move with {preferred}; {best} scored highest"
    if best != preferred and scored[best] > base + margin:
        return best, f"{best} predicts held-out answers better ({scored[best]:.3f} vs {preferred} {base:.3f})"
    return preferred, f"{preferred} is within {margin:g} of the best held-out R^2"


def score_pilot(coarse: np.ndarray, y: np.ndarray, y0: float, kernel_width: float,
                surrogate: dict[str, Any] | None = None) -> tuple[float | None, float]:
    """(held-out R^2 or None when the answer did not move, weighted sd of the answer) of one candidate's pilot.

    The score is the evidence fit's (:func:`evidence_r2`) unless ``surrogate`` names another fit (the val
    comparison of scorers does)."""
    kernel = proximity_kernel(coarse, kernel_width)
    w = kernel / kernel.sum()
    sd = float(np.sqrt(w @ (y - w @ y) ** 2))
    if sd < FLAT_RESPONSE_SD:
        return None, sd
    anchor = (np.ones(coarse.shape[1], bool), y0)
    if surrogate is None:
        return evidence_r2(coarse, y, kernel, anchor), sd
    return heldout_r2(coarse, y, kernel, anchor, surrogate), sd


def summarise_choices(choices: list[dict[str, Any]], candidates: tuple[str, ...], margin: float,
                      challenger_margin: float) -> tuple[str, dict[str, Any]]:
    """One fill for a whole site from per-image ``FillChoice.summary()`` records.

    When the MAE passed the reconstruction check on more than half of the images: the MAE, or, where those
    images piloted it against a challenger, :func:`decide` over the two fills' median scores on them (the MAE
    preferred by ``challenger_margin``). Otherwise :func:`decide` over the classic candidates' median pilot
    scores (an image where a candidate did not move counts as 0), the first classic candidate preferred as in
    ``fill="auto"``; without pilot scores, the fill most images chose."""
    if not choices:
        raise ValueError("No image was scored; give at least one readable image.")
    votes: dict[str, int] = {}
    for c in choices:
        votes[c["chosen"]] = votes.get(c["chosen"], 0) + 1
    psnr = {k: float(np.median([c["recon_psnr_db"][k] for c in choices if k in c["recon_psnr_db"]]))
            for k in choices[0].get("recon_psnr_db", {})}
    mae = next((k for k in candidates if is_generative(k)), "mae")  # the gated (generative) fill
    passed = [c for c in choices if c["gate"] == "passed"]
    if psnr and len(passed) * 2 > len(choices):
        lead = f"the MAE passed the reconstruction check on {len(passed)} of {len(choices)} images"
        rivals = sorted({k for c in passed for k in c["scores"] if k != mae})
        if not rivals:
            return mae, {"median_recon_psnr_db": psnr, "median_scores": {}, "per_image_choices": votes,
                         "reason": lead}
        def median(k: str) -> float | None:  # None (the answer did not move) on most images: no score, as per image
            got = [c["scores"].get(k) for c in passed]
            return None if sum(v is None for v in got) * 2 > len(got) else float(np.median([v or 0.0 for v in got]))

        med_passed = {k: median(k) for k in [mae] + rivals}
        chosen, reason = decide(med_passed, mae, challenger_margin)
        return chosen, {"median_recon_psnr_db": psnr,
                        "median_scores": {k: round(v, 4) for k, v in med_passed.items() if v is not None},
                        "per_image_choices": votes, "reason": f"{lead}; piloted against {', '.join(rivals)}: {reason}"}
    classic = [k for k in candidates if k != mae and any(k in c["scores"] for c in choices)]
    med: dict[str, float | None] = {k: float(np.median([c["scores"].get(k) or 0.0 for c in choices])) for k in classic}
    if med:
        chosen, reason = decide(med, classic[0], margin)
    else:  # no pilot ran: the images' own choices
        chosen = max(votes, key=lambda k: (votes[k], k != mae))
        reason = f"{chosen} was chosen for {votes[chosen]} of {len(choices)} images"
    return chosen, {"median_recon_psnr_db": psnr, "median_scores": {k: round(v, 4) for k, v in med.items() if v is not None},
                    "per_image_choices": votes, "reason": reason}
