"""Configuration of an explanation: a frozen dataclass that validates itself."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from blackbox_lime.fill import policy as _fill_policy
from blackbox_lime.fill.policy import MIN_PILOT
from blackbox_lime.fill.registry import challenger_names, fill_choices, fill_names, is_generative
from blackbox_lime.test_time_adaptation import query_cost

LAMBDA2_NO_PRIOR = 1e-4  # without a prior the term is only a ridge towards 0; kept negligible as before EBR
LAMBDA2_PRIOR = 0.3  # with EBR's prior: chosen on val (docs/tune_val/evidence.md)
LAMBDA1_SCALES = ("response", "absolute")


def _check(ok: bool, name: str, what: str, got: object) -> None:
    if not ok:
        raise ValueError(f"The {name!r} parameter must be {what}. Got {got!r} instead.")


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_real(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


MAX_SAMPLES = 1_000_000  # the most queries one explanation may ask for

@dataclass(frozen=True)
class ExplainConfig:
    """Every knob of an explanation. Invalid values raise ``ValueError`` naming the parameter.

    Parameters
    ----------
    patch_size : int, default 16
        Side of the fixed square patches, in pixels of the explanation canvas (the model's input
        size). With MAE fill it must be a multiple of the MAE's patch (16 for the bundled MAE).
    n_samples : int, default 500
        Perturbed images queried, the unperturbed image included. This is the query cost.
    mask_ratios : tuple of float, default (0.25, 0.5, 0.75)
        Fractions of patches hidden per sample, used in equal shares. 0.5 maximises the variance of
        each patch indicator; 0.25 keeps samples close to the image (local fidelity); 0.75 hides
        whole multi-patch lesions often enough to show effects a max-like classifier only shows
        when all of a lesion is gone.
    fill : {"auto", "mae", "mean", "blur", "zero"}, default "auto"
        How hidden patches are filled: the local MAE (generative masking), the image's
        per-channel mean, a strong Gaussian blur of the image, or zeros. "auto" keeps the MAE where
        it reconstructs the image's own hidden pixels within ``recon_margin_db`` of a blur (no query),
        and otherwise the first classic fill, the mean (or, with ``pilot_samples``, a classic fill picked by
        a pilot share of the budget; blackbox_lime/fill/policy.py); the total queries stay ``n_samples``.
    fill_candidates : tuple of str, default ("mae", "mean", "blur")
        The fills "auto" chooses among. The MAE is judged by the reconstruction check; of the others the
        first is taken (or, with ``pilot_samples``, the first unless a pilot favours another).
    recon_margin_db : float, default 2.0
        "auto": the MAE is used when its PSNR on the image's own hidden pixels (8 fixed masks hiding half
        the patches) is at most this many dB below a blur's; no query is spent then.
    mae_challenger : str or None, default None
        "auto", when the MAE passes the check: a fixed fill piloted against the MAE (``challenger_samples``
        each, masks over ``challenger_block`` x ``challenger_block`` patch blocks, the evidence fit's held-out
        R^2); it replaces the MAE only when it scores more than ``challenger_margin`` higher. The MAE's pilot
        samples are reused; the challenger's are the price. None keeps the MAE without a query.
    challenger_samples, challenger_block, challenger_margin : int, int, float; default 24, 2, 0.5
        The challenger's pilot (see ``mae_challenger``): on val (docs/tune_val/fill_zero/table.md) the setting
        whose worst-group ratio holds best at its neighbouring margins. The challenger is off by default
        because the val grid is unstable (docs/robust_fill.md).
    pilot_samples : int, default 0
        "auto", when the MAE fails the check: pilot samples per classic candidate (masks over blocks of
        ``pilot_block`` x ``pilot_block`` patches), scored by the evidence fit's held-out R^2. The
        chosen fill's pilot samples are reused; the other's are the price of the choice. Lowered for
        a small ``n_samples`` (:attr:`pilot_per_fill`); 0 (the default) takes the first classic candidate
        without a pilot. The pilot (32) was the default until the real images' val splits showed it
        choosing the blur where the mean scores higher (docs/robust_fill.md, "The pilot on real images").
    pilot_block : int, default 2
        "auto": side of the pilot's mask blocks, in patches.
    fill_margin : float, default 0.0
        "auto": how much higher another classic candidate's score must be to replace the first.
        recon_margin_db, pilot_samples, pilot_block and fill_margin were chosen together on val
        (``python -m blackbox_lime.evaluation.bench_fill --split val``, docs/tune_val/fill/table.md; the real
        families' val splits added, docs/robust_fill.md).
    nested_samples : int, default 3
        Samples that share one MAE reconstruction. A group's first mask hides the most patches;
        the others reveal a random part of its hidden patches again, so every fill is conditioned
        only on pixels that are visible in its sample. 1 runs the MAE once per sample.
    kernel_width : float, default 1.0
        sigma of the proximity kernel pi(m) = exp(-D(m, 1)^2 / sigma^2), where D is the fraction of
        hidden patches.
    lambda1 : float, default 0.07
        L1 weight. The data term is the kernel-weighted *mean* squared error of the probabilities,
        so lambda1 does not scale with n_samples. See ``lambda1_scale`` for its unit. lambda1, its
        cap and kernel_width are chosen on the val split (``python -m blackbox_lime.evaluation.tune``: the
        highest AUPRC among settings whose consistency across 3 seeds is >= 0.9, else the highest
        AUPRC; see ``docs/bench_quick/tune_val.md``).
    lambda1_scale : {"response", "absolute"}, default "response"
        "response": the penalty is ``lambda1`` times the kernel-weighted standard deviation of the
        explained probability over the queried samples. Which patches survive then does not depend
        on how far the model's answer moves under masking (a confident model, a shifted input, a
        recalibrated endpoint): with an absolute weight, an answer that moves little had every
        weight zeroed and the map came out empty. "absolute": ``lambda1`` as is.
    lambda1_cap : float in (0, 1], default 0.5
        The L1 weight used is at most this fraction of the smallest L1 weight that would zero every
        patch. At least the strongest patch then survives: without a cap, a model whose answer hinges
        on no single patch got an empty map. 1.0 turns the cap off. The explanation reports whether
        the cap acted (``lambda1_capped``).
    lambda2 : float or None, default None
        Weight of ||w - w_ref||^2 (w_ref is the evidence prior, zero without one). None takes
        ``LAMBDA2_PRIOR`` when an evidence prior is used (tuned on val with EBR:
        ``python -m blackbox_lime.evaluation.tune --part evidence --stta``, docs/tune_val/evidence.md) and
        ``LAMBDA2_NO_PRIOR`` (a negligible ridge) otherwise; :meth:`lambda2_for` gives the value used.
    map_sigma : float, default 1.0
        The pixel map is the patch weights interpolated between patch centres (bicubic) and then smoothed by a
        Gaussian of this many patches' width (sigma; 0: not smoothed). A patch's weight says that hiding that square
        moved the answer, not where inside it the evidence lies, and real findings cross patch borders: the smooth
        map ranks the pixels around a strong patch above distant ones. Chosen on the real-image val split (pixel
        AUPRC against the expert boxes of the meningioma slices, whose answers rest on the tumour: 0.72 without
        smoothing, 0.92 at 1 patch, 0.93 at 1.5; docs/bench_real/figshare_val_sigma); on the phantom test cases it
        also raised AUPRC at 250 queries and the consistency across seeds (docs/bench_medlime/quick_map_sigma).
    map_guide : float, default 0.0 (off)
        Pass the smoothed map through a guided filter (He et al., ECCV 2010) of this radius in patches, with the
        image at the model's input size (before any STTA transform) as the guide: within that reach the map's edges
        move onto the image's edges.
        ``map_guide_eps`` (default 1e-3, on the guide's [0, 1] scale) is how strong an edge must be to be followed.
        Off by default, chosen on the val splits (``python -m blackbox_lime.evaluation.tune_guide``,
        docs/tune_val/guide): at 0.75 patch it raises AUPRC on every group, much on the phantoms, little on the real
        families, but on the real colonoscopy family its top pixels lower the model's answer less than the unguided
        map's (the rule keeps a map only where it follows the model at least as well).
    batch_size : int, default 64
        Images per MAE run and per classifier request.
    stta : bool, default False
        STTA: before sampling, adapt the input with a photometric transform found by SPSA so that the
        frozen model's cross-entropy against the explained class, over ``stta_views`` views, is lowest;
        every queried image then passes through it (``blackbox_lime/test_time_adaptation.py``).
    stta_iterations : int, default 8
        SPSA iterations T.
    stta_views : int, default 4
        Views S (the image, then rotated resized crops).
    stta_seed : int, default 0
        Seed of STTA's own generator (views and SPSA directions). The adaptation is then a function of
        the image and the configuration alone, not of the explanation's seed: maps from different
        seeds explain the same adapted image, and an audit sees one adaptation per image. With the
        explanation's generator instead, the val consistency across 3 seeds was 0.71
        (docs/tune_val/evidence_stta_unseeded.md), against 0.90 for GM alone
        (docs/bench_quick/tune_val.md).
    stta_probes : int, default 0
        Probe images K (half the patches hidden and filled) on which the adapted answer must stay
        sensitive to the image's content, or the adaptation is dropped; 0 (the default, chosen on
        the val split) skips the check. STTA costs at most S (2T + 2) + 2K queries on top of
        ``n_samples`` (72 by default; the 2K only when a transform was found);
        :meth:`n_samples_for_budget` splits a total budget.
    n_neighbours : int, default 25
        EBR: the nearest historical cases N_T whose maps form the evidence prior (with an evidence bank);
        chosen on val with lambda2 (docs/tune_val/evidence.md).
    """

    patch_size: int = 16
    n_samples: int | str = 500
    max_samples: int = 500
    stop_round: int = 48
    stop_min: int = 96
    stop_corr: float = 0.85
    stop_patience: int = 1
    mask_ratios: tuple[float, ...] = (0.25, 0.5, 0.75)
    fill: str = "auto"
    fill_candidates: tuple[str, ...] = ("mae", "mean", "blur")
    pilot_samples: int = 0
    pilot_block: int = 2
    fill_margin: float = 0.0
    recon_margin_db: float = 2.0
    mae_challenger: str | None = None
    challenger_samples: int = 24
    challenger_block: int = 2
    challenger_margin: float = 0.5
    nested_samples: int = 3
    kernel_width: float = 1.0
    lambda1: float = 0.07
    lambda1_scale: str = "response"
    lambda1_cap: float = 0.5
    lambda2: float | None = None
    map_sigma: float = 1.0
    map_guide: float = 0.0
    map_guide_eps: float = 1e-3
    batch_size: int = 64
    stta: bool = False
    stta_iterations: int = 8
    stta_views: int = 4
    stta_seed: int = 0
    stta_probes: int = 0
    n_neighbours: int = 25

    def __post_init__(self) -> None:
        if isinstance(self.fill_candidates, list):  # a config read back from JSON (to_dict writes a list)
            object.__setattr__(self, "fill_candidates", tuple(self.fill_candidates))
        for opt in OPTIONS:  # one table: the checks, their words, and the CLI's options and help
            value = getattr(self, opt.field)
            _check(opt.ok(value), opt.field, opt.what() if callable(opt.what) else opt.what, value)
            if opt.then is not None:  # a check across fields, once every field it reads is valid
                opt.then(self)

    @property
    def adaptive(self) -> bool:
        """``n_samples="auto"``: queries in rounds until the map has settled (at most ``max_samples``)."""
        return self.n_samples == "auto"

    @property
    def sample_ceiling(self) -> int:
        """The most samples one explanation queries: ``n_samples``, or ``max_samples`` when it is "auto"."""
        return self.max_samples if self.n_samples == "auto" else int(self.n_samples)

    @property
    def pilot_candidates(self) -> int:
        """How many fills "auto" pilots with queries (:func:`blackbox_lime.fill.policy.pilot_candidates`)."""
        return _fill_policy.pilot_candidates(self)

    @property
    def pilot_per_fill(self) -> int:
        """Pilot samples per candidate that "auto" uses (:func:`blackbox_lime.fill.policy.pilot_per_fill`)."""
        return _fill_policy.pilot_per_fill(self)

    @property
    def challenger_per_fill(self) -> int:
        """Pilot samples of the MAE and of its challenger (:func:`blackbox_lime.fill.policy.challenger_per_fill`)."""
        return _fill_policy.challenger_per_fill(self)

    def lambda2_for(self, prior: bool) -> float:
        """The lambda2 the surrogate uses, with (``prior``) or without an evidence prior."""
        if self.lambda2 is not None:
            return float(self.lambda2)
        return LAMBDA2_PRIOR if prior else LAMBDA2_NO_PRIOR

    @property
    def stta_queries(self) -> int:
        """The most queries STTA sends before sampling (0 when it is off): S (2T + 2) + 2K."""
        return query_cost(self.stta_views, self.stta_iterations, self.stta_probes) if self.stta else 0

    @property
    def total_queries(self) -> int:
        """The most images one explanation sends: the samples plus STTA's."""
        return self.sample_ceiling + self.stta_queries

    @staticmethod
    def n_samples_for_budget(budget: int, stta: bool, **stta_options: int) -> int:
        """The ``n_samples`` with which one explanation sends at most ``budget`` images, STTA included.

        ``stta_options`` are ``stta_iterations``, ``stta_views`` or ``stta_probes`` when not the defaults."""
        cost = ExplainConfig(stta=stta, **stta_options).stta_queries  # type: ignore[arg-type]
        if budget - cost < 10:
            raise ValueError(f"A budget of {budget} queries leaves {budget - cost} samples after STTA's {cost}; "
                             "at least 10 are needed. Raise the budget or lower stta_iterations / stta_views.")
        return budget - cost

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mask_ratios"] = list(self.mask_ratios)
        d["fill_candidates"] = list(self.fill_candidates)
        return d


# -- the option table --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One knob of :class:`ExplainConfig`: its check (``ok``, and ``what`` in words, as the error says it), and where
    the command line offers it, its option (``flag``, without "--"), value ``type`` or ``choices`` and ``help``.
    ``help`` may name the defaults as ``{d.field}`` (``d`` is the default config), or be a callable of it, so the
    command's help never restates a default by hand. ``then``: a check across fields, run right after this row's
    own check (so on the last field it reads); it raises ValueError as the rows do."""
    field: str
    ok: Callable[[Any], bool]
    what: str | Callable[[], str]
    flag: str | None = None
    type: Callable[[str], Any] | None = None
    choices: Callable[[], Sequence[str]] | None = None
    help: str | Callable[[ExplainConfig], str] = ""
    then: Callable[[ExplainConfig], None] | None = None

    def help_text(self, defaults: ExplainConfig) -> str:
        return self.help(defaults) if callable(self.help) else self.help.format(d=defaults)


def _samples_arg(text: str) -> int | str:
    """--samples: an integer, or "auto"."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        import argparse

        raise argparse.ArgumentTypeError(f"must be an integer >= 10 or auto. Got {text!r} instead.") from None


def _auto_fits_the_budget(cfg: ExplainConfig) -> None:
    """What fill "auto" needs of the budget, once its settings are valid: room for its pilots."""
    for need, why in _fill_policy.auto_sample_needs(cfg):
        if cfg.adaptive:  # the ceiling must leave room for the pilots
            _check(cfg.max_samples >= need, "max_samples", why + " (n_samples is 'auto': max_samples is its ceiling)",
                   cfg.max_samples)
        else:
            _check(cfg.sample_ceiling >= need, "n_samples", why, cfg.n_samples)


def _stta_within_cap(cfg: ExplainConfig) -> None:
    _check(cfg.stta_iterations <= 1000 and cfg.stta_views <= 1000,
           "stta_iterations" if cfg.stta_iterations > 1000 else "stta_views", "at most 1000",
           max(cfg.stta_iterations, cfg.stta_views))


def _int_at_least(low: int) -> Callable[[Any], bool]:
    return lambda v: _is_int(v) and v >= low


def _candidates_ok(c: Any) -> bool:
    return isinstance(c, tuple) and len(c) >= 2 and len(set(c)) == len(c) and all(x in fill_names() for x in c)


def _fill_help(d: ExplainConfig) -> str:
    classic = [c for c in d.fill_candidates if not is_generative(c)]
    rest = (f"{' or '.join(classic)} by a pilot share of --samples" if d.pilot_samples else
            f"the {classic[0]} fill")
    return (f"how hidden patches are filled (default {d.fill}: per image, the MAE where it reconstructs the image "
            f"within {d.recon_margin_db:g} dB of a blur, else {rest})")


#: Every checked knob, in the order its check runs. ExplainConfig checks its values with it, and the CLI builds its
#: explanation options (blackbox_lime/cli/parser.py) and maps the library's messages to its options from it.
OPTIONS: tuple[Option, ...] = (
    Option("patch_size", _int_at_least(2), "an integer >= 2", "patch-size", int,
           help="patch side in model-input pixels (default {d.patch_size})"),
    Option("n_samples", lambda v: v == "auto" or _int_at_least(10)(v), "an integer >= 10 or 'auto'", "samples",
           _samples_arg, help="perturbed images queried per explanation (default {d.n_samples}); auto: in rounds "
                              "until the map has settled, at most --max-samples"),
    Option("n_samples", lambda v: v == "auto" or v <= MAX_SAMPLES,
           f"at most {MAX_SAMPLES} (the queries of one explanation)"),
    Option("max_samples", lambda v: _int_at_least(10)(v) and v <= MAX_SAMPLES,
           f"an integer in the range [10, {MAX_SAMPLES}]", "max-samples", int,
           help="with --samples auto: the most samples one explanation queries (default {d.max_samples})"),
    Option("stop_round", _int_at_least(1), "an integer >= 1"),
    Option("stop_min", _int_at_least(10), "an integer >= 10"),
    Option("stop_corr", lambda v: _is_real(v) and 0 < v < 1, "a float in the range (0, 1)"),
    Option("stop_patience", _int_at_least(1), "an integer >= 1"),
    Option("mask_ratios", lambda r: isinstance(r, tuple) and len(r) >= 1 and all(_is_real(x) and 0 < x < 1 for x in r),
           "a non-empty tuple of floats in the range (0, 1)"),
    Option("fill", lambda v: v in fill_choices(), lambda: f"one of {', '.join(fill_choices())}", "fill",
           choices=fill_choices, help=_fill_help),
    Option("fill_candidates", _candidates_ok, lambda: f"a tuple of two or more distinct fills from {', '.join(fill_names())}"),
    Option("pilot_samples", lambda v: _is_int(v) and (v == 0 or v >= MIN_PILOT), f"0 or an integer >= {MIN_PILOT}",
           "pilot-samples", int, help="fill auto, where the MAE fails its check: pilot queries per classic fill to "
                                      "choose among them (default {d.pilot_samples}: the mean fill, no pilot; 32 was "
                                      "the default before, docs/robust_fill.md)"),
    Option("recon_margin_db", _is_real, "a finite float"),
    Option("pilot_block", _int_at_least(1), "an integer >= 1"),
    Option("fill_margin", lambda v: _is_real(v) and v >= 0, "a float in the range [0, inf)"),
    Option("mae_challenger", lambda v: v is None or v in challenger_names(),
           lambda: f"None or one of {', '.join(challenger_names())}", "mae-challenger", choices=challenger_names,
           help="fill auto: where the MAE passes its check, pilot it against this fill ({d.challenger_samples} queries "
                "each) and use the challenger when its evidence fit is clearly better (off by default; see "
                "docs/robust_fill.md)"),
    Option("challenger_samples", _int_at_least(MIN_PILOT), f"an integer >= {MIN_PILOT}"),
    Option("challenger_block", _int_at_least(1), "an integer >= 1"),
    Option("challenger_margin", lambda v: _is_real(v) and v >= 0, "a float in the range [0, inf)",
           then=_auto_fits_the_budget),
    Option("nested_samples", _int_at_least(1), "an integer >= 1"),
    Option("kernel_width", lambda v: _is_real(v) and v > 0, "a float in the range (0, inf)", "kernel-width", float,
           help="proximity kernel width (default {d.kernel_width})"),
    Option("lambda1", lambda v: _is_real(v) and v >= 0, "a float in the range [0, inf)", "lambda1", float,
           help="surrogate L1 weight (default {d.lambda1:g}, tuned on the val split; lower keeps weaker evidence)"),
    Option("lambda1_scale", lambda v: v in LAMBDA1_SCALES, f"one of {', '.join(LAMBDA1_SCALES)}", "lambda1-scale",
           choices=lambda: LAMBDA1_SCALES,
           help="response (default): --lambda1 is relative to how much the answer moves; absolute: as is"),
    Option("lambda1_cap", lambda v: _is_real(v) and 0 < v <= 1, "a float in the range (0, 1]", "lambda1-cap", float,
           help="use at most this fraction (0, 1] of the L1 weight that would empty the map (default {d.lambda1_cap}; "
                "1: no cap)"),
    Option("map_sigma", lambda v: _is_real(v) and 0 <= v <= 8, "a float in the range [0, 8]", "map-sigma", float,
           help="smooth the map with a Gaussian of this many patches (default {d.map_sigma}; 0: not smoothed)"),
    Option("map_guide", lambda v: _is_real(v) and 0 <= v <= 4, "a float in the range [0, 4]", "map-guide", float,
           help="make the map follow the image's edges within this many patches (a guided filter, e.g. 0.75; "
                "default {d.map_guide:g}: off; docs/benchmark.md)"),
    Option("map_guide_eps", lambda v: _is_real(v) and v > 0, "a float in the range (0, inf)"),
    Option("lambda2", lambda v: v is None or (_is_real(v) and v >= 0), "None or a float in the range [0, inf)",
           "lambda2", float, help=f"weight of the pull towards the evidence prior (default {LAMBDA2_PRIOR:g} with an "
                                  "evidence bank)"),
    Option("batch_size", _int_at_least(1), "an integer >= 1"),
    Option("stta", lambda v: isinstance(v, bool), "True or False", "stta",
           help=lambda d: f"STTA: adapt the input's photometry to the model first (costs views*(2*iterations+2) "
                          f"queries; default: {'on' if d.stta else 'off'})"),
    Option("stta_iterations", _int_at_least(1), "an integer >= 1", "stta-iterations", int,
           help="STTA's SPSA iterations (default {d.stta_iterations})"),
    Option("stta_views", _int_at_least(1), "an integer >= 1", "stta-views", int,
           help="STTA's views of the image (default {d.stta_views})", then=_stta_within_cap),
    Option("stta_seed", _int_at_least(0), "an integer >= 0"),
    Option("stta_probes", _int_at_least(0), "an integer >= 0"),
    Option("n_neighbours", _int_at_least(1), "an integer >= 1", "neighbours", int,
           help="EBR: nearest bank cases used (default {d.n_neighbours})"),
)


def cli_text(text: str) -> str:
    """The library's messages name configuration fields, in backticks (`n_samples`) or as a checked parameter ("The
    'n_samples' parameter ..."); the command line says its options instead (--samples). Other text is kept as it is."""
    for o in OPTIONS:
        if o.flag is not None:
            text = text.replace(f"`{o.field}`", f"--{o.flag}").replace(f"The {o.field!r} parameter", f"--{o.flag}")
    return text


def cli_options() -> dict[str, str]:
    """The command line's option dests -> ExplainConfig fields (``samples`` -> ``n_samples``)."""
    return {o.flag.replace("-", "_"): o.field for o in OPTIONS if o.flag is not None}
