"""blackbox_lime: black-box saliency maps for medical image classifiers (MedLIME).

    from adapters.onnx import OnnxAdapter
    from blackbox_lime import Explainer, ExplainConfig

    with OnnxAdapter("onnx/demo_cnn.onnx") as model:
        explanation = Explainer(model, ExplainConfig()).explain(image, rng=0)
"""

__version__ = "0.1.0"

from blackbox_lime.config import ExplainConfig  # noqa: E402
from blackbox_lime.explainer import Explainer, explain  # noqa: E402
from blackbox_lime.explanation import Explanation  # noqa: E402

__all__ = ["ExplainConfig", "Explainer", "Explanation", "__version__", "explain"]
