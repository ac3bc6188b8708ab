"""Security defaults: tokens never leak, plain HTTP stays on loopback, only pixels leave the site."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import responses
from fake_endpoint import BASE, URL, FakeEndpoint

from blackbox_lime.cli import main

CANARY = "tok-CANARY-7f3a9c1e5b"


def profile(tmp_path: Path, **limits: object) -> Path:
    lines = [f'url = "{URL}"', "[auth]", 'token_env = "BBL_TEST_TOKEN"', "[limits]", "backoff_s = 0"]
    lines += [f"{k} = {v}" for k, v in limits.items()]
    p = tmp_path / "endpoint.toml"
    p.write_text("\n".join(lines) + "\n")
    return p


def all_text(folder: Path) -> str:
    return "\n".join(p.read_bytes().decode("latin-1") for p in folder.rglob("*") if p.is_file())


def test_canary_token_never_appears_in_outputs_logs_or_errors(tmp_path: Path, monkeypatch, capsys, caplog) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("BBL_TEST_TOKEN", CANARY)
    image = tmp_path / "case.npy"
    np.save(image, np.random.default_rng(0).uniform(0, 1, (32, 32)).astype(np.float32))
    out = tmp_path / "out"
    caplog.set_level(logging.DEBUG)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        # The server echoes the Authorization header into its error bodies: the worst case.
        ep = FakeEndpoint(rsps, faults=lambda i: (503, {}, f"overloaded; your header was Bearer {CANARY}") if i % 3 == 0
                          else None).install()
        rc = main(["explain", str(image), "--endpoint", str(profile(tmp_path)), "--out", str(out), "--samples", "40",
                   "--fill", "mean", "--patch-size", "8", "--max-batch", "8", "--json", "--verbose"])
        assert rc == 0
        assert ep.headers[0]["Authorization"] == f"Bearer {CANARY}"  # the token was really sent
        rsps.replace(responses.POST, URL + "/infer", status=401, body=f"invalid token {CANARY}")
        rc2 = main(["explain", str(image), "--endpoint", str(profile(tmp_path)), "--out", str(tmp_path / "out2"),
                    "--samples", "40", "--fill", "mean", "--patch-size", "8"])
        assert rc2 == 2
    captured = capsys.readouterr()
    assert "[REDACTED]" in caplog.text and "[REDACTED]" in captured.err  # the echo was seen, and scrubbed
    for text in (captured.out, captured.err, caplog.text, all_text(out)):
        assert CANARY not in text
    assert not (tmp_path / "out2").exists() or not any((tmp_path / "out2").iterdir())


def test_token_in_clear_in_a_profile_is_refused(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "p.toml"
    p.write_text(f'url = "{URL}"\n[auth]\ntoken = "{CANARY}"\n')
    assert main(["endpoint", "check", "--endpoint", str(p)]) == 2
    err = capsys.readouterr().err
    assert "holds a token in clear; tokens are never written in profiles" in err and CANARY not in err


def test_plain_http_to_a_remote_host_is_refused_by_the_cli(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    image = Path(__file__).resolve().parent.parent / "examples" / "chest_xray_test_00001.png"
    rc = main(["explain", str(image), "--model", "http://192.0.2.10:8080/v2/models/m", "--out", str(tmp_path / "o")])
    assert rc == 2
    assert capsys.readouterr().err.strip() == (
        "blackbox-lime: error: Refusing plain http:// to 192.0.2.10: patient pixels would cross the network "
        "unencrypted. Use https://, or pass --allow-insecure-http (allow_insecure_http = true in the profile) "
        "if this network is trusted.")
    assert not (tmp_path / "o").exists()


def test_a_request_body_holds_no_dicom_metadata(tmp_path: Path) -> None:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    src = Path(get_testdata_file("CT_small.dcm"))
    ds = pydicom.dcmread(src)
    dcm = tmp_path / "patient_case.dcm"
    dcm.write_bytes(src.read_bytes())
    identifiers = [str(ds.PatientName), str(ds.PatientID), str(ds.StudyInstanceUID), str(ds.SOPInstanceUID),
                   "patient_case", "CT_small", "DICM"]
    identifiers = [s for s in identifiers if len(s) >= 4]
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        ep = FakeEndpoint(rsps).install()
        rc = main(["explain", str(dcm), "--model", URL, "--out", str(tmp_path / "out"), "--samples", "30",
                   "--fill", "mean", "--patch-size", "8", "--quiet"])
        assert rc == 0
        sent = [c.request for c in rsps.calls]
    assert ep.bodies and all(b.startswith(b'{"inputs":[{"name":"image","shape":[') for b in ep.bodies)
    everything = b"".join((r.body or b"") if isinstance(r.body, bytes) else str(r.body).encode() for r in sent)
    everything += "".join(r.url + str(dict(r.headers)) for r in sent).encode()
    for ident in identifiers:
        assert ident.encode() not in everything, ident
    assert {r.url.split("?")[0] for r in sent} <= {f"{BASE}/v2", URL, URL + "/ready", URL + "/infer"}


def test_budget_exhausted_leaves_no_partial_output(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    image = tmp_path / "case.npy"
    np.save(image, np.random.default_rng(1).uniform(0, 1, (32, 32, 3)).astype(np.float32))
    out = tmp_path / "out"
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        FakeEndpoint(rsps).install()
        rc = main(["explain", str(image), "--model", URL, "--out", str(out), "--samples", "100", "--fill", "mean",
                   "--patch-size", "8", "--budget", "60", "--max-batch", "16", "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("blackbox-lime: error: Query budget exhausted: ") and "Raise the budget or lower --samples." in err
    assert not out.exists() or list(out.iterdir()) == []
