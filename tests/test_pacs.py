"""Audits from PACS and back, on a real Orthanc with its DICOMweb plugin (Debian's orthanc and orthanc-dicomweb,
started on loopback by the fixtures): QIDO-RS case lists, WADO-RS retrieval, Parametric Maps stored back with
STOW-RS and read back with highdicom, PHI kept on the site, and the faults (a restart mid-audit, a 404, a 409)."""

from __future__ import annotations

import io
import json
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("dicomweb_client", reason="the dicom extra (dicomweb-client) is not installed")
highdicom = pytest.importorskip("highdicom", reason="the dicom extra (highdicom) is not installed")
from pydicom.data import get_testdata_file  # noqa: E402

from blackbox_lime.audit.pacs import Pacs, PacsError, parse_pacs_url  # noqa: E402
from blackbox_lime.cli import main  # noqa: E402
from blackbox_lime.evaluation import orthanc_server  # noqa: E402
from blackbox_lime.evaluation.file_server import FileApiServer  # noqa: E402

if orthanc_server.orthanc_binary() is None:
    pytest.skip("Orthanc with its DICOMweb plugin is not installed (.ci/run installs orthanc and orthanc-dicomweb)",
                allow_module_level=True)

STUDY = "1.2.826.0.1.3680043.8.498.77001"
MULTIFRAME_STUDY = "1.2.826.0.1.3680043.8.498.77002"
CANARIES = ("CANARY^PATIENT", "CANARY-ID-4711", "CANARY-ACC-99", "CANARY INSTITUTE", "19010101")
FAST = ["--samples", "40", "--fill", "mean", "--quiet", "--allow-insecure-http"]


def _dataset(name: str, study: str, **changes: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(get_testdata_file(name))
    ds.StudyInstanceUID = study
    ds.PatientName, ds.PatientID, ds.AccessionNumber = CANARIES[0], CANARIES[1], CANARIES[2]
    ds.InstitutionName, ds.PatientBirthDate = CANARIES[3], CANARIES[4]
    for k, v in changes.items():
        setattr(ds, k, v)
    return ds


def _bytes(ds: Any) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def study_files() -> dict[str, Any]:
    """A CT, an MR and a MONOCHROME1 CR (the CT's pixels as a CR) in one study, with a text SR beside them; a
    15-frame RT dose in a second study. Every patient field holds a canary."""
    cr = _dataset("CT_small.dcm", STUDY, SOPClassUID="1.2.840.10008.5.1.4.1.1.1", Modality="CR",
                  PhotometricInterpretation="MONOCHROME1", SeriesInstanceUID=STUDY + ".3",
                  SOPInstanceUID=STUDY + ".3.1")
    cr.file_meta.MediaStorageSOPClassUID, cr.file_meta.MediaStorageSOPInstanceUID = cr.SOPClassUID, cr.SOPInstanceUID
    dose = _dataset("rtdose.dcm", MULTIFRAME_STUDY)  # 15 frames of 10 x 10 px: each pixel made 4 x 4 (40 x 40 px)
    frames = dose.pixel_array
    dose.PixelData = np.kron(frames, np.ones((1, 4, 4), frames.dtype)).astype(frames.dtype).tobytes()
    dose.Rows, dose.Columns = 4 * dose.Rows, 4 * dose.Columns
    dose.PixelSpacing = [float(v) / 4 for v in dose.PixelSpacing]
    return {"ct": _dataset("CT_small.dcm", STUDY), "mr": _dataset("MR_small.dcm", STUDY), "cr": cr,
            "sr": _dataset("reportsi.dcm", STUDY), "rtdose": dose}


@pytest.fixture()
def pacs(tmp_path: Path) -> Any:
    with orthanc_server.start(tmp_path / "orthanc") as server:
        for ds in study_files().values():
            server.upload(_bytes(ds))
        yield server


@pytest.fixture()
def html_server() -> Any:
    """A web server that answers every GET with a login page (200, text/html): not a PACS."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<html><body>Please log in</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _summary(out: Path) -> dict[str, Any]:
    return dict(json.loads((out / "summary.json").read_text()))


def _everything(out: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in out.rglob("*") if p.suffix in (".json", ".html"))


@pytest.mark.slow
def test_a_study_is_audited_from_orthanc_and_its_maps_stored_back(pacs: Any, linear_model: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "audit"
    url = f"{pacs.dicomweb}/studies/{STUDY}"
    assert main(["audit", "run", url, "--model", str(linear_model), "--out", str(out), "--stow", pacs.dicomweb,
                 *FAST]) == 0
    summary = _summary(out)
    study = summary["study"]
    assert (study["cases"], study["done"], study["failed"]) == (3, 3, 0)
    assert study["source"] == f"PACS 127.0.0.1:{pacs.port} (DICOMweb), study {STUDY}"
    assert [s["why"] for s in study["skipped"]] == ["a structured report: no image to explain"]
    assert study["stow"] == {"stored": 3}
    assert "PACS 127.0.0.1" in (out / "report.html").read_text()
    everything = _everything(out)
    assert not [c for c in CANARIES if c in everything]

    sources = {str(ds.SOPInstanceUID): ds for ds in study_files().values()}
    client = Pacs(pacs.dicomweb, allow_insecure_http=True).client
    maps = client.search_for_instances(study_instance_uid=STUDY, search_filters={"SOPClassUID": "1.2.840.10008.5.1.4.1.1.30"})
    assert len(maps) == 3
    for item in maps:
        back = client.retrieve_instance(STUDY, item["0020000E"]["Value"][0], item["00080018"]["Value"][0])
        pm = highdicom.pm.ParametricMap.from_dataset(back)
        ref = pm.ReferencedSeriesSequence[0]
        src = sources[ref.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID]
        assert ref.SeriesInstanceUID == src.SeriesInstanceUID and pm.StudyInstanceUID == src.StudyInstanceUID
        assert (pm.Rows, pm.Columns) == (src.Rows, src.Columns)
        assert pm.FrameOfReferenceUID == src.FrameOfReferenceUID
        case = next(c for c in summary["cases"] if any(o.endswith(".pm.dcm") and (out / o).is_file() and
                                                       pydicom.dcmread(out / o).SOPInstanceUID == pm.SOPInstanceUID
                                                       for o in c["outputs"]))
        saliency = np.load(out / next(o for o in case["outputs"] if o.endswith(".saliency.npy")))
        np.testing.assert_array_equal(pm.pixel_array.reshape(saliency.shape), saliency)

    before, sent = len(pacs.instances()), summary["study"]["totals"]["sent"]
    assert main(["audit", "run", url, "--model", str(linear_model), "--out", str(out), "--stow", pacs.dicomweb,
                 *FAST]) == 0
    assert len(pacs.instances()) == before  # nothing stored twice
    assert _summary(out)["study"]["totals"]["sent"] == sent
    assert main(["audit", "verify", str(out)]) == 0
    assert "the inputs are in PACS" in capsys.readouterr().out


@pytest.mark.slow
def test_stored_twice_a_map_is_one_instance(pacs: Any, tmp_path: Path) -> None:
    from blackbox_lime.dicom_out import parametric_map_files

    ct = study_files()["ct"]
    data = _bytes(ct)
    pm = parametric_map_files(data, [("ct", np.ones((ct.Rows, ct.Columns), np.float32), "abnormal")], None)
    with Pacs(pacs.dicomweb, allow_insecure_http=True) as p:
        first = p.store(pm.values())
        again = p.store(pm.values())
        assert first == again and first["state"] == "stored"
        assert p.count(STUDY, first["instances"][0]) == 1


@pytest.mark.slow
def test_a_search_with_patient_fields_reaches_neither_the_model_nor_the_report(pacs: Any, tmp_path: Path) -> None:
    """QIDO-RS by patient ID; the model is a vendor file API that receives DICOM files: none of the canaries, nor
    the study's UIDs, is in any request, and the report names the PACS, not the query."""
    from blackbox_lime.models import resolve_model

    model = resolve_model("demo-cnn")
    out = tmp_path / "audit"
    with FileApiServer(model, record=True) as vendor:
        profile = tmp_path / "vendor.toml"
        profile.write_text(f'url = "{vendor.url}"\nprotocol = "file"\npreset = "huggingface"\n[request]\n'
                           'encoding = "dicom"\nbody = "multipart"\n[output]\nkind = "probabilities"\n'
                           'class_names = ["normal", "abnormal"]\n')
        code = main(["audit", "run", f"{pacs.dicomweb}/studies?PatientID={CANARIES[1]}&ModalitiesInStudy=CT",
                     "--endpoint", str(profile), "--out", str(out), "--burned-in", "warn", *FAST])
        bodies = b"".join(vendor.bodies)
    assert code == 0
    assert _summary(out)["study"]["done"] == 3 and len(vendor.bodies) == 3 * 40  # one image per request
    sources = study_files()
    secrets = [c.encode() for c in CANARIES] + [STUDY.encode()] + \
        [str(sources[k].SOPInstanceUID).encode() for k in ("ct", "mr", "cr")]
    assert not [s for s in secrets if s in bodies]
    everything = _everything(out)
    assert "PatientID" not in everything and CANARIES[1] not in everything
    assert f"PACS 127.0.0.1:{pacs.port} (DICOMweb), study {STUDY}" in everything


@pytest.mark.slow
def test_a_multiframe_series_is_audited_at_the_frame_asked(pacs: Any, linear_model: Path, tmp_path: Path) -> None:
    ds = study_files()["rtdose"]
    out = tmp_path / "audit"
    assert main(["audit", "run", f"{pacs.dicomweb}/studies/{MULTIFRAME_STUDY}/series/{ds.SeriesInstanceUID}",
                 "--model", str(linear_model), "--out", str(out), "--frame", "3", "--stow", pacs.dicomweb, *FAST]) == 0
    (case,) = _summary(out)["cases"]
    (name,) = [o for o in case["outputs"] if o.endswith(".pm.dcm")]
    item = pydicom.dcmread(out / name).PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0] \
        .SourceImageSequence[0]
    assert item.ReferencedSOPInstanceUID == ds.SOPInstanceUID and int(item.ReferencedFrameNumber) == 4


@pytest.mark.slow
def test_a_pacs_restart_mid_audit_leaves_every_map_as_without_it(pacs: Any, linear_model: Path,
                                                                  tmp_path: Path) -> None:
    url = f"{pacs.dicomweb}/studies/{STUDY}"
    calm, stormy = tmp_path / "calm", tmp_path / "stormy"
    assert main(["audit", "run", url, "--model", str(linear_model), "--out", str(calm), *FAST]) == 0
    restarted = threading.Event()

    def restart() -> None:
        time.sleep(0.6)  # after the case list, during the retrievals and explanations
        pacs.restart(down_s=1.5)
        restarted.set()

    t = threading.Thread(target=restart)
    t.start()
    try:
        assert main(["audit", "run", url, "--model", str(linear_model), "--out", str(stormy), *FAST]) == 0
    finally:
        t.join()
    assert restarted.is_set()
    pairs = list(zip(_summary(calm)["cases"], _summary(stormy)["cases"]))  # the same order; ids are salted per audit
    assert len(pairs) == 3
    for a, b in pairs:
        assert a["state"] == b["state"] == "done"
        np.testing.assert_array_equal(np.load(calm / f"cases/{a['id']}.saliency.npy"),
                                      np.load(stormy / f"cases/{b['id']}.saliency.npy"))


@pytest.mark.slow
def test_a_404_fails_one_case_by_name_and_a_rerun_completes_it_without_asking_again(
        pacs: Any, linear_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"{pacs.dicomweb}/studies/{STUDY}"
    out = tmp_path / "audit"
    assert main(["audit", "run", url, "--model", str(linear_model), "--out", str(out), "--budget", "41",
                 *FAST]) == 4  # the budget stops it in the second case
    mr = study_files()["mr"]
    orthanc_id = pacs.rest("POST", "/tools/lookup", str(mr.SOPInstanceUID).encode(), "text/plain")[0]["ID"]
    pacs.rest("DELETE", f"/instances/{orthanc_id}")
    capsys.readouterr()
    assert main(["audit", "run", url, "--model", str(linear_model), "--out", str(out), *FAST]) == 3
    err = capsys.readouterr().err
    study = _summary(out)["study"]
    assert (study["done"], study["failed"]) == (2, 1)
    assert "has no such resource (the retrieval of an instance: 404)" in err
    sent = study["totals"]["sent"]
    pacs.upload(_bytes(mr))
    assert main(["audit", "run", url, "--model", str(linear_model), "--out", str(out), *FAST]) == 0
    study = _summary(out)["study"]
    assert (study["done"], study["failed"]) == (3, 0) and study["totals"]["sent"] == sent + 40
    assert main(["audit", "verify", str(out)]) == 0


@pytest.mark.slow
def test_a_stow_refusal_is_named_and_a_rerun_stores_without_asking_again(
        pacs: Any, linear_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"{pacs.dicomweb}/studies/{STUDY}"
    out = tmp_path / "audit"
    wrong = f"{pacs.dicomweb}/studies/1.2.3.4"  # Orthanc refuses maps of another study there: 409
    assert main(["audit", "run", url, "--model", str(linear_model), "--out", str(out), "--stow", wrong, *FAST]) == 3
    err = capsys.readouterr().err
    assert "the maps of 3 case(s) were not stored to PACS" in err and "409 Conflict" in err
    study = _summary(out)["study"]
    assert study["done"] == 3 and study["stow"] == {"failed": 3}
    sent, before = study["totals"]["sent"], len(pacs.instances())
    assert main(["audit", "run", url, "--model", str(linear_model), "--out", str(out), "--stow", pacs.dicomweb,
                 *FAST]) == 0
    study = _summary(out)["study"]
    assert study["stow"] == {"stored": 3} and study["totals"]["sent"] == sent
    assert len(pacs.instances()) == before + 3


@pytest.mark.slow
@pytest.mark.parametrize("case", ["unreachable", "no such study", "empty search", "not dicomweb", "only a report"])
def test_a_bad_pacs_source_is_named_and_writes_nothing(pacs: Any, html_server: str, linear_model: Path,
                                                       tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       case: str) -> None:
    from blackbox_lime.evaluation.demo_server import free_port

    sr = study_files()["sr"]
    url, expected = {
        "unreachable": (f"http://127.0.0.1:{free_port()}/dicom-web/studies/{STUDY}", "Could not reach the PACS at"),
        "no such study": (f"{pacs.dicomweb}/studies/1.2.3.4.5", "has no study 1.2.3.4.5"),
        "empty search": (f"{pacs.dicomweb}/studies?PatientID=NOBODY", "found nothing. Check the filters"),
        "not dicomweb": (f"{html_server}/dicom-web/studies/{STUDY}", "with something that is not DICOMweb"),
        "only a report": (f"{pacs.dicomweb}/studies/{STUDY}/series/{sr.SeriesInstanceUID}",
                          "none is an image (a structured report)"),
    }[case]
    out = tmp_path / "audit"
    assert main(["audit", "run", url, "--model", str(linear_model), "--out", str(out), *FAST]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Nothing was written" in err and "Traceback" not in err
    assert not out.exists()


def test_pacs_urls_parse_and_insecure_ones_are_refused() -> None:
    loc = parse_pacs_url("https://pacs.example/dicom-web/studies?ModalitiesInStudy=CR&StudyDate=20260101-20260131")
    assert (loc.root, loc.level, dict(loc.filters)) == ("https://pacs.example/dicom-web", "studies",
                                                        {"ModalitiesInStudy": "CR", "StudyDate": "20260101-20260131"})
    loc = parse_pacs_url("https://pacs.example:8443/wado/rs/studies/1.2/series/1.2.3")
    assert (loc.root, loc.level, loc.study, loc.series, loc.host) == ("https://pacs.example:8443/wado/rs", "series",
                                                                      "1.2", "1.2.3", "pacs.example:8443")
    with pytest.raises(PacsError, match=r"Refusing plain http:// to pacs.example"):
        parse_pacs_url("http://pacs.example/dicom-web/studies/1.2")
    with pytest.raises(PacsError, match=r"names no DICOMweb resource"):
        parse_pacs_url("https://pacs.example/dicom-web")
    with pytest.raises(PacsError, match=r"carries credentials"):
        parse_pacs_url("https://user:pw@pacs.example/dicom-web/studies/1.2")


@pytest.mark.slow
def test_explain_dicom_out_stows_a_single_file(pacs: Any, linear_model: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ct.dcm"
    path.write_bytes(_bytes(study_files()["ct"]))
    before = len(pacs.instances())
    out = tmp_path / "out"
    args = ["explain", str(path), "--model", str(linear_model), "--out", str(out), "--dicom-out",
            *[f for f in FAST if f != "--quiet"]]
    assert main([*args, "--stow", pacs.dicomweb]) == 0
    assert "1 Parametric Map(s) stored to PACS 127.0.0.1" in capsys.readouterr().err
    assert len(pacs.instances()) == before + 1
    assert main([*args, "--stow", f"{pacs.dicomweb}/studies/1.2.3.4"]) == 2  # another study: 409
    err = capsys.readouterr().err
    assert "ct.dcm: its maps are written to" in err and "409 Conflict" in err and (out / "ct.pm.dcm").is_file()
    assert main(["explain", str(path), "--model", str(linear_model), "--out", str(tmp_path / "o2"), "--stow",
                 pacs.dicomweb, *FAST]) == 2
    assert "--stow stores the DICOM Parametric Maps of --dicom-out: add --dicom-out." in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()


@pytest.mark.slow
def test_a_pacs_with_basic_authentication_takes_the_pacs_auth_file_and_never_prints_the_password(
        linear_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    password = "canary-pacs-password-31"
    with orthanc_server.start(tmp_path / "orthanc", users={"audit": password}) as server:
        server.upload(_bytes(study_files()["ct"]))
        url = f"{server.dicomweb}/studies/{STUDY}"
        auth = tmp_path / "pacs.toml"
        auth.write_text('[auth]\nusername = "audit"\npassword_env = "BBL_TEST_PACS_PASSWORD"\n')
        monkeypatch.setenv("BBL_TEST_PACS_PASSWORD", "not-the-password")
        assert main(["audit", "run", url, "--model", str(linear_model), "--out", str(tmp_path / "refused"),
                     "--pacs-auth", str(auth), *FAST]) == 2
        err = capsys.readouterr().err
        assert "refused the instance search (401): check the credentials in the --pacs-auth file" in err
        assert "not-the-password" not in err and not (tmp_path / "refused").exists()
        monkeypatch.setenv("BBL_TEST_PACS_PASSWORD", password)
        out = tmp_path / "audit"
        assert main(["audit", "run", url, "--model", str(linear_model), "--out", str(out), "--pacs-auth", str(auth),
                     "--stow", server.dicomweb, *FAST]) == 0
        captured = capsys.readouterr()
        assert _summary(out)["study"]["stow"] == {"stored": 1}
        assert password not in captured.out + captured.err + _everything(out)



def test_the_pacs_auth_file_sets_tls_and_refuses_secrets_in_clear(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """TLS settings reach the session the PACS is queried with (Debian's Orthanc 1.10.1 crashes on its first HTTPS
    request on this machine, so no HTTPS PACS is started here)."""
    from blackbox_lime.adapters import ConfigError
    from blackbox_lime.audit.pacs import PacsAuth

    for name in ("ca.pem", "me.pem", "me.key"):
        (tmp_path / name).write_text("x")
    good = tmp_path / "pacs.toml"
    good.write_text('[auth]\ntoken_env = "BBL_TEST_PACS_TOKEN"\n[tls]\nca_bundle = "ca.pem"\nclient_cert = "me.pem"\n'
                    'client_key = "me.key"\n')
    monkeypatch.setenv("BBL_TEST_PACS_TOKEN", "canary-pacs-token")
    with Pacs("https://pacs.example/dicom-web", PacsAuth.from_toml(good)) as p:
        assert p.session.verify == str(tmp_path / "ca.pem")
        assert p.session.cert == (str(tmp_path / "me.pem"), str(tmp_path / "me.key"))
        assert p.session.headers["Authorization"] == "Bearer canary-pacs-token" and p.session.trust_env is False
    clear = tmp_path / "clear.toml"
    clear.write_text('[auth]\nusername = "audit"\npassword = "hunter2"\n')
    with pytest.raises(ConfigError, match=r"clear.toml holds a secret in clear"):
        PacsAuth.from_toml(clear)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('[tls]\nverify_hostname = false\n')
    with pytest.raises(ConfigError, match=r"unknown key 'verify_hostname' in \[tls\]; known keys: ca_bundle, "
                                          r"client_cert, client_key, verify"):
        PacsAuth.from_toml(unknown)
