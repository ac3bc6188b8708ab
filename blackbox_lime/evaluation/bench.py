"""The saliency benchmark: MedLIME against LIME, RISE, KernelSHAP, occlusion, a random map and Grad-CAM.

    pip install ".[cpu,bench,train]"
    python -m blackbox_lime.evaluation.bench --quick            # <= 15 min on a 2-core CPU
    python -m blackbox_lime.evaluation.bench                    # the full protocol (hours on 2 cores)
    blackbox-lime bench --quick                      # the same, from the installed command

The protocol is ../shared/DESIGN.md's: abnormal phantoms with exact lesion masks, both modalities,
both shipped classifiers (CNN and ViT), every black-box method through the same onnxruntime
adapter (so each pays for its queries), at equal query budgets; occlusion and Grad-CAM at their
natural cost. Metrics per image: pixel AUPRC, MoRF and LeRF on one blurred substrate, queries,
requests and wall time; consistency over 3 seeds on a subset. Every number is a mean with a 95 %
percentile bootstrap CI over images (2000 resamples, seeded).

Discipline: hyperparameters are tuned with ``--split val`` only; a reported table runs the ``test``
split once. The JSON records the git commit, the configuration and every per-image number.

Outputs in ``--out`` (default ``bench_out/bench``): ``table.md``, ``results.json``,
``auprc_vs_queries.png`` and ``overlays.png`` (every method on the same cases).

Long runs: every finished case is checkpointed in ``--out`` (``checkpoint.jsonl``); a run that
stops goes on where it stopped with the same command plus ``--resume``. Runs over different
models or modalities join with ``--merge``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from blackbox_lime.adapters.onnx import OnnxAdapter
from blackbox_lime.evaluation import baselines
from blackbox_lime.evaluation.bench_checkpoint import Checkpoint, CheckpointError, config_difference
from blackbox_lime.config import LAMBDA2_PRIOR, ExplainConfig
from blackbox_lime.explainer import Explainer
from blackbox_lime.evaluation.metrics import bootstrap_ci, consistency, perturbation_curves, pixel_auprc
from blackbox_lime.models import bundled_model
from blackbox_lime._version import git_commit as _git_commit
from blackbox_lime.evaluation.phantoms import abnormal_cases  # noqa: F401 (bench.abnormal_cases: the cases a run uses)

# method name -> (kind, budgeted). Kinds are dispatched in run_method.
METHODS: dict[str, tuple[str, bool]] = {
    "MedLIME": ("medlime", True),
    "MedLIME w/o GM (mean fill)": ("medlime_mean", True),
    "MedLIME w/o STTA": ("medlime_no_stta", True),
    "MedLIME w/o EBR": ("medlime_no_ebr", True),
    "LIME (lime package)": ("lime", True),
    "LIME, patch grid, mean fill": ("patch_lime", True),
    "RISE": ("rise", True),
    "KernelSHAP (patch grid)": ("kernel_shap", True),
    "KernelSHAP (patch grid, Telea fill)": ("kernel_shap_telea", True),
    "Occlusion (16 px)": ("occlusion", False),
    "Random": ("random", False),
    "Grad-CAM (white-box)": ("gradcam", False),
    "MedLIME, blur fill (diagnostic)": ("medlime_blur", True),
}
# MedLIME's parts per kind: (fill, STTA, EBR). "MedLIME" is all three; each ablation drops one. GM is the default
# fill, "auto": the MAE wherever it reconstructs the image within 2 dB of a blur (every test case of both families),
# else the mean fill; "w/o GM" forces the mean fill.
MEDLIME_PARTS: dict[str, tuple[str, bool, bool]] = {
    "medlime": ("auto", True, True),
    "medlime_mean": ("mean", True, True),
    "medlime_no_stta": ("auto", False, True),
    "medlime_no_ebr": ("auto", True, False),
    "medlime_blur": ("blur", True, True),
}
# Run only when named in --methods: a diagnostic, not a rival. Its fill is a Gaussian blur of the
# image (sigma 8 px), the same removal MoRF and LeRF use, so it shows how much of a MoRF/LeRF lead
# comes from perturbing like the metric does.
DIAGNOSTIC = ("MedLIME, blur fill (diagnostic)",)
PROTOCOL = tuple(m for m in METHODS if m not in DIAGNOSTIC)
KERNEL_SHAPS = tuple(m for m, (kind, _) in METHODS.items() if kind.startswith("kernel_shap"))
ABLATIONS = {"gm": "MedLIME w/o GM (mean fill)", "stta": "MedLIME w/o STTA", "ebr": "MedLIME w/o EBR"}
# MedLIME and the other black-box methods; its ablations are parts of MedLIME, not rivals in the MoRF/LeRF goals
BLACK_BOX = [m for m in PROTOCOL if m not in ("Random", "Grad-CAM (white-box)", *ABLATIONS.values())]


@dataclass
class BenchConfig:
    split: str = "test"
    models: tuple[str, ...] = ("cnn", "vit")
    modalities: tuple[str, ...] = ("chest_xray", "breast_us")
    images: int = 25  # abnormal cases per (model, modality)
    first_case: int = 0  # skip this many abnormal cases first (held-out cases for a diagnostic run)
    budgets: tuple[int, ...] = (250, 500, 1000, 2000)
    seeds: int = 3
    consistency_images: int = 5  # per (model, modality), at the consistency budget
    consistency_budget: int = 1000
    consistency_methods: tuple[str, ...] = tuple(m for m in PROTOCOL if m not in ("Occlusion (16 px)",
                                                                                  "Grad-CAM (white-box)"))
    methods: tuple[str, ...] = PROTOCOL
    all_budget_methods: tuple[str, ...] | None = None  # None: every method at every budget; else the others
    # run only at consistency_budget
    curve_steps: int = 14
    n_boot: int = 2000
    overlay_cases: int = 1  # per (model, modality)
    bank_cases: int = 200  # EBR: abnormal train phantoms per modality in the evidence bank (lesion masks)
    extra: dict[str, Any] = field(default_factory=dict)


# --quick leaves out KernelSHAP with Telea fill (19 s per explanation, at chance like the mean-fill one in every
# full run) to stay within 15 min with the two extra ablations; the full protocol runs it.
QUICK = dict(images=3, budgets=(250, 1000), consistency_images=1, consistency_methods=("MedLIME",),
             all_budget_methods=("MedLIME", "LIME (lime package)"),
             methods=tuple(m for m in PROTOCOL if m != "KernelSHAP (patch grid, Telea fill)"))


def evidence_banks(modalities: Sequence[str], n_cases: int, log: Callable[[str], None] = print) -> dict[str, Any]:
    """EBR's banks for the benchmark: per modality, the first ``n_cases`` abnormal train phantoms with their
    lesion masks (the train split only: no val, test or shifted case is ever in a bank)."""
    from blackbox_lime.evidence_bank import Embedder
    from blackbox_lime.evaluation.phantoms import phantom_bank
    from blackbox_lime.patches import PatchGrid

    embedder = Embedder()
    grid = PatchGrid(224, 224, ExplainConfig.patch_size)  # both shipped classifiers take 224 x 224
    t = time.perf_counter()
    banks = {m: phantom_bank(m, grid, embedder, n_cases) for m in modalities}
    log(f"evidence banks: {n_cases} abnormal train phantoms per modality ({time.perf_counter() - t:.0f} s)")
    return banks


def medlime_config(kind: str, budget: int) -> ExplainConfig:
    """The configuration of a MedLIME variant that sends at most ``budget`` queries, STTA's included.

    Every variant uses EBR's lambda2, the one without EBR too: its ablation pulls towards w_ref = 0 with
    the same weight, so it removes the evidence, not the penalty."""
    fill, stta, _ = MEDLIME_PARTS[kind]
    return ExplainConfig(n_samples=ExplainConfig.n_samples_for_budget(budget, stta), fill=fill, stta=stta,
                         lambda2=LAMBDA2_PRIOR)


def run_method(name: str, image: np.ndarray, adapter: OnnxAdapter, budget: int | None, seed: int,
               torch_model: Any, arch: str, bank: Any = None) -> np.ndarray:
    kind = METHODS[name][0]
    rng = np.random.default_rng(seed)
    target = adapter.info.abnormal_index
    if kind in MEDLIME_PARTS:
        use_bank = bank if MEDLIME_PARTS[kind][2] else None
        return Explainer(adapter, medlime_config(kind, int(budget or 500)), bank=use_bank).explain(
            image, target=target, rng=rng).saliency
    if kind == "lime":
        return baselines.lime_package(image, adapter, target, int(budget or 1000), rng)
    if kind == "patch_lime":
        return baselines.patch_lime(image, adapter, target, int(budget or 1000), rng)
    if kind == "rise":
        return baselines.rise(image, adapter, target, int(budget or 1000), rng)
    if kind == "kernel_shap":
        return baselines.kernel_shap(image, adapter, target, int(budget or 1000), rng)
    if kind == "kernel_shap_telea":
        return baselines.kernel_shap(image, adapter, target, int(budget or 1000), rng, fill="telea")
    if kind == "occlusion":
        return baselines.occlusion(image, adapter, target)
    if kind == "random":
        return baselines.random_map(image, rng)
    if kind == "gradcam":
        return baselines.gradcam_torch(image, torch_model, target, arch)
    raise ValueError(f"unknown method {name!r}")


def git_commit() -> str:
    """The commit of the code that runs, with "-dirty" when tracked files differ from it ("" outside git)."""
    return _git_commit(mark_dirty=True) or ""


def run(cfg: BenchConfig, out_dir: Path, log: Callable[[str], None] = print, resume: bool = False) -> dict[str, Any]:
    """Run the benchmark; every finished case is checkpointed in ``out_dir`` (see bench_checkpoint).

    With ``resume`` a run that stopped goes on from its checkpoint (same configuration only);
    without it, an unfinished run in ``out_dir`` is refused rather than overwritten.
    """
    records: list[dict[str, Any]] = []
    overlays: dict[str, Any] = {}
    t_start = time.perf_counter()
    commit = git_commit()  # taken before the run: the code that produced the numbers
    checkpoint = Checkpoint(out_dir, asdict(cfg), commit, resume, log, defaults=asdict(BenchConfig()))
    has_torch = True
    try:
        import torch  # noqa: F401
    except ImportError:
        has_torch = False
        log("torch is not installed: Grad-CAM (white-box) is skipped; install the train extra for it.")
    n_total = len(cfg.models) * len(cfg.modalities) * cfg.images
    n_done = 0
    banks = {} if not any(METHODS[m][0] in MEDLIME_PARTS for m in cfg.methods) else \
        evidence_banks(cfg.modalities, cfg.bank_cases, log)
    for arch in cfg.models:
        adapter = OnnxAdapter(bundled_model(f"demo_{arch}.onnx"))
        scorer = OnnxAdapter(bundled_model(f"demo_{arch}.onnx"))  # the metrics' queries are not the method's cost
        torch_model = baselines.load_torch_classifier(arch) if has_torch else None
        for modality in cfg.modalities:
            cases = abnormal_cases(modality, cfg.split, cfg.images, cfg.first_case)
            for ci, ph in enumerate(cases):
                key = f"{arch}/{modality}/{ph.index}"
                if checkpoint.done(arch, modality, ph.index):
                    case_records = checkpoint.records(arch, modality, ph.index)
                    overlay = checkpoint.overlay(arch, modality, ph.index)
                else:
                    t_case = time.perf_counter()
                    case_records, overlay = _run_case(cfg, ci, ph, arch, modality, adapter, scorer, torch_model,
                                                      has_torch, banks.get(modality))
                    checkpoint.add(arch, modality, ph.index, case_records, time.perf_counter() - t_case, overlay)
                records += case_records
                if overlay is not None:
                    overlays[key] = overlay
                n_done += 1
                elapsed = time.perf_counter() - t_start
                eta = checkpoint.mean_case_s() * (n_total - n_done) / 60  # resumed cases count at what they took
                log(f"[{elapsed:6.0f}s] {n_done}/{n_total} (about {eta:.0f} min left) {arch} {modality} case "
                    f"{ph.index}: " + "; ".join(f"{r['method']}@{r['budget']}={r['auprc']:.3f}"
                                              for r in case_records if r["budget"] in (None, cfg.consistency_budget)))
        adapter.close()
        scorer.close()
    result = {"commit": checkpoint.commit(), "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
              "config": asdict(cfg), "wall_s": checkpoint.wall_s(),  # the cases' times, over every resumed part
              **derive(records, cfg), "records": records}
    write_outputs(result, overlays, out_dir)
    checkpoint.remove()
    return result


def _run_case(cfg: BenchConfig, ci: int, ph: Any, arch: str, modality: str, adapter: OnnxAdapter,
              scorer: OnnxAdapter, torch_model: Any, has_torch: bool,
              bank: Any = None) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Every method at every budget on one case: its records, and its overlay maps if it is drawn."""
    image, mask = ph.image, ph.mask
    records: list[dict[str, Any]] = []
    overlay: dict[str, Any] | None = {"image": image, "mask": mask, "maps": {}} if ci < cfg.overlay_cases else None
    for name in cfg.methods:
        kind, budgeted = METHODS[name]
        if kind == "gradcam" and not has_torch:
            continue
        budgets: tuple[int | None, ...] = (None,)
        if budgeted:
            budgets = cfg.budgets if cfg.all_budget_methods is None or name in cfg.all_budget_methods \
                else (cfg.consistency_budget,)
        for budget in budgets:
            seeds = [0]
            if ci < cfg.consistency_images and name in cfg.consistency_methods and \
                    (budget == cfg.consistency_budget or not budgeted):
                seeds = list(range(cfg.seeds))
            maps = []
            for seed in seeds:
                q0, r0 = adapter.queries, adapter.requests
                t0 = time.perf_counter()
                sal = run_method(name, image, adapter, budget, seed, torch_model, arch, bank)
                wall = time.perf_counter() - t0
                maps.append(sal)
                if seed == 0:
                    rec = {"model": arch, "modality": modality, "split": cfg.split, "case": ph.index,
                           "method": name, "budget": budget, "queries": adapter.queries - q0,
                           "requests": adapter.requests - r0, "wall_s": wall,
                           "auprc": pixel_auprc(sal, mask), "lesion_fraction": float(mask.mean())}
                    curves = perturbation_curves(image, sal, scorer.predict, adapter.info.abnormal_index,
                                                 steps=cfg.curve_steps)
                    rec.update(morf=curves["morf_auc"], lerf=curves["lerf_auc"])
            if len(maps) > 1:
                rec["consistency"] = consistency(maps)
            records.append(rec)
            if overlay is not None and budget in (None, cfg.consistency_budget):
                overlay["maps"][name] = maps[0]
    return records, overlay if overlay and overlay["maps"] else None


def _group(records: list[dict[str, Any]], **match: Any) -> list[dict[str, Any]]:
    return [r for r in records if all(r[k] == v for k, v in match.items())]


def summarize(records: list[dict[str, Any]], cfg: BenchConfig) -> list[dict[str, Any]]:
    rows = []
    groups: list[tuple[str, dict[str, str]]] = [("all", {})] + [(f"{a}/{m}", {"model": a, "modality": m}) for a in cfg.models for m in cfg.modalities]
    keys = sorted({(r["method"], r["budget"] if r["budget"] is not None else -1) for r in records},
                  key=lambda k: (list(METHODS).index(k[0]), k[1]))
    for method, budget in keys:
        b = None if budget == -1 else budget
        for gname, match in groups:
            rs = _group(records, method=method, budget=b, **match)
            if not rs:
                continue
            row: dict[str, Any] = {"method": method, "budget": b, "group": gname, "n": len(rs)}
            for metric in ("auprc", "morf", "lerf", "queries", "requests", "wall_s"):
                row[metric] = bootstrap_ci([r[metric] for r in rs], cfg.n_boot)
            cons = [r["consistency"] for r in rs if "consistency" in r]
            row["consistency"] = bootstrap_ci(cons, cfg.n_boot) if cons else None
            rows.append(row)
    return rows


def _budget(method: str, budget: int) -> int | None:
    """The budget a method's records carry: ``budget`` for the query-budgeted ones, None for natural cost."""
    return budget if METHODS[method][1] else None


def paired_differences(records: list[dict[str, Any]], cfg: BenchConfig, reference: str = "MedLIME",
                       methods: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """``reference`` minus every other method on the same cases, at the consistency budget.

    Per-method CIs overlap whenever the cases differ more from each other than the methods do (a
    small lesion is hard for everyone), which hides a consistent gap. The difference on each case,
    bootstrapped over cases, is the fair test of "better": for AUPRC and LeRF a difference > 0
    favours the reference, for MoRF one < 0 does. Budget-free methods (occlusion, Grad-CAM, random)
    are paired at their natural cost. ``methods`` limits the comparison to those methods.
    """
    b = cfg.consistency_budget
    by: dict[tuple[str, int | None], dict[tuple[Any, ...], dict[str, Any]]] = {}
    for r in records:
        by.setdefault((r["method"], r["budget"]), {})[(r["model"], r["modality"], r["case"])] = r
    ref = by.get((reference, b), {})
    rows = []
    for method in METHODS:
        other = by.get((method, _budget(method, b)))
        if method == reference or other is None or (methods is not None and method not in methods):
            continue
        cases = [k for k in ref if k in other]
        if not cases:
            continue
        row: dict[str, Any] = {"method": method, "budget": _budget(method, b), "n": len(cases)}
        for metric in ("auprc", "morf", "lerf"):
            row[metric] = bootstrap_ci([ref[k][metric] - other[k][metric] for k in cases], cfg.n_boot)
        rows.append(row)
    return rows


def _verdict(ci: tuple[float, float, float], better: int) -> str:
    """Whether a paired CI (reference minus other) is better, worse or not distinguishable."""
    if not np.isfinite(ci[0]):
        return "not measured"
    if better * ci[1] > 0 and better * ci[2] > 0:
        return "better"
    if better * ci[1] < 0 and better * ci[2] < 0:
        return "worse"
    return "not distinguishable"


def _paired_text(ci: tuple[float, float, float], better: int, where: str = "") -> str:
    """A paired difference as the goals state it: "Δ +0.020 [+0.010, +0.030]{where}, better"."""
    return f"Δ {ci[0]:+.3f} [{ci[1]:+.3f}, {ci[2]:+.3f}]{where}, {_verdict(ci, better)}"


def _mean(summary: list[dict[str, Any]], method: str, budget: int | None, group: str = "all",
          metric: str = "auprc") -> float:
    for r in summary:
        if r["method"] == method and r["budget"] == budget and r["group"] == group:
            return float(r[metric][0])
    return float("nan")


def goals(summary: list[dict[str, Any]], cfg: BenchConfig, paired: list[dict[str, Any]] | None = None,
          gradcam_paired: dict[str, list[dict[str, Any]]] | None = None) -> dict[str, Any]:
    """The issue's goals, judged on the summary; ``paired`` are MedLIME's paired differences over every
    case, ``gradcam_paired`` those against Grad-CAM on each classifier's cases (the goal is per classifier)."""
    b = cfg.consistency_budget
    med, lime = _mean(summary, "MedLIME", b), _mean(summary, "LIME (lime package)", b)
    out: dict[str, Any] = {
        "medlime_over_lime_auprc": med / lime if lime else float("nan"),
        "medlime_ge_rise": med >= _mean(summary, "RISE", b),
        "medlime_ge_kernelshap": bool(med >= np.nanmax([_mean(summary, k, b) for k in KERNEL_SHAPS] + [-np.inf])),
    }
    for part, ablation in ABLATIONS.items():
        without = _mean(summary, ablation, b)
        out[f"{part}_removal_lowers_auprc"] = bool(without < med) if np.isfinite(without) else "not measured"
        for p in paired or []:
            if p["method"] == ablation:
                out[f"{part}_removal_paired"] = _paired_text(p["auprc"], 1)
    for arch in cfg.models:
        per = [(_mean(summary, "MedLIME", b, f"{arch}/{m}"), _mean(summary, "Grad-CAM (white-box)", None, f"{arch}/{m}"))
               for m in cfg.modalities]
        out[f"medlime_vs_gradcam_{arch}"] = [round(x, 4) for pair in per for x in pair]
        for p in (gradcam_paired or {}).get(arch, []):  # at most one row: Grad-CAM on this classifier's cases
            out[f"medlime_vs_gradcam_{arch}_paired"] = _paired_text(p["auprc"], 1, f" on {p['n']} cases")
    bb = [(m, _mean(summary, m, _budget(m, b), metric="morf"), _mean(summary, m, _budget(m, b), metric="lerf"))
          for m in BLACK_BOX]
    bb = [x for x in bb if np.isfinite(x[1])]
    if bb:  # report ties (within 0.005) rather than an arbitrary winner: LeRF saturates on these models
        lo, hi = min(x[1] for x in bb), max(x[2] for x in bb)
        out["lowest_morf_black_box"] = ", ".join(x[0] for x in bb if x[1] <= lo + 0.005) + f" ({lo:.3f})"
        out["highest_lerf_black_box"] = ", ".join(x[0] for x in bb if x[2] >= hi - 0.005) + f" ({hi:.3f})"
        rivals = {p["method"]: p for p in paired or [] if p["method"] in BLACK_BOX}
        for metric, better, pick in (("morf", -1, min), ("lerf", 1, max)):
            others = [x for x in bb if x[0] != "MedLIME" and x[0] in rivals]
            if others:  # MedLIME against the best of the others, on the same cases
                best = pick(others, key=lambda x: x[1] if metric == "morf" else x[2])[0]
                out[f"medlime_{metric}_vs_best_other"] = f"{best}: " + _paired_text(rivals[best][metric], better)
    cons = [r for r in summary if r["method"] == "MedLIME" and r["budget"] == b and r["group"] == "all"]
    out["medlime_consistency"] = cons[0]["consistency"][0] if cons and cons[0]["consistency"] else float("nan")
    target = lime
    reach = [bb_ for bb_ in sorted(cfg.budgets) if _mean(summary, "MedLIME", bb_) >= target]
    out["medlime_queries_to_reach_lime_1000"] = reach[0] if reach else f"> {max(cfg.budgets)}"
    return out


def _fmt(ci: tuple[float, float, float] | None, digits: int = 3) -> str:
    if ci is None or not np.isfinite(ci[0]):
        return "–"
    return f"{ci[0]:.{digits}f} [{ci[1]:.{digits}f}, {ci[2]:.{digits}f}]"


def markdown(result: dict[str, Any]) -> str:
    cfg, summary = result["config"], result["summary"]
    groups = ["all"] + [f"{a}/{m}" for a in cfg["models"] for m in cfg["modalities"]]
    first = cfg.get("first_case", 0)
    which = f"abnormal cases {first + 1}–{first + cfg['images']}" if first else f"{cfg['images']} abnormal cases"
    lines = [f"Split `{cfg['split']}`, {which} per (model, modality); mean [95 % bootstrap CI].", "",
             "| method | queries | AUPRC (all) | " + " | ".join(f"AUPRC {g}" for g in groups[1:])
             + " | MoRF ↓ | LeRF ↑ | consistency | requests | wall s (median) |",
             "|---|---|---|" + "---|" * (len(groups) - 1) + "---|---|---|---|---|"]
    by = {(r["method"], r["budget"], r["group"]): r for r in summary}
    keys = sorted({(r["method"], r["budget"]) for r in summary},
                  key=lambda k: (list(METHODS).index(k[0]), k[1] or 0))
    wall: dict[tuple[str, int | None], list[float]] = {}
    for r in result.get("records", []):
        wall.setdefault((r["method"], r["budget"]), []).append(r["wall_s"])
    for method, budget in keys:
        a = by[(method, budget, "all")]
        median_wall = float(np.median(wall[(method, budget)])) if (method, budget) in wall else a["wall_s"][0]
        cells = [_fmt(by[(method, budget, g)]["auprc"]) if (method, budget, g) in by else "–" for g in groups[1:]]
        q = f"{a['queries'][0]:.0f}"
        lines.append(f"| {method} | {q} | {_fmt(a['auprc'])} | " + " | ".join(cells) + f" | {_fmt(a['morf'])} | "
                     f"{_fmt(a['lerf'])} | {_fmt(a['consistency'])} | {a['requests'][0]:.0f} | {median_wall:.2f} |")
    g = result["goals"]
    removal = "; ".join(f"{part.upper()}: {g.get(f'{part}_removal_lowers_auprc', 'not measured')}"
                        + (f" (paired {g[f'{part}_removal_paired']})" if f"{part}_removal_paired" in g else "")
                        for part in ABLATIONS)
    lines += ["", "Goals:", "",
              f"- MedLIME / lime AUPRC at {cfg['consistency_budget']} queries: {g['medlime_over_lime_auprc']:.2f}× (goal ≥ 1.5×)",
              f"- MedLIME ≥ RISE: {g['medlime_ge_rise']}; ≥ KernelSHAP (both fills): {g['medlime_ge_kernelshap']}",
              f"- removing each part lowers AUPRC: {removal}",
              f"- lowest MoRF among black-box methods: {g.get('lowest_morf_black_box')}; "
              f"highest LeRF: {g.get('highest_lerf_black_box')}",
              f"- paired on the same cases, MedLIME minus the best other black-box method: MoRF "
              f"{g.get('medlime_morf_vs_best_other', 'not measured')}; "
              f"LeRF {g.get('medlime_lerf_vs_best_other', 'not measured')}",
              f"- MedLIME consistency: {g['medlime_consistency']:.3f} (goal ≥ 0.9)",
              f"- queries MedLIME needs to reach lime's {cfg['consistency_budget']}-query AUPRC: "
              f"{g['medlime_queries_to_reach_lime_1000']} "
              f"(budgets tried: {', '.join(map(str, cfg['budgets']))}; goal ≤ 250)"]
    for arch in cfg["models"]:
        v = g[f"medlime_vs_gradcam_{arch}"]
        pairs = ", ".join(f"{m}: {v[2 * i]:.3f} vs {v[2 * i + 1]:.3f}" for i, m in enumerate(cfg["modalities"])
                          if np.isfinite(v[2 * i]) or np.isfinite(v[2 * i + 1]))  # joined runs: not every group ran
        both = g.get(f"medlime_vs_gradcam_{arch}_paired")
        lines.append(f"- MedLIME vs Grad-CAM AUPRC on the {arch.upper()}: {pairs}" + (f"; paired {both}" if both else ""))
    paired = result.get("paired") or []
    if paired:
        lines += ["", *paired_table(paired, "MedLIME", cfg["consistency_budget"])]
    return "\n".join(lines)


def paired_table(paired: list[dict[str, Any]], reference: str, budget: int) -> list[str]:
    """Markdown lines: ``reference`` minus each method on the same cases (rows of paired_differences)."""
    lines = [f"{reference} minus each method on the same cases, at {budget} queries "
             "(occlusion, Grad-CAM and random at their natural cost); mean [95 % paired bootstrap CI]. "
             f"AUPRC and LeRF: > 0 favours {reference}; MoRF: < 0 does.", "",
             "| method | cases | Δ AUPRC | Δ MoRF | Δ LeRF |", "|---|---|---|---|---|"]
    for p in paired:
        lines.append(f"| {p['method']} | {p['n']} | " + " | ".join(
            f"{_fmt(p[m], 3)} ({_verdict(p[m], -1 if m == 'morf' else 1)})" for m in ("auprc", "morf", "lerf")) + " |")
    return lines


def write_outputs(result: dict[str, Any], overlays: dict[str, Any], out_dir: Path) -> None:
    from blackbox_lime.outputs import atomic_write_bytes

    out_dir.mkdir(parents=True, exist_ok=True)
    table = markdown(result)
    atomic_write_bytes(out_dir / "table.md", (table + "\n").encode())
    atomic_write_bytes(out_dir / "results.json", json.dumps(result, indent=1, default=float).encode())
    try:
        import matplotlib
    except ImportError:
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = [r for r in result["summary"] if r["group"] == "all"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours, markers = getattr(plt.get_cmap("tab20"), "colors"), "os^Dv<>pPXh*"
    for i, method in enumerate(METHODS):  # one colour and marker per method: there are more than 10
        rows = sorted([r for r in summary if r["method"] == method], key=lambda r: r["queries"][0])
        if not rows:
            continue
        x = [max(r["queries"][0], 1) for r in rows]
        y = [r["auprc"][0] for r in rows]
        err = [[r["auprc"][0] - r["auprc"][1] for r in rows], [r["auprc"][2] - r["auprc"][0] for r in rows]]
        ax.errorbar(x, y, yerr=err, marker=markers[i % len(markers)], color=colours[(2 * i) % 20 + (2 * i) // 20],
                    capsize=3, label=method)
    ax.set_xscale("log")
    ax.set_xlabel("queries per explanation")
    ax.set_ylabel("pixel AUPRC (mean, 95 % CI)")
    ax.set_title("Lesion localisation against query budget")
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save_fig(fig, out_dir / "auprc_vs_queries.png")
    plt.close(fig)

    cases = list(overlays.items())[: max(1, len(overlays))]
    methods = [m for m in METHODS if any(m in c["maps"] for _, c in cases)]
    if not cases:
        return
    fig, axes = plt.subplots(len(cases), len(methods) + 1, figsize=(1.6 * (len(methods) + 1), 1.7 * len(cases)),
                             squeeze=False)
    for i, (key, c) in enumerate(cases):
        axes[i, 0].imshow(c["image"][..., 0], cmap="gray")
        axes[i, 0].contour(c["mask"], levels=[0.5], colors="lime", linewidths=0.6)
        axes[i, 0].set_ylabel(key, fontsize=6)
        for j, m in enumerate(methods, start=1):
            axes[i, j].imshow(c["image"][..., 0], cmap="gray")
            if m in c["maps"]:
                axes[i, j].imshow(c["maps"][m], cmap="jet", alpha=0.45)
            axes[i, j].contour(c["mask"], levels=[0.5], colors="white", linewidths=0.5)
            if i == 0:
                axes[i, j].set_title(m, fontsize=6)
        if i == 0:
            axes[i, 0].set_title("image + lesion", fontsize=6)
    for a in axes.ravel():
        a.set_xticks([])
        a.set_yticks([])
    fig.tight_layout()
    _save_fig(fig, out_dir / "overlays.png")
    plt.close(fig)


def _save_fig(fig: Any, path: Path) -> None:
    import io

    from blackbox_lime.outputs import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130)
    atomic_write_bytes(path, buf.getvalue())


def parse(argv: list[str] | None = None) -> tuple[BenchConfig, Path]:
    return _config(_parser().parse_args(argv))


def method_list(text: str) -> tuple[str, ...]:
    """Method names from a comma list. Names hold commas themselves ("LIME, patch grid, mean fill"),
    so at each point the longest run of comma-separated pieces that is a method's name is taken."""
    pieces = [x.strip() for x in text.split(",")]
    names, i = [], 0
    while i < len(pieces):
        j = next((j for j in range(len(pieces), i, -1) if ", ".join(pieces[i:j]) in METHODS), None)
        if j is None:
            raise ValueError(f"unknown method {pieces[i]!r}; choose from: {'; '.join(METHODS)} "
                             "(separated by commas)")
        names.append(", ".join(pieces[i:j]))
        i = j
    return tuple(names)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m blackbox_lime.evaluation.bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help=f"the <= 15-minute configuration: {QUICK}")
    p.add_argument("--split", choices=["test", "val", "shifted"], default="test")
    p.add_argument("--models", default=None, help="comma list of cnn,vit")
    p.add_argument("--modalities", default=None, help="comma list of chest_xray,breast_us")
    p.add_argument("--images", type=int, default=None, help="abnormal cases per (model, modality)")
    p.add_argument("--first-case", type=int, default=None, metavar="N",
                   help="skip the split's first N abnormal cases (default 0): a diagnostic on cases that a "
                        "reported table did not use")
    p.add_argument("--budgets", default=None, help="comma list of query budgets")
    p.add_argument("--methods", default=None,
                   help="comma list of method names (default: all but the diagnostic " + repr(DIAGNOSTIC[0]) + ")")
    p.add_argument("--consistency-methods", default=None,
                   help="comma list of methods run with 3 seeds, or 'all' (default: all; --quick: MedLIME)")
    p.add_argument("--consistency-images", type=int, default=None,
                   help="cases per (model, modality) explained with 3 seeds (default 5; --quick: 1)")
    p.add_argument("--consistency-budget", type=int, default=None,
                   help="the budget at which consistency is measured and the goals are judged; one of --budgets "
                        "(default 1000)")
    p.add_argument("--out", default="bench_out/bench")
    p.add_argument("--render", metavar="RESULTS_JSON", default=None,
                   help="only re-render the table and goals from a saved results.json")
    p.add_argument("--paired-against", metavar="METHOD", default=None,
                   help="with --render: add the paired differences of METHOD (instead of MedLIME) minus each "
                        "other method")
    p.add_argument("--write", action="store_true",
                   help="with --render: rewrite that run's table.md and the derived numbers of its results.json")
    p.add_argument("--compare", metavar="RUNS:METHOD", nargs=2, default=None,
                   help="print one method of a saved run minus one method of other saved runs, paired on the cases "
                        "they share (each RUNS is a comma list of results.json files); no explanations are run")
    p.add_argument("--merge", metavar="RESULTS_JSON", nargs="+", default=None,
                   help="join runs that differ only in --models/--modalities (the full protocol run in pieces) "
                        "into one table in --out; no explanations are run")
    p.add_argument("--resume", action="store_true",
                   help="go on with the unfinished run in --out (every finished case is checkpointed there)")
    return p


def _config(a: argparse.Namespace) -> tuple[BenchConfig, Path]:
    kw: dict[str, Any] = dict(QUICK) if a.quick else {}
    kw["split"] = a.split
    if a.models:
        kw["models"] = tuple(a.models.split(","))
    if a.modalities:
        kw["modalities"] = tuple(a.modalities.split(","))
    if a.images:
        kw["images"] = a.images
    if a.first_case is not None:
        if a.first_case < 0:
            _parser().error(f"--first-case must be 0 or more, got {a.first_case}")
        kw["first_case"] = a.first_case
    if a.consistency_images is not None:
        kw["consistency_images"] = a.consistency_images
    if a.budgets:
        kw["budgets"] = tuple(int(x) for x in a.budgets.split(","))
    if a.consistency_budget is not None:
        kw["consistency_budget"] = a.consistency_budget
    budgets = kw.get("budgets", BenchConfig.budgets)
    at = kw.get("consistency_budget", BenchConfig.consistency_budget)
    if at not in budgets:
        _parser().error(f"--consistency-budget {at} is not one of the budgets run ({','.join(map(str, budgets))}); "
                        "add it to --budgets")
    try:
        if a.methods:
            kw["methods"] = method_list(a.methods)
        if a.consistency_methods:
            if a.consistency_methods == "all":
                kw["consistency_methods"] = BenchConfig.consistency_methods
            else:
                kw["consistency_methods"] = method_list(a.consistency_methods)
    except ValueError as e:
        _parser().error(str(e))
    kw["extra"] = {"quick": a.quick}
    return BenchConfig(**kw), Path(a.out)


def derive(records: list[dict[str, Any]], cfg: BenchConfig) -> dict[str, Any]:
    """Every number computed from the per-case records: the summary, the paired differences, the goals."""
    summary = summarize(records, cfg)
    paired = paired_differences(records, cfg)
    gradcam = {arch: paired_differences([r for r in records if r["model"] == arch], cfg,
                                        methods=("Grad-CAM (white-box)",)) for arch in cfg.models}
    return {"summary": summary, "paired": paired, "goals": goals(summary, cfg, paired, gradcam)}


def _saved_config(config: dict[str, Any]) -> BenchConfig:
    """The BenchConfig of a results.json (JSON stores its tuples as lists)."""
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
    return BenchConfig(**fields)


def read_results(path: str | Path) -> dict[str, Any]:
    """A saved results.json, or its gzipped copy (``results.json.gz``: docs/ keeps large runs compressed)."""
    import gzip

    path = Path(path)
    if not path.is_file() and path.with_name(path.name + ".gz").is_file():
        path = path.with_name(path.name + ".gz")
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return json.loads(data)


def render(results_json: Path, reference: str | None = None, write: bool = False) -> str:
    """Re-derive the numbers and the markdown table from a saved results.json (no explanations are run).

    With ``reference``, a second paired table follows: that method minus each other method, on the
    same cases (for instance a diagnostic method against lime). With ``write``, the run's
    ``results.json`` (its derived numbers; records, commit and config are kept), ``table.md`` and
    ``auprc_vs_queries.png`` are rewritten with what this version of the code derives, and
    ``rederived_by`` records its commit.
    """
    result = read_results(results_json)
    cfg = _saved_config(result["config"])
    result.update(derive(result["records"], cfg))
    text = markdown(result)
    if write:  # table.md, results.json and the plot; overlays.png needs the maps, which are not saved
        result["rederived_by"] = git_commit()
        write_outputs(result, {}, results_json.parent)
    if reference is not None:
        ran = list(dict.fromkeys(r["method"] for r in result["records"]))
        if reference not in ran:
            raise ValueError(f"{reference!r} was not run in {results_json}; it holds: {'; '.join(ran)}")
        text += "\n\n" + "\n".join(paired_table(paired_differences(result["records"], cfg, reference=reference),
                                               reference, cfg.consistency_budget))
    return text


def compare(a: str, b: str, budget: int = 1000, n_boot: int = 2000) -> str:
    """One method of one run minus one method of other runs, paired on the cases both hold.

    ``a`` and ``b`` are ``RESULTS_JSON[,RESULTS_JSON...]:METHOD``; for instance the MedLIME of today's
    run against the MedLIME of an earlier version's run on the same cases. Budget-free methods are
    compared at their natural cost."""
    def load(spec: str) -> tuple[str, dict[tuple[Any, ...], dict[str, Any]]]:
        paths, sep, method = spec.rpartition(":")
        if not sep or method not in METHODS:
            raise ValueError(f"--compare takes RESULTS_JSON[,RESULTS_JSON...]:METHOD with a method of the table; "
                             f"got {spec!r}")
        out: dict[tuple[Any, ...], dict[str, Any]] = {}
        for path in paths.split(","):
            for r in read_results(path)["records"]:
                if r["method"] == method and r["budget"] == _budget(method, budget):
                    out[(r["split"], r["model"], r["modality"], r["case"])] = r
        return method, out

    (ma, ra), (mb, rb) = load(a), load(b)
    cases = sorted(k for k in ra if k in rb)
    if not cases:
        raise ValueError(f"the two runs share no case for {ma!r} and {mb!r} at {budget} queries")
    lines = [f"{ma} ({a.rpartition(':')[0]}) minus {mb} ({b.rpartition(':')[0]}), paired on {len(cases)} cases "
             f"at {budget} queries; mean [95 % paired bootstrap CI].", "",
             "| metric | first | second | Δ |", "|---|---|---|---|"]
    for metric, better in (("auprc", 1), ("morf", -1), ("lerf", 1)):
        x = [ra[k][metric] for k in cases]
        y = [rb[k][metric] for k in cases]
        d = bootstrap_ci([p - q for p, q in zip(x, y)], n_boot)
        lines.append(f"| {metric} | {np.mean(x):.3f} | {np.mean(y):.3f} | {_fmt(d)} ({_verdict(d, better)}) |")
    return "\n".join(lines)


def merge(results_paths: list[Path], out_dir: Path) -> dict[str, Any]:
    """Join benchmark runs that differ only in their models or modalities into one result.

    The full protocol takes hours on a small machine; it can be run in pieces (``--models cnn
    --modalities chest_xray`` and so on) and joined here. Every per-image record is kept, the
    summary and goals are recomputed over all of them, and the overlay grids stay in the pieces.
    """
    parts = [read_results(p) for p in results_paths]
    base = parts[0]["config"]
    seen: set[tuple[Any, ...]] = set()
    records: list[dict[str, Any]] = []
    models: list[str] = []
    modalities: list[str] = []
    for path, part in zip(results_paths, parts, strict=True):
        differs = config_difference(base, part["config"], ignore=("models", "modalities"), defaults=asdict(BenchConfig()))
        if differs is not None:
            key, first, this = differs
            raise ValueError(f"{path} was run with {key}={this!r}, the first run with {first!r}; only --models and "
                             "--modalities may differ between joined runs.")
        for r in part["records"]:
            rkey = (r["model"], r["modality"], r["case"], r["method"], r["budget"])
            if rkey in seen:
                raise ValueError(f"{path} repeats {r['method']} at budget {r['budget']} on {r['model']}/{r['modality']} "
                                 f"case {r['case']}; join runs over different models or modalities only.")
            seen.add(rkey)
            records.append(r)
        models += [m for m in part["config"]["models"] if m not in models]
        modalities += [m for m in part["config"]["modalities"] if m not in modalities]
    cfg = _saved_config(base)
    cfg.models, cfg.modalities = tuple(models), tuple(modalities)
    result = {"commit": ", ".join(dict.fromkeys(p["commit"] for p in parts)), "machine": parts[0]["machine"],
              "merged_from": [str(p) for p in results_paths], "config": asdict(cfg),
              "wall_s": sum(p["wall_s"] for p in parts), **derive(records, cfg), "records": records}
    write_outputs(result, {}, out_dir)
    return result


def _on_saved_runs(work: Callable[[], str]) -> int:
    """Run a command on saved runs (render, compare, merge): print its text, or the error and exit 2."""
    try:
        text = work()
    except (OSError, ValueError, KeyError) as e:
        print(f"blackbox-lime bench: error: {e}", file=sys.stderr)
        return 2
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    if a.paired_against and not a.render:
        _parser().error("--paired-against works with --render only")
    if a.write and (not a.render or a.paired_against):
        _parser().error("--write works with --render only, without --paired-against")
    if a.render:
        def rendered() -> str:
            reference = method_list(a.paired_against) if a.paired_against else None
            if reference is not None and len(reference) != 1:
                raise ValueError(f"--paired-against takes one method, got {len(reference)}: {'; '.join(reference)}")
            return render(Path(a.render), reference[0] if reference else None, write=a.write)
        return _on_saved_runs(rendered)
    if a.compare:
        return _on_saved_runs(lambda: compare(a.compare[0], a.compare[1], budget=a.consistency_budget or BenchConfig.consistency_budget))
    if a.merge:
        return _on_saved_runs(lambda: markdown(merge([Path(x) for x in a.merge], Path(a.out))))
    cfg, out = _config(a)
    os.environ.setdefault("TQDM_DISABLE", "1")  # lime draws a progress bar per explanation
    try:
        result = run(cfg, out, log=lambda s: print(s, file=sys.stderr, flush=True), resume=a.resume)
    except CheckpointError as e:  # an unfinished run in --out, or a checkpoint of another configuration
        print(f"blackbox-lime bench: error: {e}", file=sys.stderr)
        return 2
    print(markdown(result))
    print(f"\nwrote {out / 'table.md'}, {out / 'results.json'}, {out / 'auprc_vs_queries.png'}, {out / 'overlays.png'} "
          f"in {result['wall_s'] / 60:.1f} min", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
