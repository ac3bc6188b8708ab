"""kill -9 of a real audit process at three random points, against a real loopback server that counts
every image it receives: the resumed audit's maps are byte-identical to an uninterrupted audit's, and at
most the images in flight at each kill (max_batch x concurrency) were paid for twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
MAX_BATCH, CONCURRENCY = 8, 2
IN_FLIGHT = MAX_BATCH * CONCURRENCY


def counting_server(tmp_path: Path, delay_ms: float, status: int = 200):  # type: ignore[no-untyped-def]
    """Start tests/counting_server.py; yield (its model URL, the log of received images); stop it."""
    log, ready = tmp_path / "received.txt", tmp_path / "port.txt"
    proc = subprocess.Popen([sys.executable, str(HERE / "counting_server.py"), "--log", str(log), "--ready", str(ready),
                             "--delay-ms", str(delay_ms), "--status", str(status)])
    for _ in range(200):
        if ready.exists() and ready.read_text():
            break
        time.sleep(0.05)
    else:  # pragma: no cover
        proc.kill()
        pytest.fail("the counting server did not start")
    yield f"http://127.0.0.1:{ready.read_text()}/v2/models/linear", log
    proc.kill()
    proc.wait()


@pytest.fixture()
def server(tmp_path: Path):  # type: ignore[no-untyped-def]
    yield from counting_server(tmp_path, 15)


def _study(folder: Path, n: int = 6) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(7)
    for i in range(n):
        img = (rng.uniform(0.15, 0.85, (32, 32, 3)) * 255).astype(np.uint8)
        cv2.imwrite(str(folder / f"img_{i:02d}.png"), img)
    return folder


def _audit(url: str, source: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "blackbox_lime", "audit", "run", str(source), "--model", url, "--out", str(out),
            "--patch-size", "8", "--fill", "mean", "--samples", "120", "--max-batch", str(MAX_BATCH),
            "--concurrency", str(CONCURRENCY), "--quiet"]


def _maps(audit: Path) -> list[Path]:
    summary = json.loads((audit / "summary.json").read_text())
    return [audit / next(o for o in c["outputs"] if o.endswith(".saliency.npy")) for c in summary["cases"]]


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


@pytest.mark.slow
def test_kill_9_three_times_then_resume_is_byte_identical_and_pays_at_most_the_in_flight_twice(tmp_path, server):
    url, log = server
    source = _study(tmp_path / "study")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    # the reference: one uninterrupted audit
    ref = subprocess.run(_audit(url, source, tmp_path / "ref"), env=env, capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr
    paid_ref = _lines(log)
    assert max(Counter(paid_ref).values()) == 1  # an uninterrupted audit never sends one image twice
    total = len(paid_ref)
    log.write_text("")

    rng = np.random.default_rng(2026)
    kill_at = sorted(rng.integers(total // 10, total * 9 // 10, size=3))
    out = tmp_path / "killed"
    kills = 0
    for at in kill_at:
        proc = subprocess.Popen(_audit(url, source, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        while proc.poll() is None and len(_lines(log)) < at:
            time.sleep(0.005)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills == 3, "the audit finished before a kill point; the points are drawn inside its run"
    final = subprocess.run(_audit(url, source, out), env=env, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr

    # case ids are salted per audit, so cases are matched by their order in the study
    maps_ref, maps = _maps(tmp_path / "ref"), _maps(out)
    assert len(maps_ref) == len(maps) == 6
    for a, b in zip(maps_ref, maps):
        assert a.read_bytes() == b.read_bytes(), b.name
    paid = _lines(log)
    twice = sum(c - 1 for c in Counter(paid).values())
    assert set(paid) == set(paid_ref)
    print(f"paid {len(paid)} (reference {total}), twice {twice}, kills at {kill_at}")
    assert twice <= kills * IN_FLIGHT, f"{twice} images paid twice over {kills} kills"
    verify = subprocess.run([sys.executable, "-m", "blackbox_lime", "audit", "verify", str(out)], env=env,
                            capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0, verify.stderr
