"""What a new user meets on a first audit (issue 36): messages printed once, a quiet closed pipe, resuming said,
a folder given as a model, a mistyped option, the fill line of a default run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_audit_kill import _study

from blackbox_lime.cli import main
from blackbox_lime.cli.common import fill_line
from blackbox_lime.models import bundled_model

ROOT = Path(__file__).resolve().parent.parent
MODEL = str(bundled_model("shortcut_marker.onnx"))


def _audit(source: Path, out: Path, *extra: str) -> list[str]:
    return ["audit", "run", str(source), "--model", MODEL, "--out", str(out), "--samples", "30", "--fill", "mean",
            *extra]


def test_the_fill_line_of_an_mae_that_passed_its_check_names_the_reconstruction():
    exp = SimpleNamespace(fill={"mode": "auto", "chosen": "mae", "scores": {}, "queries_spent_on_choice": 0,
                                "recon_psnr_db": {"mae": 27.14, "blur": 26.51}})
    assert fill_line(exp) == "fill=auto->mae (reconstruction mae 27.1 dB, blur 26.5 dB; no query)"
    exp.fill.update(chosen="mean", scores={"mean": 0.581, "blur": None}, queries_spent_on_choice=64)
    assert fill_line(exp) == "fill=auto->mean (mean 0.58, blur flat; 64 queries)"


def test_a_summary_read_through_a_closed_pipe_ends_quietly(tmp_path):
    out = tmp_path / "audit"
    assert main(_audit(_study(tmp_path / "study", 2), out, "--quiet")) == 0
    proc = subprocess.Popen([sys.executable, "-m", "blackbox_lime", "audit", "summary", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # as `| head -1` does once it has its line: here before the summary is written, every time
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0 and err == ""


def test_a_failed_case_is_printed_once_and_a_resume_says_where_it_stands(tmp_path, capsys):
    source = _study(tmp_path / "study", 2)
    (source / "broken.png").write_bytes(b"not a png at all" * 8)
    out = tmp_path / "audit"
    assert main(_audit(source, out, "--quiet")) == 3
    err = capsys.readouterr().err
    failures = [ln for ln in err.splitlines() if "failed:" in ln and "case" in ln]
    assert len(failures) == 1 and "is named .png but its content is not a PNG image" in failures[0]
    assert main(_audit(source, out)) == 3
    assert "resuming: 2 of 3 cases done, 1 failed (tried again)" in capsys.readouterr().err


def test_a_folder_given_as_the_model_is_named_a_folder_with_its_models(tmp_path, capsys):
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "a.onnx").write_bytes(Path(MODEL).read_bytes())
    image = _study(tmp_path / "study", 1) / "img_00.png"
    assert main(["explain", str(image), "--model", str(folder), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == (f"blackbox-lime: error: {folder} is a folder, not a model file. It "
                                               "holds a.onnx: pass one of them.")


def test_a_mistyped_option_gets_the_nearest_one(capsys):
    with pytest.raises(SystemExit) as info:
        main(["explain", "x.png", "--model", MODEL, "--out", "o", "--sampels", "100"])
    assert info.value.code == 2
    assert "unrecognized arguments: --sampels 100 (--sampels: did you mean --samples?)" in capsys.readouterr().err


def test_the_overview_s_input_panel_has_no_colour_bar():
    import numpy as np

    from blackbox_lime.outputs import render_overlay

    grey, flat = np.full((64, 64, 3), 0.5, np.float32), np.zeros((64, 64), np.float32)
    panel, mapped = render_overlay(grey, flat, "input", colour_bar=False), render_overlay(grey, flat, "map")
    assert panel.shape == mapped.shape  # the panels still line up
    beside = np.s_[40:, 512:]  # right of the (drawn 512 px wide) image: the bar and its labels
    assert (panel[beside].min(axis=2) < 250).mean() == 0.0 and (mapped[beside].min(axis=2) < 250).mean() > 0.1


def test_the_console_and_the_json_show_the_same_fidelity_figure(tmp_path, capsys):
    import json

    image = Path(__file__).resolve().parent.parent / "examples" / "chest_xray_test_00001.png"
    out = tmp_path / "o"
    assert main(["explain", str(image), "--model", "demo-cnn", "--out", str(out), "--samples", "150"]) == 0
    r2e = json.loads((out / "chest_xray_test_00001.json").read_text())["r2_evidence"]
    assert r2e is not None  # the answer moved: there is a figure to show
    assert f"fidelity {r2e:.2f} (evidence R2, held-out; R2 " in capsys.readouterr().err


@pytest.mark.slow
def test_readme_s_first_audit_runs_verbatim(tmp_path):
    """README's three lines, as a new user pastes them (the third, which opens a browser, only checked for its file)."""
    import re
    import shlex

    text = (ROOT / "README.md").read_text()
    block = re.search(r"A first audit, on a fresh install.*?```bash\n(.*?)```", text, re.S)
    assert block is not None
    lines = [ln for ln in block.group(1).splitlines() if ln.strip()]
    assert len(lines) == 3 and lines[2] == "python -m webbrowser audit/report.html"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for line in lines[:2]:
        argv = shlex.split(line)
        assert argv[0] == "blackbox-lime"
        r = subprocess.run([sys.executable, "-m", "blackbox_lime", *argv[1:]], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((tmp_path / "audit" / "summary.json").read_text())["study"]
    assert summary["cases"] == 16 and summary["complete"] and summary["flags"]["shortcut_border"]["cases"] >= 1
    assert (tmp_path / "audit" / "report.html").is_file()


def test_workers_without_the_audit_extra_exit_2_and_leave_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if dask[distributed] were not installed
    out = tmp_path / "audit"
    assert main(_audit(_study(tmp_path / "study", 1), out, "--workers", "2", "--quiet")) == 2
    assert "--workers and --scheduler need Dask: pip install 'blackbox-lime[audit]'." in capsys.readouterr().err
    assert not out.exists()


def test_a_quiet_audit_on_workers_prints_only_its_result(tmp_path):
    pytest.importorskip("distributed")
    out = tmp_path / "audit"
    r = subprocess.run([sys.executable, "-m", "blackbox_lime", *_audit(_study(tmp_path / "study", 2), out, "--workers",
                                                                        "2", "--quiet")],
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{out}: 2 of 2 cases explained"), r.stderr


def test_a_quiet_audit_on_workers_says_nothing_when_another_cluster_holds_port_8787(tmp_path):
    pytest.importorskip("distributed")
    import socket

    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        holder.bind(("127.0.0.1", 8787))  # as another cluster's dashboard would
    except OSError:
        pytest.skip("port 8787 is taken on this machine already")
    holder.listen()
    try:
        out = tmp_path / "audit"
        r = subprocess.run([sys.executable, "-m", "blackbox_lime", *_audit(_study(tmp_path / "study", 1), out,
                                                                            "--workers", "1", "--quiet")],
                           env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    finally:
        holder.close()
    assert r.returncode == 0, r.stderr
    assert "Perhaps you already have a cluster running" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
