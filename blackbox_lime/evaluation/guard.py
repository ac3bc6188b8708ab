"""The refactoring guard: every map, JSON field and audit output of a fixed set of cases, as hashes.

    python -m blackbox_lime.evaluation.guard --write docs/guard/manifest.json    # before a refactor
    python -m blackbox_lime.evaluation.guard --check docs/guard/manifest.json    # after it: exit 1 on any change

A change of code structure must not change what the tool writes. The cases run the CLI itself, in this
process, over the paths the outputs depend on:

- ``chest``: the demo CNN on a chest phantom with the whole method (fill auto, STTA, the evidence bank);
- ``ultrasound``: the demo ViT on an ultrasound phantom, fill auto with an MAE challenger (zero);
- ``fundus``: the fundus CNN on a colour phantom the MAE does not know (the pilot between classic fills);
- ``brain``: the brain CNN with the MAE forced (the reconstruction check's off-domain warning);
- ``brain-blur``: the same image with a fixed classic fill and no map smoothing;
- ``multilabel``: the multi-label CNN, every finding from one query set;
- ``remote``: the four-class CNN behind a loopback vendor file API that lists only its top 2 labels
  (censored answers), through an endpoint profile;
- ``audit``: ``audit run`` over two example images, its per-case JSONs and maps.

Each output file is hashed (SHA-256). A JSON file is hashed field by field after dropping what
legitimately changes between runs (timings, wall seconds, versions, dates, the output paths), so a
check names the field that moved; the order of the fields is hashed too (``<key order>``). The hashes are of this machine's floating point: write the manifest
and check it on the same machine (a manifest from another CPU may differ in the last bit of a float).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

#: JSON keys whose values change from run to run by design; dropped before hashing.
VOLATILE = frozenset({"timings", "timings_s", "seconds", "wall_s", "wall_seconds", "version", "git_commit", "created",
                      "started", "finished", "elapsed_s", "time", "date", "out", "output", "path", "paths",
                      "source_path", "files", "updated", "salt", "python", "platform", "host", "url", "endpoint"})


def _png(path: Path, image: np.ndarray) -> Path:
    px = np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
    px = px[..., 0] if px.ndim == 3 and px.shape[2] == 1 else px
    ok = cv2.imwrite(str(path), px if px.ndim == 2 else cv2.cvtColor(px, cv2.COLOR_RGB2BGR))
    assert ok, path
    return path


def _strip(doc: Any) -> Any:
    if isinstance(doc, dict):
        return {k: _strip(v) for k, v in doc.items() if k not in VOLATILE}
    if isinstance(doc, list):
        return [_strip(v) for v in doc]
    if isinstance(doc, float):
        return float.hex(doc)  # exact
    return doc


def _flatten(doc: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(doc, dict) and doc:
        for k, v in doc.items():
            yield from _flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(doc, list) and doc and any(isinstance(v, (dict, list)) for v in doc):
        for i, v in enumerate(doc):
            yield from _flatten(v, f"{prefix}[{i}]")
    else:
        yield prefix, doc


def _case_names(folder: Path) -> dict[str, str]:
    """An audit's case ids (a hash salted at random per audit) -> case-1, case-2, ... in the summary's order."""
    summary = folder / "summary.json"
    ids = re.findall(r"case-[0-9a-f]{12}", summary.read_text()) if summary.exists() else []
    return {cid: f"case-{i + 1}" for i, cid in enumerate(dict.fromkeys(ids))}


def hash_outputs(folder: Path) -> dict[str, str]:
    """{relative file (or file:json.path): sha256 hex} for every output file under ``folder``."""
    out: dict[str, str] = {}
    names = _case_names(folder)

    def rename(text: str) -> str:
        return re.sub(r"case-[0-9a-f]{12}", lambda m: names.get(m.group(0), m.group(0)), text)

    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = rename(path.relative_to(folder).as_posix())
        if path.suffix in (".sqlite", ".log", ".html", ".lock") or path.name in ("provenance.json", "README.txt"):
            continue  # stores, logs and reports carry dates; their content is checked through the case JSONs
        if path.suffix == ".json":
            doc = _strip(json.loads(rename(path.read_text())))
            flat = list(_flatten(doc))
            for key, value in flat:
                out[f"{rel}:{key}"] = hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]
            out[f"{rel}:<key order>"] = hashlib.sha256("\n".join(k for k, _ in flat).encode()).hexdigest()[:16]
        else:
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return out


def _cli(argv: list[str]) -> None:
    from blackbox_lime.cli import main

    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(argv)
    if code != 0:
        raise RuntimeError(f"blackbox-lime {' '.join(argv)} exited {code}")


def _cases(work: Path) -> dict[str, Callable[[Path], None]]:
    from blackbox_lime.evaluation.phantoms import make_exclusive_phantom, make_multilabel_phantom, make_phantom
    from blackbox_lime.models import bundled_example, bundled_model

    chest = str(bundled_example("chest_xray_test_00001.png"))
    us = str(bundled_example("breast_us_test_00000.png"))
    fundus = str(_png(work / "fundus.png", make_phantom("fundus", "test", 3).image))
    brain = str(_png(work / "brain.png", make_phantom("brain_mri", "test", 2).image))
    multi = str(_png(work / "multilabel.png", make_multilabel_phantom("test", 2).image))
    four = str(_png(work / "chest4.png", make_exclusive_phantom("test", 5)[0].image))
    bank = str(bundled_model("bank_chest_xray.npz"))

    def remote(out: Path) -> None:
        from blackbox_lime.evaluation.file_server import FileApiServer
        from blackbox_lime.models import resolve_model

        with FileApiServer(resolve_model("chest4-cnn"), top_k=2) as server:
            prof = work / "profile.toml"
            prof.write_text(f'url = "{server.url}"\nprotocol = "file"\npreset = "huggingface"\n'
                            '[response]\ntop_k = 2\n[output]\nkind = "probabilities"\n'
                            'class_names = ["normal", "nodule", "consolidation", "effusion"]\n'
                            '[limits]\nconcurrency = 4\n')
            _cli(["explain", four, "--endpoint", str(prof), "--samples", "300", "--out", str(out), "--quiet"])

    def audit(out: Path) -> None:
        src = work / "audit_src"
        src.mkdir(exist_ok=True)
        for name in ("chest_xray_test_00000.png", "chest_xray_test_00002.png"):
            shutil.copy(bundled_example(name), src / name)
        _cli(["audit", "run", str(src), "--model", "demo-cnn", "--samples", "200", "--out", str(out), "--quiet"])

    return {
        "chest": lambda out: _cli(["explain", chest, "--model", "demo-cnn", "--stta", "--bank", bank,
                                   "--out", str(out), "--quiet"]),
        "ultrasound": lambda out: _cli(["explain", us, "--model", "demo-vit", "--mae-challenger", "zero",
                                        "--out", str(out), "--quiet"]),
        "fundus": lambda out: _cli(["explain", fundus, "--model", "fundus-cnn", "--out", str(out), "--quiet"]),
        "brain": lambda out: _cli(["explain", brain, "--model", "brain-cnn", "--fill", "mae", "--samples", "300",
                                   "--out", str(out), "--quiet"]),
        "brain-blur": lambda out: _cli(["explain", brain, "--model", "brain-cnn", "--fill", "blur", "--map-sigma",
                                        "0", "--samples", "300", "--seed", "3", "--out", str(out), "--quiet"]),
        "multilabel": lambda out: _cli(["explain", multi, "--model", "multilabel-cnn", "--target", "all",
                                        "--samples", "300", "--out", str(out), "--quiet"]),
        "remote": remote,
        "audit": audit,
    }


def run_guard(only: list[str] | None = None) -> dict[str, dict[str, str]]:
    """{case: {output: hash}} for every case (or those in ``only``)."""
    from tqdm import tqdm

    manifest: dict[str, dict[str, str]] = {}
    work = Path(tempfile.gettempdir()) / "blackbox-lime-guard"  # a fixed place: audit case ids follow the path
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        cases = _cases(work)
        names = [n for n in cases if only is None or n in only]
        for name in tqdm(names, unit="case", file=sys.stderr, leave=False):
            out = work / "out" / name
            cases[name](out)
            manifest[name] = hash_outputs(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return manifest


def compare(old: dict[str, dict[str, str]], new: dict[str, dict[str, str]]) -> list[str]:
    """Lines naming every output that changed, appeared or disappeared."""
    lines = []
    for case in sorted(set(old) | set(new)):
        a, b = old.get(case, {}), new.get(case, {})
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                what = "new" if key not in a else "gone" if key not in b else "changed"
                lines.append(f"{case}: {key} {what}")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m blackbox_lime.evaluation.guard", description=__doc__.split("\n")[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--write", type=Path, help="write the manifest of this tree's outputs here")
    g.add_argument("--check", type=Path, help="compare this tree's outputs with a manifest; exit 1 on any change")
    p.add_argument("--cases", help="a comma list of cases (default: all)")
    a = p.parse_args(argv)
    only = a.cases.split(",") if a.cases else None
    new = run_guard(only)
    if a.write:
        a.write.parent.mkdir(parents=True, exist_ok=True)
        a.write.write_text(json.dumps(new, indent=1, sort_keys=True) + "\n")
        print(f"{sum(map(len, new.values()))} outputs of {len(new)} cases written to {a.write}")
        return 0
    old = json.loads(a.check.read_text())
    if only is not None:
        old = {k: v for k, v in old.items() if k in only}
    diff = compare(old, new)
    for line in diff:
        print(line)
    print(f"{sum(map(len, new.values()))} outputs of {len(new)} cases: "
          + ("identical" if not diff else f"{len(diff)} differ"))
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())
