"""Reading images: PNG, JPEG, TIFF (8/16-bit, float), BMP, GIF (first frame), NumPy ``.npy`` and DICOM.

Every loader returns float32 pixels (H, W, C), C in {1, 3}, in [0, 1], plus notes on what was done
(windowing, inversion, rescaling). Only these pixels ever reach an adapter: DICOM headers and
file names stay on the site.

DICOM: the modality LUT (rescale slope/intercept) is applied, then the VOI window from the header
(or, without one, a robust 0.5-99.5 percentile window); MONOCHROME1 is inverted so that dense is
bright; multi-frame files need a frame number. Compressed transfer syntaxes decode when pylibjpeg
is installed (``pip install 'blackbox-lime[dicom]'``).

Sizes are checked before anything is decoded: a file whose header claims more than ``max_pixels``
pixels (default :data:`DEFAULT_MAX_PIXELS`, rows x columns x frames) is refused with the claimed size,
so a 74-byte PNG that claims 10^10 pixels never reaches a decoder.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ImageError", "LoadedImage", "load_image", "load_image_bytes", "SUPPORTED"]

SUPPORTED = ".png, .jpg/.jpeg, .tif/.tiff, .bmp, .gif, .npy, .dcm (DICOM)"
DEFAULT_MAX_PIXELS = 100_000_000  # 10^8: a 10000 x 10000 image; raise it with --max-pixels


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".npy", ".dcm", ".dicom")


def find_images(paths: "list[str | Path]") -> list[Path]:
    """Files and folders (searched recursively for IMAGE_SUFFIXES) -> image paths, sorted per folder.

    A named file is taken whatever its suffix; a path that does not exist raises ``ImageError``."""
    found: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                            and ".mask." not in f.name)
        elif p.is_file():
            found.append(p)
        else:
            raise ImageError(f"{raw}: no such file or folder.")
    return found


class ImageError(ValueError):
    """An input image cannot be read or is not a usable image."""


@dataclass
class LoadedImage:
    pixels: np.ndarray  # float32 (H, W, C) in [0, 1]
    format: str
    sha256: str
    notes: list[str] = field(default_factory=list)
    #: why the pixels may carry burnt-in text that identifies the patient (a DICOM that says so, or a Secondary
    #: Capture that does not say), else None: see :func:`check_burned_in`.
    burned_in: str | None = None


def load_image(path: str | Path, frame: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Read an image file into float32 (H, W, C) pixels in [0, 1].

    Raises
    ------
    ImageError
        The file is missing, a folder, empty, truncated, corrupt, of an unsupported kind, larger than
        ``max_pixels``, has NaN/Inf, or has a channel count other than 1, 3 (or 4 with alpha); the
        message names the file and the fix.
    """
    p = Path(path)
    if p.is_dir():
        raise ImageError(f"{p.name} is a folder, not an image file. Give image files ({SUPPORTED}); to go "
                         "through a whole folder, use blackbox-lime audit run FOLDER.")
    if not p.is_file():
        raise ImageError(f"{p.name}: no such file. Check the path.")
    try:
        return _load(p, frame, max_pixels)
    except MemoryError:
        raise ImageError(f"{p.name} is too large to decode in this machine's memory. Downscale it, or explain it on "
                         "a machine with more memory.") from None


def _too_large(name: str, claimed: int, what: str, max_pixels: int) -> ImageError:
    return ImageError(f"{name} claims {what} = {claimed:,} pixels, more than the limit of {max_pixels:,}. If the image "
                      f"really is that large, raise the limit with --max-pixels {claimed}; otherwise the file is "
                      "damaged or not what it says.")


def _load(p: Path, frame: int | None, max_pixels: int) -> LoadedImage:
    return load_image_bytes(p.read_bytes(), p.name, frame, max_pixels)


def load_image_bytes(data: bytes, name: str, frame: int | None = None,
                     max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """:func:`load_image` for a file already in memory (one retrieved from PACS); ``name`` names it in errors
    and its suffix, if any, says its kind."""
    if len(data) == 0:
        raise ImageError(f"{name} is empty (0 bytes). Re-export or re-copy the image.")
    digest = hashlib.sha256(data).hexdigest()
    suffix = Path(name).suffix.lower()
    notes: list[str] = []
    burned_in = None
    try:
        if suffix == ".npy" or data[:6] == b"\x93NUMPY":
            pixels, fmt = _load_npy(name, data, notes, max_pixels), "npy"
        elif suffix in (".dcm", ".dicom") or data[128:132] == b"DICM":
            (pixels, burned_in), fmt = _load_dicom(name, data, frame, notes, max_pixels), "dicom"
        else:
            pixels, fmt = _load_raster(name, data, notes, max_pixels), "raster"
    except MemoryError:
        raise ImageError(f"{name} is too large to decode in this machine's memory. Downscale it, or explain it on "
                         "a machine with more memory.") from None
    if frame is not None and fmt != "dicom":
        raise ImageError(f"{name}: --frame applies to multi-frame DICOM files only.")
    pixels = _finish(name, pixels, notes)
    return LoadedImage(pixels, fmt, digest, notes, burned_in)


BURNED_IN_POLICIES = ("auto", "warn", "refuse")


def _burned_in(ds: Any) -> str | None:
    """Why a DICOM dataset's pixels may carry burnt-in text, or None."""
    from pydicom.uid import SecondaryCaptureImageStorage  # its multi-frame kinds are .7.1 to .7.4 under it

    said = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if said == "YES":
        return "the DICOM header says its pixels carry burnt-in annotation (BurnedInAnnotation YES)"
    if not said and str(ds.get("SOPClassUID", "")).startswith(SecondaryCaptureImageStorage):
        return "a Secondary Capture whose header does not say whether its pixels carry burnt-in text"
    return None


def check_burned_in(name: str, loaded: LoadedImage, policy: str) -> str | None:
    """The warning for an image whose pixels may carry burnt-in text (None where there is no sign of it).

    policy : "warn" (send the pixels as they are, with the warning) or "refuse" (an ImageError: the image is skipped
        and nothing of it is sent). The CLI's "auto" is "refuse" for a remote model and "warn" for a local one.
    """
    if loaded.burned_in is None:
        return None
    if policy == "refuse":
        raise ImageError(f"{name}: refused: {loaded.burned_in}, which may identify the patient; nothing of it was "
                         "sent (--burned-in refuse). Pass --burned-in warn to explain it all the same.")
    return (f"{loaded.burned_in}: text in the pixels may identify the patient, and the pixels went to the model as "
            "they are (--burned-in refuse keeps such images on the site)")


def _finish(name: str, x: np.ndarray, notes: list[str]) -> np.ndarray:
    if x.ndim == 2:
        x = x[..., None]
    if x.ndim != 3:
        raise ImageError(f"{name} has shape {x.shape}; expected a 2-D image (H, W) or (H, W, C).")
    c = x.shape[2]
    if c == 4:
        alpha = x[..., 3:4]
        if np.any(alpha < 1.0):
            notes.append("alpha channel composited onto black")
            x = x[..., :3] * alpha
        else:
            notes.append("opaque alpha channel dropped")
            x = x[..., :3]
    elif c == 2:  # gray + alpha
        x = x[..., :1] * x[..., 1:2]
        notes.append("gray+alpha image composited onto black")
    elif c not in (1, 3):
        raise ImageError(f"{name} has {c} channels; expected 1 (grayscale) or 3 (RGB). "
                         "Save it as grayscale or RGB.")
    if min(x.shape[:2]) < 1:
        raise ImageError(f"{name} has no pixels (shape {x.shape}).")
    return np.ascontiguousarray(np.clip(x, 0.0, 1.0), dtype=np.float32)


def _to_unit(name: str, a: np.ndarray, notes: list[str]) -> np.ndarray:
    """Integer or float array -> float in [0, 1]."""
    if a.dtype == np.bool_:
        return a.astype(np.float32)
    if np.issubdtype(a.dtype, np.integer):
        if a.dtype == np.uint8:
            return a.astype(np.float32) / 255.0
        if a.dtype == np.uint16:
            return a.astype(np.float32) / 65535.0
        lo, hi = float(a.min()), float(a.max())
        if lo >= 0 and hi <= 255:
            return a.astype(np.float32) / 255.0
        if lo >= 0 and hi <= 65535:
            return a.astype(np.float32) / 65535.0
        notes.append(f"integer values {lo:g}..{hi:g} rescaled to [0, 1] (min-max)")
        return ((a.astype(np.float64) - lo) / max(hi - lo, 1e-12)).astype(np.float32)
    if np.issubdtype(a.dtype, np.floating):
        if not np.all(np.isfinite(a)):
            bad = int(np.size(a) - np.isfinite(a).sum())
            raise ImageError(f"{name} contains {bad} NaN or infinite values; replace them before explaining.")
        lo, hi = float(a.min()), float(a.max())
        if lo >= 0.0 and hi <= 1.0:
            return a.astype(np.float32)
        notes.append(f"float values {lo:.4g}..{hi:.4g} rescaled to [0, 1] (min-max)")
        return ((a.astype(np.float64) - lo) / max(hi - lo, 1e-12)).astype(np.float32)
    raise ImageError(f"{name} has pixel type {a.dtype}; expected integers or floats.")


def _npy_header(name: str, data: bytes) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype an .npy header claims, read without loading the array."""
    f = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise ImageError(f"{name} is not a plain NumPy array file ({str(exc).splitlines()[0][:120]}). Save it with "
                         "np.save(path, array).") from None
    return tuple(int(d) for d in shape), dtype


def _load_npy(name: str, data: bytes, notes: list[str], max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    shape, _ = _npy_header(name, data)
    planar = shape[:-1] if len(shape) == 3 and shape[-1] <= 4 else shape[1:] if len(shape) == 3 else shape
    claimed = int(np.prod(planar, dtype=np.float64)) if shape else 1
    if claimed > max_pixels:
        raise _too_large(name, claimed, " x ".join(str(d) for d in shape), max_pixels)
    try:
        a = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as exc:
        raise ImageError(f"{name} is not a plain NumPy array file ({exc}). Save it with np.save(path, array).") from exc
    except (EOFError, OSError) as exc:
        raise ImageError(f"{name} is truncated or corrupt: {exc}. Re-save it with np.save.") from exc
    if not isinstance(a, np.ndarray) or a.dtype.kind not in "biuf":
        raise ImageError(f"{name} holds a {getattr(a, 'dtype', type(a))} array; expected numbers.")
    if a.size == 0:
        raise ImageError(f"{name} holds an empty array (shape {a.shape}); save the image's pixels, (H, W) or (H, W, C).")
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[2] not in (1, 2, 3, 4):
        a = np.moveaxis(a, 0, 2)
        notes.append("channels-first array moved to channels-last")
    return _to_unit(name, a, notes)


def _load_raster(name: str, data: bytes, notes: list[str], max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:  # PIL's warnings become notes, never stray stderr lines
            warnings.simplefilter("always")
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            bomb, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # the limit below is this tool's own
            try:
                img: Image.Image = Image.open(io.BytesIO(data))
            finally:
                Image.MAX_IMAGE_PIXELS = bomb
            w, h = img.size
            if w * h > max_pixels:
                raise _too_large(name, w * h, f"{w} x {h}", max_pixels)
            img.load()  # decode now: truncated files raise here instead of giving partial pixels
    except ImageError:
        raise
    except UnidentifiedImageError as exc:
        if data.startswith((b"\x89PNG", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*")):
            raise ImageError(f"{name} is truncated or corrupt (its header is damaged). Re-export the image.") from exc
        suffix = Path(name).suffix.lower()
        if suffix in (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"):  # the name says image, the bytes do not
            raise ImageError(f"{name} is named {suffix} but its content is not a {suffix[1:].upper()} image (nor "
                             f"any kind this tool reads: {SUPPORTED}). Check the file, or re-export it.") from exc
        raise ImageError(f"{name} is not an image file this tool can read (supported: {SUPPORTED}).") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{name} is truncated or corrupt ({exc}). Re-export the image.") from exc
    for warned in caught:
        note = f"image reader: {warned.message}"
        if note not in notes:
            notes.append(note)
    n_frames = int(getattr(img, "n_frames", 1))
    if n_frames > 1:
        notes.append(f"first of {n_frames} frames used")
    mode = img.mode
    if mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "1"):
        img = img.convert("RGBA" if mode == "PA" or "transparency" in img.info else "RGB" if mode != "1" else "L")
    a = np.asarray(img)
    if a.dtype == np.int32 and mode.startswith("I") and a.max(initial=0) <= 65535 and a.min(initial=0) >= 0:
        a = a.astype(np.uint16)
    return _to_unit(name, a, notes)


_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def without_quoted_values(text: str) -> str:
    """A DICOM library's message with every quoted value replaced by '...': they quote the field they found odd,
    which may be a patient's name or birth date."""
    return _QUOTED.sub("'...'", text)


def silence_dicom_libraries() -> None:
    """pydicom's and highdicom's own warnings and log lines quote the fields they find odd (a patient's name among
    them): they never reach stderr, ``--quiet`` or not. The CLI and every audit worker call this once."""
    for name in ("pydicom", "highdicom"):
        warnings.filterwarnings("ignore", module=rf"{name}(\..*)?$")
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)


def _decode_dicom(name: str, data: bytes, frame: int | None, max_pixels: int = DEFAULT_MAX_PIXELS):
    """Parse the file and decode its pixel data: (array of every frame, dataset, number of frames)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=False)
    except InvalidDicomError as exc:
        raise ImageError(f"{name} is not a DICOM file: it lacks the DICOM preamble and 'DICM' marker. Check that it is "
                         "a DICOM Part 10 file (export it again from the PACS), or rename it if it is another "
                         f"format ({SUPPORTED}).") from exc
    except (EOFError, OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ImageError(f"{name} is not a readable DICOM file ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:160]}). Export it again from the PACS.") from exc
    if "PixelData" not in ds:
        raise ImageError(f"{name} is a DICOM file without pixel data (SOP class {ds.get('SOPClassUID', '?')}).")
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if n_frames > 1 and frame is None:
        raise ImageError(f"{name} is a multi-frame DICOM with {n_frames} frames; pass --frame K with K in 0..{n_frames - 1}.")
    if frame is not None and not 0 <= frame < n_frames:
        raise ImageError(f"{name} has {n_frames} frame(s); --frame must be in 0..{n_frames - 1}. Got {frame}.")
    try:
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    except (TypeError, ValueError):
        raise ImageError(f"{name}: its Rows/Columns are not numbers. Export it again from the PACS.") from None
    if rows * cols * n_frames > max_pixels:
        raise _too_large(name, rows * cols * n_frames, f"{rows} x {cols} x {n_frames} frame(s)", max_pixels)
    try:
        arr = ds.pixel_array
    except Exception as exc:  # pydicom raises RuntimeError/NotImplementedError/ValueError by handler
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        compressed = ts is not None and getattr(ts, "is_compressed", False)
        if compressed:
            raise ImageError(
                f"{name} uses the compressed transfer syntax {getattr(ts, 'name', ts)}, which needs a decoder: "
                "pip install 'blackbox-lime[dicom]' (pylibjpeg).") from exc
        raise ImageError(f"{name}: the DICOM pixel data cannot be decoded ({exc}).") from exc
    return arr, ds, n_frames


def _load_dicom(name: str, data: bytes, frame: int | None, notes: list[str],
                max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, str | None]:
    """The pixels of one DICOM file in [0, 1], and why they may carry burnt-in text (None: no sign of it)."""
    try:
        import pydicom  # noqa: F401
    except ImportError as exc:  # pragma: no cover - pydicom is a runtime dependency
        raise ImageError("Reading DICOM needs pydicom: pip install pydicom.") from exc
    # pydicom warns about tolerated deviations (VR mismatches, odd lengths). Those warnings become
    # notes in the report instead of reaching the user's terminal as a warning with a library path.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        arr, ds, n_frames = _decode_dicom(name, data, frame, max_pixels)
    for w in caught:
        note = f"DICOM reader: {without_quoted_values(str(w.message))}"
        if note not in notes:
            notes.append(note)
    if n_frames > 1:
        arr = arr[frame]
        notes.append(f"frame {frame} of {n_frames}")
    return _dicom_pixels(name, arr, ds, notes), _burned_in(ds)


def _dicom_pixels(name: str, arr: np.ndarray, ds: Any, notes: list[str]) -> np.ndarray:
    """One frame's stored values -> [0, 1]: the modality and VOI LUTs (or a window) for greyscale, the palette for
    PALETTE COLOR."""
    from pydicom.multival import MultiValue
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric.startswith("MONOCHROME"):
        x = apply_modality_lut(arr, ds).astype(np.float64)
        if "WindowCenter" in ds and "WindowWidth" in ds:
            wc, ww = ds.WindowCenter, ds.WindowWidth
            wc = float(wc[0] if isinstance(wc, MultiValue) else wc)
            ww = max(float(ww[0] if isinstance(ww, MultiValue) else ww), 1.0)
            # The linear VOI function of DICOM PS3.3 C.11.2.1.2, onto [0, 1].
            x = np.clip((x - (wc - 0.5)) / (ww - 1.0 if ww > 1 else 1.0) + 0.5, 0.0, 1.0)
            notes.append(f"DICOM VOI window centre {wc:g} width {ww:g}")
        elif "VOILUTSequence" in ds:
            x = apply_voi_lut(x, ds, index=0).astype(np.float64)
            x = (x - x.min()) / max(float(x.max() - x.min()), 1e-12)
            notes.append("DICOM VOI LUT applied")
        else:
            lo, hi = np.percentile(x, [0.5, 99.5])
            notes.append(f"no VOI window in the header: robust 0.5-99.5 percentile window {lo:g}..{hi:g}")
            x = np.clip((x - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
        if photometric == "MONOCHROME1":
            x = 1.0 - x
            notes.append("MONOCHROME1 inverted so that dense tissue is bright")
        return x.astype(np.float32)
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
        notes.append("DICOM palette colour applied")
    return _to_unit(name, np.asarray(arr), notes)
