"""Sampling: fill, composite and query a design of masks, chunk by chunk, the next chunk's fills made while this
chunk's queries are in flight (remote models)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np

from blackbox_lime.adapters.base import ClassifierAdapter
from blackbox_lime.fill.fillers import Filler
from blackbox_lime.patches import PatchGrid

InputTransform = Callable[[np.ndarray], np.ndarray]


class Sampler:
    """Queries a classifier (``adapter``) on perturbations of a canvas over ``grid``, ``batch_size`` fill groups per
    chunk; ``overlap``: the next chunk's fills are made on a worker thread while this chunk is queried."""

    def __init__(self, adapter: ClassifierAdapter, grid: PatchGrid, batch_size: int, overlap: bool) -> None:
        self.adapter, self.grid, self.batch_size, self.overlap = adapter, grid, batch_size, overlap
        self.n_classes = len(adapter.info.class_names)

    def sample(self, canvas: np.ndarray, filler: Filler, visible: np.ndarray, group: np.ndarray,
                transform: InputTransform | None, bar: Any, timings: dict[str, float],
                before_queries: Callable[[], object] | None = None) -> np.ndarray:
        """Fill, composite and query a design: visible bool (n, P); group int (n,) of consecutive groups from 0
        that share one fill (MAE). -> probs float64 (n, K).

        Chunks of ``batch_size`` groups. With ``overlap`` (the default for a remote model) the next chunk's fills and composites
        are made on a worker thread while this chunk's queries are in flight (onnxruntime and the network
        release the GIL): at most two chunks are alive, and the answers are placed by row, so the result is
        the serial one bit for bit. ``before_queries`` is called before the first query (the image's own
        answer, asked while the first chunk is filled)."""
        probs = np.zeros((len(visible), self.n_classes))
        if len(visible) == 0:
            if before_queries is not None:
                before_queries()
            return probs
        chunks = _Chunks(self.grid, canvas, filler, visible, group, self.batch_size, timings)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="blackbox-lime-fill") as pool:
            pending = pool.submit(chunks.make, 0) if self.overlap else None
            if before_queries is not None:
                before_queries()  # with overlap, while the first chunk is filled
            for i in range(len(chunks)):
                rows, batch = pending.result() if pending is not None else chunks.make(i)
                if pending is not None and i + 1 < len(chunks):
                    pending = pool.submit(chunks.make, i + 1)  # fills the other buffer while this one is queried
                t = time.perf_counter()
                probs[rows] = self.query(batch, transform)
                timings["classifier"] += time.perf_counter() - t
                bar.update(len(rows))
        return probs

    def query(self, batch: np.ndarray, transform: InputTransform | None) -> np.ndarray:
        """The adapter's answers: NaN where a censoring endpoint omitted a label (the explainer completes them)."""
        if transform is not None:
            batch = transform(batch)
        return self.adapter.predict(batch)


class _Chunks:
    """A design cut into chunks of ``step`` fill groups, each made on demand: its rows and its composited
    images. Two buffers, used in turn: chunk i+1 is made while chunk i is queried, never further ahead."""

    def __init__(self, grid: PatchGrid, canvas: np.ndarray, filler: Filler, visible: np.ndarray, group: np.ndarray,
                 step: int, timings: dict[str, float]) -> None:
        self.grid, self.canvas, self.filler, self.visible, self.group, self.timings = (grid, canvas, filler, visible,
                                                                                       group, timings)
        n_groups = int(group.max()) + 1
        self.first_row = np.searchsorted(group, np.arange(n_groups))  # groups occupy consecutive rows
        self.bounds = [(g, min(n_groups, g + step)) for g in range(0, n_groups, step)]
        rows = max(self._rows(i).size for i in range(len(self.bounds)))
        self.buffers = [np.empty((rows,) + canvas.shape, np.float32) for _ in range(min(2, len(self.bounds)))]
        self.static_fill = None
        if not filler.depends_on_mask():  # mean, blur, zero: one fill for every sample
            t = time.perf_counter()
            self.static_fill = filler.fill(canvas, np.zeros((1,) + canvas.shape[:2], bool))[0]
            timings["fill"] += time.perf_counter() - t

    def __len__(self) -> int:
        return len(self.bounds)

    def _rows(self, i: int) -> np.ndarray:
        g0, g1 = self.bounds[i]
        return np.arange(self.first_row[g0], self.first_row[g1] if g1 < len(self.first_row) else len(self.visible))

    def make(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Chunk i: (its rows, its composited images (rows, H, W, C)) in buffer i % 2."""
        g0, g1 = self.bounds[i]
        rows = self._rows(i)
        out = self.buffers[i % len(self.buffers)][:len(rows)]
        t = time.perf_counter()
        if self.static_fill is None:
            fills = self.filler.fill(self.canvas, self.grid.hidden_pixels(self.visible[self.first_row[g0:g1]]))
            self.timings["fill"] += time.perf_counter() - t
            t = time.perf_counter()
            batch = self.grid.composite(self.visible[rows], self.canvas, fills, self.group[rows] - g0, out=out)
        else:
            batch = self.grid.composite(self.visible[rows], self.canvas, self.static_fill[None], None, out=out)
        self.timings["compose"] += time.perf_counter() - t
        return rows, batch
