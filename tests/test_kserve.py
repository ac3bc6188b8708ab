"""KServe 0.21 as a second real server (beside MLServer), started from its own environment by a fixture:
empty metadata with a profile, binary tensors it accepts without listing them, its 8 MiB gRPC limit, and a
restart during a run. Every map must equal the local one bit for bit."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from blackbox_lime import ExplainConfig, Explainer, OnnxAdapter, load_adapter
from blackbox_lime.adapters import ConfigError
from blackbox_lime.evaluation import kserve_server

pytest.importorskip("tritonclient.grpc.service_pb2_grpc")
if kserve_server.kserve_python() is None:
    pytest.skip("KServe is not installed: set BLACKBOX_LIME_KSERVE_PYTHON (.ci/run makes its environment)",
                allow_module_level=True)

CFG = ExplainConfig(fill="mean", n_samples=120)


@pytest.fixture(scope="module")
def server(linear_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    with kserve_server.start(linear_model, tmp_path_factory.mktemp("kserve") / "kserve.log") as s:
        yield s


@pytest.fixture(scope="module")
def reference(linear_model: Path, phantom_image: np.ndarray) -> Any:
    with OnnxAdapter(linear_model) as local:
        return Explainer(local, CFG).explain(phantom_image, target=1, rng=0)


def profile(tmp_path: Path, url: str) -> Path:
    p = tmp_path / "kserve.toml"
    p.write_text(f'url = "{url}"\n[input]\nname = "image"\nsize = [224, 224]\n')
    return p


@pytest.mark.slow
def test_kserve_serves_empty_metadata_and_the_profile_fills_it(server: Any, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"The endpoint's model metadata lists no inputs \(KServe serves empty "
                                          r"metadata by default\)"):
        load_adapter(server.rest_url)


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_kserve_maps_equal_the_local_map(server: Any, reference: Any, phantom_image: np.ndarray, tmp_path: Path,
                                        protocol: str) -> None:
    with load_adapter(endpoint=str(profile(tmp_path, server.rest_url if protocol == "rest" else server.grpc_url))) as a:
        exp = Explainer(a, CFG).explain(phantom_image, target=1, rng=0)
        if protocol == "rest":  # KServe takes binary tensors without listing the extension: the first request tried
            assert a.transport.binary_in_use is True and exp.traffic["retries"] == 0
        else:  # 32 images of 224 x 224 float32 are 19.3 MB against KServe's 8 MiB gRPC limit: 8 per request
            assert exp.traffic["request_size"] == 8 and exp.traffic["refused_for_size"] == 2
    assert np.array_equal(exp.saliency, reference.saliency)
    assert exp.traffic["images_asked"] == 120


@pytest.mark.slow
def test_a_kserve_restart_during_a_run_leaves_the_map_bit_identical(linear_model: Path, reference: Any,
                                                                   phantom_image: np.ndarray, tmp_path: Path) -> None:
    with kserve_server.start(linear_model, tmp_path / "kserve.log") as s:
        with load_adapter(endpoint=str(profile(tmp_path, s.rest_url)), max_batch=8) as a:
            a.predict(phantom_image[None])  # the binary try is settled before the restart
            timeline: dict[str, float] = {}

            def restart() -> None:
                time.sleep(0.5)
                s.kill()
                timeline["down"] = time.monotonic()
                time.sleep(2.0)
                s.launch()
                timeline["up"] = time.monotonic()

            t = threading.Thread(target=restart, daemon=True)
            t.start()
            exp = Explainer(a, CFG).explain(phantom_image, target=1, rng=0)
            t.join(timeout=120)
    assert timeline["up"] - timeline["down"] >= 2.0
    assert np.array_equal(exp.saliency, reference.saliency)
    assert exp.traffic["retries"] >= 1 and exp.traffic["images_asked"] == 120


@pytest.mark.slow
def test_a_version_path_on_kserve_rest_is_named(server: Any, tmp_path: Path) -> None:
    p = tmp_path / "versioned.toml"
    p.write_text(f'url = "{server.rest_url}/versions/1"\n[input]\nname = "image"\nsize = [224, 224]\n')
    with pytest.raises(ConfigError, match=r"answered HTTP 501 Not Implemented: this server does not serve versioned "
                                          r"routes \(/versions/1; KServe's REST server does not\)\. Drop the version"):
        load_adapter(endpoint=str(p))
