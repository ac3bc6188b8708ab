"""The query plan: what an explanation or an audit sends at most, known before it runs (explain --dry-run, audit
plan), and what the images sent cost (audit summary and report)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from blackbox_lime import cli
from blackbox_lime.adapters.onnx import OnnxAdapter
from blackbox_lime.config import ExplainConfig
from blackbox_lime.cost import explanation_plan
from blackbox_lime.explainer import Explainer
from blackbox_lime.models import bundled_example, resolve_model


@pytest.mark.parametrize("cfg, max_batch", [
    (ExplainConfig(fill="mean", n_samples=200), 8),
    (ExplainConfig(fill="mae", n_samples=150), 16),
    (ExplainConfig(fill="telea", n_samples=120), 7),
    (ExplainConfig(n_samples=300), 32),                           # auto: the MAE kept on its own domain
    (ExplainConfig(n_samples=200, mae_challenger="zero"), 5),     # auto: the MAE piloted against zero
    (ExplainConfig(n_samples=200, fill_candidates=("mean", "blur")), 9),  # auto without an MAE: a classic pilot
    (ExplainConfig(fill="blur", n_samples=100, stta=True, stta_iterations=3, stta_views=3), 4),
])
def test_the_plan_bounds_what_an_explanation_sends(cfg: ExplainConfig, max_batch: int,
                                                    phantom_image: np.ndarray) -> None:
    """Known answers from a real run through a counting adapter: the images are exactly the plan's, and the requests
    at most the plan's (exactly, where the run takes the plan's most expensive path)."""
    plan = explanation_plan(cfg, max_batch)
    with OnnxAdapter(resolve_model("demo-cnn"), max_batch=max_batch) as adapter:
        exp = Explainer(adapter, cfg).explain(phantom_image, target=1, rng=0)
        sent = adapter.counters()
    assert exp.queries == sent["queries"] == plan.images
    assert sent["requests"] <= plan.requests
    if cfg.fill != "auto" or cfg.fill_candidates == ("mean", "blur"):  # one path, or paths of one cost
        assert sent["requests"] == plan.requests, (sent, plan)
    else:  # the plan is the dearest path: here the one not taken may cost a request more
        assert sent["requests"] >= plan.requests - 2, (sent, plan)


def test_a_vendor_file_endpoint_takes_one_image_per_request() -> None:
    plan = explanation_plan(ExplainConfig(stta=True), 1)
    assert (plan.images, plan.requests, plan.stta_images) == (572, 572, 72)
    assert plan.cost(0.8, explanations=10) == pytest.approx(4.576)
    assert plan.cost(None) is None


def _profile(tmp_path: Path, extra: str = "") -> Path:
    p = tmp_path / "vendor.toml"
    p.write_text('url = "https://vendor.example/predict"\npreset = "huggingface"\n[output]\n'
                 'class_names = ["normal", "abnormal"]\n[limits]\nprice_per_1k_images = 0.8\n' + extra)
    return p


def test_dry_run_sends_nothing_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An endpoint that does not exist (nothing listens at the port) is never asked; no output folder appears."""
    img = str(bundled_example("chest_xray_test_00001.png"))
    out = tmp_path / "maps"
    assert cli.main(["explain", img, img, "--model", "http://127.0.0.1:9/v2/models/m", "--dry-run", "--stta",
                     "--out", str(out)]) == 0
    assert capsys.readouterr().out == (
        "2 image(s): at most 572 images per explanation (72 of them STTA's) in at most 27 requests (up to 32 images "
        "each), so at most 1,144 images in 54 requests for 2 explanation(s). No price is known: set [limits] "
        "price_per_1k_images in the endpoint profile to see the cost. Nothing was sent.\n")
    assert not out.exists()
    assert cli.main(["explain", img, "--endpoint", str(_profile(tmp_path, "budget = 700\n")), "--dry-run",
                     "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc == {"dry_run": True, "explanations": 1, "per_explanation": {"images": 500, "requests": 500,
                                                                           "stta_images": 0},
                   "images": 500, "requests": 500, "max_batch": 1, "price_per_1k_images": 0.8, "cost": 0.4,
                   "budget": 700, "explanations_within_budget": 1}
    assert cli.main(["explain", img, "--model", "demo-cnn", "--dry-run", "--max-batch", "0"]) == 2
    assert capsys.readouterr().err == "blackbox-lime: error: --max-batch must be an integer >= 1. Got 0 instead.\n"


def test_a_negative_price_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(_profile(tmp_path).read_text().replace("0.8", "-1"))
    assert cli.main(["explain", str(bundled_example("chest_xray_test_00001.png")), "--endpoint", str(bad),
                     "--dry-run"]) == 2
    assert "[limits] price_per_1k_images must be a number >= 0. Got -1 instead." in capsys.readouterr().err


def test_audit_plan_before_and_during_an_audit_and_the_cost_of_what_was_sent(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """audit plan counts the study's cases (and, for an audit begun, those still to explain, within what is left of
    its budget); audit summary then states the cost of the images actually sent at the profile's price."""
    import shutil

    src = tmp_path / "study"
    src.mkdir()
    for name in ("chest_xray_test_00000.png", "chest_xray_test_00001.png", "chest_xray_test_00002.png"):
        shutil.copy(bundled_example(name), src / name)
    opts = ["--model", "demo-cnn", "--samples", "60", "--fill", "mean", "--quiet"]
    assert cli.main(["audit", "plan", str(src), *opts, "--budget", "150"]) == 0
    assert capsys.readouterr().out == (
        "3 case(s): at most 60 images per explanation in at most 2 requests (up to 64 images each), so at most 180 "
        "images in 6 requests for 3 explanation(s). No price is known: set [limits] price_per_1k_images in the "
        "endpoint profile to see the cost. The budget of 150 images covers 2 of them. Nothing was sent.\n")
    out = tmp_path / "audit"
    assert cli.main(["audit", "run", str(src), *opts, "--budget", "150", "--out", str(out)]) == 4  # stopped: budget
    capsys.readouterr()
    assert cli.main(["audit", "plan", str(src), *opts, "--out", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    # the third case's own answer (1 image) went out before its first batch met the budget
    assert (doc["cases"], doc["done"], doc["explanations"], doc["sent_before"]) == (3, 2, 1, 121)
    assert (doc["budget"], doc["explanations_within_budget"]) == (29, 0)  # 150 - 121 left: not enough for one


def test_audit_summary_states_the_cost_at_the_profile_price(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from blackbox_lime.audit.report import study_summary
    from blackbox_lime.audit.store import AuditStore

    with AuditStore.create(tmp_path / "audit.sqlite", {}, [], {"salt": "00"}) as store:
        store.put("price_per_1k_images", 0.8)
        store._add(sent=1250)
        st = study_summary(store)["study"]
    assert (st["price_per_1k_images"], st["cost"]) == (0.8, 1.0)


def test_an_audit_through_a_priced_file_endpoint_reports_what_it_cost(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A real loopback file endpoint with a price in its profile: audit plan says what the audit will cost at most,
    and after the run audit summary (text and JSON) says what the images sent cost: sent x price / 1000."""
    import shutil

    from blackbox_lime.evaluation.file_server import FileApiServer

    src = tmp_path / "study"
    src.mkdir()
    for name in ("chest_xray_test_00000.png", "chest_xray_test_00002.png"):
        shutil.copy(bundled_example(name), src / name)
    with FileApiServer(resolve_model("demo-cnn")) as server:
        prof = tmp_path / "vendor.toml"
        prof.write_text(f'url = "{server.url}"\npreset = "huggingface"\n[output]\nclass_names = ["normal", "abnormal"]'
                        '\n[limits]\nprice_per_1k_images = 2.5\nconcurrency = 4\n')
        opts = ["--endpoint", str(prof), "--samples", "40", "--fill", "mean", "--quiet"]
        assert cli.main(["audit", "plan", str(src), *opts]) == 0
        assert "so at most 80 images in 80 requests for 2 explanation(s). At 2.5 per 1,000 images: at most 0.20." \
            in capsys.readouterr().out
        assert server.requests == 0  # the plan asked nothing
        out = tmp_path / "audit"
        assert cli.main(["audit", "run", str(src), *opts, "--out", str(out)]) == 0
    capsys.readouterr()
    assert cli.main(["audit", "summary", str(out), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)["study"]
    assert st["totals"]["sent"] == 80 and (st["price_per_1k_images"], st["cost"]) == (2.5, 0.2)
    assert cli.main(["audit", "summary", str(out)]) == 0
    assert "; cost 0.20 at 2.5 per 1,000 images" in capsys.readouterr().out
    html = (out / "report.html").read_text()
    assert "cost of the images sent" in html and "0.20 at 2.5 per 1,000 images" in html
