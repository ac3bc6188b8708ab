from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from graphs import linear_patch_model  # noqa: E402


@pytest.fixture(scope="session")
def linear_weights() -> np.ndarray:
    """True patch weights: five strong patches (the known top-5), the rest small."""
    rng = np.random.default_rng(1234)
    a = rng.uniform(-0.002, 0.002, 196)
    a[[20, 47, 90, 133, 170]] = [0.09, 0.08, -0.07, 0.06, 0.05]
    return a


@pytest.fixture(scope="session")
def linear_model(tmp_path_factory: pytest.TempPathFactory, linear_weights: np.ndarray) -> Path:
    return linear_patch_model(tmp_path_factory.mktemp("models") / "linear.onnx", linear_weights, 0.3)


@pytest.fixture(scope="session")
def phantom_image() -> np.ndarray:
    from blackbox_lime.evaluation.phantoms import make_phantom

    return make_phantom("chest_xray", "test", 1).image
