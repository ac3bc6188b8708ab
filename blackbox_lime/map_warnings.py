"""Coded warnings: what makes a map weak, each as a code (for audits, benchmarks and programs) and a text (for
people).

A :class:`MapWarning` is a ``str`` (its text, as ``Explanation.warnings`` has always held) that also carries its
``code``; an explanation's JSON lists the codes as ``warning_codes``, in the order of the texts. Audit flags and the
benchmarks read the codes, never the texts.
"""

from __future__ import annotations

from collections.abc import Iterable


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
}


def codes_of(warnings: Iterable[str]) -> list[str]:
    """The codes of a list of warnings ("" for a plain text without one)."""
    return [getattr(w, "code", "") for w in warnings]


__all__ = ["CODES", "MapWarning", "codes_of"]
