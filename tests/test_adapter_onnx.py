from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from graphs import linear_patch_model

from blackbox_lime.adapters import (
    AdapterError,
    BudgetExhausted,
    ModelLoadError,
    ResponseError,
    load_adapter,
)
from blackbox_lime.adapters.onnx import OnnxAdapter


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 224, 224, 3), dtype=np.float32)


def test_predict_counts_queries_and_requests(linear_model: Path) -> None:
    with OnnxAdapter(linear_model, max_batch=4) as m:
        p = m.predict(images(10))
        assert p.shape == (10, 2) and p.dtype == np.float64
        assert np.allclose(p.sum(1), 1.0)
        assert m.counters() == {"queries": 10, "images_asked": 10, "requests": 3, "retries": 0, "refused_for_size": 0,
                                "request_size": m.max_batch, "max_batch": m.max_batch}
        assert m.info.class_names == ("normal", "abnormal") and m.info.abnormal_index == 1
        assert m.info.extra["provider"] == "CPUExecutionProvider"


def test_batch_split_gives_the_same_answer(linear_model: Path) -> None:
    x = images(9, 1)
    with OnnxAdapter(linear_model, max_batch=2) as a, OnnxAdapter(linear_model, max_batch=64) as b:
        assert np.allclose(a.predict(x), b.predict(x), atol=1e-7)


def test_budget_is_checked_before_sending(linear_model: Path) -> None:
    with OnnxAdapter(linear_model, budget=12) as m:
        m.predict(images(10))
        with pytest.raises(BudgetExhausted, match=r"Query budget exhausted: 10 of 12 queries used, and the next call needs 5\."):
            m.predict(images(5))
        assert m.queries == 10  # nothing of the refused call was sent


def test_not_an_onnx_file(tmp_path: Path) -> None:
    p = tmp_path / "model.onnx"
    p.write_bytes(b"definitely not protobuf" * 20)
    with pytest.raises(ModelLoadError, match=r"model\.onnx is not a loadable ONNX model \(.*\)\. Pass an \.onnx file exported for onnxruntime\."):
        OnnxAdapter(p)


def test_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"Model file not found: .*nope\.onnx\. Pass the path to an \.onnx file\."):
        load_adapter(str(tmp_path / "nope.onnx"))


def test_declared_size_contradicts_model(tmp_path: Path) -> None:
    p = linear_patch_model(tmp_path / "small.onnx", np.zeros(64), 0.5, size=128)
    with pytest.raises(ModelLoadError, match=r"small\.onnx takes input height 128 but 224 was declared; the model's input shape is \['N', 3, 128, 128\]\."):
        OnnxAdapter(p, input_size=(224, 224))
    assert OnnxAdapter(p).info.input_size == (128, 128)


def test_nan_output_is_a_response_error(tmp_path: Path) -> None:
    p = linear_patch_model(tmp_path / "nan.onnx", np.zeros(196), 0.5, offset=float("nan"))
    with OnnxAdapter(p) as m, pytest.raises(ResponseError, match="The model returned NaN or infinite probabilities"):
        m.predict(images(2))


def test_out_of_range_output_is_a_response_error(tmp_path: Path) -> None:
    p = linear_patch_model(tmp_path / "big.onnx", np.zeros(196), 0.5, scale=3.0)
    with OnnxAdapter(p) as m, pytest.raises(ResponseError, match=r"The model returned values outside \[0, 1\] \(min 1\.5, max 1\.5\); expected probabilities\."):
        m.predict(images(2))


def test_logits_are_softmaxed(tmp_path: Path) -> None:
    p = linear_patch_model(tmp_path / "logit.onnx", np.zeros(196), 0.5, scale=4.0, offset=-1.0)
    with OnnxAdapter(p, output="logits") as m:
        out = m.predict(images(1))
    # logits [1, 1] -> [0.5, 0.5]
    assert np.allclose(out, 0.5)


def test_wrong_image_shape_is_refused(linear_model: Path) -> None:
    with OnnxAdapter(linear_model) as m, pytest.raises(ValueError, match=r"predict expects images of shape \(N, 224, 224, 3\) for this model\. Got \(1, 100, 100, 3\) instead"):
        m.predict(np.zeros((1, 100, 100, 3), np.float32))


def test_fixed_batch_of_one_is_respected(tmp_path: Path) -> None:
    p = linear_patch_model(tmp_path / "b1.onnx", np.zeros(196), 0.25, batch=1)
    with OnnxAdapter(p) as m:
        assert m.max_batch == 1
        assert np.allclose(m.predict(images(3))[:, 1], 0.25)
        assert m.requests == 3


def test_unknown_url_schemes_are_refused() -> None:
    from blackbox_lime.adapters import ConfigError

    with pytest.raises(ConfigError, match=r"Unsupported endpoint scheme ftp://; use http\(s\):// for REST or grpc\(s\):// for gRPC\."):
        load_adapter("ftp://models.example/chest")


def test_adapter_error_tree() -> None:
    for cls in (ModelLoadError, ResponseError, BudgetExhausted):
        assert issubclass(cls, AdapterError)
