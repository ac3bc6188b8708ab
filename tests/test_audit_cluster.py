"""Audits on Dask: a LocalCluster of 2 workers and a dask scheduler / dask worker pair on loopback, against
a real loopback server that counts what it receives and how many requests it answers at once."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("distributed", reason="the audit extra (dask[distributed]) is not installed")

from test_audit_kill import _lines, _maps, _study, counting_server  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
pytestmark = pytest.mark.slow


@pytest.fixture()
def server(tmp_path: Path):  # type: ignore[no-untyped-def]
    yield from counting_server(tmp_path, 40)


def _audit(url: str, source: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "blackbox_lime", "audit", "run", str(source), "--model", url, "--out", str(out),
            "--patch-size", "8", "--fill", "mean", "--samples", "120", "--max-batch", "8", "--quiet", *extra]


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=300)


def test_two_workers_give_the_serial_maps_and_share_the_request_limit_and_the_budget(tmp_path, server):
    url, log = server
    source = _study(tmp_path / "study")
    # two workers, each sending as soon as it can, but one request in flight for the whole cluster
    r = _run(_audit(url, source, tmp_path / "cluster", "--workers", "2", "--concurrency", "1"))
    assert r.returncode == 0, r.stderr
    assert int(Path(str(log) + ".inflight").read_text()) == 1  # the server never answered two at once
    paid = _lines(log)
    log.write_text("")
    serial = _run(_audit(url, source, tmp_path / "serial", "--concurrency", "2"))
    assert serial.returncode == 0, serial.stderr
    assert [m.read_bytes() for m in _maps(tmp_path / "cluster")] == [m.read_bytes() for m in _maps(tmp_path / "serial")]
    assert len(paid) == len(_lines(log)) and max(Counter(paid).values()) == 1  # each image once, as serially
    # the budget holds for the workers together: stopped cleanly, never exceeded, resumable
    log.write_text("")
    out = tmp_path / "budget"
    r = _run(_audit(url, source, out, "--workers", "2", "--budget", "300"))
    assert r.returncode == 4, r.stderr
    assert "The audit's budget is spent" in r.stderr and "Traceback" not in r.stderr
    assert len(_lines(log)) <= 300
    summary = json.loads((out / "summary.json").read_text())["study"]
    assert summary["totals"]["sent"] <= 300 and summary["pending"] >= 1
    r = _run(_audit(url, source, out, "--workers", "2", "--budget", "2000"))
    assert r.returncode == 0, r.stderr
    assert [m.read_bytes() for m in _maps(out)] == [m.read_bytes() for m in _maps(tmp_path / "serial")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _certificates(folder: Path) -> dict[str, str]:
    """A CA and one certificate for the cluster's processes on loopback, made here (trustme): PEM file paths."""
    import trustme

    folder.mkdir()
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    files = {"ca": folder / "ca.pem", "cert": folder / "cert.pem", "key": folder / "key.pem"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    cert.cert_chain_pems[0].write_to_path(str(files["cert"]))
    cert.private_key_pem.write_to_path(str(files["key"]))
    return {k: str(v) for k, v in files.items()}


def test_an_audit_joins_a_tls_dask_scheduler_and_worker_started_apart(tmp_path, server):
    url, log = server
    source = _study(tmp_path / "study")
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    bin_dir = Path(sys.executable).parent
    pem = _certificates(tmp_path / "certs")
    tls = ["--tls-ca-file", pem["ca"], "--tls-cert", pem["cert"], "--tls-key", pem["key"]]
    sched = subprocess.Popen([str(bin_dir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                              "--protocol", "tls", "--no-dashboard", *tls], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    worker = subprocess.Popen([str(bin_dir / "dask"), "worker", f"tls://127.0.0.1:{port}", "--nthreads", "1",
                               "--no-dashboard", "--host", "127.0.0.1", *tls], env=env, cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client_tls = ["--dask-tls-ca", pem["ca"], "--dask-tls-cert", pem["cert"], "--dask-tls-key", pem["key"]]
    try:
        r = _run(_audit(url, source, tmp_path / "joined", "--scheduler", f"tls://127.0.0.1:{port}", *client_tls))
        assert r.returncode == 0, r.stderr
        serial = _run(_audit(url, source, tmp_path / "serial"))
        assert serial.returncode == 0, serial.stderr
        assert [m.read_bytes() for m in _maps(tmp_path / "joined")] == \
            [m.read_bytes() for m in _maps(tmp_path / "serial")]
        # without certificates, the TLS scheduler is refused before anything is written
        r = _run(_audit(url, source, tmp_path / "nocert", "--scheduler", f"tls://127.0.0.1:{port}"))
        assert r.returncode == 2 and "speaks TLS but no certificates are set" in r.stderr
        assert not (tmp_path / "nocert").exists()
    finally:
        for p in (worker, sched):
            p.terminate()
            p.wait(timeout=30)
    bad = _run(_audit(url, source, tmp_path / "nowhere", "--scheduler", f"tcp://127.0.0.1:{_free_port()}"))
    assert bad.returncode == 2 and "Cannot reach the Dask scheduler" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "nowhere").exists()


def test_kill_9_of_the_coordinator_and_its_workers_then_resume_is_byte_identical(tmp_path, server):
    """The whole process group dies at once (as on a crash). What reached the store is never sent again. Sent
    again: the requests in flight and the answers still on the queue (the last ~50 ms); it can never be more
    than what the cases in flight (one per worker) had received. Measured here: 16 images, two requests."""
    import signal

    url, log = server
    source = _study(tmp_path / "study")
    ref = _run(_audit(url, source, tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr
    total = len(_lines(log))
    log.write_text("")
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(_audit(url, source, out, "--workers", "2"), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    while proc.poll() is None and len(_lines(log)) < total // 2:
        time.sleep(0.005)
    assert proc.poll() is None, "the audit ended before the kill point"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = json.loads(subprocess.run(
        [sys.executable, "-m", "blackbox_lime", "audit", "summary", str(out), "--json"], env=env, capture_output=True,
        text=True, timeout=60).stdout)["study"]["done"]
    r = _run(_audit(url, source, out, "--workers", "2"))
    assert r.returncode == 0, r.stderr
    assert [m.read_bytes() for m in _maps(out)] == [m.read_bytes() for m in _maps(tmp_path / "ref")]
    paid = _lines(log)
    twice = sum(c - 1 for c in Counter(paid).values())
    per_case = 120
    print(f"paid {len(paid)} for {total} distinct, {twice} twice, {done_before} cases done at the kill")
    assert twice <= 2 * per_case, f"{twice} images paid twice; at most what the two cases in flight received"
    assert len(set(paid)) == total and done_before >= 1
