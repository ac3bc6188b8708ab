"""n_samples="auto": queries in rounds until the map has settled (blackbox_lime/stopping.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from blackbox_lime import cli
from blackbox_lime.adapters.errors import BudgetExhausted
from blackbox_lime.adapters.onnx import OnnxAdapter
from blackbox_lime.config import ExplainConfig
from blackbox_lime.cost import explanation_plan
from blackbox_lime.explainer import Explainer
from blackbox_lime.models import bundled_example
from blackbox_lime.stopping import halves, round_bounds, weight_correlation


def _image() -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.uniform(0.2, 0.8, (224, 224, 3)).astype(np.float32)


def test_a_clean_linear_model_settles_early_on_its_true_weights(linear_model: Path) -> None:
    """Known answer: a classifier linear in the patch means. Its map settles well before the ceiling, the record
    says why, and the stopped map is the map of a fixed n_samples at that count, bit for bit."""
    image = _image()
    cfg = ExplainConfig(n_samples="auto", fill="mean", map_sigma=0.0)
    with OnnxAdapter(linear_model) as adapter:
        auto = Explainer(adapter, cfg).explain(image, target=1, rng=0)
        assert auto.stopping is not None
        n = auto.stopping["samples"]
        fixed = Explainer(adapter, ExplainConfig(n_samples=n, fill="mean", map_sigma=0.0)).explain(image, target=1,
                                                                                                   rng=0)
    assert auto.stopping["reason"] == "settled" and n < cfg.max_samples and auto.queries == n
    assert auto.stopping["criterion"] >= cfg.stop_corr and auto.stopping["queries"] == {"fill_choice": 0, "design": n}
    assert [r["samples"] for r in auto.stopping["rounds"]][0] == cfg.stop_min
    assert np.array_equal(auto.saliency, fixed.saliency) and np.array_equal(auto.patch_weights, fixed.patch_weights)
    top = set(np.argsort(-np.abs(auto.patch_weights.ravel()))[:5])
    assert top == {20, 47, 90, 133, 170}
    assert "stopping" in auto.summary() and "stopping" not in fixed.summary()


def test_the_rule_stops_at_the_ceiling_when_the_map_never_settles(linear_model: Path) -> None:
    cfg = ExplainConfig(n_samples="auto", max_samples=150, stop_corr=0.999999, fill="mean")
    with OnnxAdapter(linear_model) as adapter:
        e = Explainer(adapter, cfg).explain(_image(), target=1, rng=0)
    assert e.stopping is not None and (e.stopping["reason"], e.stopping["samples"], e.queries) == ("ceiling", 150, 150)
    assert [r["samples"] for r in e.stopping["rounds"]] == [96, 144, 150]


def test_a_budget_that_runs_out_mid_round_ends_the_map_flagged(linear_model: Path) -> None:
    """The budget runs out in the third round: the map is made from the two rounds answered and flagged; a budget
    that cannot pay for the first round is the usual error."""
    cfg = ExplainConfig(n_samples="auto", stop_corr=0.999999, fill="mean")
    with OnnxAdapter(linear_model, budget=170) as adapter:
        e = Explainer(adapter, cfg).explain(_image(), target=1, rng=0)
    assert e.stopping is not None and (e.stopping["reason"], e.stopping["samples"]) == ("budget", 144)
    assert "budget_stop" in e.summary()["warning_codes"]
    with OnnxAdapter(linear_model, budget=50) as adapter, pytest.raises(BudgetExhausted):
        Explainer(adapter, cfg).explain(_image(), target=1, rng=0)


def test_rounds_keep_fill_groups_whole_and_halves_alternate_groups() -> None:
    assert round_bounds(499, 3, 95, 48) == [96, 144, 192, 240, 288, 336, 384, 432, 480, 499]
    assert round_bounds(100, 1, 200, 48) == [100]
    assert halves(6, 3, 2).tolist() == [-1, 0, 0, 0, 1, 1, 1, 0, 1]
    assert weight_correlation(np.zeros(4), np.zeros(4)) == 1.0 and weight_correlation(np.zeros(4), np.ones(4)) == 0.0


def test_the_ceiling_must_leave_room_for_the_fill_pilots(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match=r"The 'max_samples' parameter must be at least 33 with fill 'auto' \(2 piloted "
                                         r"candidates x 8 pilot samples.*\(n_samples is 'auto': max_samples is its "
                                         r"ceiling\)\. Got 20 instead\."):
        ExplainConfig(n_samples="auto", max_samples=20, pilot_samples=32)
    ExplainConfig(n_samples="auto", max_samples=20)  # the default auto pilots nothing where the MAE fails
    assert explanation_plan(ExplainConfig(n_samples="auto", max_samples=300), 300).images == 300
    img = str(bundled_example("chest_xray_test_00001.png"))
    assert cli.main(["explain", img, "--model", "demo-cnn", "--samples", "auto", "--max-samples", "20",
                     "--mae-challenger", "zero", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("blackbox-lime: error: --max-samples must be at least 33 with fill 'auto' and an MAE "
                          "challenger") and "Got 20" in err
    with pytest.raises(SystemExit) as stop:
        cli.main(["explain", img, "--model", "demo-cnn", "--samples", "lots", "--dry-run"])
    assert stop.value.code == 2
    assert "argument --samples: must be an integer >= 10 or auto. Got 'lots' instead." in capsys.readouterr().err


def test_the_cli_explains_with_samples_auto(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    out = tmp_path / "maps"
    assert cli.main(["explain", str(bundled_example("chest_xray_test_00001.png")), "--model", "demo-cnn", "--samples",
                     "auto", "--max-samples", "200", "--out", str(out), "--quiet", "--json"]) == 0
    line = json.loads(capsys.readouterr().out)
    doc = json.loads((out / "chest_xray_test_00001.json").read_text())
    assert doc["config"]["n_samples"] == "auto" and doc["config"]["max_samples"] == 200
    assert doc["stopping"]["reason"] in ("settled", "ceiling") and doc["queries"] == doc["stopping"]["samples"] <= 200
    assert line["queries"] == doc["queries"]


def test_the_benchmark_replays_a_rule_as_the_explainer_applies_it() -> None:
    """bench_stopping's replay: the first round whose reliability has held the threshold for the patience, else the
    last round (the ceiling)."""
    from blackbox_lime.evaluation.bench_stopping import stop_of

    rounds = [{"samples": n, "reliability": r} for n, r in ((96, 0.5), (144, 0.9), (192, 0.7), (240, 0.9),
                                                             (288, 0.95), (336, 0.99))]
    assert stop_of(rounds, 0.85, 1)["samples"] == 144
    assert stop_of(rounds, 0.85, 2)["samples"] == 288
    assert stop_of(rounds, 0.999, 1)["samples"] == 336


def test_the_stopping_benchmark_scores_every_finding_of_a_multilabel_case_against_its_own_mask() -> None:
    """bench_stopping's cases: a multi-label case explains every finding present (class index -> its own mask, in the
    model's class order); a phantom family's case its abnormal class."""
    from blackbox_lime.evaluation.bench_stopping import cases
    from blackbox_lime.evaluation.phantoms import FINDINGS, abnormal_cases, make_multilabel_phantom

    found = cases("chest_multilabel", "val", 3, abnormal=1)
    assert len(found) == 3
    for index, image, masks in found:
        ph = make_multilabel_phantom("val", index)
        assert sorted(masks) == [FINDINGS.index(k) for k in FINDINGS if ph.labels[k]] and masks
        for k, mask in masks.items():
            np.testing.assert_array_equal(mask, ph.masks[FINDINGS[k]])
        np.testing.assert_array_equal(image, ph.image)
    (index, image, masks), = cases("chest_xray", "val", 1, abnormal=1)
    first = abnormal_cases("chest_xray", "val", 1)[0]
    assert index == first.index and list(masks) == [1] and np.array_equal(masks[1], first.mask)


def test_the_oracle_reads_the_rounds_it_is_given() -> None:
    from blackbox_lime.evaluation.bench_stopping import oracle_lines, settled_at

    def rounds(*auprc: float) -> list[dict[str, float]]:
        return [{"end": e, "samples": e + 1, "auprc": a} for e, a in zip((96, 144, 192, 240, 499), auprc)]

    fast = {"model": "m", "family": "f", "fixed_auprc": 0.8, "rounds": rounds(0.2, 0.78, 0.7, 0.8, 0.8)}
    slow = {"model": "m", "family": "f", "fixed_auprc": 0.4, "rounds": rounds(0.1, 0.2, 0.3, 0.39, 0.4)}
    assert settled_at(fast["rounds"], 0.8) == 145  # 0.78 >= 0.95 x 0.8: the first such round, though it dips after
    assert settled_at(slow["rounds"], 0.4) == 241
    assert settled_at(slow["rounds"], 0.5) == 500  # never within 0.95x: the ceiling
    table = oracle_lines([fast, slow], ["m/f"], ends=(96, 144))
    # at 96: neither within 0.95x, mean 0.15 / 0.6; at 144: one of two, mean 0.49 / 0.6; oracle median of 145 and 241
    assert table[-1] == "| m/f | 0.00 / 0.25 | 0.50 / 0.82 | 193 |"
