"""What an explanation costs before it runs: the most images it sends, and in how many requests.

    plan = explanation_plan(ExplainConfig(), max_batch=32)
    plan.images, plan.requests            # 500, 19

Images are exact for a configuration: fill "auto" spends its pilots inside ``n_samples``, and STTA adds
S (2T + 2) (+ 2K with probes). Requests follow the pipeline's own calls, each split into requests of at most
``max_batch`` images: STTA's (S images at the identity, 2S per SPSA iteration, S at the end, 2K probes), the
image's own answer, the fill pilots (batches of ``batch_size`` samples), and the design (chunks of ``batch_size``
fill groups of ``nested_samples`` samples each for a fill that depends on the mask). Where fill "auto" may take
several paths (the MAE kept, piloted against a challenger, or classic fills piloted), the plan is the most
expensive one. A server that refuses requests that large (HTTP 413) makes the adapter send smaller ones: more
requests, never more images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from blackbox_lime.config import ExplainConfig
from blackbox_lime.fill.policy import challenger_per_fill, pilot_per_fill
from blackbox_lime.fill.registry import fill_kind, is_generative


@dataclass(frozen=True)
class QueryPlan:
    """The most one explanation sends: ``images`` (``stta_images`` of them for STTA) in ``requests``."""
    images: int
    requests: int
    stta_images: int

    def cost(self, price_per_1k_images: float | None, explanations: int = 1) -> float | None:
        """What ``explanations`` such explanations cost at a price per 1,000 images (None without a price)."""
        return None if price_per_1k_images is None else self.images * explanations * price_per_1k_images / 1000.0


def _requests(images: int, max_batch: int) -> int:
    return math.ceil(images / max_batch) if images > 0 else 0


def _design_requests(rows: int, per_group: int, batch_size: int, max_batch: int) -> int:
    """Requests for ``rows`` design samples in groups of ``per_group``, ``batch_size`` groups per chunk."""
    chunk = batch_size * per_group
    full, rest = divmod(rows, chunk)
    return full * _requests(chunk, max_batch) + _requests(rest, max_batch)


def _stta_requests(cfg: ExplainConfig, max_batch: int) -> int:
    if not cfg.stta:
        return 0
    s = cfg.stta_views
    probes = _requests(2 * cfg.stta_probes, max_batch) if cfg.stta_probes else 0
    return 2 * _requests(s, max_batch) + cfg.stta_iterations * _requests(2 * s, max_batch) + probes


def explanation_plan(cfg: ExplainConfig, max_batch: int) -> QueryPlan:
    """The most images and requests one explanation under ``cfg`` sends to an endpoint taking ``max_batch`` images
    per request (see the module)."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be an integer >= 1. Got {max_batch!r} instead.")

    def nested(fill: str) -> int:
        return cfg.nested_samples if fill_kind(fill).per_mask else 1

    def design(fill: str, spent: int) -> int:  # the image's own answer, then the rest of the design
        return 1 + _design_requests(cfg.sample_ceiling - 1 - spent, nested(fill), cfg.batch_size, max_batch)

    def pilot(n: int) -> int:  # one candidate's pilot: n samples, one per group
        return _design_requests(n, 1, cfg.batch_size, max_batch)

    if cfg.fill != "auto":
        paths = [design(cfg.fill, 0)]
    else:
        gate = [c for c in cfg.fill_candidates if is_generative(c)]
        classic = [c for c in cfg.fill_candidates if not is_generative(c)]
        paths = []
        if gate:
            if cfg.mae_challenger is None or not classic:
                paths.append(design(gate[0], 0))
            else:
                c = challenger_per_fill(cfg)
                paths += [2 * pilot(c) + design(f, 2 * c) for f in (gate[0], cfg.mae_challenger)]
        if classic:
            n = pilot_per_fill(cfg)
            if n == 0 or len(classic) == 1:
                paths.append(design(classic[0], 0))
            else:
                paths += [len(classic) * pilot(n) + design(f, n * len(classic)) for f in classic]
    stta = cfg.stta_queries
    return QueryPlan(cfg.sample_ceiling + stta, max(paths) + _stta_requests(cfg, max_batch), stta)


__all__ = ["QueryPlan", "explanation_plan"]
