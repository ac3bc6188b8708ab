"""Writing results to disk: atomic files, saliency arrays, overlays and JSON reports.

All files of one explanation are written to temporary names first and renamed into place only when
every one of them is complete, so an interrupted or failed run never leaves half-written output.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from blackbox_lime.explanation import Explanation
from blackbox_lime.map_warnings import codes_of


class OutputError(OSError):
    """The output folder cannot be created or written."""


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one."""
    write_all({Path(path): data})


def write_all(files: dict[Path, bytes]) -> None:
    """Write several files all-or-nothing: temp files first, then renames; if a rename fails, the files already
    moved into place are removed again. A target taken by a folder (or anything but a file) is refused first."""
    for path in files:
        if path.exists() and not path.is_file():
            raise OutputError(f"Cannot write {path.name} in {path.parent}: that name is taken by a folder (or another "
                              "non-file). Move it away or choose another --out; nothing was written for this image.")
    temps: list[tuple[str, Path]] = []
    moved: list[Path] = []
    mode = 0o666 & ~_umask()
    try:
        for path, data in files.items():
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
            temps.append((tmp, path))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, mode)  # mkstemp makes 0600 files; give results the usual permissions
        for tmp, path in temps:
            os.replace(tmp, path)
            moved.append(path)
    except BaseException:
        for tmp, _ in temps:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        for path in moved:
            try:
                os.unlink(path)
            except OSError:
                pass
        raise


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def check_writable(out_dir: str | Path) -> Path:
    """Create ``out_dir`` if needed and prove a file can be written there; raise OutputError if not."""
    d = Path(out_dir)
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".write-test.", suffix=".part")
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise OutputError(f"Cannot write to the output folder {d}: {exc.strerror or exc}. "
                          "Choose a writable --out folder.") from exc
    return d


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _diverging_lut() -> np.ndarray:
    """256 BGR colours: blue (negative) - white (0) - red (positive)."""
    t = np.linspace(-1.0, 1.0, 256)
    r = np.where(t < 0, 1.0 + t, 1.0)
    b = np.where(t > 0, 1.0 - t, 1.0)
    g = 1.0 - np.abs(t)
    lut = np.stack([b * 0.9 + 0.1 * (t < 0), g, r * 0.9 + 0.1 * (t > 0)], axis=1)
    return np.clip(lut * 255, 0, 255).astype(np.uint8)


_LUT = _diverging_lut()


def render_overlay(image: np.ndarray, saliency: np.ndarray, title: str, colour_bar: bool = True) -> np.ndarray:
    """The saliency as a colour overlay on the image, with a colour bar and a title. -> BGR uint8.

    image: float (H, W, C) in [0, 1]; saliency: (H, W). Colours are symmetric around zero (red =
    evidence for the target class, blue = against); opacity grows with |saliency|. ``colour_bar=False`` leaves the
    bar's place blank (the input panel of an overview, which has no map), so panels still line up.
    """
    up = max(1, 512 // max(saliency.shape))  # small images are drawn larger so the labels stay legible
    if up > 1:
        size = (saliency.shape[1] * up, saliency.shape[0] * up)
        image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR).reshape(size[1], size[0], -1)
        saliency = cv2.resize(saliency, size, interpolation=cv2.INTER_LINEAR)
    h, w = saliency.shape
    base = image if image.shape[2] == 3 else np.repeat(image, 3, axis=2)
    base = (np.clip(base[..., ::-1], 0, 1) * 255).astype(np.float32)  # RGB -> BGR
    vmax = float(np.abs(saliency).max()) or 1.0
    idx = np.clip(np.round((saliency / vmax + 1.0) * 127.5), 0, 255).astype(np.int64)
    colour = _LUT[idx].astype(np.float32)
    alpha = (0.65 * np.abs(saliency) / vmax)[..., None]
    over = (base * (1 - alpha) + colour * alpha).astype(np.uint8)

    scale = max(0.35, h / 600.0)
    thick = max(1, int(round(scale * 1.5)))
    bar_w, pad, label_w = max(12, w // 25), max(6, w // 60), int(70 * scale) + 10
    top = int(28 * scale) + 8
    canvas = np.full((h + top, w + pad * 2 + bar_w + label_w, 3), 255, np.uint8)
    canvas[top:, :w] = over
    font = cv2.FONT_HERSHEY_SIMPLEX
    ramp = np.linspace(255, 0, h).astype(np.int64)
    if colour_bar:
        canvas[top:, w + pad:w + pad + bar_w] = _LUT[ramp][:, None, :]
    for frac, text in ((0.0, f"+{vmax:.3g}"), (0.5, "0"), (1.0, f"-{vmax:.3g}")) if colour_bar else ():
        y = top + int(frac * (h - 1))
        y = min(max(y + int(5 * scale), top + int(12 * scale)), h + top - 3)
        cv2.putText(canvas, text, (w + pad * 2 + bar_w, y), font, 0.45 * scale, (0, 0, 0), thick, cv2.LINE_AA)
    cv2.putText(canvas, title, (4, top - 8), font, 0.5 * scale, (0, 0, 0), thick, cv2.LINE_AA)
    return canvas


def fidelity_text(exp: Explanation) -> str:
    """The one fidelity figure every output shows (console, overlay title, report): the evidence fit's held-out R^2,
    what the low-fidelity flag reads ("fidelity -" where the answer did not move)."""
    r2 = exp.r2_evidence
    return f"fidelity {r2:.2f}" if np.isfinite(r2) else "fidelity -"


def explanation_files(out_dir: Path, stem: str, image: np.ndarray, exp: Explanation,
                      report: dict[str, Any]) -> dict[Path, bytes]:
    """The three output files of one explanation, as bytes, keyed by their final paths."""
    buf = io.BytesIO()
    np.save(buf, exp.saliency.astype(np.float32))
    title = f"{exp.target_name}  p={exp.target_prob:.3f}  {fidelity_text(exp)}"
    ok, png = cv2.imencode(".png", render_overlay(image, exp.saliency, title))
    if not ok:  # pragma: no cover
        raise OutputError("OpenCV could not encode the overlay PNG.")
    text = json.dumps(report, indent=2, sort_keys=False, default=_json_default) + "\n"
    return {
        out_dir / f"{stem}.saliency.npy": buf.getvalue(),
        out_dir / f"{stem}.overlay.png": png.tobytes(),
        out_dir / f"{stem}.json": text.encode(),
    }


def finding_stems(names: list[str]) -> list[str]:
    """File-safe, distinct names for findings: letters, digits, '.', '_' and '-' kept, anything else '_'.

    Two findings never share a name: a clash gets its position appended ("a_b", "a_b-2")."""
    out: list[str] = []
    for i, name in enumerate(names):
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or f"finding{i}"
        stem, k = safe, 2
        while stem.lower() in {o.lower() for o in out}:  # case-insensitive file systems too
            stem, k = f"{safe}-{k}", k + 1
        out.append(stem)
    return out


SHARED_KEYS = ("probs", "fill", "queries", "requests", "traffic", "timings_s", "seed", "config", "adaptation", "notes", "model")


def shared_summary(explanations: list[Explanation]) -> dict[str, Any]:
    """What the findings of one query set share (the first one's summary of it), for their one JSON."""
    first = explanations[0].summary()
    return {**{k: first[k] for k in SHARED_KEYS}, "queries_shared": True}


def findings_files(out_dir: Path, stem: str, image: np.ndarray, explanations: list[Explanation],
                   report: dict[str, Any], extra_files: Sequence[str] = (),
                   per_finding: list[dict[str, Any]] | None = None) -> dict[Path, bytes]:
    """The files of several findings explained from one set of queries: per finding
    ``STEM.FINDING.saliency.npy`` and ``STEM.FINDING.overlay.png``, one ``STEM.findings.png`` overview (the
    image and every finding's overlay side by side) and one ``STEM.json``: ``report`` with a ``findings`` list
    (each entry updated with ``per_finding[i]``) and ``outputs``, every file's name, ``extra_files``'
    (written by the caller beside them) included."""
    files: dict[Path, bytes] = {}
    names = finding_stems([e.target_name for e in explanations])
    panels = [render_overlay(image, np.zeros(image.shape[:2], np.float32), "input", colour_bar=False)]
    findings: list[dict[str, Any]] = []
    for exp, name in zip(explanations, names):
        buf = io.BytesIO()
        np.save(buf, exp.saliency.astype(np.float32))
        title = f"{exp.target_name}  p={exp.target_prob:.3f}  {fidelity_text(exp)}"
        panel = render_overlay(image, exp.saliency, title)
        panels.append(panel)
        ok, png = cv2.imencode(".png", panel)
        if not ok:  # pragma: no cover
            raise OutputError("OpenCV could not encode the overlay PNG.")
        maps = [f"{stem}.{name}.saliency.npy", f"{stem}.{name}.overlay.png"]
        files[out_dir / maps[0]] = buf.getvalue()
        files[out_dir / maps[1]] = png.tobytes()
        s = exp.summary()
        findings.append({"name": exp.target_name, "index": exp.target, "probability": s["target_prob"],
                         "r2": s["r2"], "r2_heldout": s["r2_heldout"], "r2_evidence": s["r2_evidence"],
                         "warnings": exp.warnings, "warning_codes": codes_of(exp.warnings), "files": maps,
                         **{k: s[k] for k in ("response_sd", "lambda1_effective", "lambda1_capped", "intercept",
                                               "evidence", "neighbours", "patch_grid", "patch_weights", "patch_stderr")},
                         **({"censoring": s["censoring"]} if "censoring" in s else {}),
                         **(per_finding[len(findings)] if per_finding else {})})
    h = max(p.shape[0] for p in panels)
    row = np.full((h, sum(p.shape[1] for p in panels), 3), 255, np.uint8)
    x = 0
    for p in panels:
        row[:p.shape[0], x:x + p.shape[1]] = p
        x += p.shape[1]
    ok, png = cv2.imencode(".png", row)
    if not ok:  # pragma: no cover
        raise OutputError("OpenCV could not encode the overview PNG.")
    files[out_dir / f"{stem}.findings.png"] = png.tobytes()
    outputs = sorted([p.name for p in files] + [f"{stem}.json"] + list(extra_files))
    doc = {**report, "findings": findings, "outputs": outputs}
    files[out_dir / f"{stem}.json"] = (json.dumps(doc, indent=2, default=_json_default) + "\n").encode()
    return files


def _json_default(o: object) -> object:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return o.name
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
