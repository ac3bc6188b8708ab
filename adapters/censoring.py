"""Censored answers: endpoints that list only their top k labels, or only those scored above a threshold.

Such an endpoint's answer omits the other labels' scores. An omitted score is not 0: it is known only to be at
most a bound, which the answer itself gives:

- the list is full (``top_k`` labels listed): at most the smallest listed score;
- the list is shorter than ``top_k`` (or there is no ``top_k``) and a ``threshold`` is declared: below it;
- probabilities that sum to 1 (``kind = "probabilities"``): also at most the mass the listed labels leave.

Adapters put NaN where a label was omitted (:class:`Censoring` ``.check`` refuses an omission that no declared
``top_k`` or ``threshold`` explains); :meth:`Censoring.bounds` reads the bound of every omitted cell from its row,
and :meth:`Censoring.impute` gives a value for code that needs one number per cell (the model's answer shown to a
user, STTA's loss, the fill pilots). The surrogate does not use the imputed values as measurements: it fits the
omitted ones as "at most the bound" (:func:`blackbox_lime.surrogate.censored_fit`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .errors import ResponseError

if TYPE_CHECKING:
    from .base import ClassifierAdapter


@dataclass(frozen=True)
class Censoring:
    """What an endpoint leaves out of its answers.

    Parameters
    ----------
    top_k : the endpoint lists at most this many labels (None: no limit).
    threshold : the endpoint omits labels scored below this (0: none).
    sums_to_one : the scores are class probabilities that sum to 1 (softmax), so omitted ones share what the listed
        ones leave.
    """

    top_k: int | None = None
    threshold: float = 0.0
    sums_to_one: bool = True

    @property
    def declared(self) -> bool:
        return self.top_k is not None or self.threshold > 0

    def describe(self) -> dict[str, object]:
        return {"top_k": self.top_k, "threshold": self.threshold}

    def check(self, row: np.ndarray, class_names: tuple[str, ...] | list[str], where: str) -> None:
        """One parsed answer (NaN where omitted): an omission nothing declared explains is a ResponseError naming
        the label and the key to set."""
        missing = np.flatnonzero(np.isnan(row))
        if missing.size == 0:
            return
        listed = int(row.size - missing.size)
        label = class_names[int(missing[0])]
        if not self.declared:
            raise ResponseError(f"{where} omits the label {label!r} ({listed} of {row.size} labels listed), and the "
                                "profile declares neither [response] top_k nor threshold, so its score cannot be "
                                "bounded. Set [response] top_k (the most labels the endpoint lists) or threshold (the "
                                "score below which it omits a label), or ask the endpoint for every label.")
        if self.top_k is not None and listed > self.top_k:
            raise ResponseError(f"{where} lists {listed} labels, more than the profile's [response] top_k = "
                                f"{self.top_k}; correct top_k.")
        if (self.top_k is None or listed < self.top_k) and self.threshold <= 0:
            raise ResponseError(f"{where} omits the label {label!r} although it lists only {listed} labels, fewer "
                                f"than [response] top_k = {self.top_k}: the endpoint also cuts by a score threshold. "
                                "Set [response] threshold to that score.")

    def fill_known(self, probs: np.ndarray) -> np.ndarray:
        """Exclusive probabilities with one label omitted: that label's score is what the others leave, so it is
        filled in and is not censored. Other rows, and multi-label answers, are returned as they are."""
        probs = np.asarray(probs, np.float64)
        one = np.isnan(probs).sum(axis=1) == 1
        if not self.sums_to_one or not one.any():
            return probs
        out = probs.copy()
        rows = np.flatnonzero(one)
        out[rows, np.argmax(np.isnan(out[rows]), axis=1)] = np.clip(1.0 - np.nansum(out[rows], axis=1), 0.0, 1.0)
        return out

    def bounds(self, probs: np.ndarray) -> np.ndarray:
        """(N, K) answers with NaN where omitted -> (N, K) upper bounds: the bound of each omitted cell, +inf where
        the score was listed."""
        probs = np.atleast_2d(np.asarray(probs, np.float64))
        omitted = np.isnan(probs)
        out = np.full(probs.shape, np.inf)
        if not omitted.any():
            return out
        listed = np.where(omitted, np.nan, probs)
        n_listed = (~omitted).sum(axis=1)
        with np.errstate(all="ignore"):
            smallest = np.where(n_listed > 0, np.nanmin(np.where(omitted, np.inf, listed), axis=1), 1.0)
        full = n_listed >= (self.top_k if self.top_k is not None else np.iinfo(np.int64).max)
        bound = np.where(full, smallest, self.threshold if self.threshold > 0 else smallest)
        if self.sums_to_one:
            bound = np.minimum(bound, np.clip(1.0 - np.nansum(listed, axis=1), 0.0, 1.0))
        bound = np.clip(bound, 0.0, 1.0)
        return np.where(omitted, bound[:, None], np.inf)

    def impute(self, probs: np.ndarray) -> np.ndarray:
        """One value for every cell: listed scores as they are; an omitted probability gets an equal share of the
        mass the listed ones leave (capped at its bound); an omitted multi-label score half its bound (the middle
        of what it can be)."""
        probs = np.atleast_2d(np.asarray(probs, np.float64))
        omitted = np.isnan(probs)
        if not omitted.any():
            return probs
        b = self.bounds(probs)
        if self.sums_to_one:
            left = np.clip(1.0 - np.nansum(probs, axis=1), 0.0, 1.0)
            share = left / np.maximum(omitted.sum(axis=1), 1)
            guess = np.minimum(b, share[:, None])
        else:
            guess = 0.5 * b
        return np.where(omitted, guess, probs)


def censoring_of(extra: dict) -> Censoring | None:
    """The censoring an adapter's ``info.extra`` declares, or None (complete answers)."""
    spec = extra.get("censoring")
    if not spec:
        return None
    return Censoring(top_k=spec.get("top_k"), threshold=float(spec.get("threshold") or 0.0),
                     sums_to_one=not str(extra.get("output", "")).startswith("multilabel"))


def predict_complete(adapter: "ClassifierAdapter", images: np.ndarray) -> np.ndarray:
    """``adapter.predict`` with a value in every cell: where the endpoint omitted a label, its imputed score
    (:meth:`Censoring.impute`). For code that needs one number per class (STTA's loss, the model's answer)."""
    probs = adapter.predict(images)
    c = censoring_of(adapter.info.extra)
    return probs if c is None else c.impute(probs)


__all__ = ["Censoring", "censoring_of", "predict_complete"]
