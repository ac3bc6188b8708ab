"""The study an audit covers: a folder of images (searched recursively) or a CSV manifest.

A manifest has the column ``image`` and optionally ``id``, ``mask`` (a region of interest, for the
``shortcut_outside_roi`` flag) and ``label``; paths are relative to the manifest's folder. Cases are
named by the manifest's ``id`` or else by a salted hash of the image's path, so that no file or
patient name reaches the report or the summary.
"""

from __future__ import annotations

import csv
import hashlib
import re
from pathlib import Path

from blackbox_lime.audit.store import Case
from blackbox_lime.image_io import IMAGE_SUFFIXES, ImageError, find_images

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class SourceError(ValueError):
    """The audit's source is missing, empty or malformed; the message names the fix."""


def case_id(salt: str, relative: str) -> str:
    return "case-" + hashlib.sha256(f"{salt}\0{relative}".encode()).hexdigest()[:12]


def source_root(source: str | Path) -> Path:
    """The folder the cases' paths are relative to: the folder itself, or the manifest's folder."""
    p = Path(source)
    return p if p.is_dir() else p.parent


def read_source(source: str | Path, salt: str) -> list[Case]:
    """The cases of a folder or a manifest, in order; raises SourceError naming what is wrong."""
    p = Path(source)
    if p.is_dir():
        try:
            found = find_images([p])
        except ImageError as exc:  # pragma: no cover - the folder exists
            raise SourceError(str(exc)) from None
        if not found:
            raise SourceError(f"{source}: no images found (looked recursively for {', '.join(IMAGE_SUFFIXES)}). "
                              "Give a folder of images or a CSV manifest with an image column.")
        rel = [f.relative_to(p).as_posix() for f in found]
        return [Case(i, case_id(salt, r), r) for i, r in enumerate(rel)]
    if not p.exists():
        raise SourceError(f"{source}: no such file or folder. Give a folder of images or a CSV manifest.")
    if p.suffix.lower() != ".csv":
        raise SourceError(f"{source} is neither a folder nor a CSV manifest (.csv). Give a folder of images or a "
                          "manifest with the columns image and optionally id, mask, label.")
    return _read_manifest(p, salt)


def _read_manifest(path: Path, salt: str) -> list[Case]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SourceError(f"{path.name} is not a readable CSV manifest ({exc}).") from None
    if "image" not in columns:
        raise SourceError(f"{path.name} lacks the column image (it has: {', '.join(columns) or 'none'}). A manifest "
                          "needs image and optionally id, mask, label.")
    if not rows:
        raise SourceError(f"{path.name} lists no cases. Add one row per image.")
    root = path.parent
    cases: list[Case] = []
    seen: set[str] = set()
    missing: list[str] = []
    for line, r in enumerate(rows, start=2):
        image = (r.get("image") or "").strip()
        if not image:
            raise SourceError(f"{path.name} line {line}: the image column is empty.")
        cid = (r.get("id") or "").strip() or case_id(salt, image)
        if not _SAFE_ID.match(cid):
            raise SourceError(f"{path.name} line {line}: id {cid!r} must be 1-64 letters, digits, '.', '_' or '-' "
                              "(it names the case's files).")
        if cid in seen:
            raise SourceError(f"{path.name} line {line}: id {cid!r} is used twice; ids must be unique.")
        seen.add(cid)
        mask = (r.get("mask") or "").strip() or None
        for rel in (image, mask):
            if rel is not None and not (root / rel).is_file():
                missing.append(f"line {line}: {rel}")
        label = (r.get("label") or "").strip() or None
        cases.append(Case(len(cases), cid, image, mask, label))
    if missing:
        raise SourceError(f"{path.name}: {len(missing)} listed file(s) not found ({'; '.join(missing[:3])}"
                          + (" ..." if len(missing) > 3 else "") + "). Paths are relative to the manifest's folder.")
    return cases
