"""DICOM Parametric Maps of saliency, read back with pydicom: SOP class, references, geometry, values."""

from __future__ import annotations

import io
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("highdicom", reason="the dicom extra (highdicom) is not installed")
from pydicom.data import get_testdata_file  # noqa: E402

from blackbox_lime.dicom_out import PARAMETRIC_MAP_SOP_CLASS, DicomOutError, parametric_map, to_bytes  # noqa: E402
from blackbox_lime.models import bundled_model  # noqa: E402
from blackbox_lime.cli import main  # noqa: E402


def _read(name: str) -> tuple[bytes, object]:
    data = Path(get_testdata_file(name)).read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return data, pydicom.dcmread(io.BytesIO(data))


def _back(pm: object) -> object:
    return pydicom.dcmread(io.BytesIO(to_bytes(pm)))


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_a_map_lies_on_the_source_grid_and_references_the_source(name):
    data, src = _read(name)
    sal = np.random.default_rng(0).normal(size=(src.Rows, src.Columns)).astype(np.float32)
    back = _back(parametric_map(data, sal, None, "abnormal"))
    assert back.SOPClassUID == PARAMETRIC_MAP_SOP_CLASS
    assert (back.Rows, back.Columns, int(back.NumberOfFrames)) == (src.Rows, src.Columns, 1)
    assert back.StudyInstanceUID == src.StudyInstanceUID and back.FrameOfReferenceUID == src.FrameOfReferenceUID
    ref = back.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == src.SeriesInstanceUID
    assert ref.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    shared = back.SharedFunctionalGroupsSequence[0]
    assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == [float(v) for v in src.PixelSpacing]
    assert [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient] == \
        [float(v) for v in src.ImageOrientationPatient]
    frame = back.PerFrameFunctionalGroupsSequence[0]
    assert np.allclose([float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient],
                       [float(v) for v in src.ImagePositionPatient])
    rw = (frame if "RealWorldValueMappingSequence" in frame else shared).RealWorldValueMappingSequence[0]
    assert (rw.LUTLabel, float(rw.RealWorldValueSlope), float(rw.RealWorldValueIntercept)) == ("SALIENCY", 1.0, 0.0)
    assert rw.MeasurementUnitsCodeSequence[0].CodeValue == "1" and "abnormal" in rw.LUTExplanation
    np.testing.assert_array_equal(back.pixel_array.reshape(sal.shape), sal)
    assert back.Manufacturer == "blackbox-lime" and back.ContentLabel == "SALIENCY"


def test_uids_follow_the_map_the_same_map_gives_the_same_object():
    data, src = _read("CT_small.dcm")
    sal = np.zeros((src.Rows, src.Columns), np.float32)
    sal[10:20, 10:20] = 1
    a, b = parametric_map(data, sal, None, "abnormal"), parametric_map(data, sal, None, "abnormal")
    c = parametric_map(data, sal * 2, None, "abnormal")
    assert a.SOPInstanceUID == b.SOPInstanceUID != c.SOPInstanceUID and a.SeriesInstanceUID == c.SeriesInstanceUID


def test_a_frame_of_a_multiframe_source_is_placed_at_that_frames_position():
    data, src = _read("rtdose.dcm")  # 15 frames, offsets along the normal of the image plane
    sal = np.random.default_rng(1).normal(size=(src.Rows, src.Columns)).astype(np.float32)
    back = _back(parametric_map(data, sal, 3, "dose region"))
    frame = back.PerFrameFunctionalGroupsSequence[0]
    expected = np.array([float(v) for v in src.ImagePositionPatient]) + float(src.GridFrameOffsetVector[3]) * \
        np.array([0.0, 0.0, 1.0])
    assert np.allclose([float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient], expected)
    item = frame.DerivationImageSequence[0].SourceImageSequence[0]
    assert item.ReferencedSOPInstanceUID == src.SOPInstanceUID and item.ReferencedSOPClassUID == src.SOPClassUID
    assert int(item.ReferencedFrameNumber) == 4
    ref = back.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert ref.ReferencedSOPClassUID == src.SOPClassUID
    np.testing.assert_array_equal(back.pixel_array.reshape(sal.shape), sal)
    with pytest.raises(DicomOutError, match=r"the source has 15 frames; name the explained one \(--frame 0\.\.14\)"):
        parametric_map(data, sal, None)


def test_a_multiframe_source_without_patient_coordinates_is_refused_with_the_reason():
    data, src = _read("examples_ybr_color.dcm")
    with pytest.raises(DicomOutError, match="has 30 frames and no patient coordinates"):
        parametric_map(data, np.zeros((src.Rows, src.Columns), np.float32), 2)
    with pytest.raises(DicomOutError, match=r"the map is 3x3 but the DICOM image is 320x240"):
        parametric_map(data, np.zeros((3, 3), np.float32), 2)


def test_explain_dicom_out_writes_the_map_of_a_monochrome1_image(tmp_path, capsys):
    data, src = _read("CT_small.dcm")
    src.PhotometricInterpretation = "MONOCHROME1"  # inverted for display by the loader; the grid is the same
    path = tmp_path / "mono1.dcm"
    src.save_as(path)
    out = tmp_path / "out"
    assert main(["explain", str(path), "--model", str(bundled_model("shortcut_marker.onnx")), "--out", str(out),
                 "--samples", "60", "--fill", "mean", "--quiet", "--dicom-out"]) == 0
    report = json.loads((out / "mono1.json").read_text())
    assert "MONOCHROME1 inverted so that dense tissue is bright" in report["input"]["notes"]
    assert report["outputs"] == ["mono1.saliency.npy", "mono1.overlay.png", "mono1.json", "mono1.pm.dcm"]
    back = pydicom.dcmread(out / "mono1.pm.dcm")
    assert back.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    np.testing.assert_array_equal(back.pixel_array, np.load(out / "mono1.saliency.npy"))
    png = tmp_path / "x.png"
    shutil.copy(out / "mono1.overlay.png", png)
    assert main(["explain", str(png), "--model", str(bundled_model("shortcut_marker.onnx")), "--out",
                 str(tmp_path / "o2"), "--samples", "30", "--fill", "mean", "--quiet", "--dicom-out"]) == 0
    assert "x.png is not DICOM; --dicom-out writes maps for DICOM inputs only" in capsys.readouterr().err


def test_an_audit_writes_a_parametric_map_for_each_dicom_case(tmp_path, capsys):
    src = tmp_path / "study"
    src.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), src / "a.dcm")
    shutil.copy(get_testdata_file("MR_small.dcm"), src / "b.dcm")
    out = tmp_path / "audit"
    assert main(["audit", "run", str(src), "--model", str(bundled_model("shortcut_marker.onnx")), "--out", str(out),
                 "--samples", "40", "--fill", "mean", "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    for case in summary["cases"]:
        pm = [o for o in case["outputs"] if o.endswith(".pm.dcm")]
        assert len(pm) == 1
        back = pydicom.dcmread(out / pm[0])
        assert back.SOPClassUID == PARAMETRIC_MAP_SOP_CLASS
        npy = next(o for o in case["outputs"] if o.endswith(".saliency.npy"))
        np.testing.assert_array_equal(back.pixel_array, np.load(out / npy))
    series = {pydicom.dcmread(p).SeriesInstanceUID for p in (out / "cases").glob("*.pm.dcm")}
    assert len(series) == 2  # one series per study (the two files come from different studies)
    assert main(["audit", "verify", str(out)]) == 0
