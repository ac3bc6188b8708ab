from __future__ import annotations

import csv
import hashlib

import cv2
import numpy as np
import pytest

from blackbox_lime.models import bundled_example
from blackbox_lime.evaluation.phantoms import ALL_MODALITIES, SPLITS, make_phantom, write_phantoms


@pytest.mark.parametrize("modality", ALL_MODALITIES)
def test_same_key_gives_identical_phantom(modality: str) -> None:
    a, b = make_phantom(modality, "val", 7), make_phantom(modality, "val", 7)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask) and a.label == b.label


@pytest.mark.parametrize("modality", ALL_MODALITIES)
def test_image_format_and_mask_label_consistency(modality: str) -> None:
    labels = []
    for i in range(12):
        ph = make_phantom(modality, "train", i)
        assert ph.image.shape == (224, 224, 3) and ph.image.dtype == np.float32
        assert 0.0 <= ph.image.min() and ph.image.max() <= 1.0
        if modality != "fundus":  # the colour family
            assert np.array_equal(ph.image[..., 0], ph.image[..., 2])  # grayscale replicated
        assert ph.mask.shape == (224, 224) and ph.mask.dtype == bool
        assert ph.label == int(ph.mask.any())  # abnormal <=> non-empty mask
        assert (ph.label == 0) == (not ph.lesions)
        labels.append(ph.label)
    assert 0 < sum(labels) < len(labels)  # both classes occur


def test_splits_never_share_a_case() -> None:
    seen: dict[str, tuple[str, int]] = {}
    for split in SPLITS:
        for i in range(25):
            digest = hashlib.sha256(make_phantom("breast_us", split, i).image.tobytes()).hexdigest()
            assert digest not in seen, f"{split}/{i} equals {seen[digest]}"
            seen[digest] = (split, i)


@pytest.mark.parametrize("modality", ALL_MODALITIES)
def test_brightest_or_darkest_pixel_does_not_find_the_lesion(modality: str) -> None:
    """Lesion contrast stays low: the image's extreme pixel is a poor abnormality detector."""
    from scipy.stats import mannwhitneyu

    cases = [make_phantom(modality, "val", i) for i in range(80)]
    labels = np.array([c.label for c in cases])
    for score in (np.array([c.image.max() for c in cases]), -np.array([c.image[c.image > 0].min() for c in cases])):
        auc = mannwhitneyu(score[labels == 1], score[labels == 0]).statistic / ((labels == 1).sum() * (labels == 0).sum())
        assert auc < 0.75, auc


def test_different_indices_differ() -> None:
    assert not np.array_equal(make_phantom("chest_xray", "test", 0).image, make_phantom("chest_xray", "test", 1).image)


@pytest.mark.parametrize(("args", "message"), [
    (("mri", "test", 0), r"Unknown modality 'mri'\. Valid modalities are: chest_xray, breast_us, brain_mri, fundus\."),
    (("chest_xray", "holdout", 0), r"Unknown split 'holdout'\. Valid splits are: train, val, test, shifted\."),
    (("chest_xray", "test", -1), r"The phantom index must be an integer >= 0\. Got -1 instead\."),
    (("chest_xray", "test", 1.5), r"The phantom index must be an integer >= 0\. Got 1\.5 instead\."),
])
def test_bad_key_raises_clear_error(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_phantom(*args)


def test_write_phantoms_writes_pngs_masks_and_labels(tmp_path) -> None:
    csv_path = write_phantoms(tmp_path, "breast_us", "test", 3)
    rows = list(csv.DictReader(open(csv_path)))
    assert [r["index"] for r in rows] == ["0", "1", "2"]
    for r in rows:
        img = cv2.imread(str(tmp_path / r["image"]), cv2.IMREAD_UNCHANGED)
        mask = cv2.imread(str(tmp_path / r["mask"]), cv2.IMREAD_UNCHANGED)
        ph = make_phantom("breast_us", "test", int(r["index"]))
        assert img.shape == (224, 224) and np.abs(img / 255.0 - ph.image[..., 0]).max() <= 0.5 / 255 + 1e-6
        assert np.array_equal(mask > 0, ph.mask)
        assert int(r["label"]) == ph.label and int(r["lesion_area_px"]) == int(ph.mask.sum())
    assert not list(tmp_path.glob("*.part"))


def test_golden_pixels_pin_the_generator() -> None:
    # The demo models and the cached training data were made from exactly these pixels. The golden copies are
    # the bundled 8-bit example PNGs; float pixels agree with them to within rounding, not bit for bit: a SHA-256
    # of the floats changed between machines (and library builds) while every 8-bit pixel stayed the same.
    for modality in ("chest_xray", "breast_us"):
        for index in range(4):
            ph = make_phantom(modality, "test", index)
            stem = f"{modality}_test_{index:05d}"
            golden = cv2.imread(str(bundled_example(f"{stem}.png")), cv2.IMREAD_UNCHANGED) / 255.0
            assert np.abs(ph.image[..., 0] - golden).max() <= 0.5 / 255 + 1e-4, (modality, index)
            mask = cv2.imread(str(bundled_example(f"{stem}.mask.png")), cv2.IMREAD_UNCHANGED)
            assert np.array_equal(ph.mask, mask > 0), (modality, index)


@pytest.mark.parametrize("modality", ["chest_xray", "breast_us"])
def test_noise_seed_redraws_only_the_acquisition_noise(modality: str) -> None:
    base = make_phantom(modality, "test", 7)
    a, b = make_phantom(modality, "test", 7, noise_seed=1), make_phantom(modality, "test", 7, noise_seed=2)
    again = make_phantom(modality, "test", 7, noise_seed=1)
    np.testing.assert_array_equal(a.image, again.image)
    for other in (a, b):
        np.testing.assert_array_equal(other.mask, base.mask)
        assert other.label == base.label and other.lesions == base.lesions
        assert not np.array_equal(other.image, base.image)
    # The anatomy is shared: realisations agree far better after smoothing away the noise.
    def smooth(x: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(x[..., 0], (0, 0), 4)

    raw, smoothed = np.abs(a.image - b.image).mean(), np.abs(smooth(a.image) - smooth(b.image)).mean()
    assert smoothed < 0.25 * raw


def test_write_phantoms_keeps_a_colour_family_in_colour(tmp_path) -> None:
    from blackbox_lime.image_io import load_image

    write_phantoms(tmp_path, "fundus", "val", 1)
    pixels = load_image(tmp_path / "fundus_val_00000.png").pixels
    assert pixels.shape == (224, 224, 3)
    assert np.abs(pixels - make_phantom("fundus", "val", 0).image).max() <= 0.5 / 255 + 1e-6


def test_multilabel_phantoms_have_a_mask_per_finding_and_independent_findings():
    from blackbox_lime.evaluation.phantoms import FINDINGS, make_multilabel_phantom

    a, b = make_multilabel_phantom("test", 3), make_multilabel_phantom("test", 3)
    np.testing.assert_array_equal(a.image, b.image)
    seen = np.zeros(len(FINDINGS))
    both = 0
    for i in range(60):
        ph = make_multilabel_phantom("val", i)
        assert set(ph.masks) == set(FINDINGS) and ph.image.shape == (224, 224, 3)
        for k in FINDINGS:
            assert ph.labels[k] == int(ph.masks[k].any())
            if ph.labels[k]:
                assert ph.masks[k].sum() >= 12
        seen += [ph.labels[k] for k in FINDINGS]
        both += ph.labels["nodule"] and ph.labels["effusion"]
    assert np.all(seen > 8) and np.all(seen < 45) and both > 0  # each finding present in some cases, together too
    # its own stream: the plain chest family is unchanged
    assert not np.array_equal(make_multilabel_phantom("test", 0).image, make_phantom("chest_xray", "test", 0).image)
