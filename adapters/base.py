"""The classifier adapter protocol.

An adapter is the only way the explainer reaches a classifier. Subclasses implement one method,
:meth:`ClassifierAdapter._predict_batch`, for one batch of at most ``max_batch`` images; the base
class owns the plumbing that is the same for every backend: input validation, batch splitting,
the query budget, the query and request counters, and validation of the returned probabilities.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

import numpy as np

from .errors import BudgetExhausted, ResponseError

log = logging.getLogger(__name__)

DECLARE = (": --output-kind on the command line, output = \"...\" in the ONNX model's metadata, or kind = \"...\" "
           "in the endpoint profile's [output]")


@dataclass(frozen=True)
class ModelInfo:
    """What the explainer needs to know about a classifier.

    Attributes
    ----------
    input_size : (height, width) the model expects; images passed to ``predict`` have this size.
    channels : 1 or 3.
    class_names : names of the K classes (K >= 2), in output order.
    abnormal_index : the index of the "abnormal" class in ``class_names``.
    name : a short human-readable name (a file name or model name, never a secret).
    extra : backend details worth reporting (provider, URL without credentials, ...).
    """

    input_size: tuple[int, int]
    channels: int
    class_names: tuple[str, ...]
    abnormal_index: int
    name: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def multilabel(self) -> bool:
        """Whether the outputs are independent per-finding probabilities (``extra["output"]`` multilabel*)."""
        return str(self.extra.get("output", "")).startswith("multilabel")

    def __post_init__(self) -> None:
        if len(self.input_size) != 2 or min(self.input_size) < 1:
            raise ValueError(f"input_size must be (height, width) with positive sides. Got {self.input_size!r} instead.")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3. Got {self.channels!r} instead.")
        if len(self.class_names) < 2:
            raise ValueError(f"class_names must name at least 2 classes. Got {self.class_names!r} instead.")
        if not 0 <= self.abnormal_index < len(self.class_names):
            raise ValueError(
                f"abnormal_index must be in [0, {len(self.class_names) - 1}]. Got {self.abnormal_index!r} instead.")


_A = TypeVar("_A", bound="ClassifierAdapter")

class ClassifierAdapter(ABC):
    """Base class of every adapter: ``predict(images) -> probs`` plus metadata and counters.

    Parameters
    ----------
    max_batch : int
        The most images sent in one request / session run.
    budget : int or None
        A hard limit on the number of images queried over the adapter's life. A batch that would
        exceed it is not sent; :class:`~blackbox_lime.adapters.errors.BudgetExhausted` is raised instead.
    """

    #: False where the model runs elsewhere (an endpoint): then the explainer makes the next fills while
    #: requests are in flight, instead of competing with the model for this machine's cores.
    computes_locally: bool = True

    def __init__(self, max_batch: int = 64, budget: int | None = None) -> None:
        if not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be an integer >= 1. Got {max_batch!r} instead.")
        if budget is not None and (not isinstance(budget, int) or budget < 1):
            raise ValueError(f"budget must be None or an integer >= 1. Got {budget!r} instead.")
        self.max_batch = max_batch
        self.budget = budget
        self.queries = 0  # images sent, retries included: what the endpoint was asked to compute
        self.requests = 0  # requests (session runs) made, retries included
        self.retries = 0  # requests that were sent again after a transient failure
        self.images_asked = 0  # images the caller asked about (each once, however often it was sent)
        self.refused_for_size = 0  # requests the server refused for their size (remote adapters then split them)
        self.request_size = max_batch  # images per request now: max_batch, or less where a server refused it
        #: Called with n before every send of n images, retries included, under the counting lock; it may raise
        #: BudgetExhausted. An audit sets it so that a budget spans every image put on the wire (audit/answers.py).
        self.charge: Callable[[int], None] | None = None
        self._count_lock = threading.Lock()

    # -- the one method a backend implements -------------------------------------------------

    @property
    @abstractmethod
    def info(self) -> ModelInfo:
        """The model's metadata."""

    @abstractmethod
    def _predict_batch(self, images: np.ndarray) -> np.ndarray:
        """Run one batch. images: float32 (n, H, W, C) in [0, 1], n <= max_batch -> (n, K) or (n,)."""

    # -- shared plumbing ---------------------------------------------------------------------

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities for a batch of images.

        Parameters
        ----------
        images : float32 array (N, H, W, C) in [0, 1] at ``info.input_size`` and ``info.channels``.

        Returns
        -------
        float64 array (N, K) of class probabilities (rows sum to 1 within 1e-3), or for a multi-label model
        (``info.multilabel``) K independent finding probabilities in [0, 1]. A binary model that returns
        only P(positive) is expanded to two columns [1 - p, p].
        """
        images = self._check_images(images)
        n = images.shape[0]
        self._check_budget(n)
        with self._count_lock:
            self.images_asked += n
        size = self.request_size
        chunks = [images[i:i + size] for i in range(0, n, size)]
        outs = self._run_batches(chunks)
        return np.concatenate(outs, axis=0) if outs else np.zeros((0, len(self.info.class_names)))

    def counters(self) -> dict[str, int]:
        """What was sent so far: ``queries`` (images sent, retries included), ``images_asked`` (each image the
        caller asked about, once), ``requests``, ``retries``, ``refused_for_size`` and the ``request_size`` in use
        (max_batch unless a server refused requests that large)."""
        with self._count_lock:
            return {"queries": self.queries, "images_asked": self.images_asked, "requests": self.requests,
                    "retries": self.retries, "refused_for_size": self.refused_for_size,
                    "request_size": self.request_size, "max_batch": self.max_batch}

    def _check_budget(self, n: int) -> None:
        """Raise BudgetExhausted if sending n more images would exceed the budget."""
        if self.budget is not None and self.queries + n > self.budget:
            raise BudgetExhausted(
                f"Query budget exhausted: {self.queries} of {self.budget} queries used, and the next call needs {n}. "
                "Raise the budget or lower --samples.", used=self.queries, budget=self.budget)

    def _count(self, n: int) -> None:
        """Check the budget and count one request of n images, atomically (adapters may send from threads)."""
        with self._count_lock:
            self._check_budget(n)
            if self.charge is not None:
                self.charge(n)
            self.requests += 1
            self.queries += n

    def _run_batches(self, chunks: list[np.ndarray]) -> list[np.ndarray]:
        """Run the batches and return their probabilities in order (remote adapters run them concurrently)."""
        return [self._run_one(c) for c in chunks]

    def _run_one(self, batch: np.ndarray) -> np.ndarray:
        raw = self._send(np.ascontiguousarray(batch, dtype=np.float32))
        return self._check_probs(raw, batch.shape[0])

    def _send(self, batch: np.ndarray) -> np.ndarray:
        """Count and run one batch; remote adapters wrap this in their retry policy."""
        self._count(batch.shape[0])
        return self._predict_batch(batch)

    def _check_images(self, images: np.ndarray) -> np.ndarray:
        info = self.info
        if not isinstance(images, np.ndarray) or images.ndim != 4:
            shape = getattr(images, "shape", None)
            raise ValueError(f"predict expects an array of shape (N, H, W, C). Got shape {shape!r} instead.")
        h, w = info.input_size
        if images.shape[1:] != (h, w, info.channels):
            raise ValueError(
                f"predict expects images of shape (N, {h}, {w}, {info.channels}) for this model. "
                f"Got {images.shape} instead; resize to the adapter's input_size first.")
        return images.astype(np.float32, copy=False)

    def _sum_tolerance(self) -> float:
        """How far from 1 a row of exclusive probabilities may sum (rounding of the output's datatype)."""
        return 1e-3

    def _output_where(self) -> str:
        """Who produced the output, for error messages ("The model", or the response field of an endpoint)."""
        return "The model"

    def _check_probs(self, raw: Any, n: int) -> np.ndarray:
        who = self._output_where()
        k = len(self.info.class_names)
        p = np.asarray(raw, dtype=np.float64)
        per_class = p.ndim == 2
        if p.ndim == 1 and k == 2:
            p = np.stack([1.0 - p, p], axis=1)
        if p.shape != (n, k):
            more = ""
            if p.ndim == 2 and p.shape[0] == n and p.shape[1] != k:
                more = (f": {p.shape[1]} values per image but {k} class names are known ({', '.join(self.info.class_names)})"
                        f". Declare the model's {p.shape[1]} class or finding names (class_names in the ONNX metadata "
                        "or in the endpoint profile's [output])")
            raise ResponseError(f"{who} returned an output of shape {p.shape}; expected ({n}, {k}) class "
                                f"probabilities{more}.")
        if not np.all(np.isfinite(p)):
            raise ResponseError(f"{who} returned NaN or infinite probabilities. Check the model and its preprocessing.")
        if p.min() < -1e-6 or p.max() > 1 + 1e-6:
            raise ResponseError(
                f"{who} returned values outside [0, 1] (min {p.min():.4g}, max {p.max():.4g}); expected probabilities. "
                f"If the model outputs logits, declare its output as logits (a softmax over exclusive classes) or "
                f"multilabel_logits (a sigmoid per finding){DECLARE}.")
        if per_class and not self.info.multilabel:
            sums = p.sum(axis=1)
            if np.any(np.abs(sums - 1.0) > self._sum_tolerance()):
                raise ResponseError(
                    f"{who}: the probabilities do not sum to 1 (row sums from {sums.min():.4g} to {sums.max():.4g}), so "
                    f"the classes are not exclusive. If each column is its own finding's probability (a multi-label "
                    f"model), declare its output as multilabel{DECLARE}.")
        return np.clip(p, 0.0, 1.0)

    # -- life cycle --------------------------------------------------------------------------

    def close(self) -> None:
        """Release the backend's resources. Safe to call twice."""

    def __enter__(self: _A) -> _A:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
