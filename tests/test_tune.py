"""The val tuning's fixed rule and its outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from blackbox_lime.evaluation.tune import emit, pick


def test_rule_prefers_consistent_settings_and_falls_back_to_auprc() -> None:
    rows = [{"auprc": 0.60, "consistency": 0.85}, {"auprc": 0.55, "consistency": 0.91},
            {"auprc": 0.50, "consistency": 0.95}, {"auprc": 0.70, "consistency": float("nan")}]
    assert pick(rows) is rows[1]  # the best AUPRC among consistency >= 0.9
    assert pick(rows[:1] + rows[3:]) is rows[3]  # none reaches 0.9: the best AUPRC (NaN never passes 0.9)


def test_emit_prints_a_markdown_table_and_writes_the_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    emit(["a", "b"], [["1", "2"], ["3", "4 **chosen**"]], str(tmp_path / "sub" / "t.json"), {"table": [1]})
    assert capsys.readouterr().out == "| a | b |\n|---|---|\n| 1 | 2 |\n| 3 | 4 **chosen** |\n"
    assert json.loads((tmp_path / "sub" / "t.json").read_text()) == {"table": [1]}


def test_guide_rule_refuses_a_map_that_agrees_more_with_the_experts_but_less_with_the_model() -> None:
    from blackbox_lime.evaluation.tune_guide import markdown, pick, summarize

    result = {"settings": [[0.0, 1e-3], [0.5, 1e-3], [0.75, 1e-3]],
              "groups": {"a/x": {"auprc": [[0.4, 0.5, 0.7], [0.6, 0.7, 0.9]], "drop": [[0.3, 0.3, 0.4], [0.3, 0.4, 0.4]]},
                         "b/y": {"auprc": [[0.5, 0.5, 0.6], [0.5, 0.5, 0.6]], "drop": [[0.5, 0.5, 0.4], [0.5, 0.5, 0.5]]}}}
    rows = summarize(result)
    assert [r["label"] for r in rows] == ["unguided", "0.5 patch, eps 0.001", "0.75 patch, eps 0.001"]
    assert rows[2]["mean_auprc_ratio"] == pytest.approx((1.6 / 1.0 + 1.2 / 1.0) / 2)
    assert rows[2]["worst_drop_change"] == pytest.approx(-0.05)  # b/y: 0.45 against 0.5
    assert rows[1]["worst_drop_change"] == pytest.approx(0.0)
    assert pick(rows) is rows[1]  # the higher AUPRC of 0.75 loses drop on b/y
    table = markdown(result, rows, "python -m blackbox_lime.evaluation.tune_guide")
    assert "| 0.5 patch, eps 0.001 (chosen) | 0.600 / 0.350 | 0.500 / 0.500 | 1.100 | +0.000 |" in table
