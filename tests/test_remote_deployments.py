"""Remote endpoints as deployments behave, against a real loopback OIP server (blackbox_lime/evaluation/oip_server.py)
started as a subprocess with its fault switches: a body-size limit, a crash and restart, empty metadata,
half-precision outputs, binary tensors that are accepted but not listed, and no version paths. Each map must be the
fault-free one, bit for bit, with what it took in the explanation's ``traffic``."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from blackbox_lime import ExplainConfig, Explainer, OnnxAdapter, load_adapter
from blackbox_lime.adapters import ConfigError
from blackbox_lime.adapters.profile import EndpointProfile
from blackbox_lime.evaluation import oip_server

pytest.importorskip("onnxruntime")
grpc_stubs = pytest.importorskip("tritonclient.grpc.service_pb2_grpc")

CFG = ExplainConfig(fill="mean", n_samples=120)  # 120 images of 224 x 224: 3 requests of up to 32 plus the answer


@pytest.fixture(scope="module")
def reference(linear_model: Path, phantom_image: np.ndarray) -> Any:
    """The map the local adapter gives: every remote run below must equal it."""
    with OnnxAdapter(linear_model) as local:
        return Explainer(local, CFG).explain(phantom_image, target=1, rng=0)


def explain(url: str, image: np.ndarray, **kw: Any) -> Any:
    with load_adapter(url, **kw) as adapter:
        return Explainer(adapter, CFG).explain(image, target=1, rng=0)


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_a_body_limit_halves_the_requests_and_keeps_the_map(linear_model: Path, phantom_image: np.ndarray,
                                                           reference: Any, protocol: str) -> None:
    # 4 MB, nginx-like: 32 images (19.3 MB) are refused, then 16 and 8; 4 images (2.4 MB) pass
    with oip_server.start(linear_model, grpc=protocol == "grpc", max_body_bytes=4_000_000, log=True) as server:
        exp = explain(server.rest_url if protocol == "rest" else server.grpc_url, phantom_image, max_batch=32)
        log = server.requests()
    assert np.array_equal(exp.saliency, reference.saliency)
    t = exp.traffic
    assert t["max_batch"] == 32 and t["request_size"] == 4 and t["refused_for_size"] == 3
    assert t["images_asked"] == 120 and t["queries"] == 120 + 32 + 16 + 8  # the refused requests were sent: counted
    if protocol == "rest":  # gRPC refusals happen inside grpc itself, before the servicer logs anything
        assert [r["status"] for r in log[:4]] == [200, 413, 413, 413]  # the image's own answer, then 32, 16, 8
    assert max(r["images"] or 0 for r in log) == 4


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_a_server_restart_within_the_deadline_leaves_the_map_bit_identical(
        linear_model: Path, phantom_image: np.ndarray, reference: Any, protocol: str) -> None:
    """The server crashes after its 2nd answer and an orchestrator brings it back 3 s later (longer than the
    old 5 attempts waited in all, about 3.1 s)."""
    with oip_server.start(linear_model, grpc=protocol == "grpc", die_after_requests=2) as server:
        down: dict[str, float] = {}

        def orchestrator() -> None:
            server.wait_exit(timeout=60)
            down["at"] = time.monotonic()
            time.sleep(3.0)
            server.args = [a for a in server.args if a not in ("--die-after-requests", "2")]
            server.launch()
            down["back"] = time.monotonic()

        watcher = threading.Thread(target=orchestrator, daemon=True)
        watcher.start()
        exp = explain(server.rest_url if protocol == "rest" else server.grpc_url, phantom_image, max_batch=32,
                      concurrency=1)
        watcher.join(timeout=60)
    assert down["back"] - down["at"] >= 3.0
    assert np.array_equal(exp.saliency, reference.saliency)
    assert exp.traffic["retries"] >= 1 and exp.traffic["images_asked"] == 120
    assert exp.traffic["queries"] == 120 + 32 * exp.traffic["retries"]  # each retry resent its 32 images


def profile(tmp_path: Path, url: str, extra: str = "") -> Path:
    p = tmp_path / "endpoint.toml"
    p.write_text(f'url = "{url}"\n{extra}')
    return p


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_empty_metadata_with_a_profile_that_declares_the_input(linear_model: Path, phantom_image: np.ndarray,
                                                               reference: Any, tmp_path: Path, protocol: str) -> None:
    with oip_server.start(linear_model, grpc=protocol == "grpc", empty_metadata=True) as server:
        url = server.rest_url if protocol == "rest" else server.grpc_url
        with pytest.raises(ConfigError, match=r"The endpoint's model metadata lists no inputs \(KServe serves empty "
                                              r"metadata by default\)\. Declare the input in the profile"):
            load_adapter(url)
        declared = '[input]\nname = "image"\nsize = [224, 224]\n[output]\nclass_names = ["normal", "abnormal"]\n'
        with EndpointProfile.from_toml(profile(tmp_path, url, declared)).build() as adapter:
            assert adapter.info.input_size == (224, 224) and adapter.info.channels == 3
            exp = Explainer(adapter, CFG).explain(phantom_image, target=1, rng=0)
    assert np.array_equal(exp.saliency, reference.saliency)


@pytest.mark.slow
@pytest.mark.parametrize("protocol,dtype,binary", [("rest", "FP16", "never"), ("rest", "FP16", "advertise"),
                                                   ("rest", "BF16", "advertise"), ("grpc", "FP16", "advertise"),
                                                   ("grpc", "BF16", "advertise")])
def test_half_precision_outputs_are_decoded(linear_model: Path, protocol: str, dtype: str, binary: str) -> None:
    x = np.random.default_rng(0).random((6, 224, 224, 3), dtype=np.float32)
    with OnnxAdapter(linear_model) as local:
        want = local.predict(x)
    with oip_server.start(linear_model, grpc=protocol == "grpc", output_dtype=dtype, binary=binary) as server:
        with load_adapter(server.rest_url if protocol == "rest" else server.grpc_url) as adapter:
            got = adapter.predict(x)
    tol = 2e-3 if dtype == "FP16" else 8e-3  # 11 and 8 significant bits
    assert np.allclose(got, want, atol=tol) and not np.array_equal(got, want)


@pytest.mark.slow
def test_binary_tensors_are_tried_where_accepted_but_not_listed(linear_model: Path, phantom_image: np.ndarray,
                                                                reference: Any) -> None:
    """KServe accepts binary tensor data without listing the extension in /v2: the first request tries it."""
    with oip_server.start(linear_model, binary="accept", log=True) as server:
        with load_adapter(server.rest_url, max_batch=32) as adapter:
            exp = Explainer(adapter, CFG).explain(phantom_image, target=1, rng=0)
            assert adapter.transport.binary_in_use is True
        log = server.requests()
    assert np.array_equal(exp.saliency, reference.saliency) and exp.traffic["retries"] == 0
    assert all(r["binary"] for r in log)


@pytest.mark.slow
def test_a_server_that_refuses_binary_tensors_gets_json_after_one_try(linear_model: Path, phantom_image: np.ndarray,
                                                                      reference: Any) -> None:
    with oip_server.start(linear_model, binary="never", log=True) as server:
        with load_adapter(server.rest_url, max_batch=32) as adapter:
            exp = Explainer(adapter, CFG).explain(phantom_image, target=1, rng=0)
            assert adapter.transport.binary_in_use is False
        log = server.requests()
    assert np.array_equal(exp.saliency, reference.saliency)
    assert exp.traffic["retries"] == 1 and exp.traffic["queries"] == 121  # the refused probe was one image
    assert log and not any(r["binary"] for r in log)


@pytest.mark.slow
def test_a_version_path_the_server_does_not_serve_is_named(linear_model: Path) -> None:
    with oip_server.start(linear_model, version_paths=False) as server:
        with pytest.raises(ConfigError, match=r"answered HTTP 501 Not Implemented: this server does not serve versioned "
                                              r"routes \(/versions/1; KServe's REST server does not\)\. Drop the version"):
            load_adapter(server.rest_url + "/versions/1")
        with load_adapter(server.rest_url) as adapter:  # without the version it works
            assert adapter.predict(np.zeros((1, 224, 224, 3), np.float32)).shape == (1, 2)


@pytest.mark.slow
@pytest.mark.parametrize("dtype,ratio", [("FP16", 2), ("UINT8", 4)])
def test_a_smaller_input_datatype_the_server_declares_shrinks_every_request(linear_model: Path, dtype: str,
                                                                           ratio: int) -> None:
    """The metadata says the model takes FP16 (or UINT8) images: the requests carry them, 2x (4x) smaller."""
    x = np.random.default_rng(0).random((8, 224, 224, 3), dtype=np.float32)
    with OnnxAdapter(linear_model) as local:
        want = local.predict(x)
    with oip_server.start(linear_model, input_dtype=dtype, log=True) as server:
        with load_adapter(server.rest_url) as adapter:
            got = adapter.predict(x)
            assert adapter.spec.dtype == {"FP16": "float16", "UINT8": "uint8"}[dtype]
        log = server.requests()
    assert [r["datatype"] for r in log] == [dtype] and log[0]["binary"]
    header = log[0]["bytes"] - 8 * 3 * 224 * 224 * 4 // ratio  # the body: a JSON header, then the raw tensor
    assert 0 < header < 1000
    assert np.allclose(got, want, atol=2e-3 if dtype == "FP16" else 5e-3)  # the images' rounding, not the model's


@pytest.mark.slow
def test_an_audit_keeps_the_request_size_that_worked_and_reports_it(linear_model: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import json

    import cv2

    from blackbox_lime.cli import main
    from blackbox_lime.evaluation.phantoms import make_phantom

    study = tmp_path / "study"
    study.mkdir()
    for i in range(2):
        cv2.imwrite(str(study / f"case{i}.png"), np.round(make_phantom("chest_xray", "test", i).image[..., 0] * 255)
                    .astype(np.uint8))
    with oip_server.start(linear_model, max_body_bytes=4_000_000, log=True) as server:
        code = main(["audit", "run", str(study), "--model", server.rest_url, "--out", str(tmp_path / "audit"),
                     "--fill", "mean", "--samples", "60", "--max-batch", "32", "--quiet"])
        log = server.requests()
    assert code == 0
    assert [r["status"] for r in log].count(413) == 3  # 32, 16 and 8 refused once, for the whole audit
    assert max(r["images"] or 0 for r in log) == 4
    capsys.readouterr()
    assert main(["audit", "summary", str(tmp_path / "audit"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["study"]["request_size"] == [4, 32]
    assert main(["audit", "summary", str(tmp_path / "audit")]) == 0
    assert "4 images per request, not 32: the endpoint refused larger requests" in capsys.readouterr().out
