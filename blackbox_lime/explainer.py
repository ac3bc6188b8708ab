"""The MedLIME pipeline: masks -> STTA -> fills -> queries -> evidence prior -> surrogate -> pixel saliency.

    explainer = Explainer(adapter, ExplainConfig(stta=True), bank="bank.npz")   # any adapters.ClassifierAdapter
    explanation = explainer.explain(image, target=None, rng=0)

The three parts of MedLIME: GM (the MAE fill, blackbox_lime/generative_masking.py; the default
``config.fill="auto"`` keeps it where the MAE knows the image and otherwise picks a classic fill,
blackbox_lime/fill_choice.py), STTA
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
from typing import Any, Callable

import cv2
import numpy as np

from blackbox_lime.adapters.base import ClassifierAdapter
from blackbox_lime import __version__
from blackbox_lime.config import ExplainConfig
from blackbox_lime.evidence_bank import Embedder, EvidenceBank, EvidencePrior
from blackbox_lime.explanation import Explanation, ExplanationSet
from blackbox_lime.fill_choice import (FillChoice, coarse_design, decide, evidence_r2, heldout_r2, recon_psnr,
                                      score_pilot)
from blackbox_lime.generative_masking import Filler, MAEFiller, make_filler
from blackbox_lime.patches import PatchGrid, draw_masks
from blackbox_lime.surrogate import SparseSurrogate, proximity_kernel
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
    """

    def __init__(self, adapter: ClassifierAdapter, config: ExplainConfig | None = None, *, mae_path: str | None = None,
                 filler: Filler | None = None, bank: EvidenceBank | str | Path | None = None,
                 embed_path: str | Path | None = None, input_transform: InputTransform | None = None,
                 reference: Callable[[np.ndarray], tuple[np.ndarray, list[dict]]] | None = None,
                 device: str = "auto", threads: int | None = None) -> None:
        self.adapter = adapter
        self.config = config or ExplainConfig()
        cfg = self.config

        def make(kind: str) -> Filler:
            return make_filler(kind, cfg.patch_size, mae_path, batch_size=cfg.batch_size, threads=threads,
                               device=device)

        # fill "auto": every candidate, the preferred first; self.filler is the preferred one (STTA's probes)
        self.fillers: dict[str, Filler] | None = None
        if filler is None and cfg.fill == "auto":
            self.fillers = {kind: make(kind) for kind in cfg.fill_candidates}
        self.filler = filler or (next(iter(self.fillers.values())) if self.fillers else make(cfg.fill))
        self.input_transform = input_transform
        info = adapter.info
        mae = self.mae
        if mae is not None and tuple(info.input_size) == (mae.size, mae.size) and cfg.patch_size % mae.patch:
            raise ValueError(
                f"The 'patch_size' parameter must be a multiple of the MAE's patch ({mae.patch}) when the "
                f"model and the MAE share their input size. Got {cfg.patch_size} instead.")
        self.grid = PatchGrid(info.input_size[0], info.input_size[1], self.config.patch_size)
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
        for f in (self.fillers or {"": self.filler}).values():
            if isinstance(f, MAEFiller):
                return f
        return None

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
        if target is not None:
            _check_target(target, self.adapter.info.class_names)
        return self._explain(image, None if target is None else [int(target)], rng, progress, keep_samples,
                             threshold)[0]

    def _explain(self, image: np.ndarray, targets: "list[int] | str | None", rng: int | np.random.Generator,
                 progress: bool, keep_samples: bool, threshold: float) -> list[Explanation]:
        """The pipeline, once for the image: masks, STTA, fill, queries; then a surrogate per target."""
        t_start = time.perf_counter()
        cfg, info, grid = self.config, self.adapter.info, self.grid
        image = check_image(image)
        if min(image.shape[:2]) < cfg.patch_size:
            raise ValueError(
                f"The image ({image.shape[1]}x{image.shape[0]} px) is smaller than one patch ({cfg.patch_size} px). "
                "Use a larger image or a smaller --patch-size.")
        seed = int(rng) if isinstance(rng, (int, np.integer)) else None
        gen = np.random.default_rng(rng) if seed is not None else rng
        if not isinstance(gen, np.random.Generator):
            raise TypeError(f"rng must be an int seed or a numpy Generator. Got {type(rng).__name__} instead.")
        notes: list[str] = []
        canvas = to_canvas(image, info.input_size, info.channels, notes)
        q0, r0 = self.adapter.queries, self.adapter.requests
        timings = {"masks": 0.0, "stta": 0.0, "fill_choice": 0.0, "fill": 0.0, "classifier": 0.0, "compose": 0.0,
                   "evidence": 0.0, "surrogate": 0.0}

        t = time.perf_counter()
        design = None
        if self.fillers is None:  # a fixed fill: the whole design is drawn up front
            design = draw_masks(gen, grid.n_patches, cfg.n_samples, cfg.mask_ratios,
                                cfg.nested_samples if self.filler.depends_on_mask() else 1)
        timings["masks"] = time.perf_counter() - t

        bar = _progress(cfg.total_queries, progress)
        adaptation: Adaptation | None = None
        transform = self.input_transform
        choice: FillChoice | None = None
        label = targets[0] if isinstance(targets, list) and len(targets) == 1 else None  # STTA's Y; shared
        try:
            if cfg.stta:  # its own seeded generator: the design is the same with and without STTA, and the
                t = time.perf_counter()  # adaptation (probes included) does not depend on the explanation's seed
                stta_rng = np.random.default_rng(cfg.stta_seed)
                base = canvas if transform is None else transform(canvas[None])[0]
                probes = self._probes(canvas, cfg.stta_probes, stta_rng, timings)
                if probes is not None and transform is not None:
                    probes = transform(probes)
                adaptation = adapt(self.adapter, base, label, stta_rng, cfg.stta_iterations, cfg.stta_views, probes)
                transform = adaptation.transform if transform is None else _chain(transform, adaptation.transform)
                if targets is None:
                    targets = [adaptation.label]
                timings["stta"] = time.perf_counter() - t
                bar.update(adaptation.queries)
            t = time.perf_counter()
            probs0 = self._query(canvas[None], transform)
            timings["classifier"] += time.perf_counter() - t
            bar.update(1)
            targets = _resolve_targets(targets, probs0[0], threshold)
            if design is None:  # fill "auto": a pilot per candidate, then the rest of the budget on the chosen one
                choice, pilot_visible, pilot_probs = self._choose_fill(canvas, transform, targets, probs0[0], gen, bar,
                                                                       timings)
                filler = self.fillers[choice.chosen]
                t = time.perf_counter()
                visible, group = draw_masks(gen, grid.n_patches, cfg.n_samples - len(pilot_visible) - choice.queries_spent,
                                            cfg.mask_ratios, cfg.nested_samples if filler.depends_on_mask() else 1)
                timings["masks"] += time.perf_counter() - t
                probs = self._sample(canvas, filler, visible[1:], group[1:], transform, bar, timings)
                visible = np.concatenate([visible, pilot_visible])
                probs = np.concatenate([probs0, probs, pilot_probs])
            else:
                filler, (visible, group) = self.filler, design
                probs = np.concatenate([probs0, self._sample(canvas, filler, visible[1:], group[1:], transform, bar,
                                                             timings)])
        finally:
            bar.close()

        fill_record = choice.summary() if choice is not None else {"mode": "fixed", "chosen": filler.name}
        shared_warnings: list[str] = []
        if choice is None and isinstance(filler, MAEFiller):  # a forced MAE fill: is it in this image's domain?
            t = time.perf_counter()
            psnr, gap = self._recon_check(canvas, filler)
            timings["fill_choice"] = time.perf_counter() - t
            fill_record["recon_psnr_db"] = {k: round(v, 2) for k, v in psnr.items()}
            shared_warnings = _off_domain_warnings(psnr, gap, cfg)
        notes += [n for n in getattr(filler, "notes", []) if n not in notes]
        weights = proximity_kernel(visible, cfg.kernel_width)
        queries, requests = self.adapter.queries - q0, self.adapter.requests - r0
        shared = [info.class_names[k] for k in targets] if len(targets) > 1 else []
        out = []
        t_shared = time.perf_counter() - t_start
        for target in targets:
            t_fit = time.perf_counter()
            exp = self._fit_one(image, canvas, target, visible, probs, weights, filler, dict(timings), list(notes),
                                shared_warnings, fill_record, adaptation, seed, queries, requests, keep_samples)
            exp.shared_with = shared
            exp.timings["total"] = t_shared + (time.perf_counter() - t_fit)  # the shared work plus its own fit
            out.append(exp)
        return out

    def _fit_one(self, image: np.ndarray, canvas: np.ndarray, target: int, visible: np.ndarray, probs: np.ndarray,
                 weights: np.ndarray, filler: Filler, timings: dict[str, float], notes: list[str],
                 shared_warnings: list[str], fill_record: dict[str, Any], adaptation: Adaptation | None,
                 seed: int | None, queries: int, requests: int, keep_samples: bool) -> Explanation:
        """One target's evidence prior, surrogate and map, from the shared queried samples."""
        cfg, info, grid = self.config, self.adapter.info, self.grid
        t = time.perf_counter()
        ref, neighbours, evidence = np.zeros(grid.n_patches), [], None
        if self.reference is not None:
            if self.bank is not None and target != info.abnormal_index:
                notes.append(f"the evidence bank holds evidence for {info.class_names[info.abnormal_index]!r}, so it "
                             f"was not used for the class {info.class_names[target]!r}")
            else:
                ref, neighbours = self.reference(canvas)
                ref = np.asarray(ref, np.float64).reshape(-1)
                evidence = {"neighbours": len(neighbours), **getattr(self.reference, "last", {})}
        timings["evidence"] = time.perf_counter() - t
        t = time.perf_counter()
        y = probs[:, target]
        lambda2 = cfg.lambda2_for(prior=evidence is not None)
        options = dict(lambda1=cfg.lambda1, lambda2=lambda2, reference=ref, lambda1_scale=cfg.lambda1_scale,
                       lambda1_cap=cfg.lambda1_cap, reference_scale="fit")
        X = visible.astype(np.float64)
        model = SparseSurrogate(**options).fit(X, y, weights)
        moved = model.response_sd_ >= WEAK_RESPONSE_SD
        r2_heldout = heldout_r2(X[1:], y[1:], weights[1:], (X[0], y[0]), options) if moved else float("nan")
        r2_evidence = evidence_r2(X[1:], y[1:], weights[1:], (X[0], y[0])) if moved else float("nan")
        if evidence is not None:
            evidence.update(reference_scale=model.reference_scale_, lambda2=lambda2)
        saliency = grid.upsample(model.coef_, image.shape[:2])
        timings["surrogate"] = time.perf_counter() - t
        warnings = _weak_map_warnings(y, model.response_sd_, model.coef_, model.lambda1_effective_,
                                      info.class_names[target])
        warnings += _low_fidelity_warnings(r2_evidence, filler.name, cfg)
        warnings += shared_warnings
        for w in warnings:
            log.info("weak map: %s", w)
        return Explanation(
            saliency=saliency,
            patch_weights=model.coef_.reshape(grid.rows, grid.cols),
            patch_stderr=model.stderr_.reshape(grid.rows, grid.cols),
            intercept=model.intercept_,
            r2=model.r2_,
            target=int(target),
            target_name=info.class_names[target],
            target_prob=float(probs[0, target]),
            probs=probs[0].copy(),
            queries=queries,
            requests=requests,
            timings=timings,
            seed=seed,
            config={**cfg.to_dict(), "lambda2_effective": lambda2, "fill_model": _describe(filler),
                    "evidence_bank": None if self.bank is None else self.bank.describe(), "version": __version__},
            neighbours=neighbours,
            notes=notes,
            model={"name": info.name, "input_size": list(info.input_size), "channels": info.channels,
                   "class_names": list(info.class_names), "abnormal_index": info.abnormal_index, **info.extra},
            samples={"visible": visible, "probs": probs, "kernel": weights} if keep_samples else None,
            warnings=warnings,
            response_sd=model.response_sd_,
            lambda1_effective=model.lambda1_effective_,
            lambda1_capped=model.lambda1_capped_,
            adaptation=None if adaptation is None else adaptation.summary(),
            evidence=evidence,
            r2_heldout=r2_heldout,
            r2_evidence=r2_evidence,
            fill=fill_record,
        )

    def choose_fill(self, image: np.ndarray, target: int | None = None, rng: int | np.random.Generator = 0
                    ) -> FillChoice:
        """Only the choice of fill "auto" for one image (its check and pilot, no map): what ``calibrate`` runs.

        Costs 1 query when the MAE passes the reconstruction check, else 1 + classic candidates x
        ``pilot_per_fill``; STTA is not applied. Raises ``ValueError``
        unless the config's fill is "auto"."""
        if self.fillers is None:
            raise ValueError("choose_fill needs fill='auto' in the config (and no fixed filler).")
        info = self.adapter.info
        canvas = to_canvas(check_image(image), info.input_size, info.channels, [])
        gen = np.random.default_rng(rng) if isinstance(rng, (int, np.integer)) else rng
        probs0 = self._query(canvas[None], self.input_transform)[0]
        target = int(np.argmax(probs0)) if target is None else target
        timings = {"fill": 0.0, "compose": 0.0, "classifier": 0.0}
        return self._choose_fill(canvas, self.input_transform, [target], probs0, gen, _NoBar(), timings)[0]

    def _choose_fill(self, canvas: np.ndarray, transform: InputTransform | None, targets: list[int], probs0: np.ndarray,
                     gen: np.random.Generator, bar: Any, timings: dict[str, float]
                     ) -> tuple[FillChoice, np.ndarray, np.ndarray]:
        """Fill "auto" (blackbox_lime/fill_choice.py): first the MAE's reconstruction check, without queries;
        when the MAE reconstructs the image worse than a blur by more than ``recon_margin_db``, a coarse pilot
        per classic candidate scored by the evidence fit's held-out R^2 (or, with ``pilot_samples=0``, the
        first classic candidate). With several targets the fill is shared: a candidate's score is the mean of
        the targets' scores (those whose answer moved).

        Returns the choice and the chosen candidate's pilot (visible bool (n, P), probs (n, K)) for reuse,
        empty when no pilot ran."""
        cfg, t0 = self.config, time.perf_counter()
        none = (np.ones((0, self.grid.n_patches), bool), np.zeros((0, len(self.adapter.info.class_names))))
        psnr: dict[str, float] = {}
        classic = [k for k, f in self.fillers.items() if not isinstance(f, MAEFiller)]
        gate = next((k for k, f in self.fillers.items() if isinstance(f, MAEFiller)), None)
        if gate is not None:
            psnr, gap = self._recon_check(canvas, self.fillers[gate])
            if gap <= cfg.recon_margin_db or not classic:
                timings["fill_choice"] = time.perf_counter() - t0
                reason = (f"the MAE reconstructs this image's hidden pixels within {cfg.recon_margin_db:g} dB of a "
                          f"blur ({psnr['mae']:.2f} vs {psnr['blur']:.2f} dB)")
                return FillChoice(gate, {}, {}, 0, 0, timings["fill_choice"], gate, cfg.fill_margin, reason, psnr,
                                  cfg.recon_margin_db), *none
        lead = (f"the MAE reconstructs this image's hidden pixels {gap:.2f} dB worse than a blur; "
                if gate is not None else "")
        scores: dict[str, float | None] = {}
        spread: dict[str, float] = {}
        n = cfg.pilot_per_fill
        if n == 0 or len(classic) == 1:
            chosen = classic[0]
            timings["fill_choice"] = time.perf_counter() - t0
            return FillChoice(chosen, {}, {}, 0, 0, timings["fill_choice"], chosen, cfg.fill_margin,
                              lead + f"{chosen} is the first classic candidate", psnr, cfg.recon_margin_db), *none
        pilots = {}
        for name in classic:  # designs drawn in candidate order: deterministic for a seed
            coarse, fine = coarse_design(gen, self.grid, n, cfg.mask_ratios, cfg.pilot_block)
            probs = self._sample(canvas, self.fillers[name], fine, np.arange(n), transform, bar, timings)
            per = [score_pilot(coarse, probs[:, k], float(probs0[k]), cfg.kernel_width) for k in targets]
            moved = [sc for sc, _ in per if sc is not None]
            scores[name] = float(np.mean(moved)) if moved else None
            spread[name] = max(sd for _, sd in per)
            pilots[name] = (fine, probs)
        chosen, reason = decide(scores, classic[0], cfg.fill_margin)
        timings["fill_choice"] = time.perf_counter() - t0
        choice = FillChoice(chosen, scores, spread, n, n * (len(classic) - 1), timings["fill_choice"], classic[0],
                            cfg.fill_margin, lead + reason, psnr, cfg.recon_margin_db)
        return choice, *pilots[chosen]

    def _recon_check(self, canvas: np.ndarray, mae: Filler) -> tuple[dict[str, float], float]:
        """The reconstruction check of fill "auto", also run for a forced MAE fill: PSNR (dB) of the MAE and of
        a blur on the image's own hidden pixels (:func:`~blackbox_lime.fill_choice.recon_psnr`), and the gap
        blur - MAE. No query is sent."""
        blur = (self.fillers or {}).get("blur") or make_filler("blur", self.config.patch_size)
        psnr = recon_psnr(canvas, {"mae": mae, "blur": blur}, self.grid)
        return psnr, psnr["blur"] - psnr["mae"]

    def _sample(self, canvas: np.ndarray, filler: Filler, visible: np.ndarray, group: np.ndarray,
                transform: InputTransform | None, bar: Any, timings: dict[str, float]) -> np.ndarray:
        """Fill, composite and query a design: visible bool (n, P); group int (n,) of consecutive groups from 0
        that share one fill (MAE). -> probs float64 (n, K). Chunks of ``batch_size`` groups."""
        cfg, grid = self.config, self.grid
        n = len(visible)
        probs = np.zeros((n, len(self.adapter.info.class_names)))
        if n == 0:
            return probs
        n_groups = int(group.max()) + 1
        first_row = np.searchsorted(group, np.arange(n_groups))  # groups occupy consecutive rows
        static_fill = None
        if not filler.depends_on_mask():
            t = time.perf_counter()
            static_fill = filler.fill(canvas, np.zeros((1,) + canvas.shape[:2], bool))[0]
            timings["fill"] += time.perf_counter() - t
        step = cfg.batch_size  # groups per chunk: one MAE batch, or one request batch for static fills
        per_group = int(np.bincount(group).max())
        buffer = np.empty((min(n, step * per_group),) + canvas.shape, np.float32)
        for g0 in range(0, n_groups, step):
            g1 = min(n_groups, g0 + step)
            rows = np.arange(first_row[g0], first_row[g1] if g1 < n_groups else n)
            t = time.perf_counter()
            if static_fill is None:
                fills = filler.fill(canvas, grid.hidden_pixels(visible[first_row[g0:g1]]))
                timings["fill"] += time.perf_counter() - t
                t = time.perf_counter()
                batch = grid.composite(visible[rows], canvas, fills, group[rows] - g0, out=buffer[:len(rows)])
            else:
                batch = grid.composite(visible[rows], canvas, static_fill[None], None, out=buffer[:len(rows)])
            timings["compose"] += time.perf_counter() - t
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
        if transform is not None:
            batch = transform(batch)
        return self.adapter.predict(batch)


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


def _low_fidelity_warnings(r2_evidence: float, fill: str, cfg: ExplainConfig) -> list[str]:
    if not r2_evidence < LOW_FIDELITY_R2:  # NaN (the answer did not move) is warned about by _weak_map_warnings
        return []
    tries = ["another --fill (auto chooses among mae, mean and blur)" if cfg.fill != "auto" else
             "a site calibration (blackbox-lime calibrate)", "an MAE fitted on your images (blackbox-lime mae fit)",
             f"more --samples (used {cfg.n_samples})"]
    return [f"Low fidelity: hiding patches explains the answer's drops with held-out R^2 {r2_evidence:.3f} (below "
            f"{LOW_FIDELITY_R2:g}) with the {fill} fill, so the map's evidence is weak or the fill adds evidence of "
            f"its own. Try {', '.join(tries[:-1])} or {tries[-1]}."]


def _off_domain_warnings(psnr: dict[str, float], gap: float, cfg: ExplainConfig) -> list[str]:
    if gap <= cfg.recon_margin_db:
        return []
    return [f"Fill off the image's domain: the MAE reconstructs this image's hidden pixels {gap:.1f} dB worse than a "
            f"blur ({psnr['mae']:.1f} vs {psnr['blur']:.1f} dB; the MAE is trusted within {cfg.recon_margin_db:g} dB), so "
            "its fills may add or keep evidence of their own. Try --fill auto, a site calibration (blackbox-lime "
            "calibrate) or an MAE fitted on your images (blackbox-lime mae fit)."]


def _describe(filler: Filler) -> dict[str, Any]:
    describe = getattr(filler, "describe", None)
    return describe() if describe is not None else {"kind": filler.name}


def _weak_map_warnings(y: np.ndarray, sd: float, coef: np.ndarray, lambda1: float, name: str) -> list[str]:
    out = []
    if sd < WEAK_RESPONSE_SD:
        out.append(f"P({name}) hardly moved under masking (kernel-weighted sd {sd:.4f}, range {y.min():.3f} to "
                   f"{y.max():.3f}): the map ranks small effects. Check that the image is in the model's domain, "
                   "or try more --samples.")
    if not np.any(coef):
        out.append(f"No patch's evidence survived the L1 penalty (effective lambda1 {lambda1:.3g}), so the map is "
                   "empty. Lower --lambda1, or --lambda1-cap below 1.")
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
            config: ExplainConfig | None = None, **kwargs: object) -> Explanation:
    """One-call form: ``Explainer(adapter, config, **kwargs).explain(image, target, rng)``."""
    return Explainer(adapter, config, **kwargs).explain(image, target=target, rng=rng)  # type: ignore[arg-type]
