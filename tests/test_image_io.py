from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from blackbox_lime.image_io import ImageError, load_image


@pytest.fixture()
def gray8() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (40, 50), dtype=np.uint8)


def test_png_8_bit(tmp_path: Path, gray8: np.ndarray) -> None:
    cv2.imwrite(str(tmp_path / "a.png"), gray8)
    img = load_image(tmp_path / "a.png")
    assert img.pixels.shape == (40, 50, 1) and img.pixels.dtype == np.float32
    assert np.allclose(img.pixels[..., 0], gray8 / 255.0)
    assert len(img.sha256) == 64


def test_png_16_bit_and_tiff_16_bit(tmp_path: Path) -> None:
    a = (np.arange(40 * 50, dtype=np.uint32) * 31 % 65536).astype(np.uint16).reshape(40, 50)
    cv2.imwrite(str(tmp_path / "a.png"), a)
    cv2.imwrite(str(tmp_path / "a.tif"), a)
    for name in ("a.png", "a.tif"):
        px = load_image(tmp_path / name).pixels[..., 0]
        assert np.allclose(px, a / 65535.0, atol=1e-6), name


def test_rgb_jpeg_and_rgba_png(tmp_path: Path) -> None:
    rgb = np.zeros((30, 30, 3), np.uint8)
    rgb[..., 0] = 200  # red in RGB order
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=95)
    px = load_image(tmp_path / "a.jpg").pixels
    assert px.shape == (30, 30, 3) and px[..., 0].mean() > 0.7 and px[..., 2].mean() < 0.1
    rgba = np.dstack([rgb, np.full((30, 30), 255, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "b.png")
    img = load_image(tmp_path / "b.png")
    assert img.pixels.shape == (30, 30, 3) and "opaque alpha channel dropped" in img.notes


def test_npy_float_int_and_channels_first(tmp_path: Path) -> None:
    a = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    np.save(tmp_path / "f.npy", a)
    assert np.array_equal(load_image(tmp_path / "f.npy").pixels[..., 0], a)
    np.save(tmp_path / "hu.npy", (a * 2000 - 1000).astype(np.float64))
    img = load_image(tmp_path / "hu.npy")
    assert img.pixels.min() == 0 and img.pixels.max() == 1 and "rescaled to [0, 1] (min-max)" in img.notes[0]
    np.save(tmp_path / "chw.npy", np.stack([a, a, a]))
    assert load_image(tmp_path / "chw.npy").pixels.shape == (64, 64, 3)


@pytest.mark.parametrize(("writer", "message"), [
    (lambda p: p.write_bytes(b""), r"x\.png is empty \(0 bytes\)\. Re-export or re-copy the image\."),
    (lambda p: p.write_bytes(b"this is not an image at all" * 10),
     r"x\.png is named \.png but its content is not a PNG image \(nor any kind this tool reads: \.png, \.jpg/\.jpeg, "
     r"\.tif/\.tiff, \.bmp, \.gif, \.npy, \.dcm \(DICOM\)\)\. Check the file, or re-export it\."),
])
def test_empty_and_garbage_files(tmp_path: Path, writer, message: str) -> None:
    p = tmp_path / "x.png"
    writer(p)
    with pytest.raises(ImageError, match=message):
        load_image(p)


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_truncated_raster_is_refused(tmp_path: Path, gray8: np.ndarray, ext: str) -> None:
    ok, buf = cv2.imencode(ext, np.tile(gray8, (8, 8)))
    p = tmp_path / f"t{ext}"
    p.write_bytes(buf.tobytes()[: len(buf) // 2])
    with pytest.raises(ImageError, match=rf"t\{ext} is truncated or corrupt \(.+\)\. Re-export the image\."):
        load_image(p)


def test_npy_with_nan_or_inf(tmp_path: Path) -> None:
    a = np.zeros((32, 32), np.float32)
    a[3, 4], a[5, 6] = np.nan, np.inf
    np.save(tmp_path / "n.npy", a)
    with pytest.raises(ImageError, match=r"n\.npy contains 2 NaN or infinite values; replace them before explaining\."):
        load_image(tmp_path / "n.npy")


def test_npy_wrong_channels_and_truncated(tmp_path: Path) -> None:
    np.save(tmp_path / "c5.npy", np.zeros((32, 32, 5), np.float32))
    with pytest.raises(ImageError, match=r"c5\.npy has 5 channels; expected 1 \(grayscale\) or 3 \(RGB\)\. Save it as grayscale or RGB\."):
        load_image(tmp_path / "c5.npy")
    np.save(tmp_path / "t.npy", np.zeros((64, 64), np.float32))
    data = (tmp_path / "t.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"t\.npy"):
        load_image(tmp_path / "t.npy")


def test_npy_pickle_is_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ImageError, match=r"o\.npy is not a plain NumPy array file"):
        load_image(tmp_path / "o.npy")


def test_dicom_ct_rescale_and_percentile_window() -> None:
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    img = load_image(path)
    assert img.format == "dicom" and img.pixels.shape == (128, 128, 1)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    lo, hi = np.percentile(hu, [0.5, 99.5])
    assert np.allclose(img.pixels[..., 0], np.clip((hu - lo) / (hi - lo), 0, 1), atol=1e-6)
    assert any("percentile window" in n for n in img.notes)


def test_dicom_voi_window_from_header() -> None:
    path = get_testdata_file("MR_small.dcm")
    ds = pydicom.dcmread(path)
    img = load_image(path)
    wc = float(ds.WindowCenter[0] if isinstance(ds.WindowCenter, pydicom.multival.MultiValue) else ds.WindowCenter)
    ww = float(ds.WindowWidth[0] if isinstance(ds.WindowWidth, pydicom.multival.MultiValue) else ds.WindowWidth)
    x = ds.pixel_array.astype(float) * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
    expected = np.clip((x - (wc - 0.5)) / (ww - 1) + 0.5, 0, 1)
    assert np.allclose(img.pixels[..., 0], expected, atol=1e-6)
    assert f"DICOM VOI window centre {wc:g} width {ww:g}" in img.notes


def test_dicom_monochrome1_is_inverted(tmp_path: Path) -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    normal = load_image(get_testdata_file("CT_small.dcm")).pixels
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "m1.dcm")
    inverted = load_image(tmp_path / "m1.dcm")
    assert np.allclose(inverted.pixels, 1.0 - normal, atol=1e-6)
    assert "MONOCHROME1 inverted so that dense tissue is bright" in inverted.notes


def test_dicom_multiframe_needs_frame() -> None:
    path = get_testdata_file("rtdose.dcm")
    with pytest.raises(ImageError, match=r"rtdose\.dcm is a multi-frame DICOM with 15 frames; pass --frame K with K in 0\.\.14\."):
        load_image(path)
    with pytest.raises(ImageError, match=r"--frame must be in 0\.\.14\. Got 20\."):
        load_image(path, frame=20)
    img = load_image(path, frame=3)
    assert img.pixels.ndim == 3 and "frame 3 of 15" in img.notes


def test_dicom_jpeg2000_decodes_with_pylibjpeg() -> None:
    pytest.importorskip("openjpeg")
    a = load_image(get_testdata_file("MR_small_jp2klossless.dcm")).pixels
    b = load_image(get_testdata_file("MR_small.dcm")).pixels
    assert np.allclose(a, b, atol=1e-6)  # lossless: same pixels as the uncompressed file


def test_compressed_dicom_without_decoder_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoder(self):  # what pydicom raises when no plugin can decode the syntax
        raise RuntimeError("Unable to decode the pixel data: no plugins are available")

    monkeypatch.setattr(pydicom.Dataset, "pixel_array", property(no_decoder))
    with pytest.raises(ImageError, match=r"uses the compressed transfer syntax JPEG 2000 Image Compression \(Lossless Only\), "
                                         r"which needs a decoder: pip install 'blackbox-lime\[dicom\]' \(pylibjpeg\)\."):
        load_image(get_testdata_file("MR_small_jp2klossless.dcm"))


def test_truncated_dicom(tmp_path: Path) -> None:
    src = Path(get_testdata_file("CT_small.dcm"))
    p = tmp_path / "cut.dcm"
    p.write_bytes(src.read_bytes()[:1000])
    with pytest.raises(ImageError, match=r"cut\.dcm"):
        load_image(p)


def test_dicom_reader_warnings_stay_off_the_terminal(tmp_path: Path) -> None:
    """pydicom's warnings about tolerated deviations never escape the loader as Python warnings."""
    p = tmp_path / "odd.dcm"
    p.write_bytes(b"DICM" * 100)  # "DICM" at byte 128, then a meta group pydicom only half understands
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an escaping warning would raise here instead of ImageError
        with pytest.raises(ImageError, match=r"^odd\.dcm is a DICOM file without pixel data \(SOP class \?\)\.$"):
            load_image(p)
        img = load_image(get_testdata_file("CT_small.dcm"))
    assert not any(n.startswith("DICOM reader:") for n in img.notes)  # a clean file gets no reader note


def test_dicom_reader_warning_on_a_readable_file_becomes_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    real = pydicom.dcmread

    def warning_dcmread(*args, **kwargs):  # what pydicom does for a tolerated deviation
        warnings.warn("Expected implicit VR, but found explicit VR - using explicit VR for reading", UserWarning)
        return real(*args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", warning_dcmread)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        img = load_image(get_testdata_file("CT_small.dcm"))
    assert "DICOM reader: Expected implicit VR, but found explicit VR - using explicit VR for reading" in img.notes


def test_dicom_header_never_reaches_pixels(tmp_path: Path) -> None:
    """Only the pixel array leaves the loader: the result carries no DICOM element."""
    img = load_image(get_testdata_file("CT_small.dcm"))
    assert set(vars(img)) == {"pixels", "format", "sha256", "notes", "burned_in"}
    assert img.burned_in is None  # the one header fact it keeps: whether the pixels may carry burnt-in text
    assert isinstance(img.pixels, np.ndarray) and not any("Patient" in n for n in img.notes)
