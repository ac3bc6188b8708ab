"""Coded warnings: what makes a map weak, each as a code (for audits, benchmarks and programs) and a text (for
people).

A :class:`MapWarning` is a ``str`` (its text, as ``Explanation.warnings`` has always held) that also carries its
``code``; an explanation's JSON lists the codes as ``warning_codes``, in the order of the texts. Audit flags and the
benchmarks read the codes, never the texts.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from blackbox_lime.fill.registry import is_generative

if TYPE_CHECKING:
    from blackbox_lime.adapters.censoring import Censoring
    from blackbox_lime.config import ExplainConfig


class MapWarning(str):
    """A warning's text with its ``code`` (one of :data:`CODES`)."""

    code: str

    def __new__(cls, code: str, text: str) -> MapWarning:
        if code not in CODES:
            raise ValueError(f"Unknown warning code {code!r}; one of {', '.join(CODES)}.")
        obj = super().__new__(cls, text)
        obj.code = code
        return obj

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # pickles (audit workers) keep the code
        return MapWarning, (self.code, str(self))


def cli_warnings(warnings: list[str]) -> list[str]:
    """The warnings as the command line says them: each configuration field (`n_samples`) named by its option
    (--samples), the codes kept."""
    from blackbox_lime.config import cli_text

    return [MapWarning(w.code, cli_text(w)) if isinstance(w, MapWarning) else cli_text(w) for w in warnings]


#: Every code, with what it means.
CODES = {
    "flat_answer": "the answer hardly moved under masking: the map ranks small effects",
    "empty_map": "no patch's evidence survived the L1 penalty: the map is empty",
    "no_focal_evidence": "the answer moved, but no patch-wise effect explains how: it rests on no one region",
    "low_fidelity": "a region moves the answer, but the map's evidence fit does not explain it",
    "off_domain": "the generative fill reconstructs this image worse than a blur: its fills may add evidence",
    "censored": "the endpoint omitted the explained label from most answers: the map rests on bounds",
    "burned_in": "the image may carry burnt-in text (names, dates) in its pixels",
    "dicom_out": "the DICOM Parametric Map could not be written for this image",
    "budget_stop": "the query budget ran out before the map settled (n_samples='auto'): made from the rounds answered",
}


# Below this spread of P(target) over the samples, the map ranks effects too small to act on.
WEAK_RESPONSE_SD = 0.01


# Below this held-out R^2 of the evidence fit a map is flagged as of low fidelity: the highest Youden's J on val
# (docs/tune_val/fill/table.md: 37 of 44 weak maps flagged, 11 of 60 good ones).
LOW_FIDELITY_R2 = 0.02

# Below this held-out R^2 of the signed fit, no patch-wise effect explains how the answer moved under masking: the
# answer rests on no region of the image (as the fill hides it). On val (docs/bench_flags/val/table.md) it holds for
# the confident "normal" answers of the chest CNN (held-out R^2 p10 / median / p90: 0.000 / 0.033 / 0.080, every one
# under LOW_FIDELITY_R2 by the evidence fit) and for saturated abnormal answers (fundus: median 0.049), while maps of
# answers that do rest on a region reach 0.08 to 0.69 (p10 to p90 of the chest and ultrasound abnormal answers).
NO_FOCAL_R2 = 0.05

CENSORED_WARN = 0.5  # warn when the endpoint omitted the explained label from more than this share of its answers


def low_fidelity_warnings(r2_evidence: float, fill: str, cfg: ExplainConfig, r2_heldout: float = float("inf"),
                           name: str = "the class") -> list[str]:
    if not r2_evidence < LOW_FIDELITY_R2:  # NaN (the answer did not move) is warned about by weak_map_warnings
        return []
    if r2_heldout < NO_FOCAL_R2:
        return [MapWarning("no_focal_evidence", f"No focal evidence: no patch-wise effect explains how P({name}) moved under masking (held-out R^2 "
                f"{r2_heldout:.3f}, below {NO_FOCAL_R2:g}), so this answer rests on no one region of the image as the "
                f"{fill} fill hides it: a finding about the model (typical of a confident 'normal'), not a map to "
                "read region by region. On an answer that should rest on a lesion, the fill may be putting back what "
                "it hides: try another `fill`.")]
    tries = ["another `fill` (auto chooses among mae, mean and blur)" if cfg.fill != "auto" else
             "a site calibration (blackbox-lime calibrate)", "an MAE fitted on your images (blackbox-lime mae fit)",
             f"more `n_samples` (used {cfg.n_samples})" if not cfg.adaptive else
             f"a higher `max_samples` (`n_samples` auto, at most {cfg.max_samples})"]
    if is_generative(fill) and cfg.fill == "auto" and cfg.mae_challenger is None:
        tries.insert(1, "a challenger for the MAE (`mae_challenger` zero)")
    return [MapWarning("low_fidelity", f"Low fidelity: hiding patches explains the answer's drops with held-out R^2 {r2_evidence:.3f} (below "
            f"{LOW_FIDELITY_R2:g}) with the {fill} fill, so the map's evidence is weak or the fill adds evidence of "
            f"its own. Try {', '.join(tries[:-1])} or {tries[-1]}.")]


def weak_map_warnings(y: np.ndarray, sd: float, coef: np.ndarray, lambda1: float, name: str,
                       mae: bool = False) -> list[str]:
    out: list[str] = []
    if sd < WEAK_RESPONSE_SD:
        # With the MAE fill a flat answer is also what a classifier that reads the MAE's fills as the evidence they
        # hide gives (the demo ViT on ultrasound, docs/robust_fill.md).
        also = (" The MAE's fills may put back what they hide: try `mae_challenger` zero or another `fill`."
                if mae else "")
        out.append(MapWarning("flat_answer", f"P({name}) hardly moved under masking (kernel-weighted sd {sd:.4f}, range {y.min():.3f} to "
                   f"{y.max():.3f}): the map ranks small effects. Check that the image is in the model's domain, "
                   f"or try more `n_samples`.{also}"))
    if not np.any(coef):
        out.append(MapWarning("empty_map", f"No patch's evidence survived the L1 penalty (effective lambda1 "
                                           f"{lambda1:.3g}), so the map is empty. Lower `lambda1`, or `lambda1_cap` "
                                           "below 1."))
    return out


def censored_warnings(censoring: Censoring | None, censored: int, n: int, name: str) -> list[str]:
    """A censoring endpoint that left the explained label out of most answers: the map rests on bounds."""
    if censoring is None or censored <= CENSORED_WARN * n:
        return []
    limit = " and ".join(p for p in (f"its top {censoring.top_k}" if censoring.top_k else "",
                                     f"scores above {censoring.threshold:g}" if censoring.threshold else "") if p)
    return [MapWarning("censored", f"the endpoint listed {name!r} in only {n - censored} of its {n} answers (it lists "
                                   f"{limit}); elsewhere its score is known only as a bound, so this map rests on few "
                                   "measured answers. Ask the endpoint for more labels per answer if it can (a higher "
                                   "top_k or a lower threshold).")]


def budget_stop_warnings(stopping: dict[str, Any] | None) -> list[str]:
    """n_samples="auto" whose rounds the query budget cut short."""
    if stopping is None or stopping.get("reason") != "budget":
        return []
    return [MapWarning("budget_stop", f"The query budget ran out before the map settled: it is made from the "
                                      f"{stopping['samples']} samples of the rounds answered (the last round's "
                                      "answers are not used). Raise the budget for a settled map.")]


def codes_of(warnings: Iterable[str]) -> list[str]:
    """The codes of a list of warnings ("" for a plain text without one)."""
    return [getattr(w, "code", "") for w in warnings]


__all__ = ["CENSORED_WARN", "CODES", "LOW_FIDELITY_R2", "MapWarning", "NO_FOCAL_R2", "WEAK_RESPONSE_SD", "censored_warnings",
           "codes_of", "low_fidelity_warnings", "weak_map_warnings"]
