"""Saliency maps back into PACS: a DICOM Parametric Map (SOP class 1.2.840.10008.5.1.4.1.1.30) per map.

    ds = parametric_map(source_bytes, saliency, frame=None, label="abnormal")   # -> pydicom Dataset
    data = to_bytes(ds)

The map lies on the source image's own grid (rows, columns, pixel spacing, orientation and position
copied from the source, or from the explained frame of a multi-frame image) and references the source
instance (its SOP Instance UID, series and study), so a PACS or OHIF shows it over the image. Stored
values are float32 saliency, mapped to real-world values by the identity (unit "1", no units);
positive is evidence for the explained class. The VOI window is symmetric around 0.

The object carries the source's patient and study module, as DICOM requires of a derived image: it
is for the site's PACS, never for reports. Its UIDs are derived from the source instance, the frame
and the map's bytes, so writing the same map again gives the same UIDs (a PACS replaces, not
duplicates) and a different map gets new ones. Needs the ``dicom`` extra (highdicom).
"""

from __future__ import annotations

import copy
import hashlib
import io
from typing import Any

import numpy as np

from blackbox_lime._version import __version__

SERIES_NUMBER = 9901  # the series of blackbox-lime's maps within each study
PARAMETRIC_MAP_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.30"


class DicomOutError(ValueError):
    """A Parametric Map cannot be written for this source; the message names why."""


def parametric_map(source: bytes, saliency: np.ndarray, frame: int | None = None, label: str = "saliency",
                   series_entropy: str = "") -> Any:
    """A Parametric Map of ``saliency`` (H, W) over the DICOM file ``source`` (its bytes).

    frame : the explained frame of a multi-frame source (None for a single frame).
    label : the explained class or finding, in the map's description.
    series_entropy : what makes the series UID (one series per study and run: e.g. an audit's salt).
    """
    try:
        import highdicom as hd
        import pydicom
        from pydicom.uid import generate_uid
    except ImportError as exc:
        raise DicomOutError("Writing DICOM Parametric Maps needs highdicom: pip install 'blackbox-lime[dicom]'.") \
            from exc
    try:
        ds: Any = pydicom.dcmread(io.BytesIO(source))
        _check_source(ds)
        return _parametric_map(hd, ds, saliency, frame, label, series_entropy, generate_uid)
    except DicomOutError:
        raise
    except Exception as exc:  # highdicom and pydicom raise many types on odd sources: each one is a named reason
        text = " ".join(str(exc).split())[:160]
        raise DicomOutError(f"highdicom cannot build a Parametric Map over this source ({type(exc).__name__}: {text}); "
                            "the .npy and .png maps are written.") from exc


# What a derived image copies from its source (patient, study, series and instance identity), and what placing a map
# on the source's grid needs (patient coordinates): a Secondary Capture or a bare file lacks them.
_IDENTITY = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Rows", "Columns")
_GEOMETRY = ("FrameOfReferenceUID", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")


def _check_source(ds: Any) -> None:
    from pydicom.uid import SecondaryCaptureImageStorage

    missing = [k for k in _IDENTITY if k not in ds]
    if missing:
        raise DicomOutError(f"the source lacks {', '.join(missing)}, which a Parametric Map must reference; the .npy "
                            "and .png maps are written.")
    if str(ds.SOPClassUID).startswith(SecondaryCaptureImageStorage):
        raise DicomOutError("the source is a Secondary Capture image, which has no patient coordinates to place a "
                            "Parametric Map on; the .npy and .png maps are written.")
    single = str(ds.get("NumberOfFrames", 1) or 1).strip() in ("1", "")  # a multi-frame source: _frame_source checks
    if single and "PerFrameFunctionalGroupsSequence" not in ds and any(k not in ds for k in _GEOMETRY):
        absent = [k for k in _GEOMETRY if k not in ds]
        raise DicomOutError(f"the source has no patient coordinates ({', '.join(absent)} absent), so a Parametric Map "
                            "cannot be placed on its grid; the .npy and .png maps are written.")


def _parametric_map(hd: Any, ds: Any, saliency: np.ndarray, frame: int | None, label: str, series_entropy: str,
                    generate_uid: Any) -> Any:
    rows, cols = int(ds.Rows), int(ds.Columns)
    sal = np.ascontiguousarray(saliency, dtype=np.float32)
    if sal.shape != (rows, cols):
        raise DicomOutError(f"the map is {sal.shape[1]}x{sal.shape[0]} but the DICOM image is {cols}x{rows}.")
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    parent: Any = ds
    if n_frames > 1:
        if frame is None or not 0 <= frame < n_frames:
            raise DicomOutError(f"the source has {n_frames} frames; name the explained one (--frame 0..{n_frames - 1}).")
        parent = _frame_source(ds, frame, n_frames)  # a single-frame stand-in; its references are put right below
    digest = hashlib.sha256(sal.tobytes()).hexdigest()
    sop = str(ds.SOPInstanceUID)
    vmax = float(np.abs(sal).max()) or 1.0
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="SALIENCY", lut_explanation=f"MedLIME evidence for {label}"[:64],
        unit=hd.sr.CodedConcept("1", "UCUM", "no units"), value_range=(float(sal.min()), float(sal.max())),
        slope=1.0, intercept=0.0)
    pm = hd.pm.ParametricMap(
        [parent], sal,
        series_instance_uid=generate_uid(entropy_srcs=["blackbox-lime series", str(ds.StudyInstanceUID), series_entropy]),
        series_number=SERIES_NUMBER,
        sop_instance_uid=generate_uid(entropy_srcs=["blackbox-lime map", sop, str(frame), label, digest]),
        instance_number=int(ds.get("InstanceNumber", 1) or 1),
        manufacturer="blackbox-lime", manufacturer_model_name="MedLIME", software_versions=__version__,
        device_serial_number="n/a", contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=0.0, window_width=2.0 * vmax)],
        content_description=f"saliency for {label}"[:64], content_label="SALIENCY",
        content_qualification=hd.ContentQualificationValues.RESEARCH)
    if parent is not ds and frame is not None:
        _refer_to_frame(pm, str(ds.SOPClassUID), frame)
    return pm


def to_bytes(ds: Any) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _frame_source(ds: Any, frame: int, n_frames: int) -> Any:
    """The explained frame of a (legacy) multi-frame image as single-frame source metadata: the same
    instance (so the map references it), with that frame's position in the patient coordinate system."""
    if "PerFrameFunctionalGroupsSequence" in ds:
        raise DicomOutError("enhanced multi-frame sources (per-frame functional groups) are not supported yet; the "
                            ".npy and .png maps are written.")
    if "FrameOfReferenceUID" not in ds or "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
        raise DicomOutError(f"the source has {n_frames} frames and no patient coordinates (Frame of Reference, image "
                            "position and orientation), so a map of one frame cannot be placed on it; the .npy and "
                            ".png maps are written.")
    offsets = ds.get("GridFrameOffsetVector")  # RT Dose: offsets along the normal of the image plane
    if offsets is None or len(offsets) != n_frames:
        raise DicomOutError("the source gives no position per frame (no GridFrameOffsetVector).")
    origin = np.array([float(v) for v in ds.ImagePositionPatient])
    o = np.array([float(v) for v in ds.ImageOrientationPatient])
    position = origin + float(offsets[frame]) * np.cross(o[:3], o[3:])
    meta = copy.deepcopy(ds)  # Dataset.copy() shares its elements with ds
    for keyword in ("PixelData", "NumberOfFrames", "GridFrameOffsetVector", "FrameIncrementPointer"):
        if keyword in meta:
            delattr(meta, keyword)
    meta.ImagePositionPatient = [float(v) for v in position]
    meta.SOPClassUID = _STAND_IN  # highdicom reads a multi-frame IOD's geometry from functional groups it lacks
    return meta


_STAND_IN = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage: a single-frame IOD with the same geometry attributes


def _refer_to_frame(pm: Any, sop_class: str, frame: int) -> None:
    """Point the map's references at the real multi-frame instance and its explained frame (1-based)."""
    def walk(item: Any) -> None:
        if "ReferencedSOPClassUID" in item and str(item.ReferencedSOPClassUID) == _STAND_IN:
            item.ReferencedSOPClassUID = sop_class
        for elem in item:
            if elem.VR == "SQ":
                for sub in elem.value:
                    walk(sub)

    walk(pm)
    for group in pm.PerFrameFunctionalGroupsSequence:
        for derivation in group.get("DerivationImageSequence", []):
            for item in derivation.get("SourceImageSequence", []):
                item.ReferencedFrameNumber = frame + 1


def parametric_map_files(source: bytes, maps: list[tuple[str, np.ndarray, str]], frame: int | None,
                         series_entropy: str = "") -> dict[str, bytes]:
    """``{FILE_STEM + ".pm.dcm": bytes}`` for each (file stem, saliency (H, W), label) in ``maps``."""
    return {f"{stem}.pm.dcm": to_bytes(parametric_map(source, sal, frame, label, series_entropy))
            for stem, sal, label in maps}
