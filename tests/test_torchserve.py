"""TorchServe 0.12 as the real file-API server: one PNG per request to /predictions/NAME, answered with the top k
labels as {"label": probability} (the stock image classifier's contract, torchserve_handler.py), behind
TorchServe's own token authorisation. The model is chest4-cnn (four exclusive classes), served twice: top 5
(every label listed) and top 2 (answers cut as a vendor cuts them)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from quantised import Quantised

from blackbox_lime import cli
from blackbox_lime.adapters import ResponseError
from blackbox_lime.adapters.profile import EndpointProfile
from blackbox_lime.config import ExplainConfig
from blackbox_lime.evaluation import torchserve_server
from blackbox_lime.evaluation.phantoms import EXCLUSIVE_CLASSES, make_exclusive_phantom
from blackbox_lime.explainer import Explainer
from blackbox_lime.models import resolve_model

if torchserve_server.torchserve_bin() is None:
    pytest.skip("TorchServe is not available: it needs Java (.ci/run installs openjdk-17-jre-headless) and the "
                "torchserve package (test extra)", allow_module_level=True)

CFG = ExplainConfig(n_samples=80, fill="mean")
TOKEN_ENV = "BBL_TEST_TORCHSERVE_KEY"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with torchserve_server.start(resolve_model("chest4-cnn"), tmp_path_factory.mktemp("torchserve"),
                                 {"full": 5, "top2": 2}) as s:
        yield s


@pytest.fixture()
def key(server: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    k = server.key("inference")
    monkeypatch.setenv(TOKEN_ENV, k)
    return k


@pytest.fixture(scope="module")
def effusion() -> np.ndarray:
    """A test-split phantom whose one finding is an effusion (class 3)."""
    for i in range(100):
        ph, label = make_exclusive_phantom("test", i)
        if label == 3:
            return ph.image
    raise AssertionError("no effusion case in the first 100 test phantoms")


def profile(tmp_path: Path, url: str, extra: str = "") -> Path:
    p = tmp_path / "torchserve.toml"
    p.write_text(f'url = "{url}"\nprotocol = "file"\npreset = "torchserve"\n{extra}\n[auth]\ntoken_env = "{TOKEN_ENV}"\n'
                 f'[output]\nkind = "probabilities"\nclass_names = {json.dumps(list(EXCLUSIVE_CLASSES))}\n')
    return p


@pytest.mark.slow
def test_complete_torchserve_answers_give_the_local_map_bit_for_bit(server: Any, key: str, effusion: np.ndarray,
                                                                    tmp_path: Path) -> None:
    local = Explainer(Quantised(resolve_model("chest4-cnn")), CFG).explain(effusion, target=3, rng=0)
    with EndpointProfile.from_toml(profile(tmp_path, server.url("full"))).build() as adapter:
        remote = Explainer(adapter, CFG).explain(effusion, target=3, rng=0)
    assert remote.queries == local.queries
    assert np.array_equal(remote.saliency, local.saliency)
    assert remote.probs.tolist() == local.probs.tolist()
    assert remote.censoring is None or remote.censoring["censored"] == 0


@pytest.mark.slow
def test_top2_torchserve_answers_are_fitted_as_bounds(server: Any, key: str, effusion: np.ndarray,
                                                      tmp_path: Path) -> None:
    """The top-2 archive omits labels from most answers (every answer lists two of four); the explained class's
    map stays the full-answer map and the JSON counts the censored answers. (Blur fill: with a mean fill this model
    reads the hidden squares' edges as nodules or consolidation, and the effusion leaves the top 2 almost always.)"""
    cfg = ExplainConfig(n_samples=200, fill="blur")
    with EndpointProfile.from_toml(profile(tmp_path, server.url("full"))).build() as adapter:
        full = Explainer(adapter, cfg).explain(effusion, target=3, rng=0)
    cut_profile = profile(tmp_path, server.url("top2"), "[response]\ntop_k = 2")
    with EndpointProfile.from_toml(cut_profile).build() as adapter:
        cut = Explainer(adapter, cfg).explain(effusion, target=3, rng=0)
    assert cut.censoring is not None and cut.censoring["top_k"] == 2 and cut.censoring["answers"] == 200
    assert 40 < cut.censoring["censored"] < 160
    assert np.corrcoef(cut.saliency.ravel(), full.saliency.ravel())[0, 1] > 0.98


@pytest.mark.slow
def test_a_missing_torchserve_key_is_named_and_never_printed(server: Any, key: str, effusion: np.ndarray,
                                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, "not-the-key")
    with EndpointProfile.from_toml(profile(tmp_path, server.url("full"))).build() as adapter:
        with pytest.raises(ResponseError) as err:
            adapter.predict(effusion[None])
    text = str(err.value)
    assert "400" in text and "Token Authorization failed" in text
    assert "not-the-key" not in text and key not in text


@pytest.mark.slow
def test_cli_explains_through_torchserve_and_reports_the_cut(server: Any, key: str, effusion: np.ndarray,
                                                             tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import cv2

    png = tmp_path / "effusion.png"
    cv2.imwrite(str(png), np.round(effusion[..., 0] * 255).astype(np.uint8))
    out = tmp_path / "out"
    prof = profile(tmp_path, server.url("top2"), "[response]\ntop_k = 2")
    code = cli.main(["explain", str(png), "--endpoint", str(prof), "--target", "3", "--samples", "60", "--fill", "mean",
                     "--out", str(out), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads((out / "effusion.json").read_text())
    assert report["censoring"]["top_k"] == 2 and report["censoring"]["answers"] == 60
    everything = captured.out + captured.err + "".join(p.read_text(errors="replace") for p in out.glob("*.json"))
    assert key not in everything and os.environ[TOKEN_ENV] not in everything
