"""Small ONNX classifiers built in the tests with onnx.helper (no torch needed).

``linear_patch_model`` is exactly linear in the patch contents:

    P(abnormal | x) = b + sum_j a_j * mean(x over patch j, all channels)

so with zero fill, hiding patch j changes P by exactly a_j * mean_j: the true attribution of a
visible-patch indicator is a_j * mean_j (known answer).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _save(graph: onnx.GraphProto, path: Path, metadata: dict[str, str] | None = None) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    for k, v in (metadata or {}).items():
        e = model.metadata_props.add()
        e.key, e.value = k, v
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


def linear_patch_model(path: Path, a: np.ndarray, b: float, size: int = 224, patch: int = 16,
                       scale: float = 1.0, offset: float = 0.0, batch: int | str = "N", channels: int = 3) -> Path:
    """probs = [1 - p, p] * scale + offset with p = b + sum_j a_j mean_j. a: (rows*cols,)."""
    rows = size // patch
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, channels, size, size])
    y = helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch, 2])
    inits = [
        numpy_helper.from_array(np.asarray(a, np.float32).reshape(rows * rows, 1), "a"),
        numpy_helper.from_array(np.array([b], np.float32), "b"),
        numpy_helper.from_array(np.array([1.0], np.float32), "one"),
        numpy_helper.from_array(np.array([0, rows * rows], np.int64), "flat"),
        numpy_helper.from_array(np.array([scale], np.float32), "scale"),
        numpy_helper.from_array(np.array([offset], np.float32), "offset"),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["gray"], axes=[1], keepdims=1),
        helper.make_node("AveragePool", ["gray"], ["pooled"], kernel_shape=[patch, patch], strides=[patch, patch]),
        helper.make_node("Reshape", ["pooled", "flat"], ["feat"]),
        helper.make_node("MatMul", ["feat", "a"], ["lin"]),
        helper.make_node("Add", ["lin", "b"], ["p1"]),
        helper.make_node("Sub", ["one", "p1"], ["p0"]),
        helper.make_node("Concat", ["p0", "p1"], ["cat"], axis=1),
        helper.make_node("Mul", ["cat", "scale"], ["scaled"]),
        helper.make_node("Add", ["scaled", "offset"], ["probs"]),
    ]
    graph = helper.make_graph(nodes, "linear_patch", [x], [y], inits)
    return _save(graph, path, {"class_names": '["normal", "abnormal"]', "abnormal_index": "1"})


def true_attribution(image: np.ndarray, a: np.ndarray, patch: int = 16, fill_value: float = 0.0) -> np.ndarray:
    """The exact effect of keeping patch j visible, for ``linear_patch_model`` and a constant fill."""
    g = image.mean(axis=2)
    rows = g.shape[0] // patch
    means = g[: rows * patch, : rows * patch].reshape(rows, patch, rows, patch).mean(axis=(1, 3)).reshape(-1)
    return a * (means - fill_value)


def brightness_model(path: Path, centre: float = 0.5, width: float = 0.1, size: int = 224) -> Path:
    """P(abnormal | x) = exp(-((mean(x) - centre) / width)^2): the answer peaks at one mean brightness,
    so the photometric transform that maximises it is known (any that brings the mean to ``centre``)."""
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, size, size])
    y = helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 2])
    inits = [
        numpy_helper.from_array(np.array([centre], np.float32), "centre"),
        numpy_helper.from_array(np.array([width], np.float32), "width"),
        numpy_helper.from_array(np.array([1.0], np.float32), "one"),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["m"], axes=[1, 2, 3], keepdims=0),  # (N,)
        helper.make_node("Unsqueeze", ["m", "axis1"], ["m1"]),  # (N, 1)
        helper.make_node("Sub", ["m1", "centre"], ["d"]),
        helper.make_node("Div", ["d", "width"], ["z"]),
        helper.make_node("Mul", ["z", "z"], ["z2"]),
        helper.make_node("Neg", ["z2"], ["nz2"]),
        helper.make_node("Exp", ["nz2"], ["p1"]),
        helper.make_node("Sub", ["one", "p1"], ["p0"]),
        helper.make_node("Concat", ["p0", "p1"], ["probs"], axis=1),
    ]
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "axis1"))
    graph = helper.make_graph(nodes, "brightness", [x], [y], inits)
    return _save(graph, path, {"class_names": '["normal", "abnormal"]', "abnormal_index": "1"})


def _patch_fill_mae(path: Path, name: str, value: float | None, size: int = 224, patch: int = 16) -> Path:
    """An "MAE" under the mae_recon.onnx contract that keeps the visible pixels and fills every hidden patch
    with ``value`` (pixels in [0, 1]; mean 0, std 1), or with the hidden pixels as they were (``None``)."""
    g = size // patch
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, size, size])
    m = helper.make_tensor_value_info("patch_mask", TensorProto.FLOAT, ["N", g * g])
    y = helper.make_tensor_value_info("recon", TensorProto.FLOAT, ["N", 3, size, size])
    inits = [numpy_helper.from_array(np.array([0, 1, g, g], np.int64), "grid"),
             numpy_helper.from_array(np.array([1, 1, patch, patch], np.float32), "scales"),
             numpy_helper.from_array(np.array([0.0 if value is None else value], np.float32), "value"),
             numpy_helper.from_array(np.array([1.0], np.float32), "one")]
    nodes = [
        helper.make_node("Reshape", ["patch_mask", "grid"], ["m4"]),
        helper.make_node("Resize", ["m4", "", "scales"], ["mpx"], mode="nearest"),
        helper.make_node("Sub", ["one", "mpx"], ["keep"]),
        helper.make_node("Mul", ["image", "keep"], ["kept"]),
        helper.make_node("Mul", ["mpx", "image" if value is None else "value"], ["painted"]),
        helper.make_node("Add", ["kept", "painted"], ["recon"]),
    ]
    graph = helper.make_graph(nodes, name, [x, m], [y], inits)
    return _save(graph, path, {"blackbox_lime.kind": "mae", "image_size": str(size), "patch_size": str(patch),
                               "channels": "3", "mean": "[0.0, 0.0, 0.0]", "std": "[1.0, 1.0, 1.0]"})


def painter_mae(path: Path, value: float, size: int = 224, patch: int = 16) -> Path:
    """An "MAE" that paints every hidden patch with ``value``: a fill that recreates a bright trigger wherever it
    hides one."""
    return _patch_fill_mae(path, "painter_mae", value, size, patch)


def oracle_mae(path: Path, size: int = 224, patch: int = 16) -> Path:
    """An "MAE" that returns the image itself, hidden patches included: it passes any reconstruction check, and
    hiding a patch never changes what the classifier sees."""
    return _patch_fill_mae(path, "oracle_mae", None, size, patch)


def sine_model(path: Path, a: np.ndarray, frequency: float = 50.0, size: int = 224, patch: int = 16) -> Path:
    """P(abnormal | x) = 0.5 + 0.4 sin(frequency * sum_j a_j mean_j): the answer moves when patches are hidden,
    but no linear model of the patches predicts it (a map of low fidelity). a: (rows*cols,)."""
    rows = size // patch
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, size, size])
    y = helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 2])
    inits = [numpy_helper.from_array(np.asarray(a, np.float32).reshape(rows * rows, 1), "a"),
             numpy_helper.from_array(np.array([0, rows * rows], np.int64), "flat"),
             numpy_helper.from_array(np.array([frequency], np.float32), "f"),
             numpy_helper.from_array(np.array([0.4], np.float32), "amp"),
             numpy_helper.from_array(np.array([0.5], np.float32), "half"),
             numpy_helper.from_array(np.array([1.0], np.float32), "one")]
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["gray"], axes=[1], keepdims=1),
        helper.make_node("AveragePool", ["gray"], ["pooled"], kernel_shape=[patch, patch], strides=[patch, patch]),
        helper.make_node("Reshape", ["pooled", "flat"], ["feat"]),
        helper.make_node("MatMul", ["feat", "a"], ["lin"]),
        helper.make_node("Mul", ["lin", "f"], ["fm"]),
        helper.make_node("Sin", ["fm"], ["s"]),
        helper.make_node("Mul", ["s", "amp"], ["sa"]),
        helper.make_node("Add", ["sa", "half"], ["p1"]),
        helper.make_node("Sub", ["one", "p1"], ["p0"]),
        helper.make_node("Concat", ["p0", "p1"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(nodes, "sine", [x], [y], inits)
    return _save(graph, path, {"class_names": '["normal", "abnormal"]', "abnormal_index": "1"})


def multilabel_region_model(path: Path, regions: "dict[str, int | None]", gain: float = 12.0, bias: float = -3.0,
                            size: int = 224, patch: int = 16, logits: bool = False) -> Path:
    """A multi-label model: finding k's logit is gain * mean(x over patch regions[k]) + bias, and its output a
    sigmoid of that (or the logit itself with ``logits=True``). Each finding depends on exactly one known
    patch, so its true attribution is that patch alone (known answer); a finding whose region is None is
    sigmoid(bias) for every image (it never moves). Rows do not sum to 1."""
    rows = size // patch
    names = list(regions)
    k = len(names)
    w = np.zeros((rows * rows, k), np.float32)
    for j, name in enumerate(names):
        if regions[name] is not None:
            w[regions[name], j] = gain
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, size, size])
    y = helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", k])
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.full(k, bias, np.float32), "b"),
             numpy_helper.from_array(np.array([0, rows * rows], np.int64), "flat")]
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["gray"], axes=[1], keepdims=1),
        helper.make_node("AveragePool", ["gray"], ["pooled"], kernel_shape=[patch, patch], strides=[patch, patch]),
        helper.make_node("Reshape", ["pooled", "flat"], ["feat"]),
        helper.make_node("MatMul", ["feat", "w"], ["lin"]),
        helper.make_node("Add", ["lin", "b"], ["logit" if not logits else "probs"]),
    ]
    if not logits:
        nodes.append(helper.make_node("Sigmoid", ["logit"], ["probs"]))
    graph = helper.make_graph(nodes, "multilabel_regions", [x], [y], inits)
    import json

    return _save(graph, path, {"class_names": json.dumps(names), "abnormal_index": "0",
                               "output": "multilabel_logits" if logits else "multilabel"})
