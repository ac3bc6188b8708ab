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
