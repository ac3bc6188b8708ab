"""blackbox-lime audit run | summary | verify | report, end to end through the CLI: resume, refusals, bad
input, budgets, provenance, privacy, and the report rendered in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from blackbox_lime.models import bundled_model
from blackbox_lime.evaluation.phantoms import write_phantoms
from blackbox_lime.cli import main

MODEL = str(bundled_model("shortcut_marker.onnx"))
FAST = ["--samples", "60", "--fill", "mean", "--quiet"]


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("study")
    write_phantoms(d, "chest_xray", "test", 4, marker="laterality")
    return d


def _run(source: Path | str, out: Path, *extra: str) -> int:
    return main(["audit", "run", str(source), "--model", MODEL, "--out", str(out), *FAST, *extra])


def _summary(out: Path, capsys) -> dict:
    capsys.readouterr()
    assert main(["audit", "summary", str(out), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _maps(out: Path) -> list[bytes]:
    s = json.loads((out / "summary.json").read_text())
    return [(out / next(o for o in c["outputs"] if o.endswith(".saliency.npy"))).read_bytes() for c in s["cases"]]


def test_audit_run_explains_every_case_and_summary_report_and_verify_agree(study, tmp_path, capsys):
    out = tmp_path / "audit"
    assert _run(study, out) == 0
    s = _summary(out, capsys)
    st = s["study"]
    assert (st["cases"], st["done"], st["failed"], st["pending"], st["complete"]) == (4, 4, 0, 0, True)
    assert st["totals"]["sent"] == 4 * 60 and st["totals"]["reused"] == 0
    for c in s["cases"]:
        assert c["state"] == "done" and c["queries"] == 60
        for o in c["outputs"]:
            assert (out / o).is_file()
        assert set(c["flags"]) <= {"shortcut_border", "shortcut_outside_anatomy", "low_fidelity", "flat_answer"}
    assert (out / "report.html").is_file()
    assert main(["audit", "verify", str(out)]) == 0
    assert "all 18 files match provenance.json" in capsys.readouterr().out  # 4 inputs, 12 case files, report, summary
    # a second run resumes a complete audit: nothing is sent again
    assert _run(study, out) == 0
    assert _summary(out, capsys)["study"]["totals"]["sent"] == 4 * 60


def test_summary_prints_a_table(study, tmp_path, capsys):
    out = tmp_path / "audit"
    assert _run(study, out) == 0
    capsys.readouterr()
    assert main(["audit", "summary", str(out)]) == 0
    text = capsys.readouterr().out
    assert "4 cases; 4 done, 0 failed, 0 pending (complete)" in text
    assert "240 images sent" in text and text.count("case-") == 4


def test_verify_names_the_first_changed_byte(study, tmp_path, capsys):
    out = tmp_path / "audit"
    assert _run(study, out) == 0
    s = json.loads((out / "summary.json").read_text())
    target = out / s["cases"][1]["outputs"][0]
    data = bytearray(target.read_bytes())
    data[-1] ^= 1
    target.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["audit", "verify", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"output differs: {s['cases'][1]['outputs'][0]} (SHA-256 recorded" in err


def test_verify_catches_a_changed_input_and_an_added_file(study, tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(study, src)
    out = tmp_path / "audit"
    assert _run(src, out) == 0
    (out / "cases" / "extra.txt").write_text("x")
    assert main(["audit", "verify", str(out)]) == 1
    assert "output not in the provenance manifest: cases/extra.txt" in capsys.readouterr().err
    (out / "cases" / "extra.txt").unlink()
    first = sorted(src.glob("*[0-9].png"))[0]
    first.write_bytes(first.read_bytes() + b"\0")
    assert main(["audit", "verify", str(out)]) == 1
    assert f"differs: {first.name} (SHA-256 recorded" in capsys.readouterr().err  # relative: no study path
    moved = tmp_path / "moved"
    shutil.copytree(study, moved)  # the study, unchanged, in another place
    assert main(["audit", "verify", str(out), "--source", str(moved)]) == 0


def test_report_rewrites_the_report_and_verify_still_passes(study, tmp_path, capsys):
    out = tmp_path / "audit"
    assert _run(study, out) == 0
    (out / "report.html").unlink()
    assert main(["audit", "report", str(out)]) == 0
    assert (out / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert main(["audit", "verify", str(out)]) == 0


def test_another_configuration_on_the_same_folder_is_refused_naming_the_option(study, tmp_path, capsys):
    out = tmp_path / "audit"
    assert _run(study, out) == 0
    before = sorted(p.name for p in out.rglob("*"))
    capsys.readouterr()
    assert main(["audit", "run", str(study), "--model", MODEL, "--out", str(out), "--samples", "80", "--fill", "mean",
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"error: {out} holds an audit started with other options: --samples 60 (this command: 80). Resume it " \
           "with the same options, or give a new --out." in err
    assert sorted(p.name for p in out.rglob("*")) == before
    assert _run(study, out, "--seed", "3") == 2
    assert "--seed 0 (this command: 3)" in capsys.readouterr().err


def test_a_budget_spent_mid_audit_stops_cleanly_and_a_larger_one_resumes_identically(study, tmp_path, capsys):
    ref = tmp_path / "ref"
    assert _run(study, ref) == 0
    out = tmp_path / "audit"
    capsys.readouterr()
    assert _run(study, out, "--budget", "150") == 4
    err = capsys.readouterr().err
    # the third case's unperturbed image (1 query) fitted, its 59 samples did not
    assert "stopped: The audit's budget is spent: 121 of 150 images sent, and the next request needs 59" in err
    s = _summary(out, capsys)["study"]
    assert (s["done"], s["pending"], s["totals"]["sent"]) == (2, 2, 121)
    assert main(["audit", "verify", str(out)]) == 0  # what was written so far is consistent
    assert _run(study, out, "--budget", "240") == 0
    s = _summary(out, capsys)["study"]
    assert s["complete"] and s["totals"]["sent"] == 240 and s["totals"]["reused"] == 1  # nothing paid twice
    assert _maps(out) == _maps(ref)


def test_unreadable_files_fail_their_case_and_the_audit_goes_on_with_exit_3(study, tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(study, src)
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    (src / "sub").mkdir()
    np.save(src / "sub" / "empty.npy", np.zeros((0, 5)))
    out = tmp_path / "audit"
    assert _run(src, out) == 3
    err = capsys.readouterr().err
    assert err.count("failed: ") == 2
    s = _summary(out, capsys)
    failed = [c for c in s["cases"] if c["state"] == "failed"]
    assert len(failed) == 2 and all(c["reason"] for c in failed)
    assert s["study"]["done"] == 4
    assert "broken.png" not in (out / "report.html").read_text()


@pytest.mark.parametrize("setup, message", [
    (lambda d: d.mkdir(), "no images found (looked recursively for .png"),
    (lambda d: (d.parent / "m.csv").write_text("path,label\na.png,1\n"),
     "m.csv lacks the column image (it has: path, label)"),
    (lambda d: (d.parent / "m.csv").write_text("image,id\nmissing.png,a\n"),
     "m.csv: 1 listed file(s) not found (line 2: missing.png)"),
    (lambda d: (d.parent / "m.csv").write_text("image,id\nx.png,a\nx.png,a\n"), "id 'a' is used twice"),
    (lambda d: (d.parent / "m.csv").write_text("image,id\nx.png,../etc\n"), "id '../etc' must be 1-64 letters"),
])
def test_a_bad_source_exits_2_and_writes_nothing(tmp_path, capsys, setup, message):
    d = tmp_path / "src"
    cv2.imwrite(str(tmp_path / "x.png"), np.full((32, 32), 100, np.uint8))
    setup(d)
    source = d if d.exists() else tmp_path / "m.csv"
    out = tmp_path / "audit"
    assert _run(source, out) == 2
    err = capsys.readouterr().err
    assert message in err and "Nothing was written." in err and "Traceback" not in err
    assert not out.exists()


def test_out_being_a_file_or_a_foreign_folder_exits_2(study, tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert _run(study, f) == 2
    assert f"--out {f} is a file; give a folder for the audit" in capsys.readouterr().err
    d = tmp_path / "busy"
    d.mkdir()
    (d / "notes.txt").write_text("mine")
    assert _run(study, d) == 2
    assert "holds other files and no audit; give a new or empty folder" in capsys.readouterr().err
    assert [p.name for p in d.iterdir()] == ["notes.txt"]


def test_an_unreachable_model_exits_2_and_writes_nothing(study, tmp_path, capsys):
    out = tmp_path / "audit"
    assert main(["audit", "run", str(study), "--model", "http://127.0.0.1:9/v2/models/m", "--out", str(out),
                 "--quiet"]) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert not out.exists()


def test_summary_verify_report_of_a_folder_without_an_audit_exit_2(tmp_path, capsys):
    for cmd in ("summary", "report"):
        assert main(["audit", cmd, str(tmp_path)]) == 2
        assert "holds no audit (audit.sqlite is missing)" in capsys.readouterr().err
    assert main(["audit", "verify", str(tmp_path)]) == 1
    assert "provenance.json is missing" in capsys.readouterr().err


def test_a_manifest_names_cases_by_id_and_flags_evidence_outside_its_roi(study, tmp_path, capsys):
    rows = ["image,id,mask,label"]
    for i, png in enumerate(sorted(study.glob("*[0-9].png"))):
        rows.append(f"{png.name},patient-free-{i},{png.stem}.mask.png,1")
    (study / "manifest.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "audit"
    assert _run(study / "manifest.csv", out) in (0, 3)
    s = _summary(out, capsys)
    assert [c["id"] for c in s["cases"]] == [f"patient-free-{i}" for i in range(4)]
    marked = [c for c in s["cases"] if c["state"] == "done" and "shortcut_border" in c["flags"]]
    assert marked and all(c["shares"]["outside_roi"] is not None for c in s["cases"] if c["state"] == "done")
    assert all("shortcut_outside_roi" in c["flags"] for c in marked)


def test_no_patient_data_or_file_name_in_the_report_summary_or_case_json(tmp_path, capsys):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    src = tmp_path / "src"
    src.mkdir()
    dcm = Path(get_testdata_file("CT_small.dcm"))
    shutil.copy(dcm, src / "Doe_Jane_CT_small.dcm")
    ds = pydicom.dcmread(dcm)
    secrets = [str(ds.PatientName), str(ds.PatientID), str(ds.StudyInstanceUID), "Doe_Jane"]
    out = tmp_path / "audit"
    assert _run(src, out) == 0
    texts = [(out / n).read_text() for n in ("report.html", "summary.json")]
    texts += [p.read_text() for p in (out / "cases").glob("*.json")]
    texts = [re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", t) for t in texts]  # base64 may spell anything
    assert len(texts) == 3 and "CT" in str(ds.Modality)
    for text in texts:
        for secret in secrets:
            assert secret not in text


def _screenshot(exe: str, url: str, shot: Path) -> np.ndarray:
    r = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        "--disable-background-networking", "--window-size=1200,1600", "--virtual-time-budget=3000",
                        f"--screenshot={shot}", url], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    img = cv2.imread(str(shot))
    assert img.shape[:2] == (1600, 1200)
    return img


def test_the_report_renders_in_headless_chromium(study, tmp_path):
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium); .ci/run installs it")
    out = tmp_path / "audit"
    assert _run(study, out) == 0
    html = (out / "report.html").read_text()
    assert "http://" not in html and "https://" not in html and "src='data:image/webp;base64," in html
    assert "border share (flag &gt; 0.7)" in html and "outside ROI share (flag &gt; 0.9)" in html
    img = _screenshot(exe, (out / "report.html").as_uri(), tmp_path / "shot.png")
    ink = (img.min(axis=2) < 200).mean()  # the share of pixels that are not (near) white
    red = ((img[..., 2] > 150) & (img[..., 1] < 120) & (img[..., 0] < 120)).sum()  # the overlays' red evidence
    assert ink > 0.02 and red > 50, (ink, red)
    # a click on a card opens its overlay full size over a dark backdrop (a #zoom=ID link does the same)
    case = json.loads((out / "summary.json").read_text())["cases"][0]["id"]
    zoomed = _screenshot(exe, (out / "report.html").as_uri() + f"#zoom={case}", tmp_path / "zoom.png")
    dark = (zoomed.max(axis=2) < 60).mean()
    assert dark > 0.2, dark  # the backdrop covers the page
    inner = zoomed[400:1200, 300:900]
    assert (inner.min(axis=2) > 200).mean() > 0.1  # and the overlay, white background and all, sits on it


def test_the_report_of_50_cases_stays_under_2_mb(tmp_path):
    src = tmp_path / "study50"
    write_phantoms(src, "chest_xray", "test", 50)
    out = tmp_path / "audit"
    assert main(["audit", "run", str(src / "labels.csv"), "--model", MODEL, "--out", str(out), "--samples", "30",
                 "--fill", "mean", "--patch-size", "32", "--quiet"]) == 0
    size = (out / "report.html").stat().st_size
    assert size < 2 * 1024 * 1024, size


def test_max_pixels_applies_to_every_case_of_an_audit(study, tmp_path, capsys):
    out = tmp_path / "audit"
    assert _run(study, out, "--max-pixels", "1000") == 3  # 224 x 224 phantoms: every case fails, none is decoded
    s = _summary(out, capsys)
    assert s["study"]["failed"] == 4
    assert all("claims 224 x 224 = 50,176 pixels, more than the limit of 1,000" in c["reason"] for c in s["cases"])
