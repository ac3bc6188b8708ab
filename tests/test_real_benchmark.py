"""The real-image benchmark's plumbing on a small folder made here in the figshare layout (the real data is not
bundled): splits by id blocks, boxes to masks, the summary's ratio and its paired CI."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from blackbox_lime.evaluation.bench_real import _ratio_ci, summarize
from blackbox_lime.evaluation.real_data import figshare_brain, split_of


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
