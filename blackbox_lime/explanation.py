"""The result of one explanation (the Explanation contract)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from blackbox_lime.map_warnings import codes_of


@dataclass
class Explanation:
    """Why the model gave its answer for one image.

    Attributes
    ----------
    saliency : float32 (H, W) at the input image's own resolution; positive = evidence for ``target``.
    patch_weights : float64 (rows, cols), the surrogate's coefficient per patch.
    patch_stderr : float64 (rows, cols), robust standard error per patch (how sure each weight is).
    intercept : the surrogate's intercept.
    r2 : the surrogate's kernel-weighted R^2 on the queried samples (in-sample local fidelity).
    r2_heldout : the kernel-weighted R^2 of answers predicted by fits on the other samples (4 interleaved
        folds): local fidelity that more patches cannot inflate. NaN when the answer did not move.
    r2_evidence : the same held-out R^2 for the evidence fit, whose patch weights are all >= 0: how much of
        the answer's movement hiding evidence explains. A fill that adds evidence where it hides scores low
        here though the signed surrogate fits it; the low-fidelity warning reads this. NaN when the answer
        did not move.
    fill : how hidden patches were filled: {"mode": "fixed", "chosen": FILL}, or for fill "auto" the
        choice, each candidate's held-out R^2 on its pilot, the queries the choice cost and its time.
    target, target_name, target_prob : the explained class and the model's probability for it.
    probs : the model's class probabilities for the unperturbed image.
    queries, requests : images sent to the classifier (retries and requests refused for their size
        included: what the budget counts) and requests made.
    traffic : what reaching the classifier took: ``queries`` (images sent), ``images_asked`` (distinct
        sends the explanation asked for), ``requests``, ``retries``, ``refused_for_size`` (requests a server
        refused as too large, then sent again in halves) and ``request_size`` against ``max_batch``.
    timings : seconds per stage (masks, fill, classifier, surrogate, total).
    seed : the integer seed, or None when a Generator was passed.
    config : the full configuration.
    neighbours : the evidence cases used (empty without an evidence bank).
    notes : what was done to fit the image to the models (resizing, channel mapping, ...).
    warnings : what makes this map weak (the answer hardly moved under masking, every weight zero).
    response_sd : kernel-weighted standard deviation of P(target) over the queried samples.
    lambda1_effective : the L1 weight the surrogate used (``lambda1`` times ``response_sd`` by default).
    lambda1_capped : whether ``lambda1_cap`` lowered that weight (the configured weight would have
        kept few or no patches).
    adaptation : STTA's result (the transform phi*, the loss and P(label) before and after, its queries),
        None when STTA is off. ``target_prob`` and ``probs`` are the model's answers on the adapted image.
    evidence : EBR's use (neighbours, kernel bandwidth, the scale the surrogate gave the prior), None
        without an evidence prior: the summary of an :class:`~blackbox_lime.evidence_bank.EvidenceUse`.
        ``neighbours`` lists the cases with their similarity and kernel weight.
    model : the classifier's metadata.
    shared_with : when several targets were explained from one set of queries, the names of all of them
        (``queries`` and ``requests`` are then the whole set's, paid once); empty otherwise.
    samples : with ``explain(..., keep_samples=True)``: the queried design, for audits and for refitting
        the surrogate: ``visible`` bool (n, P), ``probs`` float64 (n, K), ``kernel`` float64 (n,).
    """

    saliency: np.ndarray
    patch_weights: np.ndarray
    patch_stderr: np.ndarray
    intercept: float
    r2: float
    target: int
    target_name: str
    target_prob: float
    probs: np.ndarray
    queries: int
    requests: int
    timings: dict[str, float]
    seed: int | None
    config: dict[str, Any]
    neighbours: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    model: dict[str, Any] = field(default_factory=dict)
    samples: dict[str, np.ndarray] | None = None
    warnings: list[str] = field(default_factory=list)
    response_sd: float = float("nan")
    lambda1_effective: float = float("nan")
    lambda1_capped: bool = False
    adaptation: dict[str, Any] | None = None
    evidence: dict[str, Any] | None = None
    r2_heldout: float = float("nan")
    r2_evidence: float = float("nan")
    fill: dict[str, Any] = field(default_factory=dict)
    shared_with: list[str] = field(default_factory=list)
    traffic: dict[str, int] = field(default_factory=dict)
    censoring: dict[str, Any] | None = None
    stopping: dict[str, Any] | None = None

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary (no arrays except the small patch grid)."""
        return {
            "target": self.target,
            "target_name": self.target_name,
            "target_prob": round(float(self.target_prob), 6),
            "probs": [round(float(p), 6) for p in self.probs],
            "r2": round(float(self.r2), 6),
            "r2_heldout": None if not np.isfinite(self.r2_heldout) else round(float(self.r2_heldout), 6),
            "r2_evidence": None if not np.isfinite(self.r2_evidence) else round(float(self.r2_evidence), 6),
            "fill": self.fill,
            "response_sd": round(float(self.response_sd), 6),
            "lambda1_effective": float(f"{self.lambda1_effective:.6g}"),
            "lambda1_capped": bool(self.lambda1_capped),
            "intercept": round(float(self.intercept), 6),
            "queries": self.queries,
            "requests": self.requests,
            "traffic": self.traffic,
            "queries_shared_with": self.shared_with,
            "timings_s": {k: round(v, 4) for k, v in self.timings.items()},
            "seed": self.seed,
            "config": self.config,
            "adaptation": self.adaptation,
            "evidence": self.evidence,
            **({"censoring": self.censoring} if self.censoring is not None else {}),
            **({"stopping": self.stopping} if self.stopping is not None else {}),
            "neighbours": self.neighbours,
            "notes": self.notes,
            "warnings": self.warnings,
            "warning_codes": codes_of(self.warnings),
            "model": self.model,
            "patch_grid": list(self.patch_weights.shape),
            "patch_weights": np.round(self.patch_weights, 6).tolist(),
            "patch_stderr": np.round(self.patch_stderr, 6).tolist(),
        }


@dataclass
class ExplanationSet:
    """Several classes or findings of one image explained from one set of queries.

    ``Explainer.explain(image, target=[...] | "all" | "positive")`` returns it. The perturbed samples were
    drawn, filled and queried once; each target has its own surrogate (and evidence prior) fitted on the
    same answers, so K maps cost one explanation's queries plus K surrogate fits.

    Attributes
    ----------
    explanations : one :class:`Explanation` per target, in the order asked (for "positive": by class index).
        Each has its own ``saliency`` float32 (H, W), ``patch_weights`` (rows, cols), R^2 and warnings;
        ``queries``, ``requests``, ``probs``, ``fill`` and ``adaptation`` are the shared ones.
    several : whether several targets were asked for (a list, "all" or "positive"), even where one was
        explained: the outputs are then written per finding. False for ``Explainer.explain_set`` with one class
        (or none) asked, whose outputs keep the single map's names.
    """

    explanations: list[Explanation]
    several: bool = True

    def __len__(self) -> int:
        return len(self.explanations)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.explanations)

    def __getitem__(self, i: int) -> Explanation:
        return self.explanations[i]

    @property
    def targets(self) -> list[int]:
        return [e.target for e in self.explanations]

    @property
    def queries(self) -> int:
        """Images sent for the whole set (once, not per target)."""
        return self.explanations[0].queries

    @property
    def requests(self) -> int:
        return self.explanations[0].requests

    @property
    def traffic(self) -> dict[str, int]:
        """What reaching the classifier took, for the whole set (see :attr:`Explanation.traffic`)."""
        return self.explanations[0].traffic
