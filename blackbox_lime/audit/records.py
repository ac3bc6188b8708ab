"""The audit's typed records: what the store keeps for a done case and for each of its explained findings.

The store holds a case record as JSON; :meth:`CaseRecord.to_json` writes it (the one place its keys are
spelled) and :meth:`CaseRecord.from_json` reads it back, also from stores written by earlier versions (a key they
lack takes its default; a key this version does not know is kept in ``extra`` and written back as it was).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


@dataclass
class FindingRecord:
    """One explained finding (class) of a case: its answer, fidelity, audit flags and evidence shares, the
    warnings (texts and codes), the patch grid and the files of its map."""

    finding: str
    target: int
    target_prob: float
    r2: float | None = None
    r2_heldout: float | None = None
    r2_evidence: float | None = None
    flags: list[str] = field(default_factory=list)
    shares: dict[str, float | None] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    warning_codes: list[str] | None = None  # None: a record written before coded warnings
    patch_weights: list[Any] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return _to_json(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> FindingRecord:
        return _from_json(cls, doc)


@dataclass
class CaseRecord:
    """A done case: its findings, the fill used, the queries it needed and what was sent for it (``sent``; answers
    ``reused`` from the store; ``retries``), its output files, the hashes of its input and mask, its wall seconds,
    and case-level notes: why no Parametric Map (``dicom_out``), burnt-in text (``burned_in``), and the outcome of
    storing its maps to PACS (``stow``)."""

    id: str
    label: str | None = None
    findings: list[FindingRecord] = field(default_factory=list)
    fill: str | None = None
    queries: int | None = None
    sent: int | None = None
    reused: int | None = None
    retries: int | None = None
    outputs: list[str] = field(default_factory=list)
    input_sha256: str | None = None
    mask_sha256: str | None = None
    seconds: float | None = None
    dicom_out: str | None = None
    burned_in: str | None = None
    stow: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    #: case-level notes shown with each of the case's rows in the report
    NOTES = ("burned_in", "dicom_out")

    def to_json(self) -> dict[str, Any]:
        doc = _to_json(self)
        doc["findings"] = [f.to_json() for f in self.findings]
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> CaseRecord:
        rec = _from_json(cls, {k: v for k, v in doc.items() if k != "findings"})
        rec.findings = [FindingRecord.from_json(f) for f in doc.get("findings") or []]
        return rec

    def notes(self) -> dict[str, str]:
        """The case-level notes it carries (``burned_in``, ``dicom_out``)."""
        return {k: getattr(self, k) for k in self.NOTES if getattr(self, k)}


# Keys written only when set: what older versions never wrote, and the optional case notes.
_OPTIONAL = frozenset({"dicom_out", "burned_in", "stow", "warning_codes"})


def _to_json(rec: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(rec):
        if f.name == "extra":
            continue
        value = getattr(rec, f.name)
        if f.name in _OPTIONAL and value is None:
            continue
        out[f.name] = value
    out.update(rec.extra)
    return out


def _from_json(cls: Any, doc: dict[str, Any]) -> Any:
    names = {f.name for f in fields(cls)} - {"extra"}
    known = {k: v for k, v in doc.items() if k in names}
    return cls(**known, extra={k: v for k, v in doc.items() if k not in names})


__all__ = ["CaseRecord", "FindingRecord"]
