"""Against a real model server: MLServer on loopback serving the bundled demo CNN over OIP REST and gRPC."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

# Never import mlserver here: its protos and tritonclient's clash in one process (the server is a subprocess).
if importlib.util.find_spec("mlserver") is None:
    pytest.skip("the serve extra (MLServer) is not installed", allow_module_level=True)
pytest.importorskip("tritonclient.grpc", reason="the grpc extra is not installed")

from blackbox_lime.adapters import ServerError, load_adapter
from blackbox_lime.evaluation import demo_server
from blackbox_lime.config import ExplainConfig
from blackbox_lime.explainer import Explainer
from blackbox_lime.models import bundled_model
from blackbox_lime.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server():  # type: ignore[no-untyped-def]
    with demo_server.start(threads=1) as s:
        yield s


def test_remote_saliency_equals_local_saliency(server, phantom_image: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    maps, auto = {}, {}
    for name, model in (("local", str(bundled_model("demo_cnn.onnx"))), ("rest", server.rest_url),
                        ("grpc", server.grpc_url)):
        with load_adapter(model, max_batch=32) as a:
            exp = Explainer(a, ExplainConfig(n_samples=80, fill="mae")).explain(phantom_image, rng=11)
            maps[name] = exp
            # 1 + 79 in chunks of <= 32; over REST the first request (1 image) also tried binary tensors, which
            # MLServer does not take (an error status, after which it may also reset the connection), and went
            # again as JSON
            retries = exp.traffic["retries"]
            assert (retries >= 1) if name == "rest" else (retries == 0)
            assert exp.traffic["images_asked"] == 80 and exp.queries == 80 + retries and exp.requests == 4 + retries
            auto[name] = Explainer(a, ExplainConfig(n_samples=80)).explain(phantom_image, rng=11)
            assert auto[name].queries == 80  # the adapter already knows: no second probe
    for name in ("rest", "grpc"):
        assert np.abs(maps[name].saliency - maps["local"].saliency).max() <= 1e-6
        assert np.abs(maps[name].probs - maps["local"].probs).max() <= 1e-6
        assert auto[name].fill["chosen"] == auto["local"].fill["chosen"]  # the choice is the same remotely
        assert np.abs(auto[name].saliency - auto["local"].saliency).max() <= 1e-6
    assert maps["rest"].model["protocol"] == "oip-rest" and maps["grpc"].model["protocol"] == "oip-grpc"


def test_cli_explain_against_the_server(server, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    image = Path(__file__).resolve().parent.parent / "examples" / "chest_xray_test_00001.png"
    out = tmp_path / "out"
    rc = main(["explain", str(image), "--model", server.grpc_url, "--out", str(out), "--samples", "40",
               "--fill", "mae", "--quiet", "--json", "--concurrency", "2", "--max-batch", "8"])
    assert rc == 0, capsys.readouterr().err
    line = json.loads(capsys.readouterr().out)
    assert line["queries"] == 40 and line["requests"] == 6 and line["retries"] == 0
    report = json.loads((out / "chest_xray_test_00001.json").read_text())
    assert report["models"]["endpoint"] == {"protocol": "oip-grpc", "url": f"grpc://127.0.0.1:{server.grpc_port}",
                                            "model": "demo_cnn", "version": None}
    assert np.load(out / "chest_xray_test_00001.saliency.npy").shape == (224, 224)


@pytest.mark.parametrize("which", ["rest_url", "grpc_url"])
def test_endpoint_check(server, which: str, capsys) -> None:  # type: ignore[no-untyped-def]
    rc = main(["endpoint", "check", "--model", getattr(server, which), "--json", "--max-batch", "4"])
    assert rc == 0
    r = json.loads(capsys.readouterr().out)
    assert r["ready"] is True
    assert r["metadata"]["input"] == {"name": "image", "shape": [-1, 3, 224, 224], "datatype": "FP32"}
    assert r["test_prediction"]["batch_size"] == 1 and r["test_prediction"]["probs"][1] > 0.5
    assert r["batch_prediction"]["batch_size"] == 4 and r["batch_prediction"]["matches_single"] is True
    c = r["counters"]  # over REST MLServer refuses the binary try of the first (1-image) request, which goes again
    assert (c["retries"] >= 1) if which == "rest_url" else (c["retries"] == 0)
    assert c["images_asked"] == 5 and c["queries"] == 5 + c["retries"] and c["requests"] == 2 + c["retries"]


def test_unknown_model_quotes_the_real_server(server, capsys) -> None:  # type: ignore[no-untyped-def]
    url = server.rest_url.replace("demo_cnn", "no_such_model")
    with pytest.raises(ServerError, match=r"answered HTTP 404 Not Found: .*no_such_model.*\(no such model or version"):
        load_adapter(url)
    assert main(["endpoint", "check", "--model", url]) == 2
    assert "answered HTTP 404" in capsys.readouterr().err


def test_wrong_declared_dtype_is_refused_by_the_server(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    profile = tmp_path / "p.toml"
    profile.write_text(f'url = "{server.rest_url}"\n[input]\ndtype = "uint8"\n')
    with load_adapter(endpoint=str(profile)) as a, pytest.raises(ServerError, match=r"answered HTTP 400"):
        a.predict(np.zeros((1, 224, 224, 3), np.float32))


def test_audit_against_the_server_matches_the_local_audit(server, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from blackbox_lime.evaluation.phantoms import write_phantoms

    study = tmp_path / "study"
    write_phantoms(study, "chest_xray", "test", 2)
    opts = ["--samples", "40", "--fill", "mae", "--quiet", "--max-batch", "8", "--concurrency", "2"]
    assert main(["audit", "run", str(study), "--model", server.grpc_url, "--out", str(tmp_path / "remote"), *opts]) == 0
    assert main(["audit", "run", str(study), "--model", str(bundled_model("demo_cnn.onnx")), "--out",
                 str(tmp_path / "local"), *opts]) == 0
    summaries = {k: json.loads((tmp_path / k / "summary.json").read_text()) for k in ("remote", "local")}
    for r, lo in zip(summaries["remote"]["cases"], summaries["local"]["cases"]):
        a = np.load(tmp_path / "remote" / r["outputs"][0])
        b = np.load(tmp_path / "local" / lo["outputs"][0])
        assert np.abs(a - b).max() <= 1e-6 and r["queries"] == lo["queries"] == 40
    prov = json.loads((tmp_path / "remote" / "provenance.json").read_text())
    assert prov["model"]["endpoint"]["url"] == f"grpc://127.0.0.1:{server.grpc_port}"
    assert prov["model"]["endpoint"]["metadata"]["name"] == "demo_cnn"
    assert prov["totals"]["sent"] == 80 and prov["totals"]["requests"] >= 10
