"""Robust fill: fill "auto" (blackbox_lime/fill_choice.py), the low-fidelity warning and site calibration."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from blackbox_lime import cli
from blackbox_lime.adapters.onnx import OnnxAdapter
from blackbox_lime import ExplainConfig, Explainer
from blackbox_lime.fill.choice import decide, heldout_r2
from graphs import linear_patch_model, oracle_mae, painter_mae, sine_model

PLANTED = [3 * 14 + 4, 3 * 14 + 5, 9 * 14 + 10, 10 * 14 + 2]  # patches holding the bright trigger


@pytest.fixture(scope="module")
def trigger_case(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, Path, Path]:
    """A dim image with a bright trigger in four planted patches; a model whose answer moves only with the
    content of those patches; and an "MAE" that paints the trigger into every patch it hides."""
    d = tmp_path_factory.mktemp("trigger")
    image = np.full((224, 224, 3), 0.3, np.float32)
    image += np.random.default_rng(0).normal(0, 0.02, image.shape).astype(np.float32)
    for j in PLANTED:
        r, c = divmod(j, 14)
        image[r * 16:(r + 1) * 16, c * 16:(c + 1) * 16] = 0.9
    a = np.zeros(196)
    a[PLANTED] = 0.25
    model = linear_patch_model(d / "trigger.onnx", a, 0.0)
    return np.clip(image, 0, 1), model, painter_mae(d / "painter.onnx", 0.9)


def test_auto_avoids_a_fill_that_paints_the_evidence_back(trigger_case) -> None:
    image, model_path, painter = trigger_case
    with OnnxAdapter(model_path) as model:
        # The painter as the MAE: hiding a planted patch repaints it, so the answer never moves; its
        # reconstruction of the image's own hidden pixels is far worse than a blur's, so auto leaves it.
        exp = Explainer(model, ExplainConfig(n_samples=300, pilot_samples=32), mae_path=painter).explain(image, target=1,
                                                                                                       rng=0)
        plain = Explainer(model, ExplainConfig(n_samples=300), mae_path=painter).explain(image, target=1, rng=0)
        forced = Explainer(model, ExplainConfig(fill="mae", n_samples=300), mae_path=painter).explain(image, target=1,
                                                                                                      rng=0)
    fill = exp.fill
    assert fill["mode"] == "auto" and fill["chosen"] in ("mean", "blur")
    psnr = fill["recon_psnr_db"]
    assert psnr["mae"] < psnr["blur"] - 5  # painting 0.9 into a 0.3 image
    assert fill["reason"].startswith(f"the MAE reconstructs this image's hidden pixels {psnr['blur'] - psnr['mae']:.2f} "
                                     "dB worse than a blur; ")
    assert set(fill["scores"]) == {"mean", "blur"} and fill["scores"][fill["chosen"]] > 0.8  # linear in the planted
    top4 = np.argsort(-exp.patch_weights.reshape(-1))[:4]
    assert sorted(top4.tolist()) == sorted(PLANTED)
    n = fill["pilot_samples_per_fill"]
    assert exp.queries == 300 and fill["queries_spent_on_choice"] == n  # the other classic fill's pilot
    assert exp.r2_heldout > 0.9 and exp.r2_evidence > 0.9 and not exp.warnings
    # The default pilots nothing: the MAE failed its check, so the first classic candidate, the mean, at no query.
    assert plain.fill["chosen"] == "mean" and plain.fill["scores"] == {} and plain.fill["queries_spent_on_choice"] == 0
    assert plain.fill["reason"].endswith("dB worse than a blur; the mean fill, the first classic candidate (no pilot)")
    assert plain.queries == 300 and sorted(np.argsort(-plain.patch_weights.reshape(-1))[:4].tolist()) == sorted(PLANTED)
    # Forced, the painter gives a flat answer and an empty-evidence map, and the report says so twice: the answer
    # hardly moved, and the "MAE" fails the reconstruction check that auto applies.
    assert forced.fill["mode"] == "fixed" and forced.fill["chosen"] == "mae"
    assert forced.fill["recon_psnr_db"] == {k: round(v, 2) for k, v in psnr.items()}
    assert any("hardly moved under masking" in w for w in forced.warnings)
    off = [w for w in forced.warnings if w.startswith("Fill off the image's domain: the MAE reconstructs this image's "
                                                      "hidden pixels ")]
    assert len(off) == 1 and off[0].endswith(
        "dB; the MAE is trusted within 2 dB), so its fills may add or keep evidence of their own. Try `fill` auto, a "
        "site calibration (blackbox-lime calibrate) or an MAE fitted on your images (blackbox-lime mae fit).")


def test_auto_keeps_the_mae_where_it_knows_the_images_and_then_costs_no_query(phantom_image, linear_model) -> None:
    with OnnxAdapter(linear_model) as model:
        auto = Explainer(model, ExplainConfig(n_samples=200)).explain(phantom_image, target=1, rng=3)
        mae = Explainer(model, ExplainConfig(fill="mae", n_samples=200)).explain(phantom_image, target=1, rng=3)
    assert auto.fill["chosen"] == "mae" and auto.fill["queries_spent_on_choice"] == 0 and auto.fill["scores"] == {}
    assert auto.fill["recon_psnr_db"]["mae"] > auto.fill["recon_psnr_db"]["blur"]  # a chest phantom: its own domain
    np.testing.assert_array_equal(auto.saliency, mae.saliency)  # then the map is the MAE map, bit for bit


def test_where_the_mae_passes_its_check_a_challenger_that_removes_the_evidence_replaces_it(trigger_case, tmp_path) -> None:
    """An "MAE" that returns the hidden pixels as they were passes any reconstruction check, yet hiding a planted
    patch then never moves the answer. Piloted against the zero fill (which removes the trigger), it loses, and
    the map finds the planted patches; without a challenger auto keeps it and the map is flat."""
    image, model_path, _ = trigger_case
    oracle = oracle_mae(tmp_path / "oracle.onnx")
    with OnnxAdapter(model_path) as model:
        exp = Explainer(model, ExplainConfig(n_samples=300, mae_challenger="zero"), mae_path=oracle).explain(
            image, target=1, rng=0)
        kept = Explainer(model, ExplainConfig(n_samples=300, mae_challenger=None), mae_path=oracle).explain(
            image, target=1, rng=0)
    fill = exp.fill
    assert fill["gate"] == "passed" and fill["chosen"] == "zero" and fill["recon_psnr_db"]["mae"] > 100
    assert fill["scores"]["mae"] is None and fill["scores"]["zero"] > 0.3 and fill["response_sd"]["mae"] == 0.0
    assert fill["rule"] == {"recon_margin_db": 2.0, "preferred": "mae", "margin": 0.5}
    assert fill["reason"].endswith("dB); piloted against zero: the answer did not move with mae; zero scored highest")
    n = ExplainConfig().challenger_per_fill
    assert fill["pilot_samples_per_fill"] == n and fill["queries_spent_on_choice"] == n and exp.queries == 300
    assert sorted(np.argsort(-exp.patch_weights.reshape(-1))[:4].tolist()) == sorted(PLANTED)
    assert kept.fill["chosen"] == "mae" and kept.fill["scores"] == {} and kept.queries == 300
    flat = [w for w in kept.warnings if "hardly moved under masking" in w]
    assert len(flat) == 1 and flat[0].endswith("or try more `n_samples`. The MAE's fills may put back what they hide: "
                                               "try `mae_challenger` zero or another `fill`.")
    assert not any("put back" in w for w in exp.warnings)


def test_the_mae_keeps_its_place_unless_the_challenger_wins_by_the_margin() -> None:
    from blackbox_lime.fill.choice import summarise_choices

    def rec(chosen: str, gate: str, scores: dict) -> dict:
        return {"chosen": chosen, "gate": gate, "scores": scores, "recon_psnr_db": {"mae": 20.0, "blur": 19.0}}

    close = [rec("mae", "passed", {"mae": 0.30, "zero": 0.45}), rec("zero", "passed", {"mae": 0.2, "zero": 0.5}),
             rec("mae", "passed", {"mae": 0.40, "zero": 0.35})]
    chosen, ev = summarise_choices(close, ("mae", "mean", "blur"), 0.0, challenger_margin=0.2)
    assert chosen == "mae" and ev["median_scores"] == {"mae": 0.3, "zero": 0.45}  # 0.45 is not 0.2 above 0.30
    assert ev["reason"] == ("the MAE passed the reconstruction check on 3 of 3 images; piloted against zero: mae is "
                            "within 0.2 of the best held-out R^2")
    chosen, ev = summarise_choices(close, ("mae", "mean", "blur"), 0.0, challenger_margin=0.1)
    assert chosen == "zero" and ev["per_image_choices"] == {"mae": 2, "zero": 1}
    # images whose MAE failed the check do not count towards the MAE (a chosen "zero" there is not the challenger's)
    flat = [rec("zero", "passed", {"mae": None, "zero": 0.3})] * 2 + close[:1]  # the MAE left the answer flat
    chosen, ev = summarise_choices(flat, ("mae", "mean", "blur"), 0.0, challenger_margin=0.5)
    assert chosen == "zero" and ev["median_scores"] == {"zero": 0.3}
    failed = [rec("mean", "failed", {"mean": 0.3, "blur": 0.1})] * 2 + close[:1]
    assert summarise_choices(failed, ("mae", "mean", "blur"), 0.0, 0.5)[0] == "mean"


def test_challenger_settings_are_checked() -> None:
    with pytest.raises(ValueError, match=r"The 'mae_challenger' parameter must be None or one of mean, blur, zero, telea\. "
                                         r"Got 'mae' instead\."):
        ExplainConfig(mae_challenger="mae")
    with pytest.raises(ValueError, match=r"The 'n_samples' parameter must be at least 33 with fill 'auto' and an MAE "
                                         r"challenger .* or mae_challenger=None\. Got 30 instead\."):
        ExplainConfig(n_samples=30, mae_challenger="zero", pilot_samples=0)
    assert ExplainConfig(n_samples=30, mae_challenger=None, pilot_samples=0).challenger_per_fill == 7
    assert ExplainConfig(n_samples=1000).challenger_per_fill == 24 and ExplainConfig(n_samples=81).challenger_per_fill == 20


def test_auto_is_deterministic_for_a_seed_and_stays_within_the_budget(trigger_case) -> None:
    image, model_path, painter = trigger_case
    with OnnxAdapter(model_path) as model:
        ex = Explainer(model, ExplainConfig(n_samples=200), mae_path=painter)
        a, b, c = (ex.explain(image, target=1, rng=s, keep_samples=True) for s in (7, 7, 8))
    np.testing.assert_array_equal(a.saliency, b.saliency)
    assert a.fill["scores"] == b.fill["scores"] and a.queries == b.queries == c.queries == 200
    # Both classic candidates' pilots were queried: 200 images in all, of which the chosen fill's are kept.
    n_pilot = a.fill["pilot_samples_per_fill"]
    assert n_pilot == ExplainConfig().pilot_per_fill and len(a.samples["visible"]) == 200 - n_pilot
    assert not np.array_equal(a.saliency, c.saliency)


def test_a_small_budget_shrinks_the_pilot() -> None:
    n = 32
    assert ExplainConfig(n_samples=1000, pilot_samples=n).pilot_per_fill == n
    assert ExplainConfig(n_samples=4 * n - 3, pilot_samples=n).pilot_per_fill == n - 1  # the chosen keeps >= 2 pilots
    assert ExplainConfig(n_samples=33, pilot_samples=n).pilot_per_fill == 8
    assert ExplainConfig().pilot_per_fill == 0  # the default: no pilot
    assert ExplainConfig(n_samples=20, pilot_samples=0).pilot_per_fill == 0  # no pilot: no minimum


def test_heldout_r2_tells_a_linear_answer_from_noise() -> None:
    rng = np.random.default_rng(3)
    X = rng.random((200, 20)) < 0.5
    w = np.zeros(20)
    w[[2, 7]] = [0.3, -0.2]
    signal = X @ w
    options = dict(lambda1=0.0, lambda2=1e-4)
    kernel = np.ones(200)
    clean = heldout_r2(X, signal + rng.normal(0, 0.05, 200), kernel, None, options)
    # var(signal) = 0.25 (0.09 + 0.04) = 0.0325; noise 0.0025: the best possible R^2 is 0.929
    assert 0.85 < clean < 0.95
    assert heldout_r2(X, rng.normal(0, 0.2, 200), kernel, None, options) < 0.05
    with pytest.raises(ValueError, match="heldout_r2 needs at least 8 samples for 4 folds. Got 6 instead."):
        heldout_r2(X[:6], signal[:6], kernel[:6], None, options)


@pytest.mark.parametrize(("scores", "chosen", "reason"), [
    ({"mae": 0.30, "mean": 0.33, "blur": 0.1}, "mae", "mae is within 0.05 of the best held-out R^2"),
    ({"mae": 0.10, "mean": 0.60, "blur": 0.4}, "mean", "mean predicts held-out answers better (0.600 vs mae 0.100)"),
    ({"mae": None, "mean": 0.05, "blur": 0.2}, "blur", "the answer did not move with mae; blur scored highest"),
    ({"mae": None, "mean": None, "blur": None}, "mae", "no candidate moved the answer; kept the preferred fill"),
])
def test_the_decision_rule(scores: dict, chosen: str, reason: str) -> None:
    assert decide(scores, "mae", 0.05) == (chosen, reason)


def test_low_fidelity_warning_names_r2_and_what_to_try(tmp_path: Path) -> None:
    """A model whose answer rises wherever a patch is hidden: the signed fit explains it (a region moves the answer),
    the evidence map cannot (no patch's hiding lowers it): low fidelity, the map is unreliable."""
    rng = np.random.default_rng(5)
    image = rng.random((224, 224)).astype(np.float32)
    with OnnxAdapter(linear_patch_model(tmp_path / "neg.onnx", np.full(196, -0.004), 0.9)) as model:
        exp = Explainer(model, ExplainConfig(fill="zero", n_samples=300)).explain(image, target=1, rng=0)
    assert exp.r2_heldout > 0.5 and exp.r2_evidence < 0.02
    low = [w for w in exp.warnings if w.startswith("Low fidelity")]
    assert low == [f"Low fidelity: hiding patches explains the answer's drops with held-out R^2 {exp.r2_evidence:.3f} "
                   "(below 0.02) with the zero fill, so the map's evidence is weak or the fill adds evidence of its own. "
                   "Try another `fill` (auto chooses among mae, mean and blur), an MAE fitted on your images "
                   "(blackbox-lime mae fit) or more `n_samples` (used 300)."]


def test_an_answer_that_moves_as_no_patch_wise_effect_is_no_focal_evidence(tmp_path: Path, phantom_image) -> None:
    """A sine of the patches: the answer moves a lot under masking, but as no additive function of which patches
    are hidden (held-out R^2 below 0.05): the warning says no region carries it, not that the map is unreliable."""
    rng = np.random.default_rng(5)
    with OnnxAdapter(sine_model(tmp_path / "sine.onnx", rng.normal(0, 1, 196))) as model:
        exp = Explainer(model, ExplainConfig(n_samples=300)).explain(phantom_image, target=1, rng=0)
    assert exp.response_sd > 0.1 and exp.r2_heldout < 0.05
    assert not [w for w in exp.warnings if w.startswith("Low fidelity")]
    focal = [w for w in exp.warnings if w.startswith("No focal evidence")]
    assert focal == [f"No focal evidence: no patch-wise effect explains how P(abnormal) moved under masking (held-out "
                     f"R^2 {exp.r2_heldout:.3f}, below 0.05), so this answer rests on no one region of the image as the "
                     "mae fill hides it: a finding about the model (typical of a confident 'normal'), not a map to read "
                     "region by region. On an answer that should rest on a lesion, the fill may be putting back what it "
                     "hides: try another `fill`."]


def test_a_low_fidelity_mae_map_under_auto_suggests_the_challenger() -> None:
    from blackbox_lime.map_warnings import low_fidelity_warnings as _low_fidelity_warnings

    (text,) = _low_fidelity_warnings(0.0, "mae", ExplainConfig(n_samples=300), r2_heldout=0.4)
    assert text.endswith(
        "with the mae fill, so the map's evidence is weak or the fill adds evidence of its own. Try a site calibration "
        "(blackbox-lime calibrate), a challenger for the MAE (`mae_challenger` zero), an MAE fitted on your images "
        "(blackbox-lime mae fit) or more `n_samples` (used 300).")


def _write_pngs(folder: Path, images: list[np.ndarray]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, im in enumerate(images):
        p = folder / f"case{i}.png"
        cv2.imwrite(str(p), np.round(im[..., 0] * 255).astype(np.uint8))
        paths.append(p)
    return paths


def test_calibrate_writes_the_choice_and_explain_uses_it(trigger_case, tmp_path: Path, capsys) -> None:
    import tomllib

    image, model_path, painter = trigger_case
    _write_pngs(tmp_path / "site" / "sub", [image, np.flipud(image).copy(), image])
    fill_toml = tmp_path / "fill.toml"
    assert cli.main(["calibrate", str(tmp_path / "site"), "--model", str(model_path), "--mae", str(painter),
                     "--out", str(fill_toml), "--quiet"]) == 0
    cal = tomllib.loads(fill_toml.read_text())
    assert cal["fill"]["chosen"] in ("mean", "blur") and cal["fill"]["candidates"] == ["mae", "mean", "blur"]
    assert cal["fill"]["median_recon_psnr_db"]["mae"] < cal["fill"]["median_recon_psnr_db"]["blur"] - 5  # the painter
    assert set(cal["fill"]["median_scores"]) == {"mean", "blur"} and cal["fill"]["per_image_choices"]
    assert cal["evidence"]["images"] == 3 and cal["evidence"]["pilot_samples_per_fill"] == 64
    assert cal["evidence"]["queries"] == 3 * (1 + 2 * 64) and len(cal["evidence"]["images_sha256"]) == 64
    assert cal["evidence"]["model"]["sha256"] and cal["evidence"]["mae"]["file"] == "painter.onnx"
    assert capsys.readouterr().err.startswith(f"{fill_toml}: fill {cal['fill']['chosen']} for 3 images (median "
                                              "reconstruction PSNR: mae ")
    out = tmp_path / "out"
    png = next((tmp_path / "site" / "sub").glob("case0.png"))
    assert cli.main(["explain", str(png), "--model", str(model_path), "--mae", str(painter), "--calibration",
                     str(fill_toml), "--out", str(out), "--samples", "100", "--quiet"]) == 0
    report = json.loads((out / "case0.json").read_text())
    assert report["fill"] == {"mode": "fixed", "chosen": cal["fill"]["chosen"]} and report["queries"] == 100
    assert report["models"]["calibration"]["file"] == "fill.toml"


def test_the_cli_pilots_the_mae_against_a_challenger_in_explain_and_calibrate(trigger_case, tmp_path: Path,
                                                                               capsys) -> None:
    image, model_path, _ = trigger_case
    oracle = oracle_mae(tmp_path / "oracle.onnx")
    _write_pngs(tmp_path / "site", [image, np.flipud(image).copy()])
    png = next((tmp_path / "site").glob("case0.png"))
    assert cli.main(["explain", str(png), "--model", str(model_path), "--mae", str(oracle), "--mae-challenger", "zero",
                     "--out", str(tmp_path / "out"), "--samples", "200", "--quiet"]) == 0
    report = json.loads((tmp_path / "out" / "case0.json").read_text())
    assert report["fill"]["chosen"] == "zero" and report["fill"]["gate"] == "passed" and report["queries"] == 200
    fill_toml = tmp_path / "fill.toml"
    assert cli.main(["calibrate", str(tmp_path / "site"), "--model", str(model_path), "--mae", str(oracle),
                     "--mae-challenger", "zero", "--out", str(fill_toml), "--quiet"]) == 0
    import tomllib

    cal = tomllib.loads(fill_toml.read_text())
    assert cal["fill"]["chosen"] == "zero" and cal["fill"]["per_image_choices"] == {"zero": 2}
    assert cal["fill"]["reason"].startswith("the MAE passed the reconstruction check on 2 of 2 images; piloted "
                                            "against zero: ")
    assert cal["evidence"]["queries"] == 2 * (1 + 2 * 64)  # the larger calibration pilot, MAE and challenger
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        cli.main(["explain", str(png), "--model", str(model_path), "--mae-challenger", "mae"])
    assert exit_.value.code == 2 and "argument --mae-challenger: invalid choice: 'mae'" in capsys.readouterr().err


def test_calibration_errors(trigger_case, tmp_path: Path, capsys, linear_model: Path) -> None:
    image, model_path, painter = trigger_case
    _write_pngs(tmp_path / "site", [image])
    fill_toml = tmp_path / "fill.toml"
    assert cli.main(["calibrate", str(tmp_path / "site"), "--model", str(model_path), "--mae", str(painter),
                     "--out", str(fill_toml), "--quiet"]) == 0
    png = tmp_path / "site" / "case0.png"
    capsys.readouterr()

    def err(*args: str) -> str:
        assert cli.main(list(args)) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1
        return lines[0]

    assert err("explain", str(png), "--model", str(linear_model), "--calibration", str(fill_toml), "--out",
               str(tmp_path / "o")) == (
        "blackbox-lime: error: --calibration fill.toml was made with another model (sha256 "
        f"{json.dumps(_sha(model_path))[:-1]}', this one {json.dumps(_sha(linear_model))[:-1]}'); calibrate again "
        "for this model, or choose --fill yourself.").replace('"', "'")
    assert not (tmp_path / "o").exists()
    assert err("explain", str(png), "--model", str(model_path), "--calibration", str(fill_toml), "--fill", "mae",
               "--out", str(tmp_path / "o")) == \
        "blackbox-lime: error: Give either --fill or --calibration (which fixes the fill), not both."
    assert err("explain", str(png), "--model", str(model_path), "--calibration", str(tmp_path / "none.toml"),
               "--out", str(tmp_path / "o")).startswith(
        f"blackbox-lime: error: --calibration: {tmp_path / 'none.toml'} not found. Write one with: blackbox-lime "
        "calibrate IMAGES --model MODEL --out none.toml")
    (tmp_path / "bad.toml").write_text("[fill]\nchosen = 'paint'\n")
    assert err("explain", str(png), "--model", str(model_path), "--calibration", str(tmp_path / "bad.toml"),
               "--out", str(tmp_path / "o")) == (
        "blackbox-lime: error: --calibration: bad.toml has no valid [fill] chosen (one of mae, mean, blur, zero, telea); "
        "got 'paint'. Write it again with blackbox-lime calibrate.")
    (tmp_path / "empty").mkdir()
    assert err("calibrate", str(tmp_path / "empty"), "--model", str(model_path), "--out", str(tmp_path / "c.toml")) \
        == (f"blackbox-lime: error: No images found in {tmp_path / 'empty'} (looked for .png, .jpg, .jpeg, .tif, "
            ".tiff, .bmp, .gif, .npy, .dcm, .dicom).")
    (tmp_path / "site" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    msg = err("calibrate", str(tmp_path / "site"), "--model", str(model_path), "--out", str(tmp_path / "c.toml"))
    assert msg.startswith("blackbox-lime: error: 1 of 2 images could not be read: broken.png (")
    assert msg.endswith("Remove or fix them; nothing was written.")
    assert err("calibrate", str(tmp_path / "nowhere"), "--model", str(model_path), "--out",
               str(tmp_path / "c.toml")) == f"blackbox-lime: error: {tmp_path / 'nowhere'}: no such file or folder."
    assert not (tmp_path / "c.toml").exists()


def _sha(path: Path) -> str:
    from blackbox_lime.outputs import file_sha256

    return file_sha256(path)


def test_the_library_names_fields_and_the_command_line_its_options() -> None:
    """One table maps the fields the library's texts name to the options the command line offers; the codes stay."""
    from blackbox_lime.config import cli_text
    from blackbox_lime.map_warnings import MapWarning, cli_warnings, low_fidelity_warnings

    assert cli_text("a higher `max_samples` (`n_samples` auto), another `fill`, `mae_challenger` zero, a smaller "
                    "`patch_size`; `lambda1` or `lambda1_cap`; `not_a_field` stays") == (
        "a higher --max-samples (--samples auto), another --fill, --mae-challenger zero, a smaller --patch-size; "
        "--lambda1 or --lambda1-cap; `not_a_field` stays")
    (text,) = low_fidelity_warnings(0.0, "mae", ExplainConfig(n_samples="auto", max_samples=200), r2_heldout=0.4)
    (said,) = cli_warnings([text])
    assert isinstance(said, MapWarning) and said.code == "low_fidelity"
    assert said.endswith("an MAE fitted on your images (blackbox-lime mae fit) or a higher --max-samples (--samples "
                         "auto, at most 200).") and "`" not in said


def test_the_cli_pilots_the_classic_fills_only_when_asked(trigger_case, tmp_path: Path, capsys) -> None:
    image, model_path, painter = trigger_case
    png = _write_pngs(tmp_path / "site", [image])[0]
    for extra, out in (([], "plain"), (["--pilot-samples", "32"], "piloted")):
        assert cli.main(["explain", str(png), "--model", str(model_path), "--mae", str(painter), "--samples", "300",
                         "--out", str(tmp_path / out), "--quiet", *extra]) == 0
    plain = json.loads((tmp_path / "plain" / "case0.json").read_text())["fill"]
    piloted = json.loads((tmp_path / "piloted" / "case0.json").read_text())["fill"]
    assert plain["chosen"] == "mean" and plain["scores"] == {} and plain["queries_spent_on_choice"] == 0
    assert set(piloted["scores"]) == {"mean", "blur"} and piloted["pilot_samples_per_fill"] == 32
    assert piloted["queries_spent_on_choice"] == 32  # the fill not chosen
    capsys.readouterr()
    assert cli.main(["explain", str(png), "--model", str(model_path), "--pilot-samples", "4", "--dry-run"]) == 2
    assert "--pilot-samples must be 0 or an integer >= 8. Got 4 instead." in capsys.readouterr().err
