"""The security review's findings (issue 34), each reproduced as an attack and checked closed.

docs/security.md names each test here beside the claim it checks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_audit_kill import _lines, _study, counting_server

from blackbox_lime.cli import main

ROOT = Path(__file__).resolve().parent.parent


def _run(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=timeout)


def _profile(tmp_path: Path, url: str) -> Path:
    """A profile with short retries: an overloaded server is retried for 3 s, not 60."""
    p = tmp_path / "endpoint.toml"
    p.write_text(f'url = "{url}"\n[limits]\nretry_deadline_s = 3\nbackoff_s = 0.05\nmax_batch = 8\nbinary = "never"\n')
    return p


# -- finding 4: the audit budget counts every image put on the wire -----------------------------------------


@pytest.fixture()
def overloaded(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A real loopback server that logs every image it receives, then answers 503."""
    yield from counting_server(tmp_path, 0, status=503)


def _audit_503(url: str, tmp_path: Path, source: Path, out: Path, budget: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "blackbox_lime", "audit", "run", str(source), "--endpoint",
            str(_profile(tmp_path, url)), "--out", str(out), "--patch-size", "8", "--fill", "mean", "--samples", "40",
            "--budget", str(budget), "--quiet", *extra]


def test_a_503_server_receives_at_most_the_budget_across_reruns_and_the_summary_counts_them(tmp_path, overloaded):
    url, log = overloaded
    source, out = _study(tmp_path / "study", 3), tmp_path / "audit"
    codes = [_run(_audit_503(url, tmp_path, source, out, 2)).returncode for _ in range(3)]
    assert codes == [4, 4, 4]  # the budget stops each run (EXIT_BUDGET), none crashes
    assert len(_lines(log)) == 2  # counted at the server: failed sends and retries included
    summary = subprocess.run([sys.executable, "-m", "blackbox_lime", "audit", "summary", str(out), "--json"],
                             env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    doc = json.loads(summary.stdout)
    assert doc["study"]["totals"]["sent"] == 2


def test_workers_count_failed_sends_against_the_shared_budget(tmp_path, overloaded):
    pytest.importorskip("distributed")
    url, log = overloaded
    source, out = _study(tmp_path / "study", 4), tmp_path / "audit"
    r = _run(_audit_503(url, tmp_path, source, out, 3, "--workers", "2"))
    assert r.returncode == 4, r.stderr[-2000:]
    r = _run(_audit_503(url, tmp_path, source, out, 3, "--workers", "2"))
    assert r.returncode == 4, r.stderr[-2000:]
    assert len(_lines(log)) <= 3
    assert "3 images sent in all" in r.stderr


def test_explain_budget_counts_retries_of_a_failing_server(tmp_path, overloaded, capsys):
    url, log = overloaded
    image = _study(tmp_path / "study", 1) / "img_00.png"
    rc = main(["explain", str(image), "--endpoint", str(_profile(tmp_path, url)), "--out", str(tmp_path / "o"),
               "--patch-size", "8", "--fill", "mean", "--samples", "40", "--budget", "2"])
    assert rc == 2
    assert len(_lines(log)) == 2
    assert "Query budget exhausted: 2 of 2 queries used" in capsys.readouterr().err


# -- finding 6: tokens with control characters, token files anyone can read, escaped forms ------------------

CANARY = "tok-CANARY-51c0ffee"


def _token_profile(tmp_path: Path, auth: str) -> Path:
    p = tmp_path / "endpoint.toml"
    p.write_text(f'url = "https://127.0.0.1:9/v2/models/m"\n[auth]\n{auth}\n')
    return p


def test_a_token_with_a_line_break_is_refused_at_load_without_being_shown(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BBL_SEC_TOKEN", f"{CANARY}\r\nX-Injected: 1")
    rc = main(["endpoint", "check", "--endpoint", str(_token_profile(tmp_path, 'token_env = "BBL_SEC_TOKEN"'))])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.strip() == ("blackbox-lime: error: endpoint.toml: the environment variable BBL_SEC_TOKEN holds a line "
                           "break inside the token; a token is one line of printable characters. Fix the token (it "
                           "is not shown here).")
    assert CANARY not in err


def test_a_token_file_others_can_read_is_refused_and_one_only_its_owner_reads_is_taken(tmp_path, capsys):
    from blackbox_lime.adapters.profile import EndpointProfile

    secret = tmp_path / "vendor.token"
    secret.write_text(CANARY + "\n")
    secret.chmod(0o644)
    prof = _token_profile(tmp_path, 'token_file = "vendor.token"')
    rc = main(["endpoint", "check", "--endpoint", str(prof)])
    err = capsys.readouterr().err
    assert rc == 2 and CANARY not in err
    assert err.strip() == ("blackbox-lime: error: endpoint.toml: the token file vendor.token can be read or written by "
                           "other users (mode 0644); make it yours alone: chmod 600 vendor.token.")
    secret.chmod(0o600)
    assert EndpointProfile.from_toml(prof).token() == CANARY


@pytest.mark.parametrize("target", ["../patients.txt", "/etc/passwd", "folder"])
def test_token_file_cannot_read_another_file_as_a_token(tmp_path, target, capsys):
    site = tmp_path / "site"
    (site / "folder").mkdir(parents=True)
    (tmp_path / "patients.txt").write_text("Doe^Jane 1960-01-01\n")  # a one-line patient list beside the profile
    rc = main(["endpoint", "check", "--endpoint", str(_token_profile(site, f'token_file = "{target}"'))])
    err = capsys.readouterr().err
    assert rc == 2
    assert "Doe^Jane" not in err and "root:" not in err
    assert ("is not a regular file" if target == "folder" else "can be read or written by other users") in err


def test_redaction_covers_the_escaped_forms_of_a_token() -> None:
    from blackbox_lime.adapters.remote import Redactor

    token = f"{CANARY}\r\nsecond-line"
    r = Redactor([token])
    for text in (f"Invalid header value b'Bearer {token!r}'", json.dumps({"auth": token}),
                 f"https://x/?t={CANARY}%0D%0Asecond-line", f"echo: {CANARY}"):
        assert CANARY not in r(text) and "[REDACTED]" in r(text), text


# -- finding 5: a source a Parametric Map cannot be made for is a named warning, never a crash ------------------

def _pydicom_test_files() -> list[Path]:
    """Every file that ships in pydicom's test data (listed from its folder: get_testdata_files would download)."""
    pydicom = pytest.importorskip("pydicom")
    folder = Path(pydicom.__file__).parent / "data" / "test_files"
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _synthetic_secondary_capture(path: Path) -> Path:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = "Doe^Jane", "ID-CANARY-1", "OT"
    ds.Rows = ds.Columns = 48
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.random.default_rng(3).integers(0, 255, (48, 48), dtype=np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_every_pydicom_test_file_gives_a_map_or_a_named_reason():
    import warnings

    import pydicom
    from blackbox_lime.dicom_out import DicomOutError, parametric_map_files

    made = named = 0
    for path in _pydicom_test_files():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
                shape = (int(ds.Rows), int(ds.Columns))
                frames = int(ds.get("NumberOfFrames", 1) or 1)
            except Exception:  # not an image (SR, RT plan, DICOMDIR, JSON...): nothing to map
                continue
            sal = np.random.default_rng(0).normal(size=shape).astype(np.float32)
            try:
                parametric_map_files(path.read_bytes(), [("m", sal, "abnormal")], 0 if frames > 1 else None)
                made += 1
            except DicomOutError as exc:
                assert str(exc).endswith(".") and "Traceback" not in str(exc)
                named += 1
    assert made >= 30 and named >= 30  # both kinds are really exercised


def test_secondary_captures_with_dicom_out_still_write_every_map_and_name_the_reason(tmp_path, capsys):
    from pydicom.data import get_testdata_file

    from blackbox_lime.models import bundled_model

    images = [Path(get_testdata_file("image_dfl.dcm")), Path(get_testdata_file("SC_rgb_jpeg.dcm")),
              _synthetic_secondary_capture(tmp_path / "sc.dcm"), Path(get_testdata_file("CT_small.dcm"))]
    out = tmp_path / "out"
    rc = main(["explain", *map(str, images), "--model", str(bundled_model("shortcut_marker.onnx")), "--out", str(out),
               "--samples", "30", "--fill", "mean", "--dicom-out", "--quiet"])
    assert rc == 0
    for p in images[:3]:
        doc = json.loads((out / f"{p.stem}.json").read_text())
        assert doc["dicom_out"].startswith("no DICOM Parametric Map: ") and doc["dicom_out"] in doc["warnings"]
        assert (out / f"{p.stem}.saliency.npy").is_file() and (out / f"{p.stem}.overlay.png").is_file()
    assert "Secondary Capture" in json.loads((out / "sc.json").read_text())["dicom_out"]
    assert (out / "CT_small.pm.dcm").is_file()  # the later images of the call go on
    assert "Traceback" not in capsys.readouterr().err


def test_an_audit_with_a_secondary_capture_case_completes(tmp_path, capsys):
    from blackbox_lime.models import bundled_model

    study = tmp_path / "study"
    study.mkdir()
    _synthetic_secondary_capture(study / "sc.dcm")
    out = tmp_path / "audit"
    argv = ["audit", "run", str(study), "--model", str(bundled_model("shortcut_marker.onnx")), "--out", str(out),
            "--samples", "30", "--fill", "mean", "--quiet"]
    assert main(argv) == 0
    case = json.loads((out / "summary.json").read_text())["cases"][0]
    assert case["state"] == "done" and "Secondary Capture" in case["dicom_out"]
    assert main(argv) == 0  # a rerun finds it done


# -- finding 3: every HTTP answer is read with a size cap and within a whole-response deadline ------------------

# The client's peak RSS from /proc (VmHWM starts afresh at exec; getrusage's ru_maxrss keeps the forking parent's).
_RSS_RUN = ("import sys\nfrom blackbox_lime.cli import main\nrc = main(sys.argv[1:])\n"
            "hwm = [ln.split()[1] for ln in open('/proc/self/status') if ln.startswith('VmHWM:')][0]\n"
            "print('peak-rss-kb', hwm, file=sys.stderr)\nsys.exit(rc)\n")


@pytest.mark.parametrize("mode", ["lie", "endless", "drip", "huge"])
def test_a_server_that_attacks_memory_or_time_ends_in_one_line_within_the_deadline(tmp_path, mode):
    import time

    ready = tmp_path / "port.txt"
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "evil_server.py"), "--mode", mode, "--ready",
                             str(ready)])
    try:
        for _ in range(200):
            if ready.exists() and ready.read_text():
                break
            time.sleep(0.05)
        prof = tmp_path / "evil.toml"
        prof.write_text(f'url = "http://127.0.0.1:{ready.read_text()}/v2/models/linear"\n[limits]\ntimeout_s = 3\n'
                        'response_deadline_s = 5\nmax_attempts = 1\nbinary = "never"\n')
        image = _study(tmp_path / "study", 1) / "img_00.png"
        t0 = time.monotonic()
        r = _run([sys.executable, "-c", _RSS_RUN, "explain", str(image), "--endpoint", str(prof), "--out",
                  str(tmp_path / "out"), "--patch-size", "8", "--fill", "mean", "--samples", "40", "--quiet"], 60)
        elapsed = time.monotonic() - t0
    finally:
        proc.kill()
        proc.wait()
    lines = [ln for ln in r.stderr.splitlines() if not ln.startswith("peak-rss-kb")]
    rss_mb = int(r.stderr.split("peak-rss-kb ")[1].split()[0]) / 1024
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("blackbox-lime: error: "), r.stderr
    assert {"lie": "announced an answer of 2,147,483,648 bytes, more than the",
            "endless": "sent an answer of more than", "huge": "sent an answer of more than",
            "drip": "did not finish its answer within the response deadline of 5 s"}[mode] in lines[0]
    assert elapsed < 5 + 10  # the deadline, plus the start of a Python process with numpy and onnxruntime
    assert rss_mb < 300, rss_mb
    assert not (tmp_path / "out").exists()


def test_an_error_body_is_read_only_up_to_its_cap(monkeypatch) -> None:
    import responses as rsps_lib

    import blackbox_lime.adapters.http as http
    from blackbox_lime.adapters.errors import ServerError

    seen: list[int] = []
    real = http.server_error
    monkeypatch.setattr(http, "server_error", lambda where, status, reason, body, *a: seen.append(len(body)) or
                        real(where, status, reason, body, *a))
    t = http.TFServingTransport("http://127.0.0.1:9/v1/models/m:predict")
    with rsps_lib.RequestsMock() as rsps:
        rsps.add(rsps_lib.POST, "http://127.0.0.1:9/v1/models/m:predict", status=500,
                 body=b"E" * (10 * http.ERROR_BODY_CAP))
        with pytest.raises(ServerError, match=r"answered HTTP 500"):
            t.infer(np.zeros((1, 3, 4, 4), np.float32))
    assert seen == [http.ERROR_BODY_CAP]


# -- findings 1 and 2: Dask only over TLS off this machine; a peer that is not Dask --------------------------


def _audit_cmd(tmp_path: Path, *extra: str) -> list[str]:
    from blackbox_lime.models import bundled_model

    source = tmp_path / "study"
    if not source.exists():
        _study(source, 2)
    return [sys.executable, "-m", "blackbox_lime", "audit", "run", str(source), "--model",
            str(bundled_model("shortcut_marker.onnx")), "--out", str(tmp_path / "audit"), "--samples", "30",
            "--fill", "mean", "--quiet", *extra]


@pytest.mark.parametrize("address", ["tcp://192.0.2.10:8786", "192.0.2.10:8786", "ws://192.0.2.10:8786"])
def test_a_plain_scheduler_on_another_host_is_refused_before_anything_is_sent_or_written(tmp_path, address):
    pytest.importorskip("distributed")
    r = _run(_audit_cmd(tmp_path, "--scheduler", address), 60)
    assert r.returncode == 2
    assert r.stderr.strip().startswith(f"blackbox-lime: error: Refusing the Dask scheduler {address}: over plain ")
    assert "--dask-tls-ca" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "audit").exists()


def test_a_tls_scheduler_on_another_host_is_accepted_with_certificates(tmp_path):
    pytest.importorskip("distributed")
    from blackbox_lime.audit.cluster import ClusterError, cluster_security

    sec = cluster_security("tls://192.0.2.10:8786", "ca.pem", "cert.pem", "key.pem")
    assert sec.require_encryption and sec.tls_ca_file == "ca.pem" and sec.tls_client_cert == "cert.pem"
    with pytest.raises(ClusterError, match="go together"):
        cluster_security("tls://192.0.2.10:8786", "ca.pem", None, None)
    assert cluster_security("tcp://127.0.0.1:8786") is None  # plain only on this machine
    assert cluster_security(None).require_encryption  # a LocalCluster: a certificate made for the run


def test_the_local_cluster_speaks_tls_and_refuses_a_plain_client():
    pytest.importorskip("distributed")
    import logging

    from distributed import Client

    from blackbox_lime.audit.cluster import cluster_security, connect

    client, cluster = connect(None, cluster_security(None), 1, logging.WARNING)
    try:
        assert cluster.scheduler_address.startswith("tls://127.0.0.1:")
        assert client.submit(sum, [1, 2]).result() == 3
        plain = cluster.scheduler_address.replace("tls://", "tcp://")
        with pytest.raises(Exception):  # noqa: B017 - a plain client cannot even say hello
            Client(plain, timeout=3)
    finally:
        client.close()
        cluster.close()


def test_a_peer_that_does_not_speak_dask_is_one_line_exit_2_and_nothing_written(tmp_path):
    pytest.importorskip("distributed")
    import socket
    import threading

    srv = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:  # a web server: whatever it is sent, a 400
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            conn.close()

    threading.Thread(target=answer, daemon=True).start()
    try:
        r = _run(_audit_cmd(tmp_path, "--scheduler", f"tcp://127.0.0.1:{srv.getsockname()[1]}"), 120)
    finally:
        srv.close()
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("blackbox-lime: error: Cannot reach the Dask scheduler tcp://127.0.0.1:")
    assert "nothing was written" in lines[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "audit").exists()


# -- finding 7: no path or patient field in the shared outputs or on stderr -------------------------------------

PATIENT = "Canary Jane Quux"  # one component: highdicom warns about it, quoting it


def _patient_study(tmp_path: Path) -> Path:
    pydicom = pytest.importorskip("pydicom")
    pytest.importorskip("highdicom")
    from pydicom.data import get_testdata_file

    study = tmp_path / "Quux_Canary_1960-01-01"  # a folder named after the patient, as sites do
    study.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm"):
        ds = pydicom.dcmread(get_testdata_file(name))
        ds.PatientName, ds.PatientID, ds.InstitutionName = PATIENT, "PID-CANARY-77", "Canary General Hospital"
        ds.save_as(study / name)
    return study


@pytest.mark.parametrize("workers", [[], ["--workers", "1"]], ids=["serial", "dask"])
def test_an_audit_s_shared_outputs_and_stderr_carry_no_path_or_patient_field(tmp_path, workers):
    from blackbox_lime.models import bundled_model

    study = _patient_study(tmp_path)
    out = tmp_path / "audit"
    r = _run([sys.executable, "-m", "blackbox_lime", "audit", "run", str(study), "--model",
              str(bundled_model("shortcut_marker.onnx")), "--out", str(out), "--samples", "30", "--fill", "mean",
              "--study-name", "chest-audit-2026-12", *workers])
    assert r.returncode == 0, r.stderr
    shared = [out / "report.html", out / "summary.json", out / "provenance.json", *sorted((out / "cases").glob("*.json"))]
    for text, where in [(p.read_text(), p.name) for p in shared] + [(r.stderr, "stderr"), (r.stdout, "stdout")]:
        # no absolute path in a shared file; on stderr only the --out folder the user typed
        for canary in (PATIENT, "PID-CANARY-77", "Canary General", "Quux_Canary",
                       str(study) if where.startswith("std") else str(tmp_path)):
            assert canary not in text, (canary, where)
    assert "chest-audit-2026-12" in (out / "report.html").read_text()
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["source"]["name"] == "chest-audit-2026-12" and "root" not in prov["source"]
    assert {i["image"] for i in prov["inputs"]} == {"CT_small.dcm", "MR_small.dcm"}  # relative paths
    # the Parametric Maps do carry the patient module, by design: they are filed in the site's PACS
    pm = sorted((out / "cases").glob("*.pm.dcm"))
    assert pm and PATIENT.encode() in pm[0].read_bytes()
    v = _run([sys.executable, "-m", "blackbox_lime", "audit", "verify", str(out)])
    assert v.returncode == 0 and "all" in v.stdout and "match" in v.stdout


def test_dicom_reader_notes_quote_no_values() -> None:
    from blackbox_lime.image_io import without_quoted_values

    assert without_quoted_values("Invalid value for VR PN: 'Doe^Jane' (tag \"PatientName\")") == \
        "Invalid value for VR PN: '...' (tag '...')"


# -- finding 8: pixels that may carry burnt-in text ------------------------------------------------------------


def _burned_in_dicom(path: Path) -> Path:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.BurnedInAnnotation = "YES"
    ds.save_as(path)
    return path


def test_burnt_in_text_is_refused_before_anything_is_sent_to_a_remote_model_by_default(tmp_path, overloaded, capsys):
    url, log = overloaded  # any image that reached it would be logged
    image = _burned_in_dicom(tmp_path / "burned.dcm")
    sc = _synthetic_secondary_capture(tmp_path / "sc.dcm")
    out = tmp_path / "out"
    rc = main(["explain", str(image), str(sc), "--endpoint", str(_profile(tmp_path, url)), "--out", str(out),
               "--patch-size", "8", "--fill", "mean", "--samples", "30", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and _lines(log) == [] and not out.exists()
    assert ("blackbox-lime: error: burned.dcm: refused: the DICOM header says its pixels carry burnt-in annotation "
            "(BurnedInAnnotation YES), which may identify the patient; nothing of it was sent (--burned-in refuse). "
            "Pass --burned-in warn to explain it all the same.") in err
    assert "sc.dcm: refused: a Secondary Capture whose header does not say" in err


def test_burnt_in_text_is_a_warning_in_the_json_and_the_audit_report_where_it_is_sent(tmp_path, capsys):
    from blackbox_lime.models import bundled_model

    model = str(bundled_model("shortcut_marker.onnx"))
    study = tmp_path / "study"
    study.mkdir()
    _burned_in_dicom(study / "burned.dcm")
    out = tmp_path / "out"
    assert main(["explain", str(study / "burned.dcm"), "--model", model, "--out", str(out), "--samples", "30",
                 "--fill", "mean", "--quiet"]) == 0  # a local model: auto warns (the pixels never leave)
    warnings = json.loads((out / "burned.json").read_text())["warnings"]
    assert any(w.startswith("the DICOM header says its pixels carry burnt-in annotation") for w in warnings)
    audit = tmp_path / "audit"
    assert main(["audit", "run", str(study), "--model", model, "--out", str(audit), "--samples", "30", "--fill",
                 "mean", "--quiet"]) == 0
    case = json.loads((audit / "summary.json").read_text())["cases"][0]
    assert case["burned_in"].startswith("the DICOM header says")
    assert "burnt-in text?" in (audit / "report.html").read_text()
    refused = tmp_path / "refused"
    assert main(["audit", "run", str(study), "--model", model, "--out", str(refused), "--samples", "30", "--fill",
                 "mean", "--quiet", "--burned-in", "refuse"]) == 3  # the case is skipped with its reason
    case = json.loads((refused / "summary.json").read_text())["cases"][0]
    assert case["state"] == "failed" and case["reason"].startswith("the image: refused: the DICOM header says")
