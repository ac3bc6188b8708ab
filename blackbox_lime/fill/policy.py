"""Fill policies: which fill one image's explanation uses, and what deciding it costs.

- :class:`FixedFill`: one fill for every image. A generative one (the MAE) still gets the reconstruction
  check, for its record and its off-domain warning; no query is spent.
- :class:`AutoFill`: fill "auto" (blackbox_lime/fill/choice.py has the scoring). The generative candidate is
  judged by the reconstruction check; when it fails, a coarse pilot per classic candidate decides; when it
  passes and a challenger is set, a pilot of the two decides. The chosen fill's pilot samples are returned for
  reuse in the explanation's design.

A policy is given a ``sampler`` (fill, composite and query a design) and the image's answer, so it spends
queries only through the explanation's own path (STTA's transform, the remote overlap, the counters).
``calibrate`` and the fill benchmark call the same policy.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

from blackbox_lime.fill.choice import FillChoice, coarse_design, decide, recon_psnr, score_pilot
from blackbox_lime.fill.fillers import Filler
from blackbox_lime.fill.registry import fill_kind, is_generative, make_filler
from blackbox_lime.map_warnings import MapWarning
from blackbox_lime.patches import PatchGrid

if TYPE_CHECKING:
    from blackbox_lime.config import ExplainConfig

#: (filler, visible bool (n, P), group int (n,)) -> the answers (n, K), NaN where a censoring endpoint omitted one.
Sampler = Callable[[Filler, np.ndarray, np.ndarray], np.ndarray]
#: () -> (the explained targets, the image's own answer (K,)); asked only when a pilot needs it.
Answered = Callable[[], "tuple[list[int], np.ndarray]"]
#: answers with NaN -> answers with every cell filled (the censoring endpoint's imputation; identity otherwise).
Complete = Callable[[np.ndarray], np.ndarray]
#: (scores: the evidence fit's held-out R^2 per candidate, None where the answer did not move; the answers'
#: spread per candidate; each candidate's pilot (visible bool (n, P), answers (n, K)), empty where not kept).
PilotResult: TypeAlias = tuple[dict[str, "float | None"], dict[str, float], dict[str, tuple[np.ndarray, np.ndarray]]]
#: (candidates, pilot samples per candidate, block) -> a PilotResult: how "auto"'s rule gets its pilots.
Pilot = Callable[[dict[str, Filler], int, int], PilotResult]


@dataclass
class FillPlan:
    """One image's fill: the filler, the choice of "auto" (None for a fixed fill), the pilot samples kept for the
    design (visible (n, P), answers (n, K); empty when none), the ``fill`` record of the explanation's JSON and
    the warnings about the fill."""
    filler: Filler
    choice: FillChoice | None
    visible: np.ndarray
    probs: np.ndarray
    record: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    @property
    def spent(self) -> int:
        """Samples of the budget this plan used: its kept pilot and the queries spent on the choice."""
        return len(self.visible) + (self.choice.queries_spent if self.choice is not None else 0)


class FillPolicy:
    """How one image's fill is decided (see the module). ``fillers`` holds every filler the policy may use."""

    fillers: dict[str, Filler]

    def __init__(self, grid: PatchGrid, config: ExplainConfig) -> None:
        self.grid, self.config = grid, config

    @property
    def preferred(self) -> Filler:
        """The fill used where no image decides (STTA's probes): the first candidate."""
        return next(iter(self.fillers.values()))

    def min_samples(self) -> int:
        """The fewest samples per explanation this policy can work with."""
        return 2

    def plan(self, canvas: np.ndarray, sample: Sampler, answered: Answered, complete: Complete,
             gen: np.random.Generator, timings: dict[str, float]) -> FillPlan:
        raise NotImplementedError

    def _empty(self, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
        return np.ones((0, self.grid.n_patches), bool), np.zeros((0, n_classes))

    def recon_check(self, canvas: np.ndarray, generative: Filler) -> tuple[dict[str, float], float]:
        """PSNR (dB) of a generative fill and of a blur on the image's own hidden pixels
        (:func:`~blackbox_lime.fill.choice.recon_psnr`) and the gap blur - generative. No query is sent."""
        blur = self.fillers.get("blur") or make_filler("blur", self.config.patch_size)
        psnr = recon_psnr(canvas, {generative.name: generative, "blur": blur}, self.grid)
        return psnr, psnr["blur"] - psnr[generative.name]


class FixedFill(FillPolicy):
    """One fill for every image."""

    def __init__(self, grid: PatchGrid, config: ExplainConfig, filler: Filler, n_classes: int) -> None:
        super().__init__(grid, config)
        self.fillers, self.n_classes = {filler.name: filler}, n_classes

    def plan(self, canvas: np.ndarray, sample: Sampler, answered: Answered, complete: Complete,
             gen: np.random.Generator, timings: dict[str, float]) -> FillPlan:
        filler = self.preferred
        record: dict[str, Any] = {"mode": "fixed", "chosen": filler.name}
        warnings: list[str] = []
        if is_generative(filler.name):  # a forced generative fill: is it in this image's domain?
            t = time.perf_counter()
            psnr, gap = self.recon_check(canvas, filler)
            timings["fill_choice"] = time.perf_counter() - t
            record["recon_psnr_db"] = {k: round(v, 2) for k, v in psnr.items()}
            warnings = off_domain_warnings(psnr, gap, self.config.recon_margin_db, filler.name)
        return FillPlan(filler, None, *self._empty(self.n_classes), record, warnings)


class AutoFill(FillPolicy):
    """Fill "auto" over ``candidates`` (the first generative one gated by the reconstruction check, the classic
    ones piloted) and an optional ``challenger`` piloted against a generative fill that passed."""

    def __init__(self, grid: PatchGrid, config: ExplainConfig, candidates: Mapping[str, Filler],
                 challenger: Mapping[str, Filler], n_classes: int) -> None:
        super().__init__(grid, config)
        self.fillers, self.challenger, self.n_classes = dict(candidates), dict(challenger), n_classes
        self.gate = next((k for k in self.fillers if is_generative(k)), None)
        self.classic = [k for k in self.fillers if not is_generative(k)]

    @classmethod
    def build(cls, grid: PatchGrid, config: ExplainConfig, make: Callable[[str], Filler], n_classes: int) -> AutoFill:
        """The config's candidates and challenger, made by ``make`` (name -> Filler)."""
        candidates = {k: make(k) for k in config.fill_candidates}
        has_gate = any(is_generative(k) for k in candidates)
        challenger = ({config.mae_challenger: make(config.mae_challenger)}
                      if config.mae_challenger is not None and has_gate else {})
        return cls(grid, config, candidates, challenger, n_classes)

    def min_samples(self) -> int:
        return max((n for n, _ in auto_sample_needs(self.config)), default=2)

    def plan(self, canvas: np.ndarray, sample: Sampler, answered: Answered, complete: Complete,
             gen: np.random.Generator, timings: dict[str, float]) -> FillPlan:
        choice, visible, probs = self.choose(canvas, sample, answered, complete, gen, timings)
        filler = {**self.fillers, **self.challenger}[choice.chosen]
        return FillPlan(filler, choice, visible, probs, choice.summary())

    def choose(self, canvas: np.ndarray, sample: Sampler, answered: Answered, complete: Complete,
               gen: np.random.Generator, timings: dict[str, float]) -> tuple[FillChoice, np.ndarray, np.ndarray]:
        """The choice for one image: the generative candidate's reconstruction check, without queries, then
        :meth:`rule`, whose pilots are drawn from ``gen`` and queried through ``sample``. With several targets the
        fill is shared: a candidate's score is the mean of the targets' scores (those whose answer moved).

        Returns the choice and the chosen candidate's pilot (visible bool (n, P), probs (n, K)) for reuse, empty
        when no pilot ran."""
        t0 = time.perf_counter()

        def pilot(candidates: dict[str, Filler], n: int, block: int) -> PilotResult:
            targets, probs0 = answered()
            return self._pilots(canvas, sample, complete, targets, probs0, gen, candidates, n, block)

        psnr, gap = self.recon_check(canvas, self.fillers[self.gate]) if self.gate is not None else ({}, float("nan"))
        choice, kept = self.rule(psnr, gap, pilot)
        timings["fill_choice"] = time.perf_counter() - t0
        return replace(choice, seconds=timings["fill_choice"]), *(kept or self._empty(self.n_classes))

    def rule(self, psnr: dict[str, float], gap: float, pilot: Pilot
             ) -> tuple[FillChoice, tuple[np.ndarray, np.ndarray] | None]:
        """The rule of fill "auto", given the reconstruction check (``psnr`` per fill and ``gap`` = blur - generative,
        in dB; empty and NaN without a generative candidate) and ``pilot``, which answers the pilots it asks for.

        When the generative fill reconstructs the image within ``recon_margin_db`` of a blur, it is kept, or, with a
        challenger, piloted against it (kept unless the challenger's evidence fit scores more than
        ``challenger_margin`` higher). Otherwise a coarse pilot per classic candidate, scored by the evidence fit's
        held-out R^2, decides (the first classic candidate unless another scores more than ``fill_margin`` higher);
        with ``pilot_samples=0`` or one classic candidate, the first classic candidate is used.

        The explanation pilots by querying; the fill benchmark's val tuning pilots by replaying saved answers.
        Returns the choice (``seconds`` 0) and the chosen candidate's pilot, None when none ran."""
        cfg = self.config
        gate, classic = self.gate, self.classic
        if gate is not None and (gap <= cfg.recon_margin_db or not classic):
            reason = (f"the MAE reconstructs this image's hidden pixels within {cfg.recon_margin_db:g} dB of a "
                      f"blur ({psnr[gate]:.2f} vs {psnr['blur']:.2f} dB)")
            if not self.challenger:
                return FillChoice(gate, {}, {}, 0, 0, 0.0, gate, cfg.fill_margin, reason, psnr, cfg.recon_margin_db,
                                  gate="passed"), None
            # a ViT on ultrasound reads zero-filled patches as absent evidence better than MAE-filled ones
            # (docs/robust_fill.md): the generative fill against its challenger
            n = challenger_per_fill(cfg)
            scores, spread, pilots = pilot({gate: self.fillers[gate], **self.challenger}, n, cfg.challenger_block)
            chosen, why = decide(scores, gate, cfg.challenger_margin)
            return FillChoice(chosen, scores, spread, n, n, 0.0, gate, cfg.challenger_margin,
                              f"{reason}; piloted against {', '.join(self.challenger)}: {why}", psnr,
                              cfg.recon_margin_db, gate="passed"), pilots.get(chosen)
        lead = (f"the MAE reconstructs this image's hidden pixels {gap:.2f} dB worse than a blur; "
                if gate is not None else "")
        failed = "failed" if gate else None
        n = pilot_per_fill(cfg)
        if n == 0 or len(classic) == 1:
            chosen = classic[0]
            return FillChoice(chosen, {}, {}, 0, 0, 0.0, chosen, cfg.fill_margin,
                              lead + f"the {chosen} fill, the first classic candidate (no pilot)", psnr, cfg.recon_margin_db,
                              gate=failed), None
        scores, spread, pilots = pilot({k: self.fillers[k] for k in classic}, n, cfg.pilot_block)
        chosen, reason = decide(scores, classic[0], cfg.fill_margin)
        return FillChoice(chosen, scores, spread, n, n * (len(classic) - 1), 0.0, classic[0], cfg.fill_margin,
                          lead + reason, psnr, cfg.recon_margin_db, gate=failed), pilots.get(chosen)

    def _pilots(self, canvas: np.ndarray, sample: Sampler, complete: Complete, targets: list[int],
                probs0: np.ndarray, gen: np.random.Generator, candidates: dict[str, Filler], n: int, block: int
                ) -> tuple[dict[str, float | None], dict[str, float], dict[str, tuple[np.ndarray, np.ndarray]]]:
        """A coarse pilot of ``n`` queries per candidate (masks over ``block`` x ``block`` patches), scored by the
        evidence fit's held-out R^2 (the mean over the targets whose answer moved; None when none did) ->
        (scores, the answers' spread per candidate, each pilot's (visible, probs))."""
        cfg = self.config
        scores: dict[str, float | None] = {}
        spread: dict[str, float] = {}
        pilots = {}
        for name, filler in candidates.items():  # designs drawn in candidate order: deterministic for a seed
            coarse, fine = coarse_design(gen, self.grid, n, cfg.mask_ratios, block)
            probs = sample(filler, fine, np.arange(n))
            filled = complete(probs)
            per = [score_pilot(coarse, filled[:, k], float(probs0[k]), cfg.kernel_width) for k in targets]
            moved = [sc for sc, _ in per if sc is not None]
            scores[name] = float(np.mean(moved)) if moved else None
            spread[name] = max(sd for _, sd in per)
            pilots[name] = (fine, probs)
        return scores, spread, pilots


# -- the budget arithmetic of fill "auto" -------------------------------------------------------------------------

MIN_PILOT = 8  # "auto": fewest pilot samples per candidate (two per fold of the held-out R^2)


def pilot_candidates(cfg: ExplainConfig) -> int:
    """How many fills "auto" pilots with queries: the classic ones (a generative fill is judged without queries)."""
    return max(1, sum(not is_generative(c) for c in cfg.fill_candidates))


def pilot_per_fill(cfg: ExplainConfig) -> int:
    """Pilot samples per candidate that "auto" uses: ``pilot_samples``, lowered so that the chosen fill gets at
    least as many samples again as all pilots together (a small ``n_samples``)."""
    return min(cfg.pilot_samples, (cfg.sample_ceiling - 1) // (2 * pilot_candidates(cfg)))


def challenger_per_fill(cfg: ExplainConfig) -> int:
    """Pilot samples of the generative fill and of its challenger: ``challenger_samples``, lowered so that the
    chosen fill gets at least as many samples again as both pilots together."""
    return min(cfg.challenger_samples, (cfg.sample_ceiling - 1) // 4)


def auto_sample_needs(cfg: ExplainConfig) -> list[tuple[int, str]]:
    """The fewest ``n_samples`` fill "auto" can work with under ``cfg``, each with why: one need per pilot that may
    run (the challenger's, the classic candidates'); empty for a fixed fill or when no pilot can run."""
    if cfg.fill != "auto":
        return []
    needs = []
    if cfg.mae_challenger is not None and any(is_generative(c) for c in cfg.fill_candidates):
        needs.append((4 * MIN_PILOT + 1,
                      f"at least {4 * MIN_PILOT + 1} with fill 'auto' and an MAE challenger (the MAE's and the "
                      f"challenger's pilots of {MIN_PILOT} or more, as many again for the chosen fill, and the image), "
                      "or mae_challenger=None"))
    if cfg.pilot_samples:
        k = pilot_candidates(cfg)
        need = 2 * k * MIN_PILOT + 1
        needs.append((need, f"at least {need} with fill 'auto' ({k} piloted candidates x {MIN_PILOT} pilot samples, "
                            "as many again for the chosen fill, and the image), or choose a fill"))
    return needs


def make_policy(grid: PatchGrid, config: ExplainConfig, make: Callable[[str], Filler], n_classes: int,
                filler: Filler | None = None) -> FillPolicy:
    """The config's policy: a given ``filler`` or a fixed ``fill``, else "auto"."""
    if filler is not None:
        return FixedFill(grid, config, filler, n_classes)
    if config.fill == "auto":
        return AutoFill.build(grid, config, make, n_classes)
    fill_kind(config.fill)  # a name the registry knows (the config checked it already)
    return FixedFill(grid, config, make(config.fill), n_classes)


def off_domain_warnings(psnr: dict[str, float], gap: float, margin_db: float, name: str = "mae") -> list[str]:
    """A generative fill that reconstructs the image worse than a blur by more than ``margin_db``."""
    if gap <= margin_db:
        return []
    return [MapWarning("off_domain", f"Fill off the image's domain: the MAE reconstructs this image's hidden pixels {gap:.1f} dB worse than a "
            f"blur ({psnr[name]:.1f} vs {psnr['blur']:.1f} dB; the MAE is trusted within {margin_db:g} dB), so "
            "its fills may add or keep evidence of their own. Try `fill` auto, a site calibration (blackbox-lime "
            "calibrate) or an MAE fitted on your images (blackbox-lime mae fit).")]
