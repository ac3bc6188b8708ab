"""An audit from PACS against the same audit from a folder: what retrieval (and storing the maps back) costs.

    python -m blackbox_lime.evaluation.bench_pacs --cases 24 --reps 2 --out docs/bench_pacs

The study is ``--cases`` chest phantoms of the test split (half abnormal) written as CR DICOM files (16-bit,
224 x 224, one series, canary patient fields). The same files are audited three ways with the same options
(``demo-cnn``, the default explanation), each once per round, the order alternating between rounds:

- ``folder``: ``audit run FOLDER`` (the files on this machine's disk);
- ``PACS``: ``audit run http://127.0.0.1:PORT/dicom-web/studies/UID`` from a real Orthanc with its DICOMweb
  plugin (``evaluation/orthanc_server.py``) on loopback: the case list by QIDO-RS, every instance by WADO-RS,
  the next cases retrieved while the current one is explained;
- ``PACS + STOW``: the same, each case's Parametric Map stored back to Orthanc with STOW-RS as it is made.

It prints and writes the wall time of each (median over rounds) and its ratio to the folder audit, and checks
that every map of the PACS audits equals the folder audit's, bit for bit. Needs Orthanc (``apt-get install
orthanc orthanc-dicomweb``) and the dicom extra.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from blackbox_lime.evaluation.bench_audit import write_table

STUDY = "1.2.826.0.1.3680043.8.498.99001"


def study(n: int) -> list[bytes]:
    """``n`` CR DICOM files of chest phantoms (test split, abnormal and normal alternating), one study."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian

    from blackbox_lime.evaluation.phantoms import make_phantom

    series = STUDY + ".1"
    out = []
    for i in range(n):
        ph = make_phantom("chest_xray", "test", i)
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.1")  # CR Image Storage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(f"{series}.{i + 1}")
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = STUDY, series, STUDY + ".9"
        ds.PatientName, ds.PatientID, ds.Modality = "CANARY^BENCH", "CANARY-BENCH", "CR"
        ds.StudyDate, ds.StudyTime, ds.SeriesNumber, ds.InstanceNumber = "20260101", "120000", 1, i + 1
        ds.PatientBirthDate, ds.PatientSex, ds.StudyID, ds.AccessionNumber = "", "O", "1", ""
        ds.ReferringPhysicianName, ds.Manufacturer, ds.PatientOrientation = "", "blackbox-lime bench", ["L", "P"]
        ds.Rows, ds.Columns = ph.image.shape[:2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelSpacing, ds.SliceThickness, ds.BurnedInAnnotation = [0.5, 0.5], 1.0, "NO"
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelData = np.round(ph.image[..., 0] * 4095).astype(np.uint16).tobytes()
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return out


def audit(source: str, out: Path, extra: list[str]) -> float:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "blackbox_lime", "audit", "run", source, "--model", "demo-cnn",
                        "--out", str(out), "--quiet", *extra], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"audit of {source} exited {r.returncode}: {r.stderr[-1500:]}")
    return wall


def maps(out: Path) -> list[np.ndarray]:
    summary = json.loads((out / "summary.json").read_text())
    return [np.load(out / next(o for o in c["outputs"] if o.endswith(".saliency.npy"))) for c in summary["cases"]]


def run(n: int, reps: int) -> dict[str, Any]:
    from blackbox_lime.evaluation import orthanc_server

    files = study(n)
    walls: dict[str, list[float]] = {"folder": [], "PACS": [], "PACS + STOW": []}
    identical = True
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = root / "study"
        folder.mkdir()
        for i, data in enumerate(files):
            (folder / f"{i:03d}.dcm").write_bytes(data)
        with orthanc_server.start(root / "orthanc") as pacs:
            for data in files:
                pacs.upload(data)
            url = f"{pacs.dicomweb}/studies/{STUDY}"
            setups = {"folder": (str(folder), []), "PACS": (url, []),
                      "PACS + STOW": (url, ["--stow", pacs.dicomweb])}
            order = list(setups)
            for rep in range(reps):
                for name in (order if rep % 2 == 0 else order[::-1]):
                    out = root / f"{name.replace(' ', '').replace('+', '-')}-{rep}"
                    source, extra = setups[name]
                    walls[name].append(audit(source, out, extra))
                    print(f"  round {rep + 1}/{reps} {name}: {walls[name][-1]:.1f} s", flush=True)
                reference = maps(root / f"folder-{rep}")
                for name in ("PACS", "PACS-STOW"):
                    identical &= all(np.array_equal(a, b) for a, b in zip(reference, maps(root / f"{name}-{rep}")))
            stored = len(pacs.instances()) - n
    base = statistics.median(walls["folder"])
    rows = [{"setup": name, "wall_s": statistics.median(w), "ratio_to_folder": statistics.median(w) / base,
             "walls": [round(x, 2) for x in w]} for name, w in walls.items()]
    return {"cases": n, "reps": reps, "rows": rows, "maps_identical": identical, "maps_stored": stored,
            "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count()}


def markdown(result: dict[str, Any], command: str) -> str:
    lines = [f"`{command}`", "",
             f"{result['cases']} CR cases (chest phantoms, 224 x 224, 16-bit), `demo-cnn`, the default explanation; "
             f"median of {result['reps']} rounds, order alternating; Orthanc 1.10 with its DICOMweb plugin on "
             f"loopback; {result['cpus']} CPUs.", "",
             "| audit | wall (median) | ratio to folder | every round |", "|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['setup']} | {r['wall_s']:.1f} s | {r['ratio_to_folder']:.3f} | "
                     f"{', '.join(f'{w:.1f}' for w in r['walls'])} s |")
    lines += ["", f"- every map of the PACS audits equals the folder audit's, bit for bit: "
                  f"{'yes' if result['maps_identical'] else 'NO'}",
              f"- Parametric Maps in Orthanc after the {result['reps']} PACS + STOW audits: {result['maps_stored']} "
              f"({result['cases']} per audit; each audit's maps are a series of their own)"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m blackbox_lime.evaluation.bench_pacs", description=__doc__.split("\n")[0])
    p.add_argument("--cases", type=int, default=24)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--out", default=None, help="folder for results.json and table.md")
    a = p.parse_args(argv)
    result = run(a.cases, a.reps)
    command = f"python -m blackbox_lime.evaluation.bench_pacs --cases {a.cases} --reps {a.reps}"
    result["command"] = command
    text = markdown(result, command)
    if a.out:
        write_table(Path(a.out), text.rstrip("\n").split("\n"), result)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
