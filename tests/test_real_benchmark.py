"""The real-image benchmark's plumbing on a small folder made here in the figshare layout (the real data is not
bundled): splits by id blocks, boxes to masks, the summary's ratio and its paired CI."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from blackbox_lime.evaluation.bench_real import _public_args, _ratio_ci, markdown, region_drop, summarize
from blackbox_lime.evaluation.real_data import crop_label, figshare_brain, kvasir_polyp, kvasir_split_of, split_of


def _folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for label, ids in ((0, (5, 350, 410)), (1, (120, 399)), (2, (260, 499, 1400))):
        (root / str(label)).mkdir(parents=True)
        for i in ids:
            cv2.imwrite(str(root / str(label) / f"{i}.jpg"), rng.integers(0, 255, (512, 512), dtype=np.uint8))
            (root / str(label) / f"{i}.txt").write_text(f"{label} 0.25 0.5 0.5 0.25\n")
    return root


def test_splits_follow_blocks_of_100_ids():
    assert [split_of(i) for i in (0, 99, 250, 300, 399, 400, 499, 500, 850, 1400)] == \
        ["train", "train", "train", "val", "val", "test", "test", "train", "val", "test"]


def test_figshare_cases_carry_their_class_and_the_box_as_a_mask(tmp_path):
    root = _folder(tmp_path / "categorized")
    test = figshare_brain(root, "test", size=64)
    assert [(c.id, c.label) for c in test] == [("figshare-410", 0), ("figshare-499", 2), ("figshare-1400", 2)]
    mask = test[0].mask
    assert test[0].image.shape == (64, 64) and mask.dtype == bool
    ys, xs = np.nonzero(mask)  # centre (0.25, 0.5), size (0.5, 0.25) of 64 px
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (0, 32, 24, 40)
    assert [c.id for c in figshare_brain(root, "val", size=64)] == ["figshare-350", "figshare-399"]
    with pytest.raises(FileNotFoundError, match="does not hold the figshare brain-tumour folders 0, 1 and 2"):
        figshare_brain(tmp_path, "test")


def test_the_summary_gives_each_method_s_mean_and_the_paired_ratio_to_lime():
    recs = [{"box_fraction": 0.1, "methods": {"default": {"auprc": a, "queries": 500, "fill": f},
                                              "lime": {"auprc": b, "queries": 1000}}}
            for a, b, f in ((0.6, 0.3, "mae"), (0.4, 0.2, "blur"), (0.5, 0.25, "mae"))]
    s = summarize({"records": recs, "methods": ["default", "lime"]})
    assert s["default"]["auprc"][0] == pytest.approx(0.5) and s["lime"]["queries"] == 1000
    ratio, lo, hi = s["default/lime"]
    assert ratio == pytest.approx(2.0) and lo == pytest.approx(2.0) and hi == pytest.approx(2.0)  # every image 2x
    assert s["auto_fill"] == {"blur": 1, "mae": 2}
    r, lo, hi = _ratio_ci([1.0, 0.0, 1.0, 0.0], [0.5, 0.5, 0.5, 0.5])
    assert r == pytest.approx(1.0) and lo < 1.0 < hi


class _Quadrant:
    """A model that reads the top-left quadrant only: P(class 1) is the quadrant's mean grey."""

    def predict(self, images: np.ndarray) -> np.ndarray:
        p = images[:, :16, :16].mean(axis=(1, 2, 3))
        return np.stack([1 - p, p], axis=1)


def test_the_drop_at_the_masks_area_credits_the_map_that_finds_what_the_model_reads():
    image = np.full((32, 32, 3), 0.2, np.float32)
    image[:16, :16] = 0.9  # what the model reads
    mean = image.mean()  # 0.375: what hidden pixels become
    reads = np.zeros((32, 32))
    reads[:16, :16] = 1.0
    elsewhere = np.zeros((32, 32))
    elsewhere[16:, 16:] = 1.0
    assert region_drop(image, reads, 256, _Quadrant(), 1) == pytest.approx(0.9 - mean, abs=1e-5)
    assert region_drop(image, elsewhere, 256, _Quadrant(), 1) == pytest.approx(0.0, abs=1e-5)
    assert region_drop(image, reads, 64, _Quadrant(), 1) == pytest.approx((0.9 - mean) / 4, abs=1e-5)  # a quarter
    recs = [{"id": f"c{i}", "label": "polyp", "box_fraction": 0.25, "box_drop": 0.3,
             "methods": {"default": {"auprc": 0.5, "queries": 500, "region_drop": d},
                         "lime": {"auprc": 0.4, "queries": 1000, "region_drop": 0.1}}}
            for i, d in enumerate((0.5, 0.2, 0.3, 0.6))]
    result = {"family": "kvasir_polyp", "split": "val", "per_class": 4, "images_in_split": 9, "model_accuracy": 0.8,
              "methods": ["default", "lime"], "records": recs}
    s = summarize(result)
    assert s["default"]["region_drop"][0] == pytest.approx(0.4) and s["default"]["beats_mask"] == 0.75
    assert s["lime"]["beats_mask"] == 0.0
    md = markdown(result, s, "cmd")
    assert "| default | 0.500 [0.500, 0.500] | 500 | 0.400 [" in md and "| 0.75 |" in md
    assert "0.300 [0.300, 0.300] (the expert mask itself) | – |" in md
    assert s["default/lime drop"][0] == pytest.approx(4.0) and s["default/the mask drop"][0] == pytest.approx(4 / 3)
    assert "- drop at the mask's area, default / lime: 4.000 [" in md


def _kvasir(root: Path) -> Path:
    """Three frames: ``frame1`` (test, by the id hash) with a small polyp (a disc of radius 20 at y 80, x 90),
    ``frame11`` (test) with one (radius 70) that no view holds half of, and no polyp-free view, ``frame0`` (train)."""
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:256, :256]
    for name, (cy, cx, r) in (("frame1", (80, 90, 20)), ("frame11", (128, 128, 70)), ("frame0", (128, 128, 10))):
        cv2.imwrite(str(root / "images" / f"{name}.jpg"), rng.integers(0, 255, (256, 256, 3), dtype=np.uint8))
        cv2.imwrite(str(root / "masks" / f"{name}.jpg"), (((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) * 255).astype(np.uint8))
    return root


def test_kvasir_views_centre_the_polyp_and_find_a_polyp_free_field():
    assert [kvasir_split_of(f"frame{i}") for i in (0, 1, 10, 11)] == ["train", "test", "val", "test"]
    mask = np.zeros((256, 256), bool)
    mask[60:101, 70:111] = True
    assert crop_label(mask, 16, 26) == 1        # the whole polyp inside
    assert crop_label(mask, 0, 128) == 0        # 18 px right of it: beyond the 8-px margin
    assert crop_label(mask, 0, 112) is None     # 2 px from it: ambiguous, never used
    dark = np.zeros((256, 256), bool)
    dark[:20, 220:] = True                      # a corner of the endoscope's black border: 4.9 % of the view
    assert crop_label(mask, 0, 128, dark=dark) is None
    assert crop_label(mask, 16, 26, dark=dark) == 1


def test_kvasir_polyp_reads_colour_frames_as_views(tmp_path):
    root = _kvasir(tmp_path / "Kvasir-SEG")
    cases = kvasir_polyp(root, "test", size=224)
    assert [(c.id, c.label) for c in cases] == [("kvasir-frame1", 1), ("kvasir-frame1-free", 0), ("kvasir-frame11", 1)]
    polyp, free, large = cases
    assert 0.25 <= large.mask.mean() <= 0.5  # a polyp filling a quarter to a half of the view: part of it in view
    assert polyp.image.shape == (224, 224, 3) and polyp.image.dtype == np.uint8
    disc = np.pi * 20 ** 2 * 1.75 ** 2  # the disc's area in the view's pixels (128 px of the frame -> 224)
    assert 0.5 * disc - 60 <= polyp.mask.sum() <= disc + 60  # at least half of the polyp is in view
    again = kvasir_polyp(root, "test", size=224)[0]  # the place is drawn from the id: the same view every time
    assert np.array_equal(again.image, polyp.image) and np.array_equal(again.mask, polyp.mask)
    assert not free.mask.any()
    with pytest.raises(FileNotFoundError, match="does not hold the Kvasir-SEG folders images and masks"):
        kvasir_polyp(tmp_path, "test")


def test_bench_real_asks_for_one_family(capsys):
    from blackbox_lime.evaluation.bench_real import main

    with pytest.raises(SystemExit) as e:
        main(["--split", "val", "--out", "x"])
    assert e.value.code == 2
    assert "give one family's data: --figshare DIR or --kvasir DIR" in capsys.readouterr().err


def test_the_recorded_command_holds_no_path_of_this_machine():
    args = ["--kvasir", "/data/site/Kvasir-SEG", "--split", "test", "--mae", "/home/me/kvasir_mae.onnx",
            "--out", "/tmp/run"]
    assert _public_args(args) == ["--kvasir", "DATA", "--split", "test", "--mae", "kvasir_mae.onnx", "--out", "OUT"]
    assert _public_args(["--figshare", "rel/data", "--out", "docs/x"]) == ["--figshare", "DATA", "--out", "docs/x"]


def _run(methods: dict[str, float], ids=("a", "b"), **settings) -> dict:
    base = {"family": "kvasir_polyp", "split": "test", "per_class": 2, "seed": 0, "mae": "bundled"}
    return {**base, **settings, "methods": list(methods),
            "records": [{"id": i, "box_drop": 0.1, "methods": {m: {"auprc": v} for m, v in methods.items()}}
                        for i in ids]}


def test_update_replaces_the_methods_run_again_and_keeps_the_others():
    from blackbox_lime.evaluation.bench_real import merge

    kept = _run({"default": 0.3, "lime": 0.2, "occlusion": 0.25})
    merged = merge(kept, _run({"default": 0.5, "rise": 0.1}))
    assert merged["methods"] == ["default", "lime", "occlusion", "rise"]
    assert [r["methods"] for r in merged["records"]] == [
        {"default": {"auprc": 0.5}, "lime": {"auprc": 0.2}, "occlusion": {"auprc": 0.25}, "rise": {"auprc": 0.1}}] * 2
    assert kept["records"][0]["methods"]["default"] == {"auprc": 0.3}  # the earlier run is not changed


def test_update_refuses_other_settings_or_other_cases(tmp_path, capsys):
    from blackbox_lime.evaluation.bench_real import main, merge

    with pytest.raises(ValueError, match=r"^--update: the earlier run has seed=0, this one 1; run with the earlier "
                                         r"run's settings$"):
        merge(_run({"default": 0.3}), _run({"default": 0.5}, seed=1))
    with pytest.raises(ValueError, match=r"^--update: the cases differ from the earlier run's \(2 against 2, first "
                                         r"at a\); the model or the data changed$"):
        merge(_run({"default": 0.3}), _run({"default": 0.5}, ids=("c", "b")))
    (tmp_path / "results.json").write_text(__import__("json").dumps(_run({"default": 0.3})))
    with pytest.raises(SystemExit) as e:  # checked before any query
        main(["--kvasir", str(tmp_path), "--split", "val", "--per-class", "2", "--update", str(tmp_path),
              "--out", str(tmp_path)])
    assert e.value.code == 2
    assert "--update: the earlier run has split='test', this one 'val'" in capsys.readouterr().err


def test_fill_drops_tell_a_fill_that_removes_the_finding_from_one_that_paints_it_back():
    from blackbox_lime.evaluation.bench_real import fill_drops, fill_drops_table
    from blackbox_lime.fill.fillers import ConstantFiller, Filler

    class Repaint(Filler):  # puts the finding back: its content is the image itself
        name = "repaint"

        def fill(self, canvas: np.ndarray, hidden_px: np.ndarray) -> np.ndarray:
            return np.broadcast_to(canvas, hidden_px.shape + canvas.shape[2:]).copy()

    image = np.full((32, 32, 3), 0.2, np.float32)
    image[:16, :16] = 0.9
    hide = np.zeros((32, 32), bool)
    hide[:16, :16] = True
    drops = fill_drops(image, hide, _Quadrant(), 1, {"mean": ConstantFiller("mean"), "zero": ConstantFiller("zero"),
                                                     "repaint": Repaint()})
    assert drops == pytest.approx({"mean": 0.9 - image.mean(), "zero": 0.9, "repaint": 0.0}, abs=1e-5)
    recs = [{"id": "a", "fill_drops": {"mean": 0.5, "repaint": 0.1}}, {"id": "b", "fill_drops": {"mean": 0.3,
                                                                                                  "repaint": 0.0}},
            {"id": "c", "fill_drops": {"mean": 0.05, "repaint": 0.05}}]  # c: the model does not read its finding
    table = fill_drops_table({"family": "kvasir_polyp", "split": "val", "records": recs}, "cmd")
    assert "| mean | 0.283 [" in table and table.rstrip().endswith("| 0.050 | 0.12 |")  # 0.05 / 0.4 on a and b
    assert '"Reads": the 2 images whose mean-fill drop is >= 0.1.' in table


def test_fill_rises_catch_a_fill_whose_content_reads_as_the_finding(capsys):
    from blackbox_lime.evaluation.bench_real import fill_rises, fill_rises_table, half_masks, main
    from blackbox_lime.fill.fillers import ConstantFiller

    image = np.full((32, 32, 3), 0.2, np.float32)  # no finding: the quadrant the model reads is dark
    masks = half_masks((32, 32), 16, 8, np.random.default_rng(0))
    assert masks.shape == (8, 32, 32) and set(np.unique(masks.reshape(8, 2, 16, 2, 16).mean(axis=(2, 4)))) <= {0, 1}
    hides_quadrant = masks[:, 0, 0].mean()  # the share of masks that hide the read quadrant
    white = ConstantFiller("zero")
    white.fill = lambda canvas, hidden: np.ones((len(hidden),) + canvas.shape, np.float32)  # type: ignore[method-assign]
    rises = fill_rises(image, masks, _Quadrant(), 1, {"mean": ConstantFiller("mean"), "white": white})
    # the mean of a uniform image is the image: no change; white paints what the model reads as the finding
    assert rises == pytest.approx({"mean": 0.0, "white": hides_quadrant * (1.0 - 0.2)}, abs=1e-5)
    recs = [{"id": "a", "fill_rises": {"mean": 0.0, "white": 0.4}}, {"id": "b", "fill_rises": {"mean": -0.1,
                                                                                               "white": 0.05}}]
    table = fill_rises_table({"family": "kvasir_polyp", "split": "val", "records": recs, "free_class": "no polyp",
                              "finding": "polyp", "masks": 8}, "cmd")
    assert table.rstrip().endswith("| white | +0.225 [+0.050, +0.400] | 0.50 |")
    with pytest.raises(SystemExit) as e:
        main(["--figshare", "x", "--fill-rises", "--out", "y"])
    assert e.value.code == 2
    assert ("--fill-rises needs a class without the finding; figshare_brain's classes (pituitary, meningioma, glioma) "
            "all have one") in capsys.readouterr().err


def test_cfg_variants_name_the_fields_they_change() -> None:
    from blackbox_lime.config import ExplainConfig
    from blackbox_lime.evaluation.bench_real import variant

    cfg = variant("cfg:lambda1=0.02+mask_ratios=0.1/0.25/0.5+nested_samples=1+map_guide=0.75")
    assert (cfg.lambda1, cfg.mask_ratios, cfg.nested_samples, cfg.map_guide) == (0.02, (0.1, 0.25, 0.5), 1, 0.75)
    assert variant("cfg:pilot_samples=0") == ExplainConfig()  # today's default
    with pytest.raises(AttributeError, match="no_such_field"):
        variant("cfg:no_such_field=1")
