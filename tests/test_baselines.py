"""The benchmark's comparison methods on a classifier linear in the patch means (known answers)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from blackbox_lime.adapters.onnx import OnnxAdapter
from blackbox_lime.evaluation import baselines
from graphs import linear_patch_model

A = np.array([0.20, -0.10, 0.0, 0.05, 0.0, 0.15, 0.0, 0.0, -0.05, 0.0, 0.10, 0.0, 0.0, 0.0, 0.0, 0.08])
B = 0.3


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> OnnxAdapter:
    path = linear_patch_model(tmp_path_factory.mktemp("m") / "lin64.onnx", A, B, size=64, patch=16)
    return OnnxAdapter(path)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(3).uniform(0.1, 0.9, (64, 64, 3)).astype(np.float32)


def true_mean_fill_effect(image: np.ndarray) -> np.ndarray:
    """Filling patch j with the image mean changes P by A_j (mean_j - mean): the exact attribution."""
    means = image.reshape(4, 16, 4, 16, 3).mean(axis=(1, 3, 4)).ravel()
    return A * (means - image.mean())


def test_occlusion_is_exact_on_a_linear_model(model: OnnxAdapter, image: np.ndarray) -> None:
    q0 = model.queries
    d = baselines.occlusion_deltas(image, model, 1)
    assert np.allclose(d, true_mean_fill_effect(image), atol=2e-6)
    assert model.queries - q0 == 17


def test_kernel_shap_recovers_shapley_values_exactly(model: OnnxAdapter, image: np.ndarray) -> None:
    # For a model linear in the patch indicators the Shapley values are the per-patch effects.
    q0 = model.queries
    phi = baselines.kernel_shap_values(image, model, 1, 120, np.random.default_rng(0))
    assert model.queries - q0 == 120
    assert np.allclose(phi, true_mean_fill_effect(image), atol=2e-6)


def test_patch_lime_finds_the_effects(model: OnnxAdapter, image: np.ndarray) -> None:
    w = baselines.patch_lime_weights(image, model, 1, 400, np.random.default_rng(0), alpha=1e-6)
    assert np.allclose(w, true_mean_fill_effect(image), atol=1e-5)


def test_rise_peaks_on_the_only_patch_that_matters(tmp_path: Path, image: np.ndarray) -> None:
    one = np.zeros(16)
    one[5] = 0.5
    with OnnxAdapter(linear_patch_model(tmp_path / "one.onnx", one, 0.2, size=64, patch=16)) as m:
        sal = baselines.rise(image, m, 1, 1500, np.random.default_rng(0), cells=4)
        assert m.queries == 1500
    per_patch = sal.reshape(4, 16, 4, 16).mean(axis=(1, 3)).ravel()
    assert int(np.argmax(per_patch)) == 5


def test_rise_correlates_with_the_true_effects(model: OnnxAdapter, image: np.ndarray) -> None:
    # RISE's expectation is the true effect map smoothed by the masks' spatial covariance, so the
    # correlation with the exact per-patch effects is clearly positive but not 1.
    sal = baselines.rise(image, model, 1, 2000, np.random.default_rng(0), cells=4)
    per_patch = sal.reshape(4, 16, 4, 16).mean(axis=(1, 3)).ravel()
    truth = A * image.reshape(4, 16, 4, 16, 3).mean(axis=(1, 3, 4)).ravel()  # against a black background
    assert np.corrcoef(per_patch, truth)[0, 1] > 0.5


def test_lime_package_pays_its_queries(model: OnnxAdapter, image: np.ndarray) -> None:
    pytest.importorskip("lime")
    q0 = model.queries
    sal = baselines.lime_package(image, model, 1, 60, np.random.default_rng(0))
    assert sal.shape == (64, 64) and model.queries - q0 == 60 and np.isfinite(sal).all()


def test_random_map_is_seeded(image: np.ndarray) -> None:
    a = baselines.random_map(image, np.random.default_rng(5))
    assert np.array_equal(a, baselines.random_map(image, np.random.default_rng(5)))


@pytest.mark.torch
def test_gradcam_weights_match_the_shipped_onnx_models(phantom_image: np.ndarray) -> None:
    torch = pytest.importorskip("torch")
    from blackbox_lime.models import bundled_model

    for arch in ("cnn", "vit"):
        net = baselines.load_torch_classifier(arch)
        with torch.no_grad():
            p_torch = net(torch.from_numpy(phantom_image.transpose(2, 0, 1))[None]).softmax(-1).numpy()
        with OnnxAdapter(bundled_model(f"demo_{arch}.onnx")) as onnx_model:
            assert np.allclose(p_torch, onnx_model.predict(phantom_image[None]), atol=1e-4)
        cam = baselines.gradcam_torch(phantom_image, net, 1, arch)
        assert cam.shape == (224, 224) and cam.min() >= 0 and cam.max() > 0


def test_bench_smoke_run_writes_every_output(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from blackbox_lime.evaluation.bench import BenchConfig, run

    cfg = BenchConfig(models=("cnn",), modalities=("chest_xray",), images=1, budgets=(120,), seeds=2,
                      consistency_images=1, consistency_budget=120, curve_steps=4, n_boot=50, bank_cases=6,
                      methods=("MedLIME", "MedLIME w/o STTA", "LIME, patch grid, mean fill", "Occlusion (16 px)",
                               "Random"))
    result = run(cfg, tmp_path, log=lambda s: None)
    for name in ("table.md", "results.json", "auprc_vs_queries.png", "overlays.png"):
        assert (tmp_path / name).stat().st_size > 0
    recs = json.loads((tmp_path / "results.json").read_text())["records"]
    assert {r["method"] for r in recs} == set(cfg.methods)
    med = [r for r in recs if r["method"] == "MedLIME"][0]
    assert med["queries"] <= 120 and 0 <= med["auprc"] <= 1 and "consistency" in med  # STTA's check only when adapted
    assert [r for r in recs if r["method"] == "MedLIME w/o STTA"][0]["queries"] == 120
    assert [r for r in recs if r["method"] == "Occlusion (16 px)"][0]["queries"] == 197
    table = (tmp_path / "table.md").read_text()
    assert "| MedLIME | 1" in table and "| MedLIME w/o STTA | 120 |" in table
    assert "- removing each part lowers AUPRC: GM: not measured; STTA: " in table
    assert "EBR: not measured" in table
    assert result["config"]["split"] == "test" and "commit" in result


def test_telea_fill_keeps_visible_patches_and_never_returns_a_hidden_patch(image: np.ndarray) -> None:
    from blackbox_lime.patches import PatchGrid

    grid = PatchGrid(64, 64, 16)
    visible = np.ones((3, 16), bool)
    visible[0, [1, 5, 6]] = False
    visible[1, :] = False  # all hidden: nothing to inpaint from
    gray = np.repeat(image[..., :1], 3, axis=2)
    for img in (image, gray):
        out = baselines._telea(img, grid, visible)
        hidden = grid.hidden_pixels(visible)
        np.testing.assert_array_equal(out[0][~hidden[0]], img[~hidden[0]])
        assert np.abs(out[0][hidden[0]] - img[hidden[0]]).mean() > 0.05
        np.testing.assert_allclose(out[1], np.broadcast_to(img.mean(axis=(0, 1)), img.shape), rtol=1e-6)
        np.testing.assert_array_equal(out[2], img)
    out = baselines._telea(gray, grid, visible[:1])
    np.testing.assert_array_equal(out[0, ..., 0], out[0, ..., 2])


def test_kernel_shap_with_telea_fill_is_efficient(model: OnnxAdapter, image: np.ndarray) -> None:
    q0 = model.queries
    phi = baselines.kernel_shap_values(image, model, 1, 150, np.random.default_rng(0), fill="telea")
    assert model.queries - q0 == 150
    f_image = model.predict(image[None])[0, 1]
    f_empty = model.predict(np.broadcast_to(image.mean(axis=(0, 1)), image.shape)[None].astype(np.float32))[0, 1]
    assert phi.sum() == pytest.approx(f_image - f_empty, abs=1e-6)
    with pytest.raises(ValueError, match="The 'fill' parameter must be 'mean' or 'telea'. Got 'blur' instead."):
        baselines.kernel_shap_values(image, model, 1, 150, np.random.default_rng(0), fill="blur")


def test_paired_differences_find_a_consistent_gap_that_overlapping_cis_hide() -> None:
    from blackbox_lime.evaluation import bench

    cfg = bench.BenchConfig(models=("cnn",), modalities=("chest_xray",), budgets=(100,), consistency_budget=100,
                            n_boot=500)
    rng = np.random.default_rng(0)
    hardness = rng.uniform(0.1, 0.9, 20)  # cases differ far more than the methods do
    records = []
    for case, h in enumerate(hardness):
        for method, budget, shift in (("MedLIME", 100, 0.02), ("LIME (lime package)", 100, 0.0),
                                      ("LIME (lime package)", 500, 0.5), ("Random", None, -0.3)):
            records.append({"model": "cnn", "modality": "chest_xray", "case": case, "method": method, "budget": budget,
                            "auprc": h + shift, "morf": h - shift, "lerf": h + shift * (case % 2),
                            "queries": budget or 197, "requests": 1, "wall_s": 1.0})
    out = bench.derive(records, cfg)
    rows = {r["method"]: r for r in out["paired"]}
    assert set(rows) == {"LIME (lime package)", "Random"}  # the reference is not paired with itself
    lime = rows["LIME (lime package)"]
    assert lime["n"] == 20 and lime["budget"] == 100  # paired at the reference's budget, not 500
    assert lime["auprc"] == pytest.approx((0.02, 0.02, 0.02)) and lime["morf"] == pytest.approx((-0.02, -0.02, -0.02))
    assert rows["Random"]["budget"] is None and rows["Random"]["auprc"][0] == pytest.approx(0.32)
    by = {(r["method"], r["budget"]): r["auprc"] for r in out["summary"] if r["group"] == "all"}
    assert by[("MedLIME", 100)][1] < by[("LIME (lime package)", 100)][2]  # the per-method CIs overlap
    assert out["goals"]["medlime_morf_vs_best_other"] == "LIME (lime package): Δ -0.020 [-0.020, -0.020], better"
    lerf = out["goals"]["medlime_lerf_vs_best_other"]  # +0.02 on half the cases, 0 on the others
    assert lerf.startswith("LIME (lime package): Δ +0.010 [+0.00") and lerf.endswith("], better")
    assert bench._verdict((0.01, -0.005, 0.02), 1) == "not distinguishable"
    assert bench._verdict((-0.03, -0.05, -0.01), -1) == "better" and bench._verdict((0.03, 0.01, 0.05), -1) == "worse"
    md = bench.markdown({"config": asdict(cfg), "records": records, **out})
    assert "| LIME (lime package) | 20 | 0.020 [0.020, 0.020] (better) | -0.020 [-0.020, -0.020] (better) |" in md


def test_goals_name_only_the_groups_a_joined_run_holds() -> None:
    from blackbox_lime.evaluation import bench

    # as after --merge of cnn chest, cnn ultrasound and vit chest: the config lists both modalities for the
    # ViT, but no ViT ultrasound case ran
    cfg = bench.BenchConfig(models=("cnn", "vit"), modalities=("chest_xray", "breast_us"), budgets=(100,),
                            consistency_budget=100, n_boot=100)
    records = []
    for arch, modality, base in (("cnn", "chest_xray", 0.4), ("cnn", "breast_us", 0.3), ("vit", "chest_xray", 0.5)):
        for case in range(4):
            for method, budget, auprc in (("MedLIME", 100, base + 0.01 * case), ("Grad-CAM (white-box)", None, 0.05)):
                records.append({"model": arch, "modality": modality, "case": case, "method": method,
                                "budget": budget, "auprc": auprc, "morf": 0.5, "lerf": 0.9,
                                "queries": budget or 0, "requests": 1, "wall_s": 1.0})
    md = bench.markdown({"config": asdict(cfg), "records": records, **bench.derive(records, cfg)})
    assert "- MedLIME vs Grad-CAM AUPRC on the CNN: chest_xray: 0.415 vs 0.050, breast_us: 0.315 vs 0.050; " in md
    assert "- MedLIME vs Grad-CAM AUPRC on the VIT: chest_xray: 0.515 vs 0.050; paired Δ +0.465 " in md


def test_bench_options_override_the_quick_configuration() -> None:
    from blackbox_lime.evaluation.bench import parse

    cfg, out = parse(["--quick", "--consistency-images", "3", "--budgets", "250,500,1000", "--out", "x"])
    assert (cfg.consistency_images, cfg.budgets, cfg.images, str(out)) == (3, (250, 500, 1000), 3, "x")
    assert parse(["--quick"])[0].consistency_images == 1 and parse([])[0].consistency_images == 5
    quick, full = parse(["--quick"])[0].methods, parse([])[0].methods
    assert set(full) - set(quick) == {"KernelSHAP (patch grid, Telea fill)"}
    assert {"MedLIME", "MedLIME w/o GM (mean fill)", "MedLIME w/o STTA", "MedLIME w/o EBR"} <= set(quick)
    assert parse(["--budgets", "1000,2000", "--consistency-budget", "2000"])[0].consistency_budget == 2000


@pytest.mark.parametrize("argv, message", [
    (["--budgets", "250,500"], "--consistency-budget 1000 is not one of the budgets run (250,500)"),
    (["--consistency-budget", "1500"], "--consistency-budget 1500 is not one of the budgets run (250,500,1000,2000)")])
def test_bench_refuses_a_consistency_budget_it_does_not_run(argv: list[str], message: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from blackbox_lime.evaluation.bench import parse

    with pytest.raises(SystemExit) as e:
        parse(argv)
    assert e.value.code == 2
    assert f"error: {message}; add it to --budgets" in capsys.readouterr().err


def test_bench_merge_joins_runs_over_modalities_and_refuses_overlaps(tmp_path: Path) -> None:
    from blackbox_lime.evaluation import bench

    common = dict(models=("cnn",), images=2, budgets=(24,), consistency_images=0, consistency_budget=24,
                  curve_steps=4, n_boot=50, methods=("Random",))  # no MedLIME: no bank is built
    for modality in ("chest_xray", "breast_us"):
        bench.run(bench.BenchConfig(modalities=(modality,), **common), tmp_path / modality, log=lambda s: None)
    parts = [tmp_path / m / "results.json" for m in ("chest_xray", "breast_us")]
    assert bench.main(["--merge", *map(str, parts), "--out", str(tmp_path / "all")]) == 0
    joined = json.loads((tmp_path / "all" / "results.json").read_text())
    assert joined["config"]["modalities"] == ["chest_xray", "breast_us"] and len(joined["records"]) == 4
    rows = {r["group"]: r["n"] for r in joined["summary"]}
    assert rows == {"all": 4, "cnn/chest_xray": 2, "cnn/breast_us": 2}
    assert "AUPRC cnn/breast_us" in (tmp_path / "all" / "table.md").read_text()
    with pytest.raises(ValueError, match="repeats Random at budget None on cnn/chest_xray case "):
        bench.merge([parts[0], parts[0]], tmp_path / "bad")
    other = json.loads(parts[1].read_text())
    other["config"]["split"] = "val"
    (tmp_path / "val.json").write_text(json.dumps(other))
    with pytest.raises(ValueError, match=r"val\.json was run with split='val', the first run with 'test'; only "
                                         r"--models and --modalities may differ between joined runs\."):
        bench.merge([parts[0], tmp_path / "val.json"], tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_bench_resumes_a_stopped_run_without_redoing_finished_cases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    from blackbox_lime.evaluation import bench

    cfg = bench.BenchConfig(models=("cnn",), modalities=("chest_xray",), images=2, budgets=(120,), seeds=2,
                            consistency_images=1, consistency_budget=120, curve_steps=4, n_boot=50, bank_cases=6,
                            methods=("MedLIME", "Random"))
    once = bench.run(cfg, tmp_path / "once", log=lambda s: None)

    class Stopped(Exception):
        pass

    def stop_after_the_first_case(line: str) -> None:
        if " 1/2 " in line:
            raise Stopped

    out = tmp_path / "parts"
    with pytest.raises(Stopped):
        bench.run(cfg, out, log=stop_after_the_first_case)
    assert not (out / "results.json").exists() and (out / "checkpoint.jsonl").exists()
    assert bench.main(["--models", "cnn", "--modalities", "chest_xray", "--out", str(out)]) == 2
    assert capsys.readouterr().err == (f"blackbox-lime bench: error: {out} holds an unfinished benchmark run; "
                                       "add --resume to go on with it, or choose another --out.\n")
    with pytest.raises(bench.CheckpointError, match=r"checkpoint\.jsonl was started with budgets=\[120\], this run "
                                                    r"has \[144\]; resume with the same options, or choose another "
                                                    r"--out\."):
        bench.run(bench.BenchConfig(**{**cfg.__dict__, "budgets": (144,)}), out, log=lambda s: None, resume=True)
    with open(out / "checkpoint.jsonl", "a") as f:
        f.write('{"model": "cnn", "modality": "chest_x')  # killed while writing the second case's line

    calls: list[tuple[str, int | None, int]] = []
    run_method = bench.run_method

    def counting(name: str, image: np.ndarray, adapter: Any, budget: int | None, seed: int, *rest: Any) -> np.ndarray:
        calls.append((name, budget, seed))
        return run_method(name, image, adapter, budget, seed, *rest)

    monkeypatch.setattr(bench, "run_method", counting)
    log: list[str] = []
    resumed = bench.run(cfg, out, log=log.append, resume=True)
    assert calls == [("MedLIME", 120, 0), ("Random", None, 0)]  # only the second case, with one seed
    assert any("dropping a half-written last line" in line for line in log)

    def without_wall(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != "wall_s"} for r in records]

    assert without_wall(resumed["records"]) == without_wall(once["records"])
    assert [r["auprc"] for r in resumed["summary"]] == [r["auprc"] for r in once["summary"]]
    assert sorted(p.name for p in out.iterdir()) == ["auprc_vs_queries.png", "overlays.png", "results.json", "table.md"]


def test_resumed_run_estimates_time_left_from_the_cases_of_every_part(tmp_path: Path) -> None:
    from blackbox_lime.evaluation.bench_checkpoint import Checkpoint

    first = Checkpoint(tmp_path, {"images": 4}, "abc", resume=False, log=lambda s: None)
    assert first.mean_case_s() == 0.0
    first.add("cnn", "chest_xray", 3, [], 10.0, None)
    first.add("cnn", "chest_xray", 5, [], 30.0, None)
    resumed = Checkpoint(tmp_path, {"images": 4}, "abc", resume=True, log=lambda s: None)
    assert resumed.mean_case_s() == pytest.approx(20.0)  # not the near-zero time it takes to read them back
    resumed.add("cnn", "chest_xray", 8, [], 50.0, None)
    assert resumed.mean_case_s() == pytest.approx(30.0)


def test_bench_method_lists_read_names_that_hold_commas(capsys: pytest.CaptureFixture[str]) -> None:
    from blackbox_lime.evaluation.bench import DIAGNOSTIC, METHODS, method_list, parse

    assert method_list("MedLIME,LIME, patch grid, mean fill, RISE") == ("MedLIME", "LIME, patch grid, mean fill", "RISE")
    assert method_list("MedLIME, blur fill (diagnostic),MedLIME") == ("MedLIME, blur fill (diagnostic)", "MedLIME")
    cfg, _ = parse(["--consistency-methods", "KernelSHAP (patch grid, Telea fill),Random"])
    assert cfg.consistency_methods == ("KernelSHAP (patch grid, Telea fill)", "Random")
    assert DIAGNOSTIC[0] in METHODS and DIAGNOSTIC[0] not in parse([])[0].methods  # run only when asked for
    with pytest.raises(SystemExit) as e:
        parse(["--methods", "MedLIME,LIME, patch grid"])
    assert e.value.code == 2
    assert ("error: unknown method 'LIME'; choose from: MedLIME; MedLIME w/o GM (mean fill); MedLIME w/o STTA; "
            "MedLIME w/o EBR; LIME (lime package); LIME, patch grid, mean fill; RISE; KernelSHAP (patch grid); KernelSHAP (patch grid, Telea fill); "
            "Occlusion (16 px); Random; Grad-CAM (white-box); MedLIME, blur fill (diagnostic) (separated by commas)\n"
            ) in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse(["--first-case", "-1"])
    assert "error: --first-case must be 0 or more, got -1\n" in capsys.readouterr().err
    from blackbox_lime.evaluation.bench import main

    with pytest.raises(SystemExit):
        main(["--paired-against", "RISE"])
    assert "error: --paired-against works with --render only\n" in capsys.readouterr().err


def test_bench_first_case_runs_held_out_cases_and_joins_runs_saved_before_it_existed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    from blackbox_lime.evaluation import bench

    every = bench.abnormal_cases("chest_xray", "shifted", 5)
    assert [c.index for c in bench.abnormal_cases("chest_xray", "shifted", 3, first=2)] == [c.index for c in every[2:]]
    common = dict(models=("cnn",), modalities=("chest_xray",), images=1, budgets=(120,), consistency_images=0,
                  consistency_budget=120, curve_steps=4, n_boot=50, split="shifted", bank_cases=6)
    held_out = bench.run(bench.BenchConfig(first_case=2, methods=("MedLIME", "MedLIME, blur fill (diagnostic)"),
                                           **common), tmp_path / "held_out", log=lambda s: None)
    assert {r["case"] for r in held_out["records"]} == {every[2].index}
    assert {r["method"] for r in held_out["records"]} == {"MedLIME", "MedLIME, blur fill (diagnostic)"}
    assert held_out["goals"]["lowest_morf_black_box"].startswith("MedLIME (")  # a diagnostic is no rival
    assert "MedLIME, blur fill (diagnostic)" not in bench.BLACK_BOX  # whatever its MoRF on this one case
    assert not set(bench.ABLATIONS.values()) & set(bench.BLACK_BOX)  # nor are MedLIME's own ablations
    from blackbox_lime.config import ExplainConfig
    from blackbox_lime.explainer import Explainer

    adapter = bench.OnnxAdapter(bench.bundled_model("demo_cnn.onnx"))
    image, target = every[2].image, adapter.info.abnormal_index
    bank = bench.evidence_banks(("chest_xray",), 6, log=lambda s: None)["chest_xray"]
    diag = bench.run_method("MedLIME, blur fill (diagnostic)", image, adapter, 120, 0, None, "cnn", bank)
    config = bench.medlime_config("medlime_blur", 120)  # the whole method, only the fill differs
    assert (config.fill, config.stta, config.total_queries) == ("blur", True, 120) and config == ExplainConfig(
        n_samples=48, fill="blur", stta=True, lambda2=bench.LAMBDA2_PRIOR)
    assert bench.medlime_config("medlime_no_ebr", 120).lambda2 == bench.LAMBDA2_PRIOR  # same penalty, w_ref = 0
    for kind in ("medlime", "medlime_no_stta", "medlime_no_ebr"):  # the benchmark measures the default: fill auto
        assert bench.medlime_config(kind, 120).fill == ExplainConfig().fill == "auto"
    blur = Explainer(adapter, config, bank=bank).explain(image, target=target, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(diag, blur.saliency)
    assert not np.array_equal(diag, bench.run_method("MedLIME w/o GM (mean fill)", image, adapter, 120, 0, None, "cnn",
                                                     bank))
    adapter.close()
    table = (tmp_path / "held_out" / "table.md").read_text()
    assert table.startswith("Split `shifted`, abnormal cases 3–3 per (model, modality); ")
    assert "| MedLIME, blur fill (diagnostic) | 1 | " in table
    results = str(tmp_path / "held_out" / "results.json")
    capsys.readouterr()
    assert bench.main(["--render", results, "--paired-against", "MedLIME, blur fill (diagnostic)"]) == 0
    printed = capsys.readouterr().out
    assert "\n\nMedLIME, blur fill (diagnostic) minus each method on the same cases, at 120 queries " in printed
    mine = next(p for p in held_out["paired"] if p["method"] == "MedLIME, blur fill (diagnostic)")
    flipped = bench.paired_differences(held_out["records"], bench.BenchConfig(**common), "MedLIME, blur fill (diagnostic)")
    assert [p["method"] for p in flipped] == ["MedLIME"]
    assert flipped[0]["auprc"][0] == pytest.approx(-mine["auprc"][0]) and flipped[0]["morf"][0] == pytest.approx(-mine["morf"][0])
    assert f"| MedLIME | 1 | {flipped[0]['auprc'][0]:.3f} " in printed
    assert bench.main(["--render", results, "--paired-against", "Random"]) == 2
    assert capsys.readouterr().err == (f"blackbox-lime bench: error: 'Random' was not run in {results}; it holds: "
                                       "MedLIME; MedLIME, blur fill (diagnostic)\n")

    bench.run(bench.BenchConfig(methods=("Random",), **common), tmp_path / "first", log=lambda s: None)
    bench.run(bench.BenchConfig(methods=("Random",), **{**common, "modalities": ("breast_us",)}),
              tmp_path / "older", log=lambda s: None)
    older = json.loads((tmp_path / "older" / "results.json").read_text())
    del older["config"]["first_case"]  # saved by a version without the option: it ran from case 0
    (tmp_path / "older" / "results.json").write_text(json.dumps(older))
    bench.merge([tmp_path / "first" / "results.json", tmp_path / "older" / "results.json"], tmp_path / "joined")
    assert (tmp_path / "joined" / "results.json").exists()
    with pytest.raises(ValueError, match=r"held_out/results\.json was run with first_case=2, the first run with 0; "):
        bench.merge([tmp_path / "first" / "results.json", tmp_path / "held_out" / "results.json"], tmp_path / "bad")


def test_grad_cam_goal_is_judged_paired_on_each_classifier_s_own_cases() -> None:
    from blackbox_lime.evaluation import bench

    cfg = bench.BenchConfig(models=("cnn", "vit"), modalities=("chest_xray",), budgets=(100,), consistency_budget=100,
                            n_boot=500)
    rng = np.random.default_rng(1)
    records = []
    for model, gap in (("cnn", 0.05), ("vit", -0.03)):  # MedLIME ahead of Grad-CAM on the CNN, behind on the ViT
        for case, h in enumerate(rng.uniform(0.1, 0.9, 12)):
            for method, budget, shift in (("MedLIME", 100, gap), ("Grad-CAM (white-box)", None, 0.0)):
                records.append({"model": model, "modality": "chest_xray", "case": case, "method": method,
                                "budget": budget, "auprc": h + shift, "morf": h, "lerf": h, "queries": budget or 0,
                                "requests": 1, "wall_s": 1.0})
    out = bench.derive(records, cfg)
    g = out["goals"]
    assert g["medlime_vs_gradcam_cnn_paired"] == "Δ +0.050 [+0.050, +0.050] on 12 cases, better"
    assert g["medlime_vs_gradcam_vit_paired"] == "Δ -0.030 [-0.030, -0.030] on 12 cases, worse"
    assert [p["n"] for p in out["paired"]] == [24]  # pooled over both classifiers, the gaps would blur to +0.010
    md = bench.markdown({"config": asdict(cfg), "records": records, **out})
    assert "on the VIT: chest_xray: " in md and "; paired Δ -0.030 [-0.030, -0.030] on 12 cases, worse" in md


def test_render_write_rederives_a_saved_run_in_place(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from blackbox_lime.evaluation import bench

    cfg = bench.BenchConfig(models=("cnn",), modalities=("chest_xray",), images=2, budgets=(24,), consistency_images=0,
                            consistency_budget=24, curve_steps=4, n_boot=50, methods=("Random", "Occlusion (16 px)"))
    bench.run(cfg, tmp_path, log=lambda s: None)
    path = tmp_path / "results.json"
    saved = json.loads(path.read_text())
    stale = {**saved, "goals": {"medlime_over_lime_auprc": 99.0}, "summary": [], "paired": []}
    path.write_text(json.dumps(stale))
    (tmp_path / "table.md").write_text("stale\n")
    (tmp_path / "auprc_vs_queries.png").unlink()
    assert bench.main(["--render", str(path), "--write"]) == 0
    assert (tmp_path / "auprc_vs_queries.png").stat().st_size > 0 and (tmp_path / "overlays.png").exists()
    fresh = json.loads(path.read_text())
    assert fresh["records"] == saved["records"] and fresh["commit"] == saved["commit"] and "rederived_by" in fresh
    assert fresh["summary"] == saved["summary"] and fresh["goals"].keys() == saved["goals"].keys()
    assert (tmp_path / "table.md").read_text() == capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        bench.main(["--render", str(path), "--write", "--paired-against", "Random"])
    assert e.value.code == 2
    assert "error: --write works with --render only, without --paired-against" in capsys.readouterr().err


def test_compare_pairs_a_method_across_saved_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from blackbox_lime.evaluation import bench

    common = dict(models=("cnn",), images=2, budgets=(24,), consistency_images=0, consistency_budget=24,
                  curve_steps=4, n_boot=50, methods=("Random", "Occlusion (16 px)"))
    a = bench.run(bench.BenchConfig(modalities=("chest_xray",), **common), tmp_path / "a", log=lambda s: None)
    path = str(tmp_path / "a" / "results.json")
    text = bench.compare(f"{path}:Occlusion (16 px)", f"{path}:Random", budget=24, n_boot=200)
    occ = [r["auprc"] for r in a["records"] if r["method"] == "Occlusion (16 px)"]
    rnd = [r["auprc"] for r in a["records"] if r["method"] == "Random"]
    assert "paired on 2 cases at 24 queries" in text
    assert f"| auprc | {np.mean(occ):.3f} | {np.mean(rnd):.3f} | {np.mean(occ) - np.mean(rnd):.3f} [" in text
    assert bench.main(["--compare", f"{path}:Random", f"{path}:RISE"]) == 2
    assert capsys.readouterr().err == ("blackbox-lime bench: error: the two runs share no case for 'Random' and 'RISE' "
                                       "at 1000 queries\n")
    assert bench.main(["--compare", path, f"{path}:Random"]) == 2
    assert "--compare takes RESULTS_JSON[,RESULTS_JSON...]:METHOD" in capsys.readouterr().err
