"""The MedLIME pipeline: masks -> STTA -> fills -> queries -> evidence prior -> surrogate -> pixel saliency.

    explainer = Explainer(adapter, ExplainConfig(stta=True), bank="bank.npz")   # any adapters.ClassifierAdapter
    explanation = explainer.explain(image, target=None, rng=0)

The three parts of MedLIME: GM (the MAE fill, blackbox_lime/fill/; the default ``config.fill="auto"``
keeps it where the MAE knows the image and otherwise picks a classic fill, blackbox_lime/fill/policy.py), STTA
(``config.stta``, blackbox_lime/test_time_adaptation.py: every queried image passes through the
adapted transform) and EBR (``bank=``, blackbox_lime/evidence_bank.py: the evidence prior w_ref of the
surrogate). ``input_transform`` and ``reference`` remain open for other transforms and priors.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Callable, overload

import cv2
import numpy as np

from blackbox_lime.adapters.base import ClassifierAdapter
from blackbox_lime.adapters.censoring import censoring_of
from blackbox_lime.config import ExplainConfig
from blackbox_lime.evidence_bank import Embedder, EvidenceBank, EvidencePrior
from blackbox_lime.explanation import Explanation, ExplanationSet
from blackbox_lime.fill.choice import FillChoice
from blackbox_lime.fill.fillers import Filler, MAEFiller
from blackbox_lime.fill.policy import AutoFill, FillPlan, make_policy
from blackbox_lime.fill.registry import make_filler
from blackbox_lime.patches import PatchGrid, draw_masks
from blackbox_lime.fitting import Fitter, Run, Shared
from blackbox_lime.sampling import Sampler
from blackbox_lime.stopping import sample_until_settled
from blackbox_lime.surrogate import proximity_kernel
from blackbox_lime.test_time_adaptation import Adaptation, adapt

log = logging.getLogger(__name__)


InputTransform = Callable[[np.ndarray], np.ndarray]


def check_image(image: np.ndarray) -> np.ndarray:
    """Validate a pixel array: (H, W) or (H, W, C) with C in {1, 3}, finite, in [0, 1] -> float32 (H, W, C)."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"The image must be a numpy array. Got {type(image).__name__} instead.")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ValueError(
            f"The image must have shape (H, W), (H, W, 1) or (H, W, 3). Got shape {image.shape} instead; "
            "convert it to grayscale or RGB.")
    if not np.issubdtype(image.dtype, np.number) or not np.all(np.isfinite(image)):
        raise ValueError("The image contains NaN or infinite values; clean or re-export it.")
    if image.min() < 0.0 or image.max() > 1.0:
        raise ValueError(
            f"The image values must lie in [0, 1]. Got values from {image.min():.4g} to {image.max():.4g}; "
            "rescale it (image loaders in blackbox_lime.image_io do this).")
    return image.astype(np.float32, copy=False)


def to_canvas(image: np.ndarray, size: tuple[int, int], channels: int, notes: list[str]) -> np.ndarray:
    """Map an image to the classifier's input size and channel count; record what was done."""
    h, w = size
    x = image
    if x.shape[:2] != (h, w):
        interp = cv2.INTER_AREA if x.shape[0] > h and x.shape[1] > w else cv2.INTER_LINEAR
        x = cv2.resize(x, (w, h), interpolation=interp).reshape(h, w, -1)
        notes.append(f"image resized from {image.shape[1]}x{image.shape[0]} to the model's {w}x{h}")
    if x.shape[2] != channels:
        if x.shape[2] == 1:
            x = np.repeat(x, channels, axis=2)
            notes.append(f"grayscale image replicated to the model's {channels} channels")
        else:
            x = (x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
            notes.append("colour image converted to grayscale (luma) for a 1-channel model")
    return np.ascontiguousarray(x, dtype=np.float32)


class Explainer:
    """Explains a black-box classifier's answers as pixel saliency maps (MedLIME).

    Parameters
    ----------
    adapter : the classifier, reached only through ``adapter.predict``.
    config : an :class:`~blackbox_lime.config.ExplainConfig`.
    mae_path : the MAE graph for ``fill="mae"`` (default: the bundled ``mae_recon.onnx``).
    filler : a ready :class:`~blackbox_lime.generative_masking.Filler` (overrides ``config.fill``).
    bank : EBR's evidence bank (an :class:`~blackbox_lime.evidence_bank.EvidenceBank` or the path of one);
        its prior is used when the explained class is the model's abnormal class (the bank holds
        abnormal cases and their evidence).
    embed_path : the embedding graph the bank was built with (default: the bundled ``mae_embed.onnx``).
    input_transform : a fixed transform applied to every batch of images (N, H, W, C) before querying
        (before STTA's, when ``config.stta`` is on).
    reference : another prior, a callable ``canvas -> (w_ref (P,), neighbours)``, instead of ``bank``;
        None and no bank give w_ref = 0.
    device, threads : for the local MAE's onnxruntime sessions.
    overlap : make the next chunk's fills while this chunk's queries are in flight (the same maps bit for bit).
        Default: for a remote model, whose work is done elsewhere; a local model's inference and the MAE
        would share this machine's cores (docs/remote.md measures both).
    """

    def __init__(self, adapter: ClassifierAdapter, config: ExplainConfig | None = None, *, mae_path: str | None = None,
                 filler: Filler | None = None, bank: EvidenceBank | str | Path | None = None,
                 embed_path: str | Path | None = None, input_transform: InputTransform | None = None,
                 reference: Callable[[np.ndarray], tuple[np.ndarray, list[dict]]] | None = None,
                 device: str = "auto", threads: int | None = None, overlap: bool | None = None) -> None:
        self.adapter = adapter
        self.censoring = censoring_of(adapter.info.extra)  # an endpoint that omits labels from its answers, or None
        self.overlap = not adapter.computes_locally if overlap is None else overlap
        self.config = config or ExplainConfig()
        cfg = self.config

        def make(kind: str) -> Filler:
            return make_filler(kind, cfg.patch_size, mae_path, batch_size=cfg.batch_size, threads=threads,
                               device=device)

        info = adapter.info
        self.grid = PatchGrid(info.input_size[0], info.input_size[1], cfg.patch_size)
        self.policy = make_policy(self.grid, cfg, make, len(info.class_names), filler)  # blackbox_lime/fill/policy.py
        self.sampler = Sampler(adapter, self.grid, cfg.batch_size, bool(self.overlap))  # blackbox_lime/sampling.py
        self.input_transform = input_transform
        mae = self.mae
        if mae is not None and tuple(info.input_size) == (mae.size, mae.size) and cfg.patch_size % mae.patch:
            raise ValueError(
                f"The 'patch_size' parameter must be a multiple of the MAE's patch ({mae.patch}) when the "
                f"model and the MAE share their input size. Got {cfg.patch_size} instead.")
        self.bank: EvidenceBank | None = None
        if bank is not None and reference is not None:
            raise ValueError("Pass either bank= (the evidence bank) or reference= (another prior), not both.")
        if bank is not None:
            self.bank = bank if isinstance(bank, EvidenceBank) else EvidenceBank.load(bank)
            embedder = Embedder(embed_path, threads=threads, device=device)
            self.bank.check_fits(self.grid, embedder)
            reference = EvidencePrior(self.bank, embedder, self.config.n_neighbours)
        self.reference = reference
        self.fitter = Fitter(cfg, info, self.grid, self.bank, reference, self.censoring)  # blackbox_lime/fitting.py

    @property
    def adapter(self) -> ClassifierAdapter:
        """The classifier. An audit swaps in its answers store (StoredAdapter) for the whole run; the sampler
        follows."""
        return self._adapter

    @adapter.setter
    def adapter(self, adapter: ClassifierAdapter) -> None:
        self._adapter = adapter
        if hasattr(self, "sampler"):
            self.sampler.adapter = adapter
        if hasattr(self, "fitter"):
            self.fitter.info = adapter.info

    @property
    def mae(self) -> MAEFiller | None:
        """The MAE filler in use or among the candidates of fill "auto", else None."""
        return next((f for f in self.policy.fillers.values() if isinstance(f, MAEFiller)), None)

    @property
    def filler(self) -> Filler:
        """The fixed fill, or the first candidate of fill "auto" (STTA's probes are filled with it)."""
        return self.policy.preferred

    @property
    def fillers(self) -> dict[str, Filler] | None:
        """Fill "auto"'s candidates (None for a fixed fill)."""
        return self.policy.fillers if isinstance(self.policy, AutoFill) else None

    @overload
    def explain(self, image: np.ndarray, target: int | None = None, rng: int | np.random.Generator = 0,
                progress: bool = False, keep_samples: bool = False, threshold: float = 0.5) -> Explanation: ...

    @overload
    def explain(self, image: np.ndarray, target: Sequence[int] | str, rng: int | np.random.Generator = 0,
                progress: bool = False, keep_samples: bool = False, threshold: float = 0.5) -> ExplanationSet: ...

    def explain(self, image: np.ndarray, target: "int | Sequence[int] | str | None" = None,
                rng: int | np.random.Generator = 0, progress: bool = False, keep_samples: bool = False,
                threshold: float = 0.5) -> "Explanation | ExplanationSet":
        """Explain the model's answer for one image: one class, or several findings from one set of queries.

        Parameters
        ----------
        image : float32 (H, W) or (H, W, C) in [0, 1], any size (C in {1, 3}).
        target : the class to explain (an index; default the model's predicted class) -> an
            :class:`~blackbox_lime.explanation.Explanation`. A list of indices, ``"all"`` (every class or
            finding) or ``"positive"`` (every finding with P >= ``threshold``, else the highest one) ->
            an :class:`~blackbox_lime.explanation.ExplanationSet` with one Explanation per target, all
            fitted on the same queried samples: K maps cost one explanation's queries.
        rng : an integer seed or an ``np.random.Generator``; the only source of randomness.
        progress : draw a progress bar on stderr.
        keep_samples : keep the queried design (masks, probabilities, kernel weights) in ``samples``.
        threshold : for ``target="positive"``.
        """
        result = self.explain_set(image, target, rng, progress, keep_samples, threshold)
        return result if result.several else result[0]

    def explain_set(self, image: np.ndarray, target: "int | Sequence[int] | str | None" = None,
                    rng: int | np.random.Generator = 0, progress: bool = False, keep_samples: bool = False,
                    threshold: float = 0.5) -> ExplanationSet:
        """:meth:`explain`, always as an :class:`~blackbox_lime.explanation.ExplanationSet` (one output path for the
        command line and audits); its ``several`` says whether several targets were asked for."""
        asked, several = _asked(target, self.adapter.info.class_names, threshold)
        return ExplanationSet(self._explain(image, asked, rng, progress, keep_samples, threshold), several=several)

    def _explain(self, image: np.ndarray, targets: "list[int] | str | None", rng: int | np.random.Generator,
                 progress: bool, keep_samples: bool, threshold: float) -> list[Explanation]:
        """The pipeline, once for the image: (STTA) -> the model's answer -> masks, fills and queries; then a
        prior and a surrogate per target, all fitted on the same queried samples."""
        run = self._start(image, rng)
        bar = _progress(self.config.total_queries, progress)
        try:
            adaptation, transform, targets = self._adapt(run, targets, bar)
            answer = _Answer(self, run, transform, targets, threshold, bar, lazy=bool(self.overlap))
            plan, visible, probs, stopping = self._perturb(run, transform, answer, bar)
            targets = answer.targets()
        finally:
            bar.close()
        shared = self._shared(run, plan, visible, probs, adaptation, keep_samples)
        shared.stopping = stopping
        names = [self.adapter.info.class_names[k] for k in targets] if len(targets) > 1 else []
        t_shared = time.perf_counter() - run.t_start
        out = []
        for target in targets:
            t_fit = time.perf_counter()
            exp = self.fitter.fit(shared, target)
            exp.shared_with = names
            exp.timings["total"] = t_shared + (time.perf_counter() - t_fit)  # the shared work plus its own fit
            out.append(exp)
        return out

    def _start(self, image: np.ndarray, rng: int | np.random.Generator) -> Run:
        """Check the image and the seed; map the image to the model's canvas."""
        image = check_image(image)
        if min(image.shape[:2]) < self.config.patch_size:
            raise ValueError(
                f"The image ({image.shape[1]}x{image.shape[0]} px) is smaller than one patch ({self.config.patch_size} "
                "px). Use a larger image or a smaller `patch_size`.")
        seed = int(rng) if isinstance(rng, (int, np.integer)) else None
        gen = np.random.default_rng(rng) if seed is not None else rng
        if not isinstance(gen, np.random.Generator):
            raise TypeError(f"rng must be an int seed or a numpy Generator. Got {type(rng).__name__} instead.")
        notes: list[str] = []
        canvas = to_canvas(image, self.adapter.info.input_size, self.adapter.info.channels, notes)
        timings = dict.fromkeys(("masks", "stta", "fill_choice", "fill", "classifier", "compose", "evidence",
                                 "surrogate"), 0.0)
        return Run(image, canvas, gen, seed, notes, timings, self.adapter.counters(), time.perf_counter())

    def _adapt(self, run: Run, targets: "list[int] | str | None", bar: Any
               ) -> tuple[Adaptation | None, InputTransform | None, "list[int] | str | None"]:
        """STTA (``config.stta``): the photometric transform every queried image passes through, found by SPSA.
        Its own seeded generator: the design is the same with and without STTA, and the adaptation (probes
        included) does not depend on the explanation's seed. Without a target, STTA's label becomes it."""
        transform, cfg = self.input_transform, self.config
        if not cfg.stta:
            return None, transform, targets
        t = time.perf_counter()
        stta_rng = np.random.default_rng(cfg.stta_seed)
        base = run.canvas if transform is None else transform(run.canvas[None])[0]
        probes = _probes(run.canvas, cfg.stta_probes, stta_rng, self.grid, self.filler, run.timings)
        if probes is not None and transform is not None:
            probes = transform(probes)
        label = targets[0] if isinstance(targets, list) and len(targets) == 1 else None
        adaptation = adapt(self.adapter, base, label, stta_rng, cfg.stta_iterations, cfg.stta_views, probes)
        transform = adaptation.transform if transform is None else _chain(transform, adaptation.transform)
        run.timings["stta"] = time.perf_counter() - t
        bar.update(adaptation.queries)
        return adaptation, transform, [adaptation.label] if targets is None else targets

    def _perturb(self, run: Run, transform: InputTransform | None, answer: "_Answer",
                 bar: Any) -> tuple[FillPlan, np.ndarray, np.ndarray, dict[str, Any] | None]:
        """Masks -> fills -> composites -> queries. The fill policy plans the image's fill first (fill "auto"
        chooses; the chosen candidate's pilot queries are kept), and the rest of the budget is spent on it; with
        ``n_samples="auto"`` in rounds until the map has settled (blackbox_lime/stopping.py).
        -> (the fill plan, visible bool (n, P), probs (n, K), the stopping record or None), row 0 the image."""
        cfg = self.config

        def sample(filler: Filler, visible: np.ndarray, group: np.ndarray) -> np.ndarray:
            return self.sampler.sample(run.canvas, filler, visible, group, transform, bar, run.timings)

        plan = self.policy.plan(run.canvas, sample, answer.answered, self._complete, run.gen, run.timings)
        filler = plan.filler
        t = time.perf_counter()
        per_group = cfg.nested_samples if filler.depends_on_mask() else 1
        visible, group = draw_masks(run.gen, self.grid.n_patches, cfg.sample_ceiling - plan.spent, cfg.mask_ratios,
                                    per_group)
        run.timings["masks"] += time.perf_counter() - t
        stopping = None
        if not cfg.adaptive:
            probs = self.sampler.sample(run.canvas, filler, visible[1:], group[1:], transform, bar, run.timings,
                                        answer.probs0)
        else:
            def query(a: int, b: int, before: Callable[[], object] | None) -> np.ndarray:
                rows, groups = visible[1 + a:1 + b], group[1 + a:1 + b]
                return self.sampler.sample(run.canvas, filler, rows, groups - groups[0], transform, bar, run.timings,
                                           before)

            probs, stopping = sample_until_settled(query, visible, per_group, plan.spent, plan.visible, plan.probs,
                                                   answer.probs0, answer.targets, self._complete, cfg, self.grid)
            visible = visible[:1 + len(probs)]
        return (plan, np.concatenate([visible, plan.visible]),
                np.concatenate([answer.probs0(), probs, plan.probs]), stopping)

    def _shared(self, run: Run, plan: FillPlan, visible: np.ndarray, probs: np.ndarray,
                adaptation: Adaptation | None, keep_samples: bool) -> Shared:
        """What every target's explanation shares: the design, its kernel weights, the fill's record and
        warnings, the counts."""
        filler = plan.filler
        run.notes += [n for n in getattr(filler, "notes", []) if n not in run.notes]
        now = self.adapter.counters()
        traffic = {k: now[k] - run.counters[k] for k in ("queries", "images_asked", "requests", "retries",
                                                           "refused_for_size")}
        traffic.update(request_size=now["request_size"], max_batch=now["max_batch"])
        upper = self.censoring.bounds(probs) if self.censoring is not None else None
        return Shared(run, filler, plan.record, plan.warnings, visible, self._complete(probs),
                       proximity_kernel(visible, self.config.kernel_width), adaptation, traffic, keep_samples, upper)

    def choose_fill(self, image: np.ndarray, target: int | None = None, rng: int | np.random.Generator = 0
                    ) -> FillChoice:
        """Only the choice of fill "auto" for one image (its check and pilot, no map): what ``calibrate`` runs.

        Costs 1 query when the MAE passes the reconstruction check, else 1 + classic candidates x
        ``pilot_per_fill``; STTA is not applied. Raises ``ValueError``
        unless the config's fill is "auto"."""
        if not isinstance(self.policy, AutoFill):
            raise ValueError("choose_fill needs fill='auto' in the config (and no fixed filler).")
        info = self.adapter.info
        canvas = to_canvas(check_image(image), info.input_size, info.channels, [])
        gen = np.random.default_rng(rng) if isinstance(rng, (int, np.integer)) else rng
        probs0 = self._complete(self.sampler.query(canvas[None], self.input_transform))[0]
        targets = [int(np.argmax(probs0)) if target is None else target]
        timings = {"fill": 0.0, "compose": 0.0, "classifier": 0.0}

        def sample(filler: Filler, visible: np.ndarray, group: np.ndarray) -> np.ndarray:
            return self.sampler.sample(canvas, filler, visible, group, self.input_transform, _NoBar(), timings)

        return self.policy.choose(canvas, sample, lambda: (targets, probs0), self._complete, gen, timings)[0]

    def _complete(self, probs: np.ndarray) -> np.ndarray:
        """Answers with a value in every cell: an omitted score (NaN) imputed within its bound
        (:meth:`~blackbox_lime.adapters.censoring.Censoring.impute`) for the target choice, the fill pilots and
        the report; the surrogate fits those cells as bounds instead (:func:`~blackbox_lime.surrogate.censored_fit`)."""
        return probs if self.censoring is None else self.censoring.impute(probs)


class _Answer:
    """The model's answer for the whole image (the design's row 0), and the targets it resolves. Asked at once,
    or with ``lazy`` (overlap) at first use: the pipeline first uses it after the first chunk's fills have
    been started on the worker thread, so that the request is in flight while they are made. The queries
    stay on the caller's thread and in the serial order."""

    def __init__(self, explainer: Explainer, run: Run, transform: InputTransform | None,
                 targets: "list[int] | str | None", threshold: float, bar: Any, lazy: bool) -> None:
        self.explainer, self.run, self.transform, self.spec, self.threshold, self.bar = (explainer, run, transform,
                                                                                         targets, threshold, bar)
        self._probs0: np.ndarray | None = None
        if not lazy:
            self.probs0()

    def probs0(self) -> np.ndarray:
        """probs (1, K)."""
        if self._probs0 is None:
            t = time.perf_counter()
            self._probs0 = self.explainer.sampler.query(self.run.canvas[None], self.transform)
            self.run.timings["classifier"] += time.perf_counter() - t
            self.bar.update(1)
        return self._probs0

    def targets(self) -> list[int]:
        return _resolve_targets(self.spec, self.explainer._complete(self.probs0())[0], self.threshold)

    def answered(self) -> tuple[list[int], np.ndarray]:
        """(the targets, probs (K,))."""
        return self.targets(), self.explainer._complete(self.probs0())[0]


def _asked(target: "int | Sequence[int] | str | None", class_names: "Sequence[str]", threshold: float
           ) -> "tuple[list[int] | str | None, bool]":
    """The targets an explanation was asked for, checked -> (a list of class indices, "all", "positive" or None for
    the predicted class; whether several were asked for)."""
    if isinstance(target, str):
        if target not in ("all", "positive"):
            raise ValueError(f"target must be a class index, a list of them, 'all' or 'positive'. Got {target!r} "
                             "instead.")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be a probability in [0, 1]. Got {threshold!r} instead.")
        return target, True
    if isinstance(target, (list, tuple, np.ndarray)):
        targets = [_check_target(t, class_names) for t in target]
        if not targets or len(set(targets)) != len(targets):
            raise ValueError(f"target must list distinct class indices in [0, {len(class_names) - 1}]. Got "
                             f"{list(target)!r} instead.")
        return targets, True
    return (None if target is None else [_check_target(target, class_names)]), False


def _check_target(target: object, class_names: "Sequence[str]") -> int:
    n = len(class_names)
    if isinstance(target, bool) or not (isinstance(target, (int, np.integer)) and 0 <= target < n):
        raise ValueError(f"target must be a class index in [0, {n - 1}] ({', '.join(class_names)}). "
                         f"Got {target!r} instead.")
    return int(target)


def _resolve_targets(targets: "list[int] | str | None", probs0: np.ndarray, threshold: float) -> list[int]:
    """The explained classes: as given, the predicted one (None), every one ("all"), or those with
    P >= threshold ("positive"; the highest one when none is)."""
    if targets is None:
        return [int(np.argmax(probs0))]
    if targets == "all":
        return list(range(len(probs0)))
    if targets == "positive":
        return [int(k) for k in np.flatnonzero(probs0 >= threshold)] or [int(np.argmax(probs0))]
    return list(targets)  # type: ignore[arg-type]


def _probes(canvas: np.ndarray, k: int, gen: np.random.Generator, grid: PatchGrid, filler: Filler,
            timings: dict[str, float]) -> np.ndarray | None:
    """K perturbations of the canvas (half the patches hidden, filled as the samples are) for STTA's check."""
    if k == 0:
        return None
    t = time.perf_counter()
    visible, _ = draw_masks(gen, grid.n_patches, k + 1, (0.5,), 1)
    visible = visible[1:]  # row 0 is the unperturbed image
    fills = filler.fill(canvas, grid.hidden_pixels(visible))
    out = grid.composite(visible, canvas, fills, np.arange(k))
    timings["fill"] += time.perf_counter() - t
    return out


def _chain(first: InputTransform, second: InputTransform) -> InputTransform:
    return lambda batch: second(first(batch))


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool, unit: str = "query") -> "_NoBar":
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True)  # type: ignore[return-value]


def explain(image: np.ndarray, adapter: ClassifierAdapter, target: int | None = None, rng: int | np.random.Generator = 0,
            config: ExplainConfig | None = None, **kwargs: Any) -> Explanation:
    """One-call form: ``Explainer(adapter, config, **kwargs).explain(image, target, rng)``."""
    return Explainer(adapter, config, **kwargs).explain(image, target=target, rng=rng)
