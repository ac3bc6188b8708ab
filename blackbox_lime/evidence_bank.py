"""EBR: evidence-based regularisation. A prior map from similar historical cases.

A bank of historical abnormal cases holds, for each case i, an embedding p_i from the local MAE
encoder (``onnx/mae_embed.onnx``) and a patch-level evidence map w_i on the explanation's patch
grid. For a new image X, the N_T nearest cases by cosine distance are weighted by a
Nadaraya-Watson Gaussian kernel and averaged into the reference map

    w_NW = sum_j K_j w_j / sum_j K_j,   K_j = exp(-||p_X - p_j||^2 / (2 h^2))

which the surrogate's evidence term lambda2 ||w - w_ref||^2 pulls the patch weights towards
(``blackbox_lime/surrogate.py``; the surrogate scales w_NW to the answer's units by a least-squares
fit of the prior's shape to the queried samples, so a prior that the samples do not support pulls
towards zero).

Embeddings are centred on the bank's mean and scaled to unit length before any distance is taken:
the MAE's mean patch token has a large component shared by every image of a modality (on 200 train
phantoms per modality the bank's mean carries 91-92 % of an embedding's squared norm; raw cosines
between cases have a median of 0.95-0.96, and the 10 nearest sit at 0.995; ``python -m
blackbox_lime.evaluation.tune --part prior``, docs/tune_val/prior.md), which would otherwise
swamp the differences between cases (a bank of one case is not centred). With
unit vectors ||p_X - p_j||^2 = 2 - 2 cos(p_X, p_j). The bandwidth h is the median distance of the N_T
neighbours unless it is given.

Where the maps come from (``source``):

- ``"masks"``: annotated lesion masks of the historical cases; w_i is the fraction of each patch
  that the lesion covers. Costs no classifier queries and does not depend on the model.
- ``"explanations"``: MedLIME explanations of the historical cases through the same classifier;
  w_i are their patch weights. Costs the queries of one explanation per case, once.

Maps are stored scaled to max |w_i| = 1. The bank is local: it never leaves the site, and nothing of
it is sent to the classifier. Files are ``.npz`` (no pickles) with a JSON header, written atomically.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from blackbox_lime.fill.fillers import mae_input, open_mae
from blackbox_lime.patches import PatchGrid

log = logging.getLogger(__name__)

BANK_FORMAT = "blackbox-lime evidence bank v1"
SOURCES = ("masks", "explanations")


class BankError(ValueError):
    """An evidence bank that cannot be read, or that does not fit the explanation."""


class Embedder:
    """The MAE encoder's embedding of an image (``mae_embed.onnx``): the retrieval key of EBR.

    Parameters
    ----------
    path : the embedding graph; default the bundled ``onnx/mae_embed.onnx``.
    threads, device : passed to onnxruntime (see :func:`blackbox_lime.adapters.onnx.make_session`).
    """

    def __init__(self, path: str | Path | None = None, threads: int | None = None, device: str = "auto") -> None:
        from blackbox_lime.outputs import file_sha256

        self.path, self.session, self.provider, meta = open_mae(path, "mae_embed.onnx", threads, device)
        self.size, _, self.channels, self.mean, self.std = meta
        self.sha256 = file_sha256(self.path)
        self.notes: list[str] = []

    def describe(self) -> dict[str, Any]:
        return {"file": self.path.name, "sha256": self.sha256}

    def embed(self, images: Sequence[np.ndarray] | np.ndarray, batch_size: int = 32) -> np.ndarray:
        """images: N float32 arrays (H, W, C) in [0, 1], any size -> float32 (N, D), the raw (uncentred) embeddings."""
        x = np.stack([mae_input(im, self.size, self.channels, self.mean, self.std, self.notes) for im in images])
        outs = [self.session.run(["embedding"], {"image": x[i:i + batch_size]})[0] for i in range(0, len(x), batch_size)]
        return np.concatenate(outs).astype(np.float32)


def mask_patch_map(mask: np.ndarray, grid: PatchGrid) -> np.ndarray:
    """The fraction of each patch that a lesion mask covers. mask: bool (h, w), any size -> float64 (P,)."""
    m: np.ndarray = np.asarray(mask, np.float32)
    if m.shape != (grid.height, grid.width):
        m = cv2.resize(m, (grid.width, grid.height), interpolation=cv2.INTER_AREA)
    index = grid.pixel_index().ravel()
    area = np.bincount(index, minlength=grid.n_patches)
    return np.bincount(index, weights=m.ravel().astype(np.float64), minlength=grid.n_patches) / area


@dataclass
class EvidenceBank:
    """Historical abnormal cases: embeddings and patch-level evidence maps.

    Attributes
    ----------
    embeddings : float32 (M, D), raw MAE embeddings.
    maps : float32 (M, P), evidence maps on the patch grid, each scaled to max |w| = 1.
    case_ids : M names (file names or phantom keys; never patient identifiers unless the site put them there).
    grid : (rows, cols) of the patch grid; patch_size and canvas (height, width) of the explanation.
    target_name : the class the maps are evidence for (e.g. "abnormal").
    source : "masks" or "explanations".
    embedder : the embedding model's file name and SHA-256 (a bank only works with the embedder it was built with).
    meta : anything else worth recording (the model of "explanations", the tool version, ...).
    """

    embeddings: np.ndarray
    maps: np.ndarray
    case_ids: list[str]
    grid: tuple[int, int]
    patch_size: int
    canvas: tuple[int, int]
    target_name: str
    source: str
    embedder: dict[str, str]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        m = len(self.case_ids)
        if m < 1:
            raise BankError("An evidence bank needs at least one abnormal case.")
        if self.embeddings.ndim != 2 or self.embeddings.shape[0] != m:
            raise BankError(f"embeddings must be (cases, D) with {m} rows. Got {self.embeddings.shape} instead.")
        if self.maps.shape != (m, self.grid[0] * self.grid[1]):
            raise BankError(f"maps must be (cases, patches) = ({m}, {self.grid[0] * self.grid[1]}). "
                            f"Got {self.maps.shape} instead.")
        if not (np.isfinite(self.embeddings).all() and np.isfinite(self.maps).all()):
            raise BankError("The evidence bank holds NaN or infinite values; rebuild it.")
        if self.source not in SOURCES:
            raise BankError(f"source must be one of {', '.join(SOURCES)}. Got {self.source!r} instead.")
        # a single case has nothing to be told apart from: centring would leave it a zero vector
        self.centre = self.embeddings.mean(axis=0) if m > 1 else np.zeros(self.embeddings.shape[1], np.float32)
        self.retrieval_keys = unit_rows(self.embeddings - self.centre)  # (M, D) centred, unit length

    def __len__(self) -> int:
        return len(self.case_ids)

    def keys(self, embeddings: np.ndarray) -> np.ndarray:
        """Centred unit retrieval keys for new embeddings (N, D) -> (N, D)."""
        return unit_rows(np.asarray(embeddings, np.float64) - self.centre)

    def describe(self) -> dict[str, Any]:
        return {"cases": len(self), "source": self.source, "target": self.target_name, "grid": list(self.grid),
                "patch_size": self.patch_size, "embedder": self.embedder, **self.meta}

    def check_fits(self, grid: PatchGrid, embedder: "Embedder") -> None:
        """Raise BankError unless the bank fits this explanation's patch grid and embedder."""
        if (grid.rows, grid.cols) != tuple(self.grid) or grid.patch != self.patch_size:
            raise BankError(
                f"The evidence bank was built on a {self.grid[0]}x{self.grid[1]} grid of {self.patch_size}-px patches; "
                f"this explanation uses {grid.rows}x{grid.cols} patches of {grid.patch} px. Rebuild the bank with "
                f"--patch-size {grid.patch} for this model, or explain with --patch-size {self.patch_size}.")
        if embedder.sha256 != self.embedder.get("sha256"):
            raise BankError(
                f"The evidence bank was built with the embedder {self.embedder.get('file')} "
                f"({str(self.embedder.get('sha256'))[:12]}...), not {embedder.path.name} ({embedder.sha256[:12]}...). "
                "Rebuild the bank with this embedder, or pass the one it was built with.")

    # -- files ---------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        header = {"format": BANK_FORMAT, "case_ids": self.case_ids, "grid": list(self.grid),
                  "patch_size": self.patch_size, "canvas": list(self.canvas), "target_name": self.target_name,
                  "source": self.source, "embedder": self.embedder, "meta": self.meta}
        buf = io.BytesIO()
        np.savez_compressed(buf, embeddings=self.embeddings.astype(np.float32), maps=self.maps.astype(np.float32),
                            header=np.frombuffer(json.dumps(header).encode(), np.uint8))
        return buf.getvalue()

    def save(self, path: str | Path) -> Path:
        from blackbox_lime.outputs import atomic_write_bytes

        path = Path(path)
        atomic_write_bytes(path, self.to_bytes())
        return path

    @classmethod
    def load(cls, path: str | Path) -> "EvidenceBank":
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in ("embeddings", "maps", "header")}
        except FileNotFoundError:
            raise BankError(f"Evidence bank not found: {path}. Build one with `blackbox-lime bank build`.") from None
        except (OSError, ValueError, KeyError, EOFError) as exc:
            raise BankError(f"{path.name} is not an evidence bank ({type(exc).__name__}). "
                            "Build one with `blackbox-lime bank build`.") from exc
        try:
            header = json.loads(arrays["header"].tobytes().decode())
            if header.get("format") != BANK_FORMAT:
                raise ValueError(f"format {header.get('format')!r}")
            return cls(embeddings=arrays["embeddings"], maps=arrays["maps"], case_ids=list(header["case_ids"]),
                       grid=tuple(header["grid"]), patch_size=int(header["patch_size"]),  # type: ignore[arg-type]
                       canvas=tuple(header["canvas"]), target_name=str(header["target_name"]),  # type: ignore[arg-type]
                       source=str(header["source"]), embedder=dict(header["embedder"]), meta=dict(header["meta"]))
        except BankError:
            raise
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise BankError(f"{path.name} is not a readable evidence bank ({exc}). "
                            "Build one with `blackbox-lime bank build`.") from exc


def unit_rows(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def build_bank(images: Sequence[np.ndarray], maps: Sequence[np.ndarray], case_ids: Sequence[str], embedder: Embedder,
               grid: PatchGrid, target_name: str, source: str, meta: dict[str, Any] | None = None) -> EvidenceBank:
    """A bank from abnormal cases: images at any size (H, W, C) in [0, 1], and their maps (P,) on ``grid``.

    Cases whose map is all zero carry no evidence and are left out (a mask that misses every patch,
    or an explanation that kept no patch).
    """
    keep = [i for i, m in enumerate(maps) if np.any(np.asarray(m) != 0)]
    if not keep:
        raise BankError("None of the cases carries evidence (every map is zero); nothing to build a bank from.")
    emb = embedder.embed([images[i] for i in keep])
    w = np.stack([np.asarray(maps[i], np.float64) for i in keep])
    w = w / np.abs(w).max(axis=1, keepdims=True)
    from blackbox_lime._version import __version__

    return EvidenceBank(embeddings=emb, maps=w.astype(np.float32), case_ids=[str(case_ids[i]) for i in keep],
                        grid=(grid.rows, grid.cols), patch_size=grid.patch, canvas=(grid.height, grid.width),
                        target_name=target_name, source=source, embedder=embedder.describe(),
                        meta={"version": __version__, "left_out": len(maps) - len(keep), **(meta or {})})


class EvidencePrior:
    """The EBR reference map for an image: ``prior(canvas) -> (w_NW (P,), neighbours)``.

    Parameters
    ----------
    bank : an :class:`EvidenceBank` built on the explanation's grid.
    embedder : the :class:`Embedder` the bank was built with.
    n_neighbours : N_T, the nearest cases used (at most the bank's size).
    bandwidth : h of the Gaussian kernel on unit-vector distances; None: the median distance of the N_T
        neighbours (a scale-free default).
    """

    def __init__(self, bank: EvidenceBank, embedder: Embedder, n_neighbours: int = 10,
                 bandwidth: float | None = None) -> None:
        if n_neighbours < 1:
            raise ValueError(f"n_neighbours must be an integer >= 1. Got {n_neighbours!r} instead.")
        if bandwidth is not None and not bandwidth > 0:
            raise ValueError(f"bandwidth must be > 0 or None. Got {bandwidth!r} instead.")
        self.bank, self.embedder = bank, embedder
        self.n_neighbours, self.bandwidth = n_neighbours, bandwidth
        self.last: dict[str, Any] = {}

    def __call__(self, canvas: np.ndarray) -> tuple[np.ndarray, list[dict[str, Any]]]:
        key = self.bank.keys(self.embedder.embed(canvas[None]))[0]
        ref, neighbours, h = nadaraya_watson(key, self.bank.retrieval_keys, self.bank.maps, self.n_neighbours, self.bandwidth)
        for n in neighbours:
            n["case"] = self.bank.case_ids[n.pop("index")]
        self.last = {"bandwidth": h, "n_neighbours": len(neighbours)}
        return ref, neighbours


@dataclass
class EvidenceUse:
    """How one explanation used EBR's evidence prior (``Explanation.evidence`` is its :meth:`summary`).

    Attributes
    ----------
    neighbours : the historical cases the prior was taken from.
    prior : what the prior itself reports (:class:`EvidencePrior`: the kernel ``bandwidth`` h and
        ``n_neighbours``; another ``reference=`` callable may report its own keys through ``last``, or none).
    reference_scale : the scale the surrogate gave the prior (None until the surrogate is fitted).
    lambda2 : the prior's weight in the surrogate's penalty (None until the surrogate is fitted).
    """

    neighbours: int
    prior: dict[str, Any] = field(default_factory=dict)
    reference_scale: float | None = None
    lambda2: float | None = None

    def fitted(self, reference_scale: float, lambda2: float) -> "EvidenceUse":
        """The record once the surrogate has weighed the prior."""
        return replace(self, reference_scale=reference_scale, lambda2=lambda2)

    def summary(self) -> dict[str, Any]:
        """The JSON record, in its historical key order (older JSONs read the same)."""
        out: dict[str, Any] = {"neighbours": self.neighbours, **self.prior}
        if self.reference_scale is not None:
            out["reference_scale"] = self.reference_scale
        if self.lambda2 is not None:
            out["lambda2"] = self.lambda2
        return out

    @classmethod
    def from_summary(cls, record: dict[str, Any]) -> "EvidenceUse":
        """Read a stored record back (a JSON's ``evidence``)."""
        rest = {k: v for k, v in record.items() if k not in ("neighbours", "reference_scale", "lambda2")}
        return cls(int(record.get("neighbours", 0)), rest, record.get("reference_scale"), record.get("lambda2"))


def nadaraya_watson(key: np.ndarray, keys: np.ndarray, maps: np.ndarray, k: int,
                    bandwidth: float | None = None) -> tuple[np.ndarray, list[dict[str, Any]], float]:
    """w_NW over the k nearest unit ``keys`` (M, D) to the unit ``key`` (D,) by cosine distance.

    Returns (w_NW (P,), the neighbours as dicts of index, cosine similarity and kernel weight, h).
    """
    sim = keys @ key  # (M,)
    k = min(k, len(sim))
    nearest = np.argsort(-sim, kind="stable")[:k]
    d2 = np.clip(2.0 - 2.0 * sim[nearest], 0.0, None)  # squared distance of unit vectors
    h = float(bandwidth) if bandwidth is not None else float(np.median(np.sqrt(d2)))
    if not h > 0:  # every neighbour at distance 0 (duplicates): equal weights
        kern = np.ones(k)
        h = 0.0
    else:
        kern = np.exp(-d2 / (2.0 * h * h))
    weights = kern / kern.sum()
    ref = weights @ np.asarray(maps, np.float64)[nearest]
    neighbours = [{"index": int(i), "similarity": round(float(sim[i]), 6), "weight": round(float(wt), 6)}
                  for i, wt in zip(nearest, weights)]
    return ref, neighbours, h

