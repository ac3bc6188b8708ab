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


#: The bundled classifiers by name (``--model demo-cnn``): file and what each is for. ``blackbox-lime models`` lists
#: them with their classes and input size, read from the files themselves.
BUNDLED_CLASSIFIERS: dict[str, tuple[str, str]] = {
    "demo-cnn": ("demo_cnn.onnx", "chest X-ray and breast ultrasound phantoms, normal vs abnormal (the demo's CNN)"),
    "demo-vit": ("demo_vit.onnx", "the same task, a small ViT"),
    "shortcut-marker": ("shortcut_marker.onnx", "reads a marker burnt into the image, not the lesion: a planted "
                                                "shortcut for a first audit (phantoms --marker text)"),
    "multilabel-cnn": ("multilabel_cnn.onnx", "multi-label chest phantoms: nodule, consolidation, effusion "
                                              "(phantoms --multilabel)"),
    "chest4-cnn": ("chest4_cnn.onnx", "four exclusive classes on chest phantoms: normal, nodule, consolidation, "
                                      "effusion (for top-k answer benchmarks)"),
    "brain-cnn": ("brain_cnn.onnx", "brain MRI phantoms (an unseen family for the MAE)"),
    "fundus-cnn": ("fundus_cnn.onnx", "colour fundus phantoms (an unseen family for the MAE)"),
    "figshare-brain-cnn": ("figshare_brain_cnn.onnx", "real T1-CE brain MRI: pituitary, meningioma or glioma "
                                                      "(trained on the figshare set; for benchmarks, never diagnosis)"),
}


def resolve_model(model: str) -> str:
    """A bundled classifier's name (``demo-cnn``) -> its file's path; any other value (a path, a URL) as given.
    A file of that name in the working folder wins over the bundled model."""
    if model in BUNDLED_CLASSIFIERS and not Path(model).exists():
        return str(bundled_model(BUNDLED_CLASSIFIERS[model][0]))
    return model


def bundled_example(name: str) -> Path:
    """The path of a bundled example image (``examples/`` in a checkout)."""
    for d in (_SOURCE_DIR.parent / "examples", Path(__file__).resolve().parent / "examples"):
        if (d / name).is_file():
            return d / name
    raise FileNotFoundError(f"The bundled example {name} was not found; reinstall blackbox-lime.")
