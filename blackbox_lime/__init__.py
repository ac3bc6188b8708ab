"""blackbox_lime: black-box saliency maps for medical image classifiers (MedLIME).

    from blackbox_lime import Explainer, ExplainConfig, OnnxAdapter

    with OnnxAdapter("onnx/demo_cnn.onnx") as model:
        explanation = Explainer(model, ExplainConfig()).explain(image, rng=0)

The public API is what ``__all__`` names; everything else may change between versions. The adapters
(``blackbox_lime.adapters``: local ONNX, OIP REST and gRPC, TF-Serving JSON) are the only way the
method reaches a classifier.
"""

from __future__ import annotations

from pathlib import Path as _Path

from blackbox_lime._version import __version__


def _source_checkout_adapters() -> None:
    """In a source checkout, find ``blackbox_lime.adapters`` in the repository's adapters/ folder.

    The wheel installs adapters/ as blackbox_lime/adapters/ (pyproject.toml's package-dir). Run from the
    checkout itself (``python -m pytest``, ``python -m blackbox_lime.evaluation.bench``), Python imports this
    folder, which has no adapters/ inside: the checkout's adapters/ is added to where the subpackage is
    looked for, and nothing else is.
    """
    here = _Path(__file__).resolve().parent
    adapters = here.parent / "adapters"
    if not (here / "adapters").exists() and (adapters / "__init__.py").is_file() and \
            (here.parent / "pyproject.toml").is_file():
        import importlib.util
        import sys

        if "blackbox_lime.adapters" not in sys.modules:
            spec = importlib.util.spec_from_file_location("blackbox_lime.adapters", adapters / "__init__.py",
                                                          submodule_search_locations=[str(adapters)])
            if spec is not None and spec.loader is not None:
                module = importlib.util.module_from_spec(spec)
                sys.modules["blackbox_lime.adapters"] = module
                spec.loader.exec_module(module)


_source_checkout_adapters()

from blackbox_lime.adapters import load_adapter  # noqa: E402
from blackbox_lime.adapters.base import ClassifierAdapter, ModelInfo  # noqa: E402
from blackbox_lime.adapters.errors import AdapterError  # noqa: E402
from blackbox_lime.adapters.onnx import OnnxAdapter  # noqa: E402
from blackbox_lime.config import ExplainConfig  # noqa: E402
from blackbox_lime.explainer import Explainer, explain  # noqa: E402
from blackbox_lime.explanation import Explanation, ExplanationSet  # noqa: E402

__all__ = ["AdapterError", "ClassifierAdapter", "ExplainConfig", "Explainer", "Explanation", "ExplanationSet",
           "ModelInfo", "OnnxAdapter", "__version__", "explain", "load_adapter"]
