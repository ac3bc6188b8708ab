"""Where the bundled ONNX models live, in a source checkout and after ``pip install .``."""

from __future__ import annotations

import os
from pathlib import Path

_SOURCE_DIR = Path(__file__).resolve().parent.parent / "onnx"  # a source checkout
_INSTALLED_DIR = Path(__file__).resolve().parent / "bundled"  # a wheel maps onnx/ here (pyproject.toml)


def model_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("BLACKBOX_LIME_MODELS"):
        dirs.append(Path(os.environ["BLACKBOX_LIME_MODELS"]))
    return dirs + [_SOURCE_DIR, _INSTALLED_DIR]


def bundled_model(name: str) -> Path:
    """The path of a bundled model file such as ``demo_cnn.onnx`` or ``mae_recon.onnx``."""
    for d in model_dirs():
        p = d / name
        if p.is_file():
            return p
    searched = ", ".join(str(d) for d in model_dirs())
    raise FileNotFoundError(
        f"The bundled model {name} was not found (searched {searched}). Reinstall blackbox-lime, "
        "or set BLACKBOX_LIME_MODELS to a folder that holds it.")


def bundled_example(name: str) -> Path:
    """The path of a bundled example image (``examples/`` in a checkout)."""
    for d in (_SOURCE_DIR.parent / "examples", Path(__file__).resolve().parent / "examples"):
        if (d / name).is_file():
            return d / name
    raise FileNotFoundError(f"The bundled example {name} was not found; reinstall blackbox-lime.")
