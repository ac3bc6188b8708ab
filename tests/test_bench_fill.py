"""The val rules of bench_fill: the reconstruction gate and the per-group ratios (no queries)."""

from __future__ import annotations

import numpy as np

from blackbox_lime.evaluation import bench_fill


def _case(group: tuple[str, str], psnr_mae: float, psnr_blur: float, auprc: dict[str, float], rng) -> tuple:
    rec = {"model": group[0], "family": group[1], "index": 0, "p0": 0.9,
           "recon_psnr": {"mae": psnr_mae, "blur": psnr_blur},
           "fixed": {f: {"auprc": a, "r2_heldout": 0.2, "r2_evidence": 0.2} for f, a in auprc.items()}}
    raw = {}
    for b in bench_fill.BLOCKS:
        n_blocks = int(np.ceil(14 / b)) ** 2
        for f in bench_fill.FIXED:
            design = rng.random((max(bench_fill.PILOTS), n_blocks)) < 0.5
            raw[f"{b}/{f}/design"] = design
            raw[f"{b}/{f}/y"] = 0.9 - 0.3 * (~design[:, 0]) + rng.normal(0, 0.01, len(design))
    return rec, raw


def test_the_gate_keeps_the_mae_in_its_domain_and_leaves_it_elsewhere() -> None:
    rng = np.random.default_rng(0)
    known = [_case(("demo_cnn", "chest_xray"), 30.0, 25.0, {"mae": 0.8, "mean": 0.1, "blur": 0.3}, rng) for _ in range(3)]
    unseen = [_case(("colour_cnn", "fundus"), 15.0, 26.0, {"mae": 0.01, "mean": 0.5, "blur": 0.2}, rng) for _ in range(3)]
    records = [r for r, _ in known + unseen]
    raws = [w for _, w in known + unseen]
    assert bench_fill.gated_choice(records[0], raws[0], 0.5, "mean") == ("mae", 0)
    assert bench_fill.gated_choice(records[3], raws[3], 0.5, "mean") == ("mean", 0)
    assert bench_fill.gated_choice(records[3], raws[3], 12.0, "mean") == ("mae", 0)  # a margin wider than the gap
    fill, queries = bench_fill.gated_choice(records[3], raws[3], 0.5, "pilot 16/2/0.1")
    assert fill in ("mean", "blur") and queries == 32
    result = bench_fill.choose_rule(records, raws)
    best = result["chosen"]
    # The gate with "mean" after it picks the best fill in both groups: ratio 1 everywhere, no pilot query.
    assert best["min_ratio"] == 1.0 and best["pilot_queries"] == 0 and best["scorer"].startswith("gate ")
    assert best["picks"] == {"mae": 3, "mean": 3, "blur": 0}


def _report_record(index: int, auprc: dict[str, float]) -> dict:
    methods = {m: {"auprc": v, "queries": 1000, "seconds": 5.0 + index, "r2_heldout": 0.3, "r2_evidence": 0.2,
                   "low_fidelity": False, "chosen": "mae", "fill_choice_s": 0.1} for m, v in auprc.items()}
    return {"model": "demo_vit", "family": "breast_us", "index": index, "methods": methods}


def test_the_test_table_of_a_run_with_some_methods_says_which_fill_it_compares_with() -> None:
    """--methods runs a subset: the table shows the methods that ran and the ratios it can compute, "–" for
    the rest; the best fixed fill is named when not all four ran."""
    recs = [_report_record(0, {"auto (default)": 0.6, "zero": 0.8}), _report_record(1, {"auto (default)": 0.8,
                                                                                        "zero": 0.6})]
    md = bench_fill.report_markdown({"records": recs, "calibrations": {}})
    rows = md.splitlines()
    assert rows[0] == "| method | demo_vit/breast_us | all |"
    assert [r.split(" |")[0] for r in rows[2:4]] == ["| auto (default)", "| zero"] and "| mae |" not in md
    assert rows[-1] == "| demo_vit/breast_us | – | mae 2 | 1.00 (zero) | – | – | 0/2; –; – | 5.50; – | 0.10 |"
    full = {m: 0.5 for m in bench_fill.METHODS} | {"auto (default)": 0.7, "blur": 0.75, "lime": 0.35, "occlusion": 0.7}
    md = bench_fill.report_markdown({"records": [_report_record(0, full)], "calibrations": {
        "demo_vit/breast_us": {"fill": "blur"}}})
    assert md.splitlines()[-1] == "| demo_vit/breast_us | blur | mae 1 | 0.93 | 2.00 | 1.00 | 0/1; 0/1; 0/1 | 5.00; 5.00 | 0.10 |"


def test_an_optional_method_gets_a_paired_row_against_the_default(tmp_path, capsys) -> None:
    recs = [_report_record(i, {"auto (default)": a, "auto + zero challenger": b, "zero": z})
            for i, (a, b, z) in enumerate([(0.5, 0.7, 0.6), (0.3, 0.4, 0.2), (0.6, 0.6, 0.9)])]
    md = bench_fill.report_markdown({"records": recs, "calibrations": {}})
    row = [r for r in md.splitlines() if r.startswith("| auto + zero challenger | demo_vit/breast_us |")]
    mean, lo, hi = bench_fill.bootstrap_ci([0.2, 0.1, 0.0])
    assert row == [f"| auto + zero challenger | demo_vit/breast_us | 3 | 0.467 | 0.567 | 1.21 | {mean:+.3f} [{lo:+.3f}, "
                   f"{hi:+.3f}] | mae 3 | 6.00; 6.00 |"] and abs(mean - 0.1) < 1e-9
    import json

    for i, part in enumerate((recs[:1], recs[1:])):  # two runs pooled: the same rows as one run of all cases
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "results.json").write_text(json.dumps({"records": part}))
    assert bench_fill.main(["--split", "test", "--pool", str(tmp_path / "0"), str(tmp_path / "1")]) == 0
    out = capsys.readouterr().out
    assert row[0] in out and "| zero | demo_vit/breast_us | 3 | 0.467 | 0.567 |" in out
