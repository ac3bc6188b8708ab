from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from blackbox_lime import cli
from blackbox_lime.evaluation.phantoms import make_phantom

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--samples", "60", "--fill", "mean", "--quiet", "--lambda1", "1e-5"]  # the test model's effects are small


@pytest.fixture()
def png(tmp_path: Path) -> Path:
    p = tmp_path / "case.png"
    cv2.imwrite(str(p), np.round(make_phantom("chest_xray", "test", 1).image[..., 0] * 255).astype(np.uint8))
    return p


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "blackbox_lime", *args], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=300)


def test_explain_writes_three_files_and_json(png: Path, linear_model: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    code = cli.main(["explain", str(png), "--model", str(linear_model), "--out", str(out), "--json", *FAST])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["case.json", "case.overlay.png", "case.saliency.npy"]
    sal = np.load(out / "case.saliency.npy")
    assert sal.shape == (224, 224) and sal.dtype == np.float32
    report = json.loads((out / "case.json").read_text())
    assert report["input"]["sha256"] == __import__("hashlib").sha256(png.read_bytes()).hexdigest()
    assert len(report["models"]["model"]["sha256"]) == 64 and report["models"]["model"]["file"] == "linear.onnx"
    assert report["queries"] == 60 and report["seed"] == 0 and report["config"]["fill"] == "mean"
    assert report["version"] and "surrogate" in report["timings_s"] and "read_image" in report["timings_s"]
    line = json.loads(capsys.readouterr().out.strip())
    assert line["target_name"] == report["target_name"] and line["outputs"][0] == "case.saliency.npy"
    overlay = cv2.imread(str(out / "case.overlay.png"))
    assert overlay.shape[0] > 224 and overlay.shape[1] > 224  # image + colour bar + title


def test_same_seed_gives_bit_identical_saliency_file(png: Path, linear_model: Path, tmp_path: Path) -> None:
    for d in ("a", "b", "c"):
        seed = "9" if d == "c" else "3"
        assert cli.main(["explain", str(png), "--model", str(linear_model), "--out", str(tmp_path / d), "--seed", seed, *FAST]) == 0
    a, b, c = ((tmp_path / d / "case.saliency.npy").read_bytes() for d in "abc")
    assert a == b and a != c


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: p.write_bytes(b""), "bad.png is empty (0 bytes)"),
    (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40), "bad.png is truncated or corrupt"),
    (lambda p: cv2.imwrite(str(p), np.zeros((8, 8), np.uint8)), "is smaller than one patch (16 px)"),
])
def test_bad_image_exits_2_with_one_line_and_no_output(tmp_path: Path, linear_model: Path, make, message: str) -> None:
    bad = tmp_path / "bad.png"
    make(bad)
    out = tmp_path / "out"
    r = run_cli("explain", str(bad), "--model", str(linear_model), "--out", str(out), *FAST)
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0
    assert not out.exists()  # the folder this call created is removed again when no image succeeded


def test_one_bad_image_does_not_lose_the_others(tmp_path: Path, png: Path, linear_model: Path) -> None:
    bad = tmp_path / "bad.npy"
    a = np.zeros((64, 64), np.float32)
    a[0, 0] = np.nan
    np.save(bad, a)
    out = tmp_path / "out"
    code = cli.main(["explain", str(bad), str(png), "--model", str(linear_model), "--out", str(out), *FAST])
    assert code == 2
    assert sorted(p.name for p in out.iterdir()) == ["case.json", "case.overlay.png", "case.saliency.npy"]


def test_bad_model_exits_2(tmp_path: Path, png: Path) -> None:
    fake = tmp_path / "fake.onnx"
    fake.write_text("not a model")
    r = run_cli("explain", str(png), "--model", str(fake), "--out", str(tmp_path / "o"), *FAST)
    assert r.returncode == 2 and "fake.onnx is not a loadable ONNX model" in r.stderr and "Traceback" not in r.stderr


def test_model_returning_nan_exits_2_without_output(tmp_path: Path, png: Path) -> None:
    from graphs import linear_patch_model

    m = linear_patch_model(tmp_path / "nan.onnx", np.zeros(196), 0.5, offset=float("nan"))
    out = tmp_path / "o"
    r = run_cli("explain", str(png), "--model", str(m), "--out", str(out), *FAST)
    assert r.returncode == 2 and "The model returned NaN or infinite probabilities" in r.stderr
    assert not out.exists()


def test_output_path_that_is_a_file_exits_2(tmp_path: Path, png: Path, linear_model: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = run_cli("explain", str(png), "--model", str(linear_model), "--out", str(blocker / "sub"), *FAST)
    assert r.returncode == 2 and "Cannot write to the output folder" in r.stderr and "Choose a writable --out folder." in r.stderr
    assert "Traceback" not in r.stderr


def test_bad_option_values_exit_2(tmp_path: Path, png: Path, linear_model: Path) -> None:
    r = run_cli("explain", str(png), "--model", str(linear_model), "--out", str(tmp_path / "o"), "--samples", "3")
    assert r.returncode == 2 and "blackbox-lime: error: --samples must be an integer >= 10 or 'auto'. Got 3 instead.\n" in r.stderr
    r = run_cli("explain", str(png), "--model", str(linear_model), "--out", str(tmp_path / "o"), "--lambda1-cap", "0", *FAST)
    assert r.returncode == 2 and "blackbox-lime: error: --lambda1-cap must be " in r.stderr and "Got 0.0 instead." in r.stderr
    r = run_cli("explain", str(png), "--model", str(linear_model), "--out", str(tmp_path / "o"), "--patch-size", "24",
                "--fill", "mae", "--samples", "10", "--quiet")
    assert r.returncode == 2 and "blackbox-lime: error: --patch-size must be a multiple of the MAE's patch (16)" in r.stderr
    r = run_cli("explain", str(png), "--model", str(linear_model), "--out", str(tmp_path / "o"), "--target", "tumour", *FAST)
    assert r.returncode == 2 and "--target 'tumour' is not a class of this model" in r.stderr


def test_target_by_name(png: Path, linear_model: Path, tmp_path: Path) -> None:
    assert cli.main(["explain", str(png), "--model", str(linear_model), "--out", str(tmp_path), "--target", "normal", *FAST]) == 0
    assert json.loads((tmp_path / "case.json").read_text())["target_name"] == "normal"


def test_phantoms_command(tmp_path: Path) -> None:
    assert cli.main(["phantoms", "--out", str(tmp_path), "--modality", "breast_us", "--count", "2"]) == 0
    assert (tmp_path / "labels.csv").exists() and (tmp_path / "breast_us_test_00001.mask.png").exists()
    assert cli.main(["phantoms", "--out", str(tmp_path), "--modality", "ct"]) == 2


def test_demo_explains_the_bundled_phantom_with_the_bundled_models(tmp_path: Path) -> None:
    r = run_cli("demo", "--out", str(tmp_path / "demo"), "--samples", "60", "--quiet", "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    report = json.loads((tmp_path / "demo" / "chest_xray_test_00001.json").read_text())
    assert summary["input"]["file"] == "chest_xray_test_00001.png"
    assert summary["queries"] == 60 + report["adaptation"]["queries"]  # the whole method: STTA's queries too
    assert report["config"]["stta"] is True and report["models"]["evidence_bank"]["file"] == "bank_chest_xray.npz"
    assert report["config"]["evidence_bank"]["cases"] == 200 and len(report["neighbours"]) == 25
    assert report["models"]["model"]["file"] == "demo_cnn.onnx" and report["models"]["mae"]["file"] == "mae_recon.onnx"
    assert report["config"]["fill"] == "auto" and report["config"]["fill_model"]["provider"] == "CPUExecutionProvider"
    # the default fill "auto": the MAE knows chest phantoms (its reconstruction check passes), so no pilot query
    fill = report["fill"]
    assert fill["mode"] == "auto" and fill["chosen"] == "mae" and fill["queries_spent_on_choice"] == 0
    assert fill["recon_psnr_db"]["mae"] > fill["recon_psnr_db"]["blur"]
    assert report["target_name"] == "abnormal"  # the demo phantom holds a lesion and the CNN sees it


def test_weak_map_warning_goes_to_stderr_and_the_report(png: Path, tmp_path: Path, linear_weights: np.ndarray,
                                                        capsys) -> None:
    from graphs import linear_patch_model

    flat = linear_patch_model(tmp_path / "flat.onnx", linear_weights * 1e-3, 0.3)
    out = tmp_path / "out"
    args = ["explain", str(png), "--model", str(flat), "--out", str(out), "--samples", "60", "--fill", "mean",
            "--target", "1", "--lambda1", "1", "--lambda1-scale", "absolute", "--lambda1-cap", "1"]
    assert cli.main(args) == 0
    err = capsys.readouterr().err
    assert "blackbox-lime: warning: case.png: P(abnormal) hardly moved under masking" in err
    assert ("blackbox-lime: warning: case.png: No patch's evidence survived the L1 penalty (effective lambda1 1), "
            "so the map is empty. Lower --lambda1, or --lambda1-cap below 1.") in err
    report = json.loads((out / "case.json").read_text())
    assert len(report["warnings"]) == 2 and report["config"]["lambda1_scale"] == "absolute"
    assert report["lambda1_effective"] == 1.0 and report["lambda1_capped"] is False
    assert cli.main([*args, "--quiet"]) == 0 and capsys.readouterr().err == ""


def test_bank_build_from_masks_then_explain_with_it_and_stta(tmp_path: Path, linear_model: Path, png: Path,
                                                              capsys) -> None:
    assert cli.main(["phantoms", "--out", str(tmp_path / "hist"), "--split", "train", "--count", "8"]) == 0
    cases = tmp_path / "hist" / "labels.csv"
    abnormal = sum(line.split(",")[2] == "1" for line in cases.read_text().splitlines()[1:])
    bank = tmp_path / "bank.npz"
    assert cli.main(["bank", "build", "--cases", str(cases), "--out", str(bank), "--quiet"]) == 0
    assert capsys.readouterr().err == (f"{bank}: {abnormal} abnormal cases (masks, 14x14 patches of 16 px)\n")
    out = tmp_path / "out"
    assert cli.main(["explain", str(png), "--model", str(linear_model), "--out", str(out), "--bank", str(bank),
                     "--stta", "--stta-iterations", "2", "--stta-views", "2", "--neighbours", "3", "--lambda2", "0.1",
                     "--target", "abnormal", *FAST]) == 0
    report = json.loads((out / "case.json").read_text())
    assert report["config"]["stta"] is True and report["config"]["n_neighbours"] == 3 and report["config"]["lambda2"] == 0.1
    assert report["adaptation"]["queries"] == 2 * 6 and report["queries"] == 60 + report["adaptation"]["queries"]
    assert len(report["neighbours"]) == 3 and all(n["case"].startswith("chest_xray_train_") for n in report["neighbours"])
    assert report["evidence"]["neighbours"] == 3 and report["evidence"]["reference_scale"] >= 0
    assert report["models"]["evidence_bank"]["file"] == "bank.npz" and report["config"]["evidence_bank"]["source"] == "masks"


def test_bank_build_refuses_bad_cases_and_writes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "cases.csv"
    bad.write_text("image,label\na.png,1\n")
    r = run_cli("bank", "build", "--cases", str(bad), "--out", str(tmp_path / "b.npz"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr == ("blackbox-lime: error: --cases: cases.csv lacks the column(s) mask; it needs image, label, mask "
                        "(blackbox-lime phantoms writes such a labels.csv).\n")
    bad.write_text("image,label,mask\na.png,yes,a.mask.png\n")
    r = run_cli("bank", "build", "--cases", str(bad), "--out", str(tmp_path / "b.npz"))
    assert r.stderr == "blackbox-lime: error: --cases: cases.csv line 2: label must be 0 or 1. Got 'yes' instead.\n"
    bad.write_text("image,label,mask\nmissing.png,1,missing.mask.png\n")
    r = run_cli("bank", "build", "--cases", str(bad), "--out", str(tmp_path / "b.npz"), "--quiet")
    assert r.returncode == 2 and "missing.png" in r.stderr and "No bank was written." in r.stderr
    r = run_cli("bank", "build", "--cases", str(bad), "--out", str(tmp_path / "b.npz"), "--source", "explanations")
    assert r.stderr == ("blackbox-lime: error: --source explanations needs the classifier: --model MODEL.onnx, "
                        "--model URL or --endpoint.\n")
    assert not list(tmp_path.glob("b.npz*")) and not list(tmp_path.glob(".b.npz*"))


def test_explain_with_a_bad_bank_exits_2(tmp_path: Path, png: Path, linear_model: Path) -> None:
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"nope")
    r = run_cli("explain", str(png), "--model", str(linear_model), "--out", str(tmp_path / "o"), "--bank", str(junk), *FAST)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("blackbox-lime: error: --bank: junk.npz is not an evidence bank (")
    assert r.stderr.endswith("Build one with `blackbox-lime bank build`.\n") and not (tmp_path / "o" / "case.json").exists()
    r = run_cli("explain", str(png), "--model", str(linear_model), "--out", str(tmp_path / "o"), "--stta-views", "0", *FAST)
    assert r.returncode == 2 and "blackbox-lime: error: --stta-views must be an integer >= 1. Got 0 instead.\n" in r.stderr


def test_bundled_bank_is_the_bank_of_the_first_200_abnormal_train_phantoms(tmp_path: Path) -> None:
    """The shipped bank is what `bank build --phantoms` (and the benchmark) builds, within float rounding."""
    from blackbox_lime.evidence_bank import EvidenceBank
    from blackbox_lime.models import bundled_model

    out = tmp_path / "chest.npz"
    assert cli.main(["bank", "build", "--phantoms", "chest_xray", "--out", str(out), "--quiet"]) == 0
    built, shipped = EvidenceBank.load(out), EvidenceBank.load(bundled_model("bank_chest_xray.npz"))
    assert built.case_ids == shipped.case_ids and len(shipped) == 200
    assert shipped.case_ids[:2] == ["chest_xray/train/0", "chest_xray/train/1"]
    np.testing.assert_array_equal(built.maps, shipped.maps)  # lesion masks are exact
    np.testing.assert_allclose(built.embeddings, shipped.embeddings, atol=1e-4)
    assert cli.main(["bank", "build", "--phantoms", "chest_xray", "--out", str(out), "--model", "x.onnx"]) == 2


def test_bank_build_from_explanations_stores_the_explainer_s_patch_weights(tmp_path: Path, linear_model: Path) -> None:
    from blackbox_lime import ExplainConfig, Explainer
    from blackbox_lime.evidence_bank import EvidenceBank
    from blackbox_lime.image_io import load_image

    assert cli.main(["phantoms", "--out", str(tmp_path / "hist"), "--split", "train", "--count", "4"]) == 0
    bank = tmp_path / "bank.npz"
    assert cli.main(["bank", "build", "--cases", str(tmp_path / "hist" / "labels.csv"), "--out", str(bank),
                     "--source", "explanations", "--model", str(linear_model), "--samples", "60", "--quiet"]) == 0
    b = EvidenceBank.load(bank)
    assert b.source == "explanations" and b.meta["model"]["model"]["file"] == "linear.onnx"
    from blackbox_lime.adapters.onnx import OnnxAdapter

    with OnnxAdapter(linear_model) as model:
        first = load_image(tmp_path / "hist" / b.case_ids[0]).pixels
        w = Explainer(model, ExplainConfig(n_samples=60)).explain(first, target=1, rng=0).patch_weights.reshape(-1)
    np.testing.assert_allclose(b.maps[0], w / np.abs(w).max(), atol=1e-6)


def test_map_sigma_option(png: Path, linear_model: Path, tmp_path: Path) -> None:
    maps = {}
    for sigma in ("0", "1"):
        out = tmp_path / sigma
        assert cli.main(["explain", str(png), "--model", str(linear_model), "--out", str(out), "--map-sigma", sigma,
                         *FAST]) == 0
        assert json.loads((out / "case.json").read_text())["config"]["map_sigma"] == float(sigma)
        maps[sigma] = np.load(out / "case.saliency.npy")
    smoothed = cv2.GaussianBlur(maps["0"], (0, 0), 16.0, borderType=cv2.BORDER_REFLECT_101)
    assert np.allclose(maps["1"], smoothed, atol=1e-7)
    r = run_cli("explain", str(png), "--model", str(linear_model), "--out", str(tmp_path / "o"), "--map-sigma", "9", *FAST)
    assert r.returncode == 2 and "--map-sigma must be a float in the range [0, 8]. Got 9.0 instead." in r.stderr


def test_map_guide_option(png: Path, linear_model: Path, tmp_path: Path) -> None:
    maps = {}
    for guide in ("0", "0.75"):
        out = tmp_path / guide
        assert cli.main(["explain", str(png), "--model", str(linear_model), "--out", str(out), "--map-guide", guide,
                         *FAST]) == 0
        config = json.loads((out / "case.json").read_text())["config"]
        assert config["map_guide"] == float(guide) and config["map_guide_eps"] == 1e-3
        maps[guide] = np.load(out / "case.saliency.npy")
    assert not np.allclose(maps["0"], maps["0.75"], atol=1e-4)  # the guided map differs, its overall shape does not
    assert np.corrcoef(maps["0"].ravel(), maps["0.75"].ravel())[0, 1] > 0.9
    r = run_cli("explain", str(png), "--model", str(linear_model), "--out", str(tmp_path / "o"), "--map-guide", "5", *FAST)
    assert r.returncode == 2 and "--map-guide must be a float in the range [0, 4]. Got 5.0 instead." in r.stderr
