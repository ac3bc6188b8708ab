"""Robust fill on every family, the unseen one included: the benchmark of ``fill="auto"`` and its tuning on val.

    python -m blackbox_lime.evaluation.bench_fill --split val  --images 8 --out docs/tune_val/fill      # choose the rule
    python -m blackbox_lime.evaluation.bench_fill --split test --images 8 --out docs/bench_fill/test    # report it

Groups (family x classifier): the demo CNN and ViT on chest_xray and breast_us (the two families the
bundled MAE was trained on), and the two unseen families, brain_mri and fundus (colour), each with its
own classifier (``onnx/brain_cnn.onnx``, ``onnx/fundus_cnn.onnx``), which no other bundled part has seen. Every method goes through the same onnxruntime adapter at the
same budget (``--samples``, default 1000) on abnormal cases, and is scored by pixel AUPRC against the
exact lesion mask.

``--split val`` (tuning) explains each case with every fixed fill (mae, mean, blur) and records its
AUPRC and held-out R^2; then it queries the pilot of ``fill="auto"`` for every (pilot samples,
pilot block) on a grid and applies the decision for every margin, scoring each rule by the AUPRC of
the fill it picks (the fixed-fill map at the full budget stands for the auto map). It scores the
gated rules too: the MAE when it reconstructs the image's hidden pixels within a margin of a blur
(no queries), else mean, blur, or a pilot between them. The rule: per group the ratio AUPRC(rule) /
AUPRC(best fixed fill); the highest worst-group ratio (to 0.01), then the highest mean ratio (to
0.001), then the fewest pilot queries: the goal is "within 0.95 of the best fixed fill on every
family". It also tabulates the evidence R^2 of good and bad maps for the low-fidelity threshold.

``--split test`` (the report; never tuned on) runs the default ``fill="auto"``, each fixed fill, the
fill ``calibrate`` chooses from the group's first ``--calibrate-images`` val images (as a site
calibrates once on its own images), lime and occlusion, and writes ``table.md`` and ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from blackbox_lime.adapters.onnx import OnnxAdapter
from blackbox_lime.evaluation import baselines
from blackbox_lime.evaluation.bench import git_commit, read_results
from blackbox_lime.config import ExplainConfig
from blackbox_lime.explainer import Explainer
from blackbox_lime.map_warnings import LOW_FIDELITY_R2
from blackbox_lime.fill.choice import coarse_design, decide, recon_psnr, score_pilot
from blackbox_lime.fill.fillers import Filler
from blackbox_lime.fill.policy import AutoFill, PilotResult
from blackbox_lime.fill.registry import make_filler
from blackbox_lime.patches import PatchGrid
from blackbox_lime.map_warnings import codes_of
from blackbox_lime.evaluation.metrics import bootstrap_ci, pixel_auprc
from blackbox_lime.models import bundled_model
from blackbox_lime.evaluation.phantoms import abnormal_cases, make_phantom

GROUPS = (("demo_cnn", "chest_xray"), ("demo_cnn", "breast_us"), ("demo_vit", "chest_xray"),
          ("demo_vit", "breast_us"), ("brain_cnn", "brain_mri"), ("fundus_cnn", "fundus"))
FIXED = ("mae", "mean", "blur")
PILOTS = (16, 24, 32, 48)
BLOCKS = (1, 2, 3)
MARGINS = (0.0, 0.05, 0.1, 0.2)
GRID = PatchGrid(224, 224, ExplainConfig().patch_size)  # the phantoms' canvas (a replayed rule draws no design)


# Scorers of a pilot compared on val: the surrogate as configured (L1, its default), and ridge fits.
# "evidence": the same with every patch weight >= 0 (only the answer's drop when evidence is hidden counts; a
# fill that creates evidence, such as a blur that looks like an opacity, raises the answer and is not rewarded).
SCORERS: dict[str, dict[str, Any] | None] = {"l1": None, "ridge 0.05": {"lambda1": 0.0, "lambda2": 0.05}, "ridge 0.2": {"lambda1": 0.0, "lambda2": 0.2},
           "evidence 0.001": {"positive": True, "ridge": 1e-3}, "evidence 0.01": {"positive": True, "ridge": 1e-2},
           "evidence 0.05": {"positive": True, "ridge": 5e-2}}


def _tune_case(adapter: OnnxAdapter, image: np.ndarray, mask: np.ndarray, samples: int, seed: int,
               fills: tuple[str, ...] = FIXED) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The fixed fills' maps and, per pilot block and fill, one pilot of max(PILOTS) samples: a design's first
    k rows are the design of k samples from the same generator (ratios cycle row by row), so smaller pilots
    are its prefixes. Returns the record and the raw pilots (coarse designs and answers)."""
    target = adapter.info.abnormal_index
    rec: dict[str, Any] = {"fixed": {}}
    for fill in fills:
        e = Explainer(adapter, ExplainConfig(fill=fill, n_samples=samples)).explain(image, target=target, rng=seed)
        rec["fixed"][fill] = {"auprc": pixel_auprc(e.saliency, mask), "r2": e.r2,
                              "r2_heldout": None if not np.isfinite(e.r2_heldout) else e.r2_heldout,
                              "r2_evidence": None if not np.isfinite(e.r2_evidence) else e.r2_evidence,
                              "seconds": e.timings["total"]}
    ex = Explainer(adapter, ExplainConfig(fill="auto", n_samples=samples))
    assert ex.fillers is not None
    canvas = image.astype(np.float32)
    rec["p0"] = float(adapter.predict(canvas[None])[0, target])
    rec["recon_psnr"] = recon_psnr(canvas, {"mae": ex.fillers["mae"], "blur": ex.fillers["blur"]}, ex.grid)
    timings = {"fill": 0.0, "compose": 0.0, "classifier": 0.0}
    raw = {}
    n = max(PILOTS)
    candidates = dict(ex.fillers) | {f: make_filler(f, ex.config.patch_size) for f in fills if f not in ex.fillers}
    for block in BLOCKS:
        gen = np.random.default_rng(seed)
        for fill, filler in candidates.items():
            coarse, fine = coarse_design(gen, ex.grid, n, ex.config.mask_ratios, block)
            probs = ex.sampler.sample(canvas, filler, fine, np.arange(n), None, _NoBar(), timings)
            raw[f"{block}/{fill}/design"] = coarse
            raw[f"{block}/{fill}/y"] = probs[:, target]
    return rec, raw


def pilot_scores(rec: dict[str, Any], raw: dict[str, np.ndarray], scorer: str, n: int, block: int,
                 fills: tuple[str, ...] = FIXED) -> dict[str, Any]:
    cfg = ExplainConfig()
    options = SCORERS[scorer] or dict(lambda1=cfg.lambda1, lambda2=cfg.lambda2_for(False),
                                      lambda1_scale=cfg.lambda1_scale, lambda1_cap=cfg.lambda1_cap)
    return {f: score_pilot(raw[f"{block}/{f}/design"][:n], raw[f"{block}/{f}/y"][:n], rec["p0"], cfg.kernel_width,
                           options)[0] for f in fills}


# The gated rules: the MAE when it reconstructs the image within GATE_MARGINS dB of a blur (no queries), else a
# classic fill: always mean, always blur, or a pilot between them (evidence scorer) with mean preferred.
GATE_MARGINS = (-0.5, 0.0, 0.25, 0.5, 1.0, 2.0)
STAGE2 = ("mean", "blur") + tuple(f"pilot {n}/{b}/{m:g}" for n in (16, 24, 32) for b in (2, 3) for m in (0.0, 0.1))


# With --zero (val runs that also measure the zero fill): what the gate does when the MAE passes it: keep the MAE,
# or a pilot of the MAE against the zero fill (evidence scorer) with the MAE preferred.
CHALLENGER_PILOTS = (16, 24, 32, 48)
CHALLENGER_BLOCKS = (2, 3)
CHALLENGER_MARGINS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5)
STAGE1_ZERO = ("mae",) + tuple(f"mae|zero {n}/{b}/{m:g}" for n in CHALLENGER_PILOTS for b in CHALLENGER_BLOCKS
                               for m in CHALLENGER_MARGINS)


def rule_config(margin_db: float, stage2: str, stage1: str = "mae") -> ExplainConfig:
    """The fill "auto" configuration a gated rule's label names: the reconstruction margin ``margin_db``, then
    ``stage2`` where the MAE fails the check ("mean" or "blur": that fill alone; "pilot N/B/M": a pilot of N samples
    per fill over B x B patch blocks between mean and blur, mean preferred by M), and ``stage1`` where it passes
    ("mae": kept; "mae|zero N/B/M": piloted against the zero fill, the MAE preferred by M)."""
    fields: dict[str, Any] = {"fill": "auto", "recon_margin_db": margin_db, "mae_challenger": None}
    if stage2 in ("mean", "blur"):
        fields.update(fill_candidates=("mae", stage2), pilot_samples=0)
    else:
        n, b, m = stage2.split()[1].split("/")
        fields.update(fill_candidates=("mae", "mean", "blur"), pilot_samples=int(n), pilot_block=int(b),
                      fill_margin=float(m))
    if stage1 != "mae":
        n, b, m = stage1.split()[1].split("/")
        fields.update(mae_challenger="zero", challenger_samples=int(n), challenger_block=int(b),
                      challenger_margin=float(m))
    return ExplainConfig(**fields)


def replayed_choice(rec: dict[str, Any], raw: dict[str, np.ndarray], cfg: ExplainConfig,
                    fillers: dict[str, Filler]) -> tuple[str, int]:
    """(fill, pilot queries) of fill "auto" under ``cfg`` on one val case: the policy's own rule
    (:meth:`~blackbox_lime.fill.policy.AutoFill.rule`) on the case's saved reconstruction check, its pilots
    replayed from the saved answers (a design's first N rows: the design of N samples) instead of queried."""
    candidates = {k: fillers[k] for k in cfg.fill_candidates}
    challenger = {} if cfg.mae_challenger is None else {cfg.mae_challenger: fillers[cfg.mae_challenger]}
    policy = AutoFill(GRID, cfg, candidates, challenger, n_classes=1)

    def replay(piloted: dict[str, Filler], n: int, block: int) -> PilotResult:
        scores = {f: score_pilot(raw[f"{block}/{f}/design"][:n], raw[f"{block}/{f}/y"][:n], rec["p0"],
                                 cfg.kernel_width)[0] for f in piloted}
        return scores, {}, {}

    psnr = rec["recon_psnr"]
    choice, _ = policy.rule(psnr, psnr["blur"] - psnr["mae"], replay)
    return choice.chosen, choice.pilot_samples * len(choice.scores)


def gated_choice(rec: dict[str, Any], raw: dict[str, np.ndarray], margin_db: float, stage2: str,
                 stage1: str = "mae") -> tuple[str, int]:
    """(fill, pilot queries) of a gated rule (:func:`rule_config`) on one val case."""
    return replayed_choice(rec, raw, rule_config(margin_db, stage2, stage1), _stand_ins())


class _StandIn(Filler):
    """A registered fill's name for a replayed rule, which never fills (its pilots are saved answers)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def fill(self, canvas: np.ndarray, hidden_px: np.ndarray) -> np.ndarray:
        raise AssertionError("a replayed rule fills nothing")


def _stand_ins() -> dict[str, Filler]:
    return {name: _StandIn(name) for name in FIXED + ("zero",)}


class _NoBar:
    def update(self, n: int) -> None:
        pass


def tune(a: argparse.Namespace) -> dict[str, Any]:
    records, raws = [], []
    for model, family in GROUPS:
        if a.groups and f"{model}/{family}" not in a.groups:
            continue
        with OnnxAdapter(bundled_model(f"{model}.onnx")) as adapter:
            for ph in abnormal_cases(family, "val", a.images):
                t = time.perf_counter()
                rec, raw = _tune_case(adapter, ph.image, ph.mask, a.samples, a.seed, FIXED + (("zero",) if a.zero else ()))
                rec.update(model=model, family=family, index=ph.index)
                records.append(rec)
                raws.append(raw)
                best = max(rec["fixed"], key=lambda f: rec["fixed"][f]["auprc"])
                print(f"{model}/{family} #{ph.index}: " + ", ".join(
                    f"{f} {r['auprc']:.3f} (R2ho {r['r2_heldout'] or float('nan'):.3f})"
                    for f, r in rec["fixed"].items()) + f"; best {best}; {time.perf_counter() - t:.0f}s",
                    file=sys.stderr, flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "pilots.npz", allow_pickle=False, **{f"{i}/{k}": v for i, raw in enumerate(raws) for k, v in raw.items()})
    return {"records": records, **choose_rule(records, raws)}


def choose_rule(records: list[dict[str, Any]], raws: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """Every (scorer, pilot samples, block, margin) applied to every case, scored per group (module docstring)."""
    group_of = [f"{r['model']}/{r['family']}" for r in records]
    with_zero = all("zero" in r["fixed"] and "1/zero/y" in raw for r, raw in zip(records, raws))
    measured = FIXED + (("zero",) if with_zero else ())  # the best fixed fill is the best one measured
    best_fixed = {g: max(np.mean([r["fixed"][f]["auprc"] for r, gg in zip(records, group_of) if gg == g])
                         for f in measured) for g in set(group_of)}
    rules: list[dict[str, Any]] = []
    for scorer in SCORERS:
        for n in PILOTS:
            for block in BLOCKS:
                scores = [pilot_scores(r, raw, scorer, n, block) for r, raw in zip(records, raws)]
                for margin in MARGINS:
                    chosen = [decide(sc, FIXED[0], margin)[0] for sc in scores]
                    per_group: dict[str, list[float]] = {}
                    for r, g, c in zip(records, group_of, chosen):
                        per_group.setdefault(g, []).append(r["fixed"][c]["auprc"])
                    ratios = {g: float(np.mean(v) / best_fixed[g]) for g, v in per_group.items()}
                    rules.append({"scorer": scorer, "pilot_samples": n, "pilot_block": block, "margin": margin,
                                  "pilot_queries": n * len(FIXED), "mean_ratio": float(np.mean(list(ratios.values()))),
                                  "min_ratio": float(np.min(list(ratios.values()))), "ratios": ratios,
                                  "picks": {f: chosen.count(f) for f in measured}})
    stand_ins = _stand_ins()
    for margin_db in GATE_MARGINS:
        for stage2 in STAGE2:
            for stage1 in STAGE1_ZERO if with_zero else ("mae",):
                cfg = rule_config(margin_db, stage2, stage1)
                picks = [replayed_choice(r, raw, cfg, stand_ins) for r, raw in zip(records, raws)]
                per_group = {}
                for r, g, (c, _) in zip(records, group_of, picks):
                    per_group.setdefault(g, []).append(r["fixed"][c]["auprc"])
                ratios = {g: float(np.mean(v) / best_fixed[g]) for g, v in per_group.items()}
                first = "" if stage1 == "mae" else f" (passed: pilot {stage1})"
                rules.append({"scorer": f"gate {margin_db:g} dB{first}, then {stage2}", "pilot_samples": 0,
                              "pilot_block": 0, "margin": margin_db,
                              "pilot_queries": float(np.mean([q for _, q in picks])),
                              "mean_ratio": float(np.mean(list(ratios.values()))),
                              "min_ratio": float(np.min(list(ratios.values()))), "ratios": ratios,
                              "picks": {f: sum(c == f for c, _ in picks) for f in measured}})
    best = max(rules, key=lambda r: (round(r["min_ratio"], 2), round(r["mean_ratio"], 3), -r["pilot_queries"]))
    return {"rules": rules, "chosen": best}


# The warning's threshold: the one with the highest Youden's J (share of weak maps flagged minus share of good
# maps flagged) on val.
THRESHOLDS = (0.0, 0.02, 0.05, 0.08, 0.1, 0.15, 0.2, 0.3)


def _threshold_table(records: list[dict[str, Any]]) -> list[str]:
    """Evidence R^2 (held-out, the warning's measure) of maps that find the lesion (AUPRC >= 0.3) against maps
    that do not (< 0.1); a map whose answer did not move counts as flagged (it gets the weak-map warning)."""
    rows = []
    for t in THRESHOLDS:
        good = bad = good_flag = bad_flag = 0
        for rec in records:
            for f in FIXED:
                r = rec["fixed"][f]
                r2 = r["r2_evidence"] if r.get("r2_evidence") is not None else -1.0
                if r["auprc"] >= 0.3:
                    good += 1
                    good_flag += r2 < t
                elif r["auprc"] < 0.1:
                    bad += 1
                    bad_flag += r2 < t
        rows.append((bad_flag / max(bad, 1) - good_flag / max(good, 1), t,
                     f"| {t:g} | {bad_flag}/{bad} | {good_flag}/{good} | {bad_flag / max(bad, 1) - good_flag / max(good, 1):.3f} |"))
    best = max(rows)[1]
    return ["| threshold on evidence R^2 | weak maps (AUPRC < 0.1) flagged | good maps (AUPRC >= 0.3) flagged | "
            "Youden's J |", "|---|---|---|---|"] + [line.replace(f"| {t:g} |", f"| {t:g} **chosen** |", 1)
                                                   if t == best else line for _, t, line in rows]


def _stability_table(rules: list[dict[str, Any]], groups: list[str]) -> list[str]:
    """With --zero: every setting of the MAE-against-zero pilot under the chosen gate and second stage, so that
    a rule's neighbours can be seen (a setting far better than its neighbours is picked by noise)."""
    stage2 = "pilot 32/2/0"
    rows = [r for r in rules if r["scorer"].startswith("gate 2 dB (passed: pilot mae|zero ")
            and r["scorer"].endswith(f", then {stage2}")]
    if not rows:
        return []
    base = next(r for r in rules if r["scorer"] == f"gate 2 dB, then {stage2}")
    out = ["", f"## The MAE piloted against zero: every setting (gate 2 dB, then {stage2}; ratio of the worst group, "
           "then per group)", "", "| challenger pilot (samples/block/margin) | pilot queries | min ratio | mean ratio | "
           + " | ".join(groups) + " |", "|---|---|---|---|" + "---|" * len(groups)]
    for r in [base] + rows:
        name = r["scorer"].split("pilot mae|zero ")[1].split(")")[0] if r is not base else "none (the MAE kept)"
        out.append(f"| {name} | {r['pilot_queries']:g} | {r['min_ratio']:.3f} | {r['mean_ratio']:.3f} | "
                   + " | ".join(f"{r['ratios'][g]:.3f}" for g in groups) + " |")
    return out


def tune_markdown(result: dict[str, Any]) -> str:
    recs = result["records"]
    groups = sorted({f"{r['model']}/{r['family']}" for r in recs}, key=lambda g: [f"{m}/{f}" for m, f in GROUPS].index(g))
    fills = FIXED + (("zero",) if all("zero" in r["fixed"] for r in recs) else ())
    lines = ["## Fixed fills on val (mean AUPRC; mean held-out R^2 of the signed surrogate; of the evidence fit)", "",
             "| group | cases | " + " | ".join(fills) + " |", "|---|---|" + "---|" * len(fills)]
    for g in groups:
        rs = [r for r in recs if f"{r['model']}/{r['family']}" == g]
        cells = []
        for f in fills:
            r2 = [r["fixed"][f]["r2_heldout"] for r in rs if r["fixed"][f]["r2_heldout"] is not None]
            ev = [r["fixed"][f]["r2_evidence"] for r in rs if r["fixed"][f].get("r2_evidence") is not None]
            cells.append(f"{np.mean([r['fixed'][f]['auprc'] for r in rs]):.3f} "
                         f"({np.mean(r2) if r2 else float('nan'):.3f}; {np.mean(ev) if ev else float('nan'):.3f})")
        lines.append(f"| {g} | {len(rs)} | " + " | ".join(cells) + " |")
    lines += ["", "## Rules (AUPRC of the picked fill / best fixed fill per group; the 25 best by the rule)", "",
              "| scorer | pilot samples | block | margin | pilot queries | mean ratio | min ratio | " + " | ".join(groups)
              + f" | picks ({'/'.join(fills)}) |", "|---|---|---|---|---|---|---|" + "---|" * len(groups) + "---|"]
    for r in sorted(result["rules"], key=lambda r: (-round(r["min_ratio"], 2), -round(r["mean_ratio"], 3),
                                                    r["pilot_queries"]))[:25]:
        mark = " **chosen**" if r == result["chosen"] else ""
        lines.append(f"| {r['scorer']} | {r['pilot_samples']} | {r['pilot_block']} | {r['margin']:g}{mark} | {r['pilot_queries']:g} | "
                     f"{r['mean_ratio']:.3f} | {r['min_ratio']:.3f} | " + " | ".join(f"{r['ratios'][g]:.3f}" for g in groups)
                     + f" | {'/'.join(str(r['picks'].get(f, 0)) for f in fills)} |")
    lines += _stability_table(result["rules"], groups)
    lines += ["", "## Low-fidelity threshold: maps flagged at each threshold", ""] + _threshold_table(recs)
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- test report

METHODS = ("auto (default)", "calibrated", "mae", "mean", "blur", "zero", "lime", "occlusion")
OPTIONAL = ("auto + zero challenger",)  # --methods only: fill auto with ExplainConfig(mae_challenger="zero")
SITE_METHODS = ("mae (site-fitted)", "auto (site-fitted MAE)")  # with --site-mae FAMILY=PATH


def calibrated_fill(adapter: OnnxAdapter, family: str, n: int, samples: int) -> dict[str, Any]:
    """The fill ``blackbox-lime calibrate`` would choose from the family's first ``n`` val images (any label)."""
    from blackbox_lime.calibration import calibrate

    images = [make_phantom(family, "val", i).image for i in range(n)]
    return calibrate(adapter, images, ExplainConfig(n_samples=samples), seed=0)


def _medlime(adapter: OnnxAdapter, image: np.ndarray, target: int, fill: str, samples: int, seed: int,
             mae_path: str | None = None, challenger: str | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    e = Explainer(adapter, ExplainConfig(fill=fill, n_samples=samples, mae_challenger=challenger),
                  mae_path=mae_path).explain(image, target=target, rng=seed)
    return e.saliency, {"r2_heldout": None if not np.isfinite(e.r2_heldout) else e.r2_heldout,
                        "r2_evidence": None if not np.isfinite(e.r2_evidence) else e.r2_evidence,
                        "low_fidelity": bool({"low_fidelity", "off_domain"} & set(codes_of(e.warnings))),
                        "chosen": e.fill["chosen"], "fill_choice_s": e.timings["fill_choice"]}


def report(a: argparse.Namespace) -> dict[str, Any]:
    records = []
    calibrations: dict[str, Any] = {}
    before: dict[tuple[str, str, int], dict[str, Any]] = {}
    if a.update:  # re-run only --methods on the cases of an earlier run; its other methods are kept
        old = read_results(Path(a.update) / "results.json")
        before = {(r["model"], r["family"], r["index"]): r for r in old["records"]}
        calibrations = dict(old["calibrations"])
    for model, family in GROUPS:
        if a.groups and f"{model}/{family}" not in a.groups:
            continue
        with OnnxAdapter(bundled_model(f"{model}.onnx")) as adapter:
            if "calibrated" in a.methods:
                cal = calibrated_fill(adapter, family, a.calibrate_images, a.samples)
                calibrations[f"{model}/{family}"] = cal
                print(f"{model}/{family}: calibrate chose {cal['fill']} ({cal['evidence']['median_scores']})",
                      file=sys.stderr, flush=True)
            target = adapter.info.abnormal_index
            for ph in abnormal_cases(family, "test", a.images, a.first_case):
                rec: dict[str, Any] = {"model": model, "family": family, "index": ph.index, "methods": {}}
                if a.update:
                    rec["methods"] = dict(before[(model, family, ph.index)]["methods"])
                site_mae = a.site_mae.get(family)
                for m in [m for m in METHODS + OPTIONAL if m in a.methods] + list(SITE_METHODS if site_mae else ()):
                    t = time.perf_counter()
                    q0 = adapter.queries
                    extra: dict[str, Any] = {}
                    if m == "lime":
                        sal = baselines.lime_package(ph.image, adapter, target, a.samples, np.random.default_rng(a.seed))
                    elif m == "occlusion":
                        sal = baselines.occlusion(ph.image, adapter, target)
                    elif m == OPTIONAL[0]:
                        sal, extra = _medlime(adapter, ph.image, target, "auto", a.samples, a.seed, challenger="zero")
                    elif m in SITE_METHODS:
                        sal, extra = _medlime(adapter, ph.image, target, "mae" if m == SITE_METHODS[0] else "auto",
                                              a.samples, a.seed, site_mae)
                    else:
                        fill = {"auto (default)": "auto"}.get(m, m)
                        if m == "calibrated":
                            fill = calibrations[f"{model}/{family}"]["fill"]
                        sal, extra = _medlime(adapter, ph.image, target, fill, a.samples, a.seed)
                    rec["methods"][m] = {"auprc": pixel_auprc(sal, ph.mask), "queries": adapter.queries - q0,
                                         "seconds": time.perf_counter() - t, **extra}
                records.append(rec)
                print(f"{model}/{family} #{ph.index}: " + ", ".join(
                    f"{m} {r['auprc']:.3f}" for m, r in rec["methods"].items()), file=sys.stderr, flush=True)
    return {"records": records, "calibrations": calibrations}


def report_markdown(result: dict[str, Any]) -> str:
    recs = result["records"]
    groups = [f"{m}/{f}" for m, f in GROUPS if any(r["model"] == m and r["family"] == f for r in recs)]
    lines = ["| method | " + " | ".join(groups) + " | all |", "|---|" + "---|" * (len(groups) + 1)]
    for m in METHODS + OPTIONAL + SITE_METHODS:
        if not any(m in r["methods"] for r in recs):
            continue
        cells = []
        for g in groups + ["all"]:
            vals = [r["methods"][m]["auprc"] for r in recs if (g == "all" or f"{r['model']}/{r['family']}" == g)
                    and m in r["methods"]]
            if not vals or (g == "all" and m in SITE_METHODS):
                cells.append("–")
                continue
            mean, lo, hi = bootstrap_ci(vals)
            cells.append(f"{mean:.3f} [{lo:.3f}, {hi:.3f}]")
        if all(c == "–" for c in cells):
            continue
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "| group | calibrate chose | auto's picks | auto / best fixed | auto / lime | auto / occlusion | "
              "low-fidelity warnings (auto; mae; mean) | median wall s (auto; mae) | auto's choice, median s |",
              "|---|---|---|---|---|---|---|---|---|"]
    for g in groups:
        rs = [r for r in recs if f"{r['model']}/{r['family']}" == g]

        ran = set(rs[0]["methods"])  # a run with --methods has a subset; "–" where a ratio needs one it lacks

        def group_mean(m: str) -> float:
            return float(np.mean([r["methods"][m]["auprc"] for r in rs]))

        def ratio(m: str) -> str:
            return f"{group_mean('auto (default)') / max(group_mean(m), 1e-9):.2f}" if m in ran else "–"

        if "auto (default)" not in ran:
            continue
        fixed = [f for f in ("mae", "mean", "blur", "zero") if f in ran]
        best = max(fixed, key=group_mean) if fixed else None
        picks: dict[str, int] = {}
        for r in rs:
            picks[r["methods"]["auto (default)"]["chosen"]] = picks.get(r["methods"]["auto (default)"]["chosen"], 0) + 1
        warn = "; ".join(f"{sum(r['methods'][m]['low_fidelity'] for r in rs)}/{len(rs)}" if m in ran else "–"
                         for m in ("auto (default)", "mae", "mean"))
        wall = "; ".join(f"{np.median([r['methods'][m]['seconds'] for r in rs]):.2f}" if m in ran else "–"
                         for m in ("auto (default)", "mae"))
        cal = result["calibrations"].get(g, {}).get("fill", "–")
        lines.append(f"| {g} | {cal} | {', '.join(f'{k} {v}' for k, v in sorted(picks.items()))} | "
                     f"{ratio(best) if best else '–'}{f' ({best})' if best and len(fixed) < 4 else ''} | "
                     f"{ratio('lime')} | {ratio('occlusion')} | {warn} | {wall} | "
                     f"{np.median([r['methods']['auto (default)']['fill_choice_s'] for r in rs]):.2f} |")
    lines += paired_markdown(recs, groups)  # the optional methods, where they ran
    return "\n".join(lines) + "\n"


def paired_markdown(recs: list[dict[str, Any]], groups: list[str], methods: tuple[str, ...] = OPTIONAL) -> list[str]:
    """Per group, each of ``methods`` against the default on the same cases: means, the paired difference
    (method - auto, bootstrap CI over the cases), what it picked, median wall times."""
    rows = []
    for m in methods:
        for g in groups:
            rs = [r for r in recs if f"{r['model']}/{r['family']}" == g and m in r["methods"]]
            if not rs or "auto (default)" not in rs[0]["methods"]:
                continue
            a = np.array([r["methods"]["auto (default)"]["auprc"] for r in rs])
            b = np.array([r["methods"][m]["auprc"] for r in rs])
            d, lo, hi = bootstrap_ci(list(b - a))
            picks: dict[str, int] = {}
            for r in rs:
                c = r["methods"][m].get("chosen", m)
                picks[c] = picks.get(c, 0) + 1
            wall = "; ".join(f"{np.median([r['methods'][k]['seconds'] for r in rs]):.2f}" for k in ("auto (default)", m))
            rows.append(f"| {m} | {g} | {len(rs)} | {a.mean():.3f} | {b.mean():.3f} | {b.mean() / max(a.mean(), 1e-9):.2f} | "
                        f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}] | {', '.join(f'{k} {v}' for k, v in sorted(picks.items()))} | {wall} |")
    if not rows:
        return []
    return ["", "| method | group | cases | auto (default) | method | ratio | paired difference (method - auto) | picks | "
            "median wall s (auto; method) |", "|---|---|---|---|---|---|---|---|---|"] + rows


def pool(folders: list[str]) -> int:
    """The records of several test runs (say, 8 cases and 16 more) as one: the pooled tables."""
    recs: list[dict[str, Any]] = []
    for folder in folders:
        recs += read_results(Path(folder) / "results.json")["records"]
    groups = [f"{m}/{f}" for m, f in GROUPS if any(r["model"] == m and r["family"] == f for r in recs)]
    print(f"Pooled {len(recs)} cases from {', '.join(folders)}:")
    others = tuple(m for m in METHODS + OPTIONAL + SITE_METHODS if m != "auto (default)"
                   and any(m in r["methods"] for r in recs))
    print("\n".join(paired_markdown(recs, groups, others)))
    return 0


def _load_tuning(folder: Path) -> tuple[dict[str, Any], list[dict[str, np.ndarray]]]:
    result = read_results(folder / "results.json")
    z = np.load(folder / "pilots.npz")
    raws: list[dict[str, np.ndarray]] = [{} for _ in result["records"]]
    for key in z.files:
        i, rest = key.split("/", 1)
        raws[int(i)][rest] = z[key]
    return result, raws


def rescore(out: Path, add: list[str]) -> int:
    """Re-derive the val rules from saved runs (records and raw pilots) with the current scorers; ``add`` joins
    the cases of other val runs (say, a group tuned later) into ``out``."""
    result, raws = _load_tuning(out)
    for folder in add:
        more, more_raws = _load_tuning(Path(folder))
        result["records"] += more["records"]
        raws += more_raws
    np.savez_compressed(out / "pilots.npz", allow_pickle=False, **{f"{i}/{k}": v for i, raw in enumerate(raws) for k, v in raw.items()})
    result.update(choose_rule(result["records"], raws))
    md = tune_markdown(result)
    first = (out / "table.md").read_text().split("\n\n", 1)[0]
    joined = "".join(f" + `{f}`" for f in add)
    (out / "table.md").write_text(first + joined + "; rules re-derived by `--rescore` at commit "
                                  + git_commit() + "\n\n" + md)
    (out / "results.json").write_text(json.dumps(result, indent=1, default=float))
    print(md)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m blackbox_lime.evaluation.bench_fill", description=__doc__.splitlines()[0])
    p.add_argument("--split", choices=["val", "test"], required=True)
    p.add_argument("--images", type=int, default=8, help="abnormal cases per group")
    p.add_argument("--samples", type=int, default=1000, help="queries per explanation")
    p.add_argument("--calibrate-images", type=int, default=8, help="test: val images per group for calibrate")
    p.add_argument("--groups", default="", help="comma list of model/family groups (default all)")
    p.add_argument("--methods", default=",".join(METHODS),
                   help="test: comma list of the methods to run (default all; 'auto (default)' is always run)")
    p.add_argument("--update", default=None, metavar="DIR",
                   help="test: the cases of DIR's results.json with --methods (and --site-mae) run again and the "
                        "other methods kept (after a change to the default, say)")
    p.add_argument("--first-case", type=int, default=0,
                   help="test: start at this abnormal case of each group (more cases beyond an earlier run)")
    p.add_argument("--join", default=None, metavar="DIR",
                   help="test: keep the records of the groups this run does not run from DIR's results.json")
    p.add_argument("--site-mae", action="append", default=[], metavar="FAMILY=PATH",
                   help="test: also run GM with this MAE (blackbox-lime mae fit on the family's train split)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--zero", action="store_true",
                   help="val: also measure the zero fill (its map and pilots) and score rules that pilot the MAE "
                        "against it where the MAE passes the reconstruction check")
    p.add_argument("--out", required=False, help="folder for table.md and results.json")
    p.add_argument("--pool", nargs="+", default=None, metavar="DIR",
                   help="print the paired tables of these test runs' records pooled (no queries)")
    p.add_argument("--rescore", action="store_true",
                   help="val: re-apply the rules to the pilots saved in --out (pilots.npz), without queries")
    p.add_argument("--add", action="append", default=[], metavar="DIR",
                   help="with --rescore: join the cases of another val run into --out first")
    a = p.parse_args(argv)
    if not a.pool and not a.out:
        p.error("--out is required (except with --pool)")
    if a.pool:
        return pool(a.pool)
    if a.rescore:
        return rescore(Path(a.out), a.add)
    a.groups = [g for g in a.groups.split(",") if g]
    a.site_mae = dict(item.split("=", 1) for item in a.site_mae)
    a.methods = {"auto (default)"} | {m.strip() for m in a.methods.split(",") if m.strip()}
    unknown = sorted(a.methods - set(METHODS + OPTIONAL))
    if unknown:
        p.error(f"unknown --methods {unknown}; choose from {', '.join(METHODS + OPTIONAL)}")
    t0 = time.perf_counter()
    result = tune(a) if a.split == "val" else report(a)
    if a.join:
        old = read_results(Path(a.join) / "results.json")
        ran = {f"{r['model']}/{r['family']}" for r in result["records"]}
        result["records"] = [r for r in old["records"] if f"{r['model']}/{r['family']}" not in ran] + result["records"]
        result["calibrations"] = {**old["calibrations"], **result["calibrations"]}
        result["joined_from"] = {"commit": old.get("commit"), "groups": sorted({f"{r['model']}/{r['family']}"
                                                                                for r in old["records"]} - ran)}
    md = tune_markdown(result) if a.split == "val" else report_markdown(result)
    minutes = (time.perf_counter() - t0) / 60
    header = (f"`python -m blackbox_lime.evaluation.bench_fill {shlex.join(argv if argv is not None else sys.argv[1:])}` "
              f"at commit {git_commit()}, {minutes:.1f} min, {a.samples} queries per explanation.\n\n")
    if a.join:
        header += (f"Groups {', '.join(result['joined_from']['groups'])} are kept from `{a.join}` (commit "
                   f"{result['joined_from']['commit']}).\n\n")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(header + md)
    result.update(commit=git_commit(), minutes=minutes, samples=a.samples, images=a.images, seed=a.seed,
                  first_case=getattr(a, "first_case", 0),
                  low_fidelity_r2=LOW_FIDELITY_R2)
    (out / "results.json").write_text(json.dumps(result, indent=1, default=float))
    print(header + md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
