"""Running an audit: every pending case explained, flagged and written, resumably and exactly once.

The work is split so that cases can be handed to workers later:

- :func:`explain_case` is the case itself: a pure function of (image, configuration, seed) plus the
  adapter. It reads the image, explains it, flags it and returns the case's files as bytes and its
  record. It writes nothing.
- :class:`AuditRunner` is the coordinator, the only writer: it takes the pending cases in order, writes
  each case's files atomically, then marks the case done in the store. A case killed half-way is
  simply run again on resume; its answered queries come from the store (see
  :mod:`blackbox_lime.audit.answers`), so its map is byte-identical and nothing answered is paid twice.

A case that fails (an unreadable image, an answer the model cannot give) is recorded with its reason
and the run goes on. A spent budget stops the run cleanly: the case in progress stays pending.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from blackbox_lime.adapters.censoring import predict_complete
from blackbox_lime.adapters.errors import AdapterError, BudgetExhausted
from blackbox_lime._version import __version__
from blackbox_lime.audit.answers import StoredAdapter
from blackbox_lime.audit.flags import anatomy_mask, case_flags
from blackbox_lime.audit.records import CaseRecord, FindingRecord
from blackbox_lime.audit.store import AuditStore, Case
from blackbox_lime.explainer import Explainer, to_canvas
from blackbox_lime.image_io import DEFAULT_MAX_PIXELS, ImageError, check_burned_in, load_image, load_image_bytes
from blackbox_lime.map_warnings import cli_warnings, codes_of
from blackbox_lime.outputs import explanation_files, finding_stems, findings_files, shared_summary, write_all

log = logging.getLogger(__name__)

CASES_DIR = "cases"


@dataclass
class CaseOutcome:
    """What one case produced: its files (paths relative to the audit folder -> bytes) and its record."""

    files: dict[str, bytes]
    record: CaseRecord


@dataclass
class RunResult:
    done: int
    failed: int
    pending: int
    stopped: str | None = None  # why the run stopped before the end (a spent budget), else None
    explained_now: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)


def _private(salt: str, value: str) -> str:
    return "bank-" + hashlib.sha256(f"{salt}\0{value}".encode()).hexdigest()[:12]


def explain_case(case: Case, root: Path, explainer: Explainer, adapter: StoredAdapter, *, seed: int,
                 target: "int | list[int] | str | None", frame: int | None, salt: str,
                 threshold: float = 0.5, max_pixels: int = DEFAULT_MAX_PIXELS, burned_in: str = "warn",
                 data: bytes | None = None) -> CaseOutcome:
    """Explain and flag one case. Raises ImageError or ValueError for a bad image or mask, AdapterError when
    the model cannot answer. Writes nothing.

    ``target`` as for ``Explainer.explain``: one class, or several findings (a list, "all", "positive")
    explained from one set of queries. The record always has a ``findings`` list, one entry per explained
    class with its own flags; a single class keeps explain's file names, several get one map and overlay per
    finding, one JSON and an overview (as ``explain`` writes them). ``burned_in``: "warn" or "refuse" an image
    whose pixels may carry burnt-in text (see :func:`~blackbox_lime.image_io.check_burned_in`). ``data``: the image
    file's bytes when they come from elsewhere than ``root / case.image`` (an instance retrieved from PACS)."""
    if data is None:
        loaded = load_image(root / case.image, frame=frame, max_pixels=max_pixels)
    else:
        loaded = load_image_bytes(data, "the image.dcm", frame=frame, max_pixels=max_pixels)
    burned = check_burned_in("the image", loaded, burned_in)
    roi, mask_sha = None, None
    if case.mask is not None:
        m = load_image(root / case.mask, max_pixels=max_pixels)
        mask_sha = m.sha256
        roi = m.pixels[..., 0] > 0.5
        if roi.shape != loaded.pixels.shape[:2]:
            raise ImageError(f"the mask is {roi.shape[1]}x{roi.shape[0]} px but the image is "
                             f"{loaded.pixels.shape[1]}x{loaded.pixels.shape[0]} px; a mask must match its image.")
    sent0, reused0, retries0 = adapter.sent, adapter.reused, adapter.retries
    result = explainer.explain_set(loaded.pixels, target=target, rng=seed, threshold=threshold)
    exps = list(result)
    for e in exps:
        e.warnings[:] = cli_warnings(e.warnings)  # an audit is run from the command line: its texts name options
    several = result.several or adapter.info.multilabel
    first = exps[0]
    before = None
    if first.adaptation is not None and first.adaptation["adapted"]:  # the class on the unadapted image
        info = adapter.info
        before = int(np.argmax(predict_complete(adapter, to_canvas(loaded.pixels, info.input_size, info.channels, [])[None])[0]))
    findings, summaries = [], []
    anatomy = anatomy_mask(loaded.pixels)  # one image: one mask for all its findings
    for exp in exps:
        summary = exp.summary()
        for n in summary.get("neighbours") or []:  # the bank's own case names may be file or patient names
            if "case" in n:
                n["case"] = _private(salt, str(n["case"]))
        flagged = case_flags(loaded.pixels, exp.saliency, summary, roi, before, anatomy)
        summaries.append((summary, flagged))
        findings.append(FindingRecord(exp.target_name, exp.target, summary["target_prob"], summary["r2"],
                                      summary["r2_heldout"], summary["r2_evidence"], flagged["flags"], flagged["shares"],
                                      exp.warnings, codes_of(exp.warnings), summary["patch_weights"]))
    head = {"tool": "blackbox-lime", "version": __version__, "case": case.id, "label": case.label,
            "input": {"sha256": loaded.sha256, "format": loaded.format, "shape": list(loaded.pixels.shape),
                      "notes": loaded.notes, "mask_sha256": mask_sha},
            **({"burned_in": burned} if burned else {})}
    stems = [case.id] if not several else [f"{case.id}.{n}" for n in finding_stems([e.target_name for e in exps])]
    pm, dicom_note = {}, None
    if loaded.format == "dicom":  # the maps back into PACS: a Parametric Map per map, over the source image
        from blackbox_lime.dicom_out import DicomOutError, parametric_map_files

        try:
            pm = parametric_map_files((root / case.image).read_bytes() if data is None else data, [(st, e.saliency, e.target_name)
                                                                        for st, e in zip(stems, exps)], frame, salt)
        except DicomOutError as exc:
            dicom_note = f"no DICOM Parametric Map: {exc}"
            head["dicom_out"] = dicom_note  # in the case's JSON too
    base = Path(CASES_DIR)
    if not several:
        summary, flagged = summaries[0]
        report = {**head, **summary, "flags": flagged["flags"], "evidence_shares": flagged["shares"],
                  "anatomy_fraction": flagged["anatomy_fraction"],
                  "outputs": [f"{case.id}.saliency.npy", f"{case.id}.overlay.png", f"{case.id}.json", *pm]}
        raw = explanation_files(base, case.id, loaded.pixels, first, report)
    else:
        report = {**head, **shared_summary(exps)}
        raw = findings_files(base, case.id, loaded.pixels, exps, report, list(pm),
                             [{"flags": fl["flags"], "evidence_shares": fl["shares"]} for _, fl in summaries])
    for f, st, name in zip(findings, stems, pm or [None] * len(stems)):
        f.outputs = [f"{CASES_DIR}/{st}.saliency.npy", f"{CASES_DIR}/{st}.overlay.png"] + \
            ([f"{CASES_DIR}/{name}"] if name else [])
    files = {k.as_posix(): v for k, v in raw.items()} | {f"{CASES_DIR}/{name}": data for name, data in pm.items()}
    names = sorted(files)
    record = CaseRecord(case.id, case.label, findings, first.fill.get("chosen"), first.queries,
                        adapter.sent - sent0, adapter.reused - reused0, adapter.retries - retries0, names, loaded.sha256,
                        mask_sha, round(max(e.timings["total"] for e in exps), 3), dicom_note or None, burned or None)
    return CaseOutcome(files, record)


def _without_names(text: str, case: Case, root: Path) -> str:
    """``text`` with the case's paths and file names replaced by "the image" / "the mask"."""
    for rel, word in ((case.image, "the image"), (case.mask, "the mask")):
        if rel is None:
            continue
        for name in sorted({str(root / rel), rel, Path(rel).name}, key=len, reverse=True):
            text = text.replace(name, word)
    return text


class AuditRunner:
    """The coordinator of one audit: runs the pending and failed cases in order and writes the results.

    Parameters
    ----------
    out_dir : the audit folder. store : its open :class:`AuditStore`. adapter : the :class:`StoredAdapter`.
    explainer : an :class:`Explainer` over that adapter. root : the folder the cases' paths are relative to.
    seed, target, frame, threshold : as for ``explain``. salt : the audit's salt (private names).
    progress : called after each case with (cases finished, sent so far) or None.
    """

    def __init__(self, out_dir: Path, store: AuditStore, adapter: StoredAdapter, explainer: Explainer, *, root: Path,
                 seed: int, target: "int | list[int] | str | None", frame: int | None, salt: str,
                 threshold: float = 0.5, max_pixels: int = DEFAULT_MAX_PIXELS, burned_in: str = "warn",
                 progress: Callable[[Case, str], None] | None = None, fetch: Callable[[Case], bytes] | None = None,
                 stow: Callable[[list[bytes]], dict[str, Any]] | None = None) -> None:
        self.out_dir, self.store, self.adapter, self.explainer = out_dir, store, adapter, explainer
        self.root, self.seed, self.target, self.frame, self.salt = root, seed, target, frame, salt
        self.threshold, self.max_pixels, self.burned_in = threshold, max_pixels, burned_in
        self.progress, self.fetch, self.stow = progress, fetch, stow

    def _store_maps(self, case_id: str, record: CaseRecord) -> dict[str, Any]:
        """STOW-RS of a done case's Parametric Maps (read back from the audit folder); its outcome, also kept in the
        case's record, so that a resume retries only what was not stored."""
        assert self.stow is not None
        maps = [n for n in record.outputs if n.endswith(".pm.dcm")]
        if not maps:
            outcome: dict[str, Any] = {"state": "nothing to store", "reason": record.dicom_out or
                                       "the case has no Parametric Map (its image is not DICOM)"}
        else:
            try:
                outcome = self.stow([(self.out_dir / n).read_bytes() for n in maps])
            except (ValueError, OSError) as exc:
                outcome = {"state": "failed", "reason": str(exc)}
        self.store.set_stow(case_id, outcome)
        return outcome

    def run(self) -> RunResult:
        (self.out_dir / CASES_DIR).mkdir(exist_ok=True)
        if self.stow is not None:  # maps made before but not stored (the PACS refused, or was down): stored now
            for done in self.store.cases(states=("done",)):
                if done.record is not None and (done.record.stow or {}).get("state") not in ("stored", "nothing to store"):
                    self._store_maps(done.id, done.record)
        todo = self.store.cases(states=("pending", "failed"))  # failed cases get another try on resume
        stopped, explained = None, 0
        failures: list[tuple[str, str]] = []
        prefetch = _Prefetch(self.fetch, todo) if self.fetch is not None else None
        try:
            for case in todo:
                outcome_or_stop = self._one(case, prefetch, failures)
                if isinstance(outcome_or_stop, str):
                    stopped = outcome_or_stop
                    break
                explained += outcome_or_stop
        finally:
            if prefetch is not None:
                prefetch.close()
        counts = self.store.counts()
        return RunResult(counts["done"], counts["failed"], counts["pending"], stopped, explained, failures)

    def _one(self, case: Case, prefetch: "_Prefetch | None", failures: list[tuple[str, str]]) -> int | str:
        """One case: 1 when explained, 0 when failed, the reason when the budget stopped the run."""
        self.store.start_case(case.id)
        self.adapter.case_id = case.id
        try:
            data = prefetch.get(case) if prefetch is not None else None
            outcome = explain_case(case, self.root, self.explainer, self.adapter, seed=self.seed,
                                   target=self.target, frame=self.frame, salt=self.salt, threshold=self.threshold,
                                   max_pixels=self.max_pixels, burned_in=self.burned_in, data=data)
        except BudgetExhausted as exc:
            return str(exc)
        except (ImageError, ValueError, AdapterError) as exc:
            reason = f"{type(exc).__name__}: {exc}" if isinstance(exc, AdapterError) else str(exc)
            private = _without_names(reason, case, self.root)  # the store feeds the report: no file names
            self.store.fail_case(case.id, private)
            failures.append((case.id, reason))
            log.info("case %s failed: %s", case.id, private)  # the command prints each failure once
            if self.progress:
                self.progress(case, "failed")
            return 0
        write_all({self.out_dir / name: blob for name, blob in outcome.files.items()})
        self.store.finish_case(case.id, outcome.record)  # after its files: a done case always has them
        if self.stow is not None:
            self._store_maps(case.id, outcome.record)
        if self.progress:
            self.progress(case, "done")
        return 1


class _Prefetch:
    """Retrieval of the next cases (``lookahead`` of them) in a thread while the current one is explained; the
    cases are taken in ``todo``'s order."""

    def __init__(self, fetch: Callable[[Case], bytes], todo: list[Case], lookahead: int = 2) -> None:
        from concurrent.futures import Future, ThreadPoolExecutor

        self.fetch, self.todo, self.lookahead = fetch, todo, lookahead
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="blackbox-lime-retrieve")
        self.futures: dict[int, Future[bytes]] = {}  # todo index -> its retrieval, until taken
        self.submitted = self.taken = 0

    def get(self, case: Case) -> bytes:
        assert case.id == self.todo[self.taken].id, "cases are taken in order"
        while self.submitted < min(self.taken + 1 + self.lookahead, len(self.todo)):
            self.futures[self.submitted] = self.pool.submit(self.fetch, self.todo[self.submitted])
            self.submitted += 1
        self.taken += 1
        return self.futures.pop(self.taken - 1).result()

    def close(self) -> None:
        for f in self.futures.values():
            f.cancel()
        self.pool.shutdown(wait=True)
