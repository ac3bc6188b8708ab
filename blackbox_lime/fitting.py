"""The per-target fit: one explained class's evidence prior (EBR), sparse surrogate, map, warnings and
:class:`~blackbox_lime.explanation.Explanation`, from the queried samples every target shares."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from blackbox_lime._version import __version__
from blackbox_lime.adapters.base import ModelInfo
from blackbox_lime.adapters.censoring import Censoring
from blackbox_lime.config import ExplainConfig
from blackbox_lime.evidence_bank import EvidenceBank, EvidenceUse
from blackbox_lime.explanation import Explanation
from blackbox_lime.fill.choice import evidence_r2, heldout_r2
from blackbox_lime.fill.fillers import Filler
from blackbox_lime.fill.registry import is_generative
from blackbox_lime.map_warnings import (WEAK_RESPONSE_SD, budget_stop_warnings, censored_warnings, low_fidelity_warnings,
                                        weak_map_warnings)
from blackbox_lime.patches import PatchGrid
from blackbox_lime.surrogate import SparseSurrogate, censored_fit
from blackbox_lime.test_time_adaptation import Adaptation

log = logging.getLogger("blackbox_lime.explainer")

Reference = Callable[[np.ndarray], "tuple[np.ndarray, list[dict]]"]


@dataclass
class Run:
    """One explanation's state while it runs: the image on the model's canvas, the seed's generator, and the
    notes, timings and adapter counts it reports."""
    image: np.ndarray
    canvas: np.ndarray
    gen: np.random.Generator
    seed: int | None
    notes: list[str]
    timings: dict[str, float]
    counters: dict[str, int]  # the adapter's, when the explanation started
    t_start: float


@dataclass
class Shared:
    """What every explained target shares: one queried design and its fill."""
    run: Run
    filler: Filler
    fill_record: dict[str, Any]
    fill_warnings: list[str]
    visible: np.ndarray
    probs: np.ndarray
    weights: np.ndarray
    adaptation: Adaptation | None
    traffic: dict[str, int]  # what this explanation sent: ClassifierAdapter.counters(), as differences
    keep_samples: bool
    upper: np.ndarray | None = None  # (n, K) bounds of the scores a censoring endpoint omitted (+inf: measured)
    stopping: dict[str, Any] | None = None  # n_samples="auto": why and when the queries stopped


@dataclass
class TargetFit:
    model: SparseSurrogate
    y: np.ndarray
    lambda2: float
    r2_heldout: float
    r2_evidence: float
    censored: int = 0  # answers in which a censoring endpoint omitted the target's score


class Fitter:
    """Fits each target on the shared samples: ``config``, the model's ``info``, the patch ``grid``, the evidence
    ``bank`` and ``reference`` prior (or None), and the endpoint's ``censoring`` (or None)."""

    def __init__(self, config: ExplainConfig, info: ModelInfo, grid: PatchGrid, bank: EvidenceBank | None,
                 reference: Reference | None, censoring: Censoring | None) -> None:
        self.config, self.info, self.grid = config, info, grid
        self.bank, self.reference, self.censoring = bank, reference, censoring

    def fit(self, shared: Shared, target: int) -> Explanation:
        """One target's evidence prior, surrogate and map, from the shared queried samples."""
        timings, notes = dict(shared.run.timings), list(shared.run.notes)
        t = time.perf_counter()
        ref, neighbours, evidence = self.prior(shared.run.canvas, target, notes)
        timings["evidence"] = time.perf_counter() - t
        t = time.perf_counter()
        upper = None if shared.upper is None else shared.upper[:, target]
        fit = self.surrogate(shared.visible, shared.probs[:, target], shared.weights, ref, evidence is not None, upper)
        if evidence is not None:
            evidence = evidence.fitted(fit.model.reference_scale_, fit.lambda2)
        saliency = self.grid.upsample(fit.model.coef_, shared.run.image.shape[:2], self.config.map_sigma,
                                      shared.run.canvas, self.config.map_guide, self.config.map_guide_eps)
        timings["surrogate"] = time.perf_counter() - t
        warnings = weak_map_warnings(fit.y, fit.model.response_sd_, fit.model.coef_, fit.model.lambda1_effective_,
                                      self.info.class_names[target], is_generative(shared.filler.name))
        warnings += low_fidelity_warnings(fit.r2_evidence, shared.filler.name, self.config, fit.r2_heldout,
                                          self.info.class_names[target])
        warnings += shared.fill_warnings
        warnings += censored_warnings(self.censoring, fit.censored, len(fit.y), self.info.class_names[target])
        warnings += budget_stop_warnings(shared.stopping)
        for w in warnings:
            log.info("weak map: %s", w)
        return self.explanation(shared, target, fit, saliency, neighbours, evidence, timings, notes, warnings)

    def prior(self, canvas: np.ndarray, target: int, notes: list[str]
               ) -> tuple[np.ndarray, list[dict], EvidenceUse | None]:
        """EBR's evidence prior w_ref (P,) for the target and its neighbours; zeros without a prior, or when the
        bank's evidence is for another class."""
        info = self.info
        if self.reference is None:
            return np.zeros(self.grid.n_patches), [], None
        if self.bank is not None and target != info.abnormal_index:
            notes.append(f"the evidence bank holds evidence for {info.class_names[info.abnormal_index]!r}, so it "
                         f"was not used for the class {info.class_names[target]!r}")
            return np.zeros(self.grid.n_patches), [], None
        ref, neighbours = self.reference(canvas)
        evidence = EvidenceUse(len(neighbours), dict(getattr(self.reference, "last", {})))
        return np.asarray(ref, np.float64).reshape(-1), neighbours, evidence

    def surrogate(self, visible: np.ndarray, y: np.ndarray, weights: np.ndarray, ref: np.ndarray,
                   prior: bool, upper: np.ndarray | None = None) -> TargetFit:
        """The sparse surrogate on the design and its fidelity (R^2 in-sample, held out, and of the evidence fit).
        ``upper``: the bounds of answers a censoring endpoint omitted (+inf where measured); those answers are
        fitted as bounds (:func:`~blackbox_lime.surrogate.censored_fit`) and the fidelity is read on the completed
        answers. ``prior``: whether an evidence prior is in ``ref`` (it sets lambda2)."""
        cfg = self.config
        lambda2 = cfg.lambda2_for(prior=prior)
        options: dict[str, Any] = dict(lambda1=cfg.lambda1, lambda2=lambda2, reference=ref,
                                       lambda1_scale=cfg.lambda1_scale, lambda1_cap=cfg.lambda1_cap,
                                       reference_scale="fit")
        X = visible.astype(np.float64)
        censored = 0
        if upper is not None and np.isfinite(upper).any():
            model, y, _ = censored_fit(lambda: SparseSurrogate(**options), X, y, upper, weights)
            censored = int(np.isfinite(upper).sum())
        else:
            model = SparseSurrogate(**options).fit(X, y, weights)
        moved = model.response_sd_ >= WEAK_RESPONSE_SD
        r2_heldout = heldout_r2(X[1:], y[1:], weights[1:], (X[0], y[0]), options) if moved else float("nan")
        r2_evidence = evidence_r2(X[1:], y[1:], weights[1:], (X[0], y[0])) if moved else float("nan")
        return TargetFit(model, y, lambda2, r2_heldout, r2_evidence, censored)

    def explanation(self, shared: Shared, target: int, fit: TargetFit, saliency: np.ndarray, neighbours: list[dict],
                     evidence: EvidenceUse | None, timings: dict[str, float], notes: list[str],
                     warnings: list[str]) -> Explanation:
        cfg, info, grid, model = self.config, self.info, self.grid, fit.model
        return Explanation(
            saliency=saliency,
            patch_weights=model.coef_.reshape(grid.rows, grid.cols),
            patch_stderr=model.stderr_.reshape(grid.rows, grid.cols),
            intercept=model.intercept_,
            r2=model.r2_,
            target=int(target),
            target_name=info.class_names[target],
            target_prob=float(shared.probs[0, target]),
            probs=shared.probs[0].copy(),
            queries=shared.traffic["queries"],
            requests=shared.traffic["requests"],
            traffic=dict(shared.traffic),
            timings=timings,
            seed=shared.run.seed,
            config={**cfg.to_dict(), "lambda2_effective": fit.lambda2, "fill_model": describe_filler(shared.filler),
                    "evidence_bank": None if self.bank is None else self.bank.describe(), "version": __version__},
            neighbours=neighbours,
            notes=notes,
            model={"name": info.name, "input_size": list(info.input_size), "channels": info.channels,
                   "class_names": list(info.class_names), "abnormal_index": info.abnormal_index, **info.extra},
            samples=({"visible": shared.visible, "probs": shared.probs, "kernel": shared.weights}
                     if shared.keep_samples else None),
            warnings=warnings,
            response_sd=model.response_sd_,
            lambda1_effective=model.lambda1_effective_,
            lambda1_capped=model.lambda1_capped_,
            adaptation=None if shared.adaptation is None else shared.adaptation.summary(),
            evidence=None if evidence is None else evidence.summary(),
            censoring=(None if self.censoring is None else
                       {**self.censoring.describe(), "answers": len(fit.y), "censored": fit.censored}),
            r2_heldout=fit.r2_heldout,
            r2_evidence=fit.r2_evidence,
            fill=shared.fill_record,
            stopping=shared.stopping,
        )


def describe_filler(filler: Filler) -> dict[str, Any]:
    describe = getattr(filler, "describe", None)
    return describe() if describe is not None else {"kind": filler.name}
