"""The wheel installs exactly one top-level package, blackbox_lime, and it works from any folder."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # built from a copy: an in-tree build would leave build/ behind, whose stale files reach the next wheel
    src = tmp_path_factory.mktemp("src") / "blackbox-lime"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".*venv*", "build", "dist", "bench_out", "docs",
                                                             "*.egg-info", "__pycache__", ".pytest_cache", "tests"))
    # no build isolation: the test extra installs setuptools, and a test never downloads anything
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "-q", "-w", str(out), str(src)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    (path,) = out.glob("blackbox_lime-*.whl")
    return path


@pytest.mark.slow
def test_the_wheel_holds_one_top_level_package(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        entry_points = zf.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    top = {n.split("/")[0] for n in names}
    assert top == {"blackbox_lime", next(t for t in top if t.endswith(".dist-info"))}, sorted(top)
    for expected in ("blackbox_lime/adapters/__init__.py", "blackbox_lime/adapters/http.py",
                     "blackbox_lime/cli/__init__.py", "blackbox_lime/evaluation/bench.py",
                     "blackbox_lime/audit/runner.py", "blackbox_lime/py.typed", "blackbox_lime/bundled/demo_cnn.onnx",
                     "blackbox_lime/bundled/mae_recon.onnx", "blackbox_lime/examples/chest_xray_test_00001.png"):
        assert expected in names, expected
    assert not any(n.startswith(("adapters/", "cli.py", "tests/", "onnx/")) for n in names)
    assert "blackbox-lime = blackbox_lime.cli:main" in entry_points


@pytest.mark.slow
def test_the_installed_wheel_imports_by_its_installed_names_only(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                           str(target), str(wheel)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    probe = ("import sys, blackbox_lime, blackbox_lime.adapters.http, blackbox_lime.cli, blackbox_lime.evaluation.bench; "
             "print(blackbox_lime.__file__); print(blackbox_lime.adapters.http.__file__); "
             "print(sorted(m for m in sys.modules if m in ('adapters', 'cli')))")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                         env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr[-2000:]
    pkg, http, stray = run.stdout.splitlines()
    assert Path(pkg).is_relative_to(target) and Path(http).is_relative_to(target / "blackbox_lime" / "adapters")
    assert stray == "[]"


def test_the_public_api_is_named_at_the_top() -> None:
    import blackbox_lime

    for name in ("Explainer", "ExplainConfig", "explain", "Explanation", "ExplanationSet", "OnnxAdapter",
                 "ClassifierAdapter", "load_adapter", "AdapterError"):
        assert name in blackbox_lime.__all__ and getattr(blackbox_lime, name) is not None
    assert "adapters" not in sys.modules and "cli" not in sys.modules  # no stray top-level modules
