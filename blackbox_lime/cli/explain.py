"""``blackbox-lime explain`` and ``demo``: explain images and write each one's files (all or nothing)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from blackbox_lime.cli.common import (
    UserError,
    EXIT_OK,
    EXIT_USER,
    adapter_from_options,
    burned_in_policy,
    check_calibration,
    config_from_options,
    explainer_and_target,
    fill_line,
    model_record,
    plan_text,
    query_plan,
    redact_logs,
    traffic_note,
)
from blackbox_lime.config import cli_text
from blackbox_lime.map_warnings import MapWarning, cli_warnings, codes_of


def run_explain(images: list[Path], a: argparse.Namespace) -> int:
    from blackbox_lime.outputs import (
        check_writable,
        file_sha256,
    )

    cfg = config_from_options(a)
    if getattr(a, "dry_run", False):
        doc = query_plan(a, cfg, len(images))
        print(json.dumps(doc) if a.json else plan_text(doc, f"{len(images)} image(s)"))
        return EXIT_OK
    adapter = adapter_from_options(a)  # before touching the output folder: a bad model or endpoint leaves nothing behind
    redact_logs(adapter)
    with adapter:
        explainer, target = explainer_and_target(a, adapter, cfg)
        hashes = model_record(a, adapter)
        if explainer.mae is not None:
            hashes["mae"] = {"file": explainer.mae.path.name, "sha256": file_sha256(explainer.mae.path)}
        if a.calibration is not None:
            check_calibration(a, hashes)
            hashes["calibration"] = {"file": Path(a.calibration).name, "sha256": file_sha256(a.calibration),
                                     "fill": cfg.fill}
        stow = _stow_target(a)  # a bad --stow URL or --pacs-auth file: named before anything is written
        created = not Path(a.out).exists()
        out = check_writable(a.out)  # only once every check passed: a refused call leaves no folder behind
        try:
            return _explain_images(images, a, adapter, explainer, target, hashes, out, stow)
        finally:
            if stow is not None:
                stow[0].close()
            if created and out.is_dir() and not any(out.iterdir()):
                out.rmdir()  # every image failed: leave no empty folder behind


def _stow_target(a: argparse.Namespace) -> Any:
    """--stow URL: (the PACS, the study to post to or None), or None without --stow."""
    if getattr(a, "stow", None) is None:
        if getattr(a, "pacs_auth", None) is not None:
            raise UserError("--pacs-auth is for --stow (the PACS the maps are stored to).")
        return None
    if not a.dicom_out:
        raise UserError("--stow stores the DICOM Parametric Maps of --dicom-out: add --dicom-out.")
    from blackbox_lime.audit.pacs import Pacs, PacsError
    from blackbox_lime.cli.audit import _dicomweb_root, _pacs_auth

    root, study = _dicomweb_root(a.stow)
    try:
        return Pacs(root, _pacs_auth(a), allow_insecure_http=a.allow_insecure_http), study
    except PacsError as exc:
        raise UserError(str(exc)) from None


def _explain_images(images: list[Path], a: argparse.Namespace, adapter: Any, explainer: Any, target: Any,
                    hashes: dict[str, Any], out: Path, stow: Any = None) -> int:
    from blackbox_lime.image_io import DEFAULT_MAX_PIXELS, ImageError, check_burned_in, load_image
    from blackbox_lime.outputs import OutputError, file_sha256

    if a.bank is not None:
        hashes["evidence_bank"] = {"file": Path(a.bank).name, "sha256": file_sha256(a.bank)}
    failed = 0
    stems: set[str] = set()
    burned_in = burned_in_policy(a, adapter)
    for path in images:
        t0 = time.perf_counter()
        r0 = adapter.retries
        try:
            loaded = load_image(path, frame=a.frame, max_pixels=a.max_pixels or DEFAULT_MAX_PIXELS)
            burned = check_burned_in(path.name, loaded, burned_in)  # refused: an ImageError, nothing sent
            t_io = time.perf_counter() - t0
            if not a.quiet:
                for note in loaded.notes:  # what was done to the pixels, said once (also in the JSON)
                    print(f"blackbox-lime: note: {path.name}: {note}", file=sys.stderr)
            result = explainer.explain_set(loaded.pixels, target=target, rng=a.seed, progress=not a.quiet,
                                           threshold=a.threshold)
        except (ImageError, ValueError) as exc:
            print(f"blackbox-lime: error: {cli_text(str(exc))}", file=sys.stderr)
            failed += 1
            continue
        stem = path.stem if path.stem not in stems else f"{path.stem}_{len(stems)}"
        stems.add(stem)
        try:
            exps = list(result)
            for e in exps:
                e.warnings[:] = cli_warnings(e.warnings)
            if burned:
                for e in exps:
                    e.warnings.append(MapWarning("burned_in", burned))
            if result.several or adapter.info.multilabel:
                pm = _write_findings(a, out, stem, path, loaded, exps, hashes, adapter.retries - r0, t_io)
            else:
                pm = _write_one(a, out, stem, path, loaded, exps[0], hashes, adapter.retries - r0, t_io)
        except OutputError as exc:
            print(f"blackbox-lime: error: {path.name}: {exc}", file=sys.stderr)
            failed += 1
            continue
        if stow is not None and pm:
            from blackbox_lime.audit.pacs import PacsError

            pacs, study = stow
            try:
                pacs.store(list(pm.values()), study)
                if not a.quiet:
                    print(f"{path.name}: {len(pm)} Parametric Map(s) stored to PACS {pacs.host}", file=sys.stderr)
            except PacsError as exc:
                print(f"blackbox-lime: error: {path.name}: its maps are written to {out} but not stored: {exc}",
                      file=sys.stderr)
                failed += 1
    return EXIT_USER if failed else EXIT_OK


def _report(path: Path, loaded: Any, summary: dict[str, Any], retries: int, hashes: dict[str, Any],
            t_io: float) -> dict[str, Any]:
    """The JSON report's head, built once for one map and for several findings: the tool, the input (its file
    name, hash, format, shape and what was done to it), the explanation's summary, retries and model hashes."""
    from blackbox_lime._version import __version__

    report = {"tool": "blackbox-lime", "version": __version__,
              "input": {"file": path.name, "sha256": loaded.sha256, "format": loaded.format,
                        "shape": list(loaded.pixels.shape), "notes": loaded.notes},
              **summary, "retries": retries, "models": hashes}
    report["timings_s"]["read_image"] = round(t_io, 4)
    return report


def _write_one(a: argparse.Namespace, out: Path, stem: str, path: Path, loaded: Any, exp: Any,
               hashes: dict[str, Any], retries: int, t_io: float) -> dict[Path, bytes]:
    """One image's three files (all or nothing), its JSON line and its summary lines; returns its Parametric Maps."""
    from blackbox_lime.outputs import explanation_files, fidelity_text, write_all

    report = _report(path, loaded, exp.summary(), retries, hashes, t_io)
    report["outputs"] = [f"{stem}.saliency.npy", f"{stem}.overlay.png", f"{stem}.json"]
    pm, note = _dicom_maps(a, path, loaded, [(stem, exp.saliency, exp.target_name)], out)
    report["outputs"] += sorted(p.name for p in pm)
    if note:
        report["dicom_out"] = note
        report["warnings"] = [*report["warnings"], MapWarning("dicom_out", note)]
        report["warning_codes"] = codes_of(report["warnings"])
    write_all({**explanation_files(out, stem, loaded.pixels, exp, report), **pm})
    if a.json:
        print(json.dumps({k: report[k] for k in ("input", "target", "target_name", "target_prob", "probs", "r2",
                                                 "r2_heldout", "r2_evidence", "fill", "warnings", "warning_codes",
                                                 "queries", "requests", "retries", "traffic", "timings_s", "seed",
                                                 "outputs", "dicom_out") if k in report}))
    if not a.quiet:
        for warning in exp.warnings:
            print(f"blackbox-lime: warning: {path.name}: {warning}", file=sys.stderr)
    if not a.json and not a.quiet:
        if exp.adaptation is not None and exp.adaptation["adapted"]:
            print(f"{path.name}: STTA adapted the input: P({exp.target_name}) "
                  f"{exp.adaptation['p_label_before']:.3f} -> {exp.adaptation['p_label_after']:.3f}",
                  file=sys.stderr)
        print(f"{path.name}: {exp.target_name} p={exp.target_prob:.3f} {fill_line(exp)} "
              f"{fidelity_text(exp)} (evidence R2, held-out; R2 {exp.r2:.3f}, held-out R2 {exp.r2_heldout:.3f}) "
              f"{exp.queries} queries{traffic_note(exp)} "
              f"{exp.timings['total']:.1f}s -> {out / (stem + '.overlay.png')}", file=sys.stderr)
    return pm


def _dicom_maps(a: argparse.Namespace, path: Path, loaded: Any, maps: list[tuple[str, Any, str]],
                out: Path) -> tuple[dict[Path, bytes], str | None]:
    """--dicom-out: the Parametric Maps of a DICOM input ({} for other inputs), and the named reason where none can
    be written (the other files are written all the same; the reason goes into the JSON)."""
    if not getattr(a, "dicom_out", False):
        return {}, None
    if loaded.format != "dicom":
        print(f"blackbox-lime: note: {path.name} is not DICOM; --dicom-out writes maps for DICOM inputs only.",
              file=sys.stderr)
        return {}, None
    from blackbox_lime.dicom_out import DicomOutError, parametric_map_files

    try:
        files = parametric_map_files(path.read_bytes(), maps, a.frame)
    except DicomOutError as exc:
        note = f"no DICOM Parametric Map: {exc}"
        print(f"blackbox-lime: warning: {path.name}: {note}", file=sys.stderr)
        return {}, note
    return {out / name: data for name, data in files.items()}, None


def _write_findings(a: argparse.Namespace, out: Path, stem: str, path: Path, loaded: Any, exps: list[Any],
                    hashes: dict[str, Any], retries: int, t_io: float) -> dict[Path, bytes]:
    """Several findings of one image from one set of queries: their files, the JSON line and the summary lines;
    returns their Parametric Maps."""
    from blackbox_lime.outputs import fidelity_text, finding_stems, findings_files, shared_summary, write_all

    report = _report(path, loaded, shared_summary(exps), retries, hashes, t_io)
    names = finding_stems([e.target_name for e in exps])
    pm, note = _dicom_maps(a, path, loaded, [(f"{stem}.{n}", e.saliency, e.target_name) for n, e in zip(names, exps)],
                           out)
    if note:
        report["dicom_out"] = note
    files = {**findings_files(out, stem, loaded.pixels, exps, report, [p.name for p in pm]), **pm}
    report_doc = json.loads(files[out / f"{stem}.json"])
    write_all(files)
    if a.json:
        keep = ("name", "index", "probability", "r2", "r2_heldout", "r2_evidence", "warnings", "warning_codes", "files")
        print(json.dumps({**{k: report_doc[k] for k in ("input", "probs", "fill", "queries", "requests", "retries",
                                                         "traffic", "queries_shared", "seed", "outputs")},
                          "findings": [{k: f[k] for k in keep} for f in report_doc["findings"]]}))
    if not a.quiet:
        for exp in exps:
            for warning in exp.warnings:
                print(f"blackbox-lime: warning: {path.name}: {exp.target_name}: {warning}", file=sys.stderr)
    if not a.json and not a.quiet:
        found = ", ".join(f"{e.target_name} p={e.target_prob:.3f} {fidelity_text(e)}" for e in exps)
        print(f"{path.name}: {len(exps)} finding(s) from one set of {exps[0].queries} queries{traffic_note(exps[0])}: {found} -> "
              f"{out / (stem + '.findings.png')}", file=sys.stderr)
    return pm
