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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Callable, overload

import cv2
import numpy as np

from blackbox_lime.adapters.base import ClassifierAdapter
from blackbox_lime.adapters.censoring import censoring_of
from blackbox_lime._version import __version__
from blackbox_lime.config import ExplainConfig
from blackbox_lime.evidence_bank import Embedder, EvidenceBank, EvidencePrior
from blackbox_lime.explanation import Explanation, ExplanationSet
from blackbox_lime.fill.choice import FillChoice, evidence_r2, heldout_r2
from blackbox_lime.fill.fillers import Filler, MAEFiller
from blackbox_lime.fill.policy import AutoFill, FillPlan, make_policy
from blackbox_lime.fill.registry import is_generative, make_filler
from blackbox_lime.map_warnings import MapWarning
from blackbox_lime.patches import PatchGrid, draw_masks
from blackbox_lime.surrogate import SparseSurrogate, censored_fit, proximity_kernel
from blackbox_lime.test_time_adaptation import Adaptation, adapt

log = logging.getLogger(__name__)

CENSORED_WARN = 0.5  # warn when the endpoint omitted the explained label from more than this share of its answers

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
        n_classes = len(self.adapter.info.class_names)
        if isinstance(target, str):
            if target not in ("all", "positive"):
                raise ValueError(f"target must be a class index, a list of them, 'all' or 'positive'. Got {target!r} "
                                 "instead.")
            if not 0.0 <= threshold <= 1.0:
                raise ValueError(f"threshold must be a probability in [0, 1]. Got {threshold!r} instead.")
            return ExplanationSet(self._explain(image, target, rng, progress, keep_samples, threshold))
        if isinstance(target, (list, tuple, np.ndarray)):
            targets = [_check_target(t, self.adapter.info.class_names) for t in target]
            if not targets or len(set(targets)) != len(targets):
                raise ValueError(f"target must list distinct class indices in [0, {n_classes - 1}]. Got {list(target)!r} "
                                 "instead.")
            return ExplanationSet(self._explain(image, targets, rng, progress, keep_samples, threshold))
        one = None if target is None else [_check_target(target, self.adapter.info.class_names)]
        return self._explain(image, one, rng, progress, keep_samples, threshold)[0]

    def _explain(self, image: np.ndarray, targets: "list[int] | str | None", rng: int | np.random.Generator,
                 progress: bool, keep_samples: bool, threshold: float) -> list[Explanation]:
        """The pipeline, once for the image: (STTA) -> the model's answer -> masks, fills and queries; then a
        prior and a surrogate per target, all fitted on the same queried samples."""
        run = self._start(image, rng)
        bar = _progress(self.config.total_queries, progress)
        try:
            adaptation, transform, targets = self._adapt(run, targets, bar)
            answer = _Answer(self, run, transform, targets, threshold, bar, lazy=bool(self.overlap))
            plan, visible, probs = self._perturb(run, transform, answer, bar)
            targets = answer.targets()
        finally:
            bar.close()
        shared = self._shared(run, plan, visible, probs, adaptation, keep_samples)
        names = [self.adapter.info.class_names[k] for k in targets] if len(targets) > 1 else []
        t_shared = time.perf_counter() - run.t_start
        out = []
        for target in targets:
            t_fit = time.perf_counter()
            exp = self._fit_one(shared, target)
            exp.shared_with = names
            exp.timings["total"] = t_shared + (time.perf_counter() - t_fit)  # the shared work plus its own fit
            out.append(exp)
        return out

    def _start(self, image: np.ndarray, rng: int | np.random.Generator) -> "_Run":
        """Check the image and the seed; map the image to the model's canvas."""
        image = check_image(image)
        if min(image.shape[:2]) < self.config.patch_size:
            raise ValueError(
                f"The image ({image.shape[1]}x{image.shape[0]} px) is smaller than one patch ({self.config.patch_size} "
                "px). Use a larger image or a smaller --patch-size.")
        seed = int(rng) if isinstance(rng, (int, np.integer)) else None
        gen = np.random.default_rng(rng) if seed is not None else rng
        if not isinstance(gen, np.random.Generator):
            raise TypeError(f"rng must be an int seed or a numpy Generator. Got {type(rng).__name__} instead.")
        notes: list[str] = []
        canvas = to_canvas(image, self.adapter.info.input_size, self.adapter.info.channels, notes)
        timings = dict.fromkeys(("masks", "stta", "fill_choice", "fill", "classifier", "compose", "evidence",
                                 "surrogate"), 0.0)
        return _Run(image, canvas, gen, seed, notes, timings, self.adapter.counters(), time.perf_counter())

    def _adapt(self, run: "_Run", targets: "list[int] | str | None", bar: Any
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
        probes = self._probes(run.canvas, cfg.stta_probes, stta_rng, run.timings)
        if probes is not None and transform is not None:
            probes = transform(probes)
        label = targets[0] if isinstance(targets, list) and len(targets) == 1 else None
        adaptation = adapt(self.adapter, base, label, stta_rng, cfg.stta_iterations, cfg.stta_views, probes)
        transform = adaptation.transform if transform is None else _chain(transform, adaptation.transform)
        run.timings["stta"] = time.perf_counter() - t
        bar.update(adaptation.queries)
        return adaptation, transform, [adaptation.label] if targets is None else targets

    def _perturb(self, run: "_Run", transform: InputTransform | None, answer: "_Answer",
                 bar: Any) -> tuple[FillPlan, np.ndarray, np.ndarray]:
        """Masks -> fills -> composites -> queries. The fill policy plans the image's fill first (fill "auto"
        chooses; the chosen candidate's pilot queries are kept), and the rest of the budget is spent on it.
        -> (the fill plan, visible bool (n, P), probs (n, K)), row 0 the image."""
        cfg = self.config

        def sample(filler: Filler, visible: np.ndarray, group: np.ndarray) -> np.ndarray:
            return self._sample(run.canvas, filler, visible, group, transform, bar, run.timings)

        plan = self.policy.plan(run.canvas, sample, answer.answered, self._complete, run.gen, run.timings)
        filler = plan.filler
        t = time.perf_counter()
        visible, group = draw_masks(run.gen, self.grid.n_patches, cfg.n_samples - plan.spent, cfg.mask_ratios,
                                    cfg.nested_samples if filler.depends_on_mask() else 1)
        run.timings["masks"] += time.perf_counter() - t
        probs = self._sample(run.canvas, filler, visible[1:], group[1:], transform, bar, run.timings, answer.probs0)
        return (plan, np.concatenate([visible, plan.visible]),
                np.concatenate([answer.probs0(), probs, plan.probs]))

    def _shared(self, run: "_Run", plan: FillPlan, visible: np.ndarray, probs: np.ndarray,
                adaptation: Adaptation | None, keep_samples: bool) -> "_Shared":
        """What every target's explanation shares: the design, its kernel weights, the fill's record and
        warnings, the counts."""
        filler = plan.filler
        run.notes += [n for n in getattr(filler, "notes", []) if n not in run.notes]
        now = self.adapter.counters()
        traffic = {k: now[k] - run.counters[k] for k in ("queries", "images_asked", "requests", "retries",
                                                           "refused_for_size")}
        traffic.update(request_size=now["request_size"], max_batch=now["max_batch"])
        upper = self.censoring.bounds(probs) if self.censoring is not None else None
        return _Shared(run, filler, plan.record, plan.warnings, visible, self._complete(probs),
                       proximity_kernel(visible, self.config.kernel_width), adaptation, traffic, keep_samples, upper)

    def _fit_one(self, shared: "_Shared", target: int) -> Explanation:
        """One target's evidence prior, surrogate and map, from the shared queried samples."""
        timings, notes = dict(shared.run.timings), list(shared.run.notes)
        t = time.perf_counter()
        ref, neighbours, evidence = self._prior(shared.run.canvas, target, notes)
        timings["evidence"] = time.perf_counter() - t
        t = time.perf_counter()
        upper = None if shared.upper is None else shared.upper[:, target]
        fit = self._surrogate(shared.visible, shared.probs[:, target], shared.weights, ref, evidence, upper)
        saliency = self.grid.upsample(fit.model.coef_, shared.run.image.shape[:2], self.config.map_sigma)
        timings["surrogate"] = time.perf_counter() - t
        warnings = _weak_map_warnings(fit.y, fit.model.response_sd_, fit.model.coef_, fit.model.lambda1_effective_,
                                      self.adapter.info.class_names[target], is_generative(shared.filler.name))
        warnings += _low_fidelity_warnings(fit.r2_evidence, shared.filler.name, self.config, fit.r2_heldout,
                                           self.adapter.info.class_names[target])
        warnings += shared.fill_warnings
        warnings += self._censored_warnings(fit.censored, len(fit.y), self.adapter.info.class_names[target])
        for w in warnings:
            log.info("weak map: %s", w)
        return self._explanation(shared, target, fit, saliency, neighbours, evidence, timings, notes, warnings)

    def _censored_warnings(self, censored: int, n: int, name: str) -> list[str]:
        """A censoring endpoint that left the explained label out of most answers: the map rests on bounds."""
        if self.censoring is None or censored <= CENSORED_WARN * n:
            return []
        limit = " and ".join(p for p in (f"its top {self.censoring.top_k}" if self.censoring.top_k else "",
                                         f"scores above {self.censoring.threshold:g}" if self.censoring.threshold else "")
                             if p)
        return [MapWarning("censored", f"the endpoint listed {name!r} in only {n - censored} of its {n} answers (it lists {limit}); elsewhere "
                "its score is known only as a bound, so this map rests on few measured answers. Ask the endpoint for "
                "more labels per answer if it can (a higher top_k or a lower threshold).")]

    def _prior(self, canvas: np.ndarray, target: int, notes: list[str]
               ) -> tuple[np.ndarray, list[dict], dict[str, Any] | None]:
        """EBR's evidence prior w_ref (P,) for the target and its neighbours; zeros without a prior, or when the
        bank's evidence is for another class."""
        info = self.adapter.info
        if self.reference is None:
            return np.zeros(self.grid.n_patches), [], None
        if self.bank is not None and target != info.abnormal_index:
            notes.append(f"the evidence bank holds evidence for {info.class_names[info.abnormal_index]!r}, so it "
                         f"was not used for the class {info.class_names[target]!r}")
            return np.zeros(self.grid.n_patches), [], None
        ref, neighbours = self.reference(canvas)
        evidence = {"neighbours": len(neighbours), **getattr(self.reference, "last", {})}
        return np.asarray(ref, np.float64).reshape(-1), neighbours, evidence

    def _surrogate(self, visible: np.ndarray, y: np.ndarray, weights: np.ndarray, ref: np.ndarray,
                   evidence: dict[str, Any] | None, upper: np.ndarray | None = None) -> "_Fit":
        """The sparse surrogate on the design and its fidelity (R^2 in-sample, held out, and of the evidence fit).
        ``upper``: the bounds of answers a censoring endpoint omitted (+inf where measured); those answers are
        fitted as bounds (:func:`~blackbox_lime.surrogate.censored_fit`) and the fidelity is read on the completed
        answers."""
        cfg = self.config
        lambda2 = cfg.lambda2_for(prior=evidence is not None)
        options: dict[str, Any] = dict(lambda1=cfg.lambda1, lambda2=lambda2, reference=ref,
                                       lambda1_scale=cfg.lambda1_scale, lambda1_cap=cfg.lambda1_cap,
                                       reference_scale="fit")
        X = visible.astype(np.float64)
        censored = 0
        if upper is not None and np.isfinite(upper).any():
            model, y, _ = censored_fit(lambda: SparseSurrogate(**options), X, y, upper, weights)
            censored = int(np.isfinite(upper).sum())
        else:
            model = SparseSurrogate(**options).fit(X, y, weights)
        moved = model.response_sd_ >= WEAK_RESPONSE_SD
        r2_heldout = heldout_r2(X[1:], y[1:], weights[1:], (X[0], y[0]), options) if moved else float("nan")
        r2_evidence = evidence_r2(X[1:], y[1:], weights[1:], (X[0], y[0])) if moved else float("nan")
        if evidence is not None:
            evidence.update(reference_scale=model.reference_scale_, lambda2=lambda2)
        return _Fit(model, y, lambda2, r2_heldout, r2_evidence, censored)

    def _explanation(self, shared: "_Shared", target: int, fit: "_Fit", saliency: np.ndarray, neighbours: list[dict],
                     evidence: dict[str, Any] | None, timings: dict[str, float], notes: list[str],
                     warnings: list[str]) -> Explanation:
        cfg, info, grid, model = self.config, self.adapter.info, self.grid, fit.model
        return Explanation(
            saliency=saliency,
            patch_weights=model.coef_.reshape(grid.rows, grid.cols),
            patch_stderr=model.stderr_.reshape(grid.rows, grid.cols),
            intercept=model.intercept_,
            r2=model.r2_,
            target=int(target),
            target_name=info.class_names[target],
            target_prob=float(shared.probs[0, target]),
            probs=shared.probs[0].copy(),
            queries=shared.traffic["queries"],
            requests=shared.traffic["requests"],
            traffic=dict(shared.traffic),
            timings=timings,
            seed=shared.run.seed,
            config={**cfg.to_dict(), "lambda2_effective": fit.lambda2, "fill_model": _describe(shared.filler),
                    "evidence_bank": None if self.bank is None else self.bank.describe(), "version": __version__},
            neighbours=neighbours,
            notes=notes,
            model={"name": info.name, "input_size": list(info.input_size), "channels": info.channels,
                   "class_names": list(info.class_names), "abnormal_index": info.abnormal_index, **info.extra},
            samples=({"visible": shared.visible, "probs": shared.probs, "kernel": shared.weights}
                     if shared.keep_samples else None),
            warnings=warnings,
            response_sd=model.response_sd_,
            lambda1_effective=model.lambda1_effective_,
            lambda1_capped=model.lambda1_capped_,
            adaptation=None if shared.adaptation is None else shared.adaptation.summary(),
            evidence=evidence,
            censoring=(None if self.censoring is None else
                       {**self.censoring.describe(), "answers": len(fit.y), "censored": fit.censored}),
            r2_heldout=fit.r2_heldout,
            r2_evidence=fit.r2_evidence,
            fill=shared.fill_record,
        )

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
        probs0 = self._complete(self._query(canvas[None], self.input_transform))[0]
        targets = [int(np.argmax(probs0)) if target is None else target]
        timings = {"fill": 0.0, "compose": 0.0, "classifier": 0.0}

        def sample(filler: Filler, visible: np.ndarray, group: np.ndarray) -> np.ndarray:
            return self._sample(canvas, filler, visible, group, self.input_transform, _NoBar(), timings)

        return self.policy.choose(canvas, sample, lambda: (targets, probs0), self._complete, gen, timings)[0]

    def _sample(self, canvas: np.ndarray, filler: Filler, visible: np.ndarray, group: np.ndarray,
                transform: InputTransform | None, bar: Any, timings: dict[str, float],
                before_queries: Callable[[], object] | None = None) -> np.ndarray:
        """Fill, composite and query a design: visible bool (n, P); group int (n,) of consecutive groups from 0
        that share one fill (MAE). -> probs float64 (n, K).

        Chunks of ``batch_size`` groups. With ``overlap`` (the default for a remote model) the next chunk's fills and composites
        are made on a worker thread while this chunk's queries are in flight (onnxruntime and the network
        release the GIL): at most two chunks are alive, and the answers are placed by row, so the result is
        the serial one bit for bit. ``before_queries`` is called before the first query (the image's own
        answer, asked while the first chunk is filled)."""
        probs = np.zeros((len(visible), len(self.adapter.info.class_names)))
        if len(visible) == 0:
            if before_queries is not None:
                before_queries()
            return probs
        chunks = _Chunks(self.grid, canvas, filler, visible, group, self.config.batch_size, timings)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="blackbox-lime-fill") as pool:
            pending = pool.submit(chunks.make, 0) if self.overlap else None
            if before_queries is not None:
                before_queries()  # with overlap, while the first chunk is filled
            for i in range(len(chunks)):
                rows, batch = pending.result() if pending is not None else chunks.make(i)
                if pending is not None and i + 1 < len(chunks):
                    pending = pool.submit(chunks.make, i + 1)  # fills the other buffer while this one is queried
                t = time.perf_counter()
                probs[rows] = self._query(batch, transform)
                timings["classifier"] += time.perf_counter() - t
                bar.update(len(rows))
        return probs

    def _probes(self, canvas: np.ndarray, k: int, gen: np.random.Generator,
                timings: dict[str, float]) -> np.ndarray | None:
        """K perturbations of the canvas (half the patches hidden, filled as the samples are) for STTA's check."""
        if k == 0:
            return None
        t = time.perf_counter()
        visible, _ = draw_masks(gen, self.grid.n_patches, k + 1, (0.5,), 1)
        visible = visible[1:]  # row 0 is the unperturbed image
        fills = self.filler.fill(canvas, self.grid.hidden_pixels(visible))
        out = self.grid.composite(visible, canvas, fills, np.arange(k))
        timings["fill"] += time.perf_counter() - t
        return out

    def _query(self, batch: np.ndarray, transform: InputTransform | None) -> np.ndarray:
        """The adapter's answers: NaN where a censoring endpoint omitted a label (see :meth:`_complete`)."""
        if transform is not None:
            batch = transform(batch)
        return self.adapter.predict(batch)

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

    def __init__(self, explainer: Explainer, run: _Run, transform: InputTransform | None,
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
            self._probs0 = self.explainer._query(self.run.canvas[None], self.transform)
            self.run.timings["classifier"] += time.perf_counter() - t
            self.bar.update(1)
        return self._probs0

    def targets(self) -> list[int]:
        return _resolve_targets(self.spec, self.explainer._complete(self.probs0())[0], self.threshold)

    def answered(self) -> tuple[list[int], np.ndarray]:
        """(the targets, probs (K,))."""
        return self.targets(), self.explainer._complete(self.probs0())[0]


@dataclass
class _Run:
    """One explanation's state while it runs: the image on the model's canvas, the seed's generator, and the
    notes, timings and adapter counts it reports."""
    image: np.ndarray
    canvas: np.ndarray
    gen: np.random.Generator
    seed: int | None
    notes: list[str]
    timings: dict[str, float]
    counters: dict[str, int]  # the adapter's, when the explanation started
    t_start: float


@dataclass
class _Shared:
    """What every explained target shares: one queried design and its fill."""
    run: _Run
    filler: Filler
    fill_record: dict[str, Any]
    fill_warnings: list[str]
    visible: np.ndarray
    probs: np.ndarray
    weights: np.ndarray
    adaptation: Adaptation | None
    traffic: dict[str, int]  # what this explanation sent: ClassifierAdapter.counters(), as differences
    keep_samples: bool
    upper: np.ndarray | None = None  # (n, K) bounds of the scores a censoring endpoint omitted (+inf: measured)


@dataclass
class _Fit:
    model: SparseSurrogate
    y: np.ndarray
    lambda2: float
    r2_heldout: float
    r2_evidence: float
    censored: int = 0  # answers in which a censoring endpoint omitted the target's score


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


def _chain(first: InputTransform, second: InputTransform) -> InputTransform:
    return lambda batch: second(first(batch))


# Below this spread of P(target) over the samples, the map ranks effects too small to act on.
WEAK_RESPONSE_SD = 0.01


# Below this held-out R^2 of the evidence fit a map is flagged as of low fidelity: the highest Youden's J on val
# (docs/tune_val/fill/table.md: 37 of 44 weak maps flagged, 11 of 60 good ones).
LOW_FIDELITY_R2 = 0.02

# Below this held-out R^2 of the signed fit, no patch-wise effect explains how the answer moved under masking: the
# answer rests on no region of the image (as the fill hides it). On val (docs/bench_flags/val/table.md) it holds for
# the confident "normal" answers of the chest CNN (held-out R^2 p10 / median / p90: 0.000 / 0.033 / 0.080, every one
# under LOW_FIDELITY_R2 by the evidence fit) and for saturated abnormal answers (fundus: median 0.049), while maps of
# answers that do rest on a region reach 0.08 to 0.69 (p10 to p90 of the chest and ultrasound abnormal answers).
NO_FOCAL_R2 = 0.05


def _low_fidelity_warnings(r2_evidence: float, fill: str, cfg: ExplainConfig, r2_heldout: float = float("inf"),
                           name: str = "the class") -> list[str]:
    if not r2_evidence < LOW_FIDELITY_R2:  # NaN (the answer did not move) is warned about by _weak_map_warnings
        return []
    if r2_heldout < NO_FOCAL_R2:
        return [MapWarning("no_focal_evidence", f"No focal evidence: no patch-wise effect explains how P({name}) moved under masking (held-out R^2 "
                f"{r2_heldout:.3f}, below {NO_FOCAL_R2:g}), so this answer rests on no one region of the image as the "
                f"{fill} fill hides it: a finding about the model (typical of a confident 'normal'), not a map to "
                "read region by region. On an answer that should rest on a lesion, the fill may be putting back what "
                "it hides: try another --fill.")]
    tries = ["another --fill (auto chooses among mae, mean and blur)" if cfg.fill != "auto" else
             "a site calibration (blackbox-lime calibrate)", "an MAE fitted on your images (blackbox-lime mae fit)",
             f"more --samples (used {cfg.n_samples})"]
    if is_generative(fill) and cfg.fill == "auto" and cfg.mae_challenger is None:
        tries.insert(1, "a challenger for the MAE (--mae-challenger zero)")
    return [MapWarning("low_fidelity", f"Low fidelity: hiding patches explains the answer's drops with held-out R^2 {r2_evidence:.3f} (below "
            f"{LOW_FIDELITY_R2:g}) with the {fill} fill, so the map's evidence is weak or the fill adds evidence of "
            f"its own. Try {', '.join(tries[:-1])} or {tries[-1]}.")]


def _describe(filler: Filler) -> dict[str, Any]:
    describe = getattr(filler, "describe", None)
    return describe() if describe is not None else {"kind": filler.name}


def _weak_map_warnings(y: np.ndarray, sd: float, coef: np.ndarray, lambda1: float, name: str,
                       mae: bool = False) -> list[str]:
    out: list[str] = []
    if sd < WEAK_RESPONSE_SD:
        # With the MAE fill a flat answer is also what a classifier that reads the MAE's fills as the evidence they
        # hide gives (the demo ViT on ultrasound, docs/robust_fill.md).
        also = (" The MAE's fills may put back what they hide: try --mae-challenger zero or another --fill."
                if mae else "")
        out.append(MapWarning("flat_answer", f"P({name}) hardly moved under masking (kernel-weighted sd {sd:.4f}, range {y.min():.3f} to "
                   f"{y.max():.3f}): the map ranks small effects. Check that the image is in the model's domain, "
                   f"or try more --samples.{also}"))
    if not np.any(coef):
        out.append(MapWarning("empty_map", f"No patch's evidence survived the L1 penalty (effective lambda1 "
                                           f"{lambda1:.3g}), so the map is empty. Lower --lambda1, or --lambda1-cap "
                                           "below 1."))
    return out


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
