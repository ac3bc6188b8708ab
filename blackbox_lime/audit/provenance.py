"""Provenance: ``DIR/provenance.json`` lists the SHA-256 of every input and output of an audit, with the
configuration, the model, the versions and the totals; ``audit verify`` recomputes every hash.

It is the one file of an audit that holds the inputs' paths, relative to the source folder: verify
needs them to re-read the inputs. The folder itself (whose path may carry a patient's name) is only in
the local store, audit.sqlite; the manifest names the study by its --study-name. The report and the
summary name cases only by their ids.
The run prints the SHA-256 of provenance.json itself; keep it apart from the folder to prove later
that the manifest was not changed either.
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import Any

from blackbox_lime._version import __version__, git_commit
from blackbox_lime.audit.store import STORE_NAME, AuditStore
from blackbox_lime.outputs import atomic_write_bytes, file_sha256

PROVENANCE_NAME = "provenance.json"
_NOT_OUTPUTS = {STORE_NAME, STORE_NAME + "-wal", STORE_NAME + "-shm", STORE_NAME + "-journal", PROVENANCE_NAME}


def versions() -> dict[str, Any]:
    out: dict[str, Any] = {"blackbox-lime": __version__, "python": platform.python_version(),
                           "platform": platform.platform(terse=True)}
    for name in ("numpy", "scipy", "onnxruntime", "cv2", "pydicom"):
        mod = sys.modules.get(name)
        if mod is None:
            try:
                mod = __import__(name)
            except ImportError:
                continue
        out[name if name != "cv2" else "opencv"] = getattr(mod, "__version__", None)
    out["git_commit"] = git_commit()
    return out


def output_files(out_dir: Path) -> list[str]:
    """Every output of the audit folder (relative POSIX paths, sorted): all but the store and provenance."""
    return sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*")
                  if p.is_file() and p.name not in _NOT_OUTPUTS and not p.name.endswith(".part"))


def write_provenance(out_dir: Path, store: AuditStore) -> str:
    """(Re)write DIR/provenance.json; returns its SHA-256."""
    from blackbox_lime.audit.report import public_config, study_name

    inputs = []
    for c in store.cases():
        rec = c.record
        item: dict[str, Any] = {"case": c.id, "state": c.state, "image": c.image,
                                "sha256": None if rec is None else rec.input_sha256}
        if c.mask is not None:
            item.update(mask=c.mask, mask_sha256=None if rec is None else rec.mask_sha256)
        inputs.append(item)
    doc = {
        "tool": "blackbox-lime",
        "versions": versions(),
        "model": store.get("model"),
        "config": public_config(store),
        "source": {"name": study_name(store), "kind": store.get("source_kind"),
                   "paths": "inputs[].image is STUDY/SERIES/INSTANCE UIDs in the PACS; audit.sqlite records which"
                   if store.get("source_kind") == "pacs" else
                   "inputs[].image and .mask are relative to the study's folder, which only audit.sqlite "
                   "records (audit verify --source FOLDER reads them from another place)"},
        "started": store.get("created"),
        "written": store.get("updated"),
        "totals": store.totals(),
        "budget": store.get("budget"),
        "inputs": inputs,
        "outputs": {name: file_sha256(out_dir / name) for name in output_files(out_dir)},
    }
    data = (json.dumps(doc, indent=1) + "\n").encode()
    atomic_write_bytes(out_dir / PROVENANCE_NAME, data)
    import hashlib

    return hashlib.sha256(data).hexdigest()


def verify(out_dir: Path, source: Path | None = None) -> tuple[bool, str, int]:
    """Recompute every hash in DIR/provenance.json. -> (all match, message, files checked).

    The inputs are read from ``source``, else from the folder the audit's store records (older manifests name it
    themselves). The message names the first file that differs, is missing or is not in the manifest."""
    path = out_dir / PROVENANCE_NAME
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return False, f"{path} is missing: nothing to verify against (audit run writes it).", 0
    except (OSError, ValueError) as exc:
        return False, f"{path} is not readable provenance ({exc}).", 0
    in_pacs = doc.get("source", {}).get("kind") == "pacs"
    root = source if source is not None else _recorded_root(out_dir, doc)
    if in_pacs:
        root = None
    elif root is None:
        return False, (f"the study's folder is not recorded here ({STORE_NAME} is missing); name it: audit verify DIR "
                       "--source FOLDER."), 0
    checked = 0
    for item in [] if in_pacs else doc["inputs"]:
        for key, sha in (("image", item.get("sha256")), ("mask", item.get("mask_sha256"))):
            if key not in item or sha is None:
                continue
            p = root / item[key]
            if not p.is_file():
                return False, f"input of case {item['case']} is missing: {item[key]}", checked
            now = file_sha256(p)
            checked += 1
            if now != sha:
                return False, (f"input of case {item['case']} differs: {item[key]} (SHA-256 recorded {sha[:16]}..., now "
                               f"{now[:16]}...)"), checked
    recorded = doc["outputs"]
    for name, sha in recorded.items():
        p = out_dir / name
        if not p.is_file():
            return False, f"output missing: {name}", checked
        now = file_sha256(p)
        checked += 1
        if now != sha:
            return False, f"output differs: {name} (SHA-256 recorded {sha[:16]}..., now {now[:16]}...)", checked
    extra = [n for n in output_files(out_dir) if n not in recorded]
    if extra:
        return False, f"output not in the provenance manifest: {extra[0]}", checked
    where = " (the inputs are in PACS: their SHA-256 are recorded, not read again)" if in_pacs else ""
    return True, f"all {checked} files match {PROVENANCE_NAME}{where}", checked


def _recorded_root(out_dir: Path, doc: dict[str, Any]) -> Path | None:
    if "root" in doc.get("source", {}):  # a manifest written before the root left it
        return Path(doc["source"]["root"])
    if not (out_dir / STORE_NAME).is_file():
        return None
    with AuditStore.open(out_dir / STORE_NAME, readonly=True) as store:
        root = store.get("root")
    return None if root is None else Path(root)


def refresh_report_hashes(out_dir: Path) -> None:
    """After ``audit report`` rewrote report.html and summary.json, record their new hashes, and only theirs:
    every other entry stays as the run wrote it, so a changed case file is still caught by verify."""
    path = out_dir / PROVENANCE_NAME
    if not path.is_file():
        return
    doc = json.loads(path.read_text())
    for name in ("report.html", "summary.json"):
        if (out_dir / name).is_file():
            doc["outputs"][name] = file_sha256(out_dir / name)
    atomic_write_bytes(path, (json.dumps(doc, indent=1) + "\n").encode())
