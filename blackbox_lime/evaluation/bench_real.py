"""The real-image benchmark: maps of a real classifier on real images, scored against expert lesion outlines.

    python -m blackbox_lime.evaluation.bench_real --figshare DATA/dataset-brain-tumor/categorized \\
        --split val --per-class 10 --out docs/bench_real/figshare_val
    python -m blackbox_lime.evaluation.bench_real --kvasir DATA/Kvasir-SEG --split val --per-class 30 \\
        --out docs/bench_real/kvasir_val

Families (blackbox_lime/evaluation/real_data.py):

* ``figshare_brain``: the figshare brain-tumour MRI slices and ``onnx/figshare_brain_cnn.onnx``, a three-class
  tumour-type CNN trained on the train split with the image label alone (``python onnx/train_real.py``); the expert
  box is the ground truth; every class is explained.
* ``kvasir_polyp``: colour colonoscopy fields of view from Kvasir-SEG and ``onnx/kvasir_polyp_cnn.onnx``, a
  polyp / no-polyp CNN trained on the train split's views with the view's label alone
  (``python onnx/train_polyp.py``); the endoscopists' outline is the ground truth; the "polyp" class is explained.

The explained class is the true one, on the first ``--per-class`` images of each explained class that the model
classifies correctly. ``val`` is where anything is tuned; ``test`` is held out and run once per change.

Methods (queries in brackets): the default map, ``blackbox-lime explain`` at its defaults (500; fill auto); the
same with each fixed fill (MAE, mean, blur; 500), to see what auto chose and what it could have had; lime at its
defaults (1000, quickshift) and at equal queries (500); occlusion (16-px patches, mean fill; 197), also smoothed as the
default map is (``map_sigma``: is the smoothing all the default adds?); RISE (500); ``centre``, a Gaussian blob at the
image's centre (0: what a map scores by the place of the findings alone); the mask's prevalence (a random map's
expected AUPRC). Score: pixel AUPRC against the expert mask (figshare: the box; Kvasir: the outline), mean with
a bootstrap 95 % CI over images; the default's ratio to lime's mean with a paired bootstrap CI. Each map also gets
the drop at the mask's area (:func:`region_drop`, one query), a faithfulness check that needs no expert, next to
the expert mask's own drop (:func:`box_drop`), and the table bins the images by how much the model reads the mask.

Writes ``results.json`` (every record) and ``table.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from blackbox_lime.adapters.onnx import OnnxAdapter
from blackbox_lime.config import ExplainConfig
from blackbox_lime.evaluation import baselines
from blackbox_lime.evaluation.metrics import bootstrap_ci, pixel_auprc
from blackbox_lime.evaluation.real_data import FIGSHARE_CLASSES, KVASIR_CLASSES, RealCase, figshare_brain, kvasir_polyp
from blackbox_lime.explainer import Explainer
from blackbox_lime.fill.fillers import ConstantFiller, Filler
from blackbox_lime.fill.registry import fill_names, make_filler
from blackbox_lime.models import bundled_model
from blackbox_lime.patches import PatchGrid

@dataclass(frozen=True)
class Family:
    """A real family: its bundled classifier, its classes, the classes whose maps are scored (those with a finding to
    outline) and its reader (``load(root, split)``)."""

    name: str
    model: str
    classes: tuple[str, ...]
    explained: tuple[int, ...]
    load: Callable[[str | Path, str], list[RealCase]]
    option: str


FAMILIES = {
    "figshare_brain": Family("figshare_brain", "figshare_brain_cnn.onnx", FIGSHARE_CLASSES, (0, 1, 2), figshare_brain,
                             "--figshare"),
    "kvasir_polyp": Family("kvasir_polyp", "kvasir_polyp_cnn.onnx", KVASIR_CLASSES, (1,), kvasir_polyp, "--kvasir"),
}

METHODS = ("default", "fill=mae", "fill=mean", "fill=blur", "lime", "lime@500", "occlusion", "occlusion+smooth", "rise",
           "centre")


def _rgb(case: RealCase) -> np.ndarray:
    image = case.image.astype(np.float32) / 255.0
    return image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)


def run_method(name: str, image: np.ndarray, adapter: OnnxAdapter, target: int, seed: int,
               mae: str | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """One method's map and what it says about itself (the default's fill choice, R^2). ``mae``: a site MAE
    (``blackbox-lime mae fit``) in place of the bundled one."""
    rng = np.random.default_rng(seed)
    if name == "default" or name.startswith(("fill=", "cfg:")):
        cfg = (ExplainConfig() if name == "default" else ExplainConfig(fill=name.split("=", 1)[1])
               if name.startswith("fill=") else variant(name))
        exp = Explainer(adapter, cfg, mae_path=mae).explain(image, target=target, rng=rng)
        fill = exp.fill or {}
        return exp.saliency, {"fill": fill.get("chosen"), "recon_psnr_db": fill.get("recon_psnr_db"),
                              "r2": exp.r2, "r2_heldout": exp.r2_heldout}
    if name == "lime":
        return baselines.lime_package(image, adapter, target, 1000, rng), {}
    if name == "lime@500":
        return baselines.lime_package(image, adapter, target, 500, rng), {}
    if name == "occlusion":
        return baselines.occlusion(image, adapter, target), {}
    if name == "occlusion+smooth":  # the default map's smoothing (map_sigma) applied to occlusion: is smoothing all?
        return baselines.occlusion(image, adapter, target, sigma=ExplainConfig().map_sigma), {}
    if name == "rise":
        return baselines.rise(image, adapter, target, 500, rng), {}
    if name == "centre":  # no query: where the view puts its findings, not what the model reads
        h, w = image.shape[:2]
        yy, xx = np.mgrid[:h, :w]
        return np.exp(-((yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2) / (2 * (0.22 * min(h, w)) ** 2)), {}
    raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}")


def fill_answers(image: np.ndarray, hides: np.ndarray, adapter: OnnxAdapter, target: int,
                 fillers: dict[str, Filler]) -> tuple[float, np.ndarray]:
    """P(target) on the image, and P(target) with the pixels of each of ``hides`` (bool (M, H, W)) replaced by each
    fill's content: (fills, M), in the order of ``fillers`` (one request for all fills and masks)."""
    hidden = [image]
    for filler in fillers.values():
        for m, c in zip(hides, filler.fill(image, hides)):
            out = image.copy()
            out[m] = c[m]
            hidden.append(out)
    p = adapter.predict(np.stack(hidden))[:, target]
    return float(p[0]), p[1:].reshape(len(fillers), len(hides))


def fill_changes(image: np.ndarray, hides: np.ndarray, adapter: OnnxAdapter, target: int,
                 fillers: dict[str, Filler]) -> dict[str, float]:
    """The change of P(target) when each fill hides each of ``hides``, mean over the masks (:func:`fill_answers`)."""
    p0, p = fill_answers(image, hides, adapter, target, fillers)
    return {name: float(np.mean(p[i])) - p0 for i, name in enumerate(fillers)}


def hidden_drop(image: np.ndarray, hide: np.ndarray, adapter: OnnxAdapter, target: int) -> float:
    """P(target) on the image minus P(target) with the pixels of the bool mask ``hide`` filled with the image's mean
    (one query)."""
    return -fill_changes(image, hide[None], adapter, target, {"mean": ConstantFiller("mean")})["mean"]


def box_drop(case: RealCase, adapter: OnnxAdapter) -> float:
    """Does the model read the finding? The drop when the expert mask is hidden (:func:`hidden_drop`). Near zero: the
    answer does not rest on the lesion, so the class is an audit case (what does it read?), not a test of
    faithfulness to the lesion."""
    return hidden_drop(_rgb(case), case.mask, adapter, case.label)


def fill_drops(image: np.ndarray, hide: np.ndarray, adapter: OnnxAdapter, target: int,
               fillers: dict[str, Filler]) -> dict[str, float]:
    """Does a fill remove the finding? P(target) on the image minus P(target) with the pixels of ``hide`` (the expert's
    mask) replaced by each fill's content (one request for all fills). A fill that removes much less than the mean
    where the mean removes much puts the finding back or leaves it visible, and its maps cannot find it."""
    return {name: -change for name, change in fill_changes(image, hide[None], adapter, target, fillers).items()}


def half_masks(shape: tuple[int, int], patch: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` bool pixel masks (n, H, W), each hiding a random half of the ``patch``-px squares."""
    grid = PatchGrid(shape[0], shape[1], patch)
    return grid.hidden_pixels(rng.random((n, grid.n_patches)) >= 0.5)  # the visible squares


def fill_rises(image: np.ndarray, masks: np.ndarray, adapter: OnnxAdapter, finding: int,
               fillers: dict[str, Filler]) -> dict[str, float]:
    """Does a fill make the model see the finding where there is none? On an image without it, the mean change of
    P(finding) when each of ``masks`` (bool (M, H, W)) is filled by each fill (:func:`fill_changes`). A rise is what
    GM is meant to avoid: a fill whose content reads as evidence."""
    return fill_changes(image, masks, adapter, finding, fillers)


def fill_rises_table(result: dict[str, Any], command: str, rise: float = 0.1) -> str:
    """The table of ``--fill-rises``: per fill, the mean change of P(finding) and the share of images it raises by
    more than ``rise``."""
    recs = result["records"]
    names = list(recs[0]["fill_rises"]) if recs else []
    lines = [f"# Does a fill make the model see the finding? {result['family']}, {result['split']} split", "",
             f"`{command}`", "",
             f"{len(recs)} images without the finding ({result['free_class']}) that the model classifies correctly. "
             f"For each fill: P({result['finding']}) with a random half of the 16-px squares hidden by the fill "
             f"({result['masks']} masks per image, the same for every fill), minus P({result['finding']}) on the "
             "image; mean over the masks, then over the images. A fill that raises it puts evidence of its own into "
             "the image, which is what generative masking is meant to avoid.", "",
             f"| fill | change of P({result['finding']}) [95 % CI] | images raised by more than {rise:g} |",
             "|---|---|---|"]
    for name in names:
        v = [r["fill_rises"][name] for r in recs]
        t = bootstrap_ci(v)
        lines.append(f"| {name} | {t[0]:+.3f} [{t[1]:+.3f}, {t[2]:+.3f}] | {np.mean(np.asarray(v) > rise):.2f} |")
    return "\n".join(lines) + "\n"


def fill_drops_table(result: dict[str, Any], command: str, reads: float = 0.1) -> str:
    """The table of ``--fill-drops``: per fill, the mean drop over all images and over those whose mean-fill drop is
    at least ``reads`` (the model reads the finding), with its ratio to the mean fill's there."""
    recs = result["records"]
    names = list(recs[0]["fill_drops"]) if recs else []
    strong = [r for r in recs if r["fill_drops"]["mean"] >= reads]
    ref = float(np.mean([r["fill_drops"]["mean"] for r in strong])) if strong else float("nan")
    lines = [f"# What each fill removes: {result['family']}, {result['split']} split", "", f"`{command}`", "",
             f"{len(recs)} images the model classifies correctly. The drop: P(class) minus P(class) with the expert's "
             "mask filled by the fill (one request per image for all fills). A fill whose drop is far below the mean "
             "fill's puts the finding back, or leaves it visible, so hiding cannot show the map where it is. "
             f"\"Reads\": the {len(strong)} images whose mean-fill drop is >= {reads:g}.", "",
             "| fill | drop, all [95 % CI] | drop, images the model reads | / the mean fill's there |",
             "|---|---|---|---|"]
    for name in names:
        t = bootstrap_ci([r["fill_drops"][name] for r in recs])
        here = float(np.mean([r["fill_drops"][name] for r in strong])) if strong else float("nan")
        lines.append(f"| {name} | {t[0]:.3f} [{t[1]:.3f}, {t[2]:.3f}] | {here:.3f} | {here / ref:.2f} |")
    return "\n".join(lines) + "\n"


def region_drops(image: np.ndarray, maps: list[np.ndarray], area: int, adapter: OnnxAdapter,
                 target: int) -> list[float]:
    """A faithfulness check that needs no expert: for each map, the drop when its top ``area`` pixels (the expert
    mask's area) are filled with the image's mean, as :func:`box_drop` hides the expert mask (one request for all
    maps). A map whose region drops the answer more than the expert's mask does has found more of what the model
    reads than the mask holds; AUPRC against the mask cannot credit it."""
    hides = np.zeros((len(maps), maps[0].size), bool)
    for top, m in zip(hides, maps):
        top[np.argsort(-np.asarray(m, np.float64).ravel(), kind="stable")[:max(1, int(area))]] = True
    p0, p = fill_answers(image, hides.reshape((len(maps),) + maps[0].shape), adapter, target,
                         {"mean": ConstantFiller("mean")})
    return [p0 - float(x) for x in p[0]]


def region_drop(image: np.ndarray, saliency: np.ndarray, area: int, adapter: OnnxAdapter, target: int) -> float:
    """:func:`region_drops` of one map."""
    return region_drops(image, [saliency], area, adapter, target)[0]


def variant(name: str) -> ExplainConfig:
    """``cfg:lambda1=0.02+patch_size=8``: the default configuration with these fields changed (val exploration);
    a tuple field's values are separated by slashes (``cfg:mask_ratios=0.1/0.25/0.5``)."""
    fields: dict[str, Any] = {}
    for part in name[len("cfg:"):].split("+"):
        key, _, value = part.partition("=")
        default = getattr(ExplainConfig(), key)  # an unknown field is an AttributeError naming it
        if isinstance(default, tuple):  # mask_ratios=0.1/0.25/0.5
            fields[key] = tuple(float(x) for x in value.split("/"))
        else:
            fields[key] = type(default)(value) if default is not None else float(value)
    return ExplainConfig(**fields)


def select(cases: list[RealCase], adapter: OnnxAdapter, per_class: int,
           explained: tuple[int, ...] = (0, 1, 2)) -> list[tuple[RealCase, float]]:
    """The first ``per_class`` cases of each explained class that the model gets right, with P(true class)."""
    chosen: list[tuple[RealCase, float]] = []
    counts = {k: 0 for k in explained}
    for i in range(0, len(cases), 64):
        part = cases[i:i + 64]
        probs = adapter.predict(np.stack([_rgb(c) for c in part]))
        for c, p in zip(part, probs):
            if c.label in counts and int(np.argmax(p)) == c.label and counts[c.label] < per_class:
                chosen.append((c, float(p[c.label])))
                counts[c.label] += 1
        if min(counts.values()) >= per_class:
            break
    return chosen


def run(root: Path, split: str, per_class: int, methods: tuple[str, ...], seed: int = 0,
        log: Callable[[str], None] = print, mae: str | None = None, family: str = "figshare_brain") -> dict[str, Any]:
    from tqdm import tqdm

    fam = FAMILIES[family]
    adapter = OnnxAdapter(bundled_model(fam.model))
    cases = fam.load(root, split)
    seen = len(cases)
    correct = sum(int(np.argmax(p)) == c.label for c, p in
                  ((c, adapter.predict(_rgb(c)[None])[0]) for c in cases))
    chosen = select(cases, adapter, per_class, fam.explained)
    log(f"{split}: {seen} images, model accuracy {correct / seen:.3f}; explaining {len(chosen)} correct ones")
    records = []
    for case, prob in tqdm(chosen, unit="image", file=sys.stderr):
        image = _rgb(case)
        rec: dict[str, Any] = {"id": case.id, "label": fam.classes[case.label], "prob": prob,
                               "box_fraction": float(case.mask.mean()), "box_drop": box_drop(case, adapter),
                               "methods": {}}
        for name in methods:
            q0, t0 = adapter.queries, time.perf_counter()
            sal, facts = run_method(name, image, adapter, case.label, seed, mae)
            rec["methods"][name] = {"auprc": pixel_auprc(sal, case.mask), "queries": adapter.queries - q0,
                                    "wall_s": round(time.perf_counter() - t0, 3), **facts}
            rec["methods"][name]["region_drop"] = region_drop(image, sal, int(case.mask.sum()), adapter, case.label)
        records.append(rec)
    return {"family": family, "split": split, "per_class": per_class, "seed": seed,
            "mae": "bundled" if mae is None else Path(mae).name,
            "model_accuracy": correct / seen, "images_in_split": seen, "methods": list(methods),
            "records": records}


SETTINGS = ("family", "split", "per_class", "seed", "mae")


def same_settings(kept: dict[str, Any], fresh: dict[str, Any]) -> None:
    """Raises ValueError naming the first of :data:`SETTINGS` on which two runs differ."""
    for key in SETTINGS:
        if kept.get(key) != fresh.get(key):
            raise ValueError(f"--update: the earlier run has {key}={kept.get(key)!r}, this one {fresh.get(key)!r}; "
                             f"run with the earlier run's settings")


def merge(kept: dict[str, Any], fresh: dict[str, Any]) -> dict[str, Any]:
    """``--update``: ``fresh`` (some methods run again) laid over ``kept`` (an earlier run on the same cases). The
    methods ``fresh`` ran replace their records; the others are kept. Raises ValueError naming the first setting or
    case that differs, since records of other cases or settings cannot be paired."""
    same_settings(kept, fresh)
    old_ids = [r["id"] for r in kept["records"]]
    new_ids = [r["id"] for r in fresh["records"]]
    if old_ids != new_ids:
        first = next((a for a, b in zip(old_ids, new_ids) if a != b), None)
        raise ValueError(f"--update: the cases differ from the earlier run's ({len(old_ids)} against {len(new_ids)}"
                         f"{'' if first is None else ', first at ' + first}); the model or the data changed")
    records = []
    for old, new in zip(kept["records"], fresh["records"]):
        records.append({**old, "methods": {**old["methods"], **new["methods"]}})
    methods = list(kept["methods"]) + [m for m in fresh["methods"] if m not in kept["methods"]]
    return {**fresh, "methods": methods, "records": records}


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    recs = result["records"]
    out: dict[str, Any] = {"n": len(recs), "prevalence": bootstrap_ci([r["box_fraction"] for r in recs])}
    for m in result["methods"]:
        out[m] = {"auprc": bootstrap_ci([r["methods"][m]["auprc"] for r in recs]),
                  "queries": float(np.median([r["methods"][m]["queries"] for r in recs]))}
        if all("region_drop" in r["methods"][m] for r in recs):  # runs before the check have none
            drops = [r["methods"][m]["region_drop"] for r in recs]
            out[m]["region_drop"] = bootstrap_ci(drops)
            out[m]["beats_mask"] = float(np.mean([d >= r["box_drop"] for d, r in zip(drops, recs)]))
    if "default" in result["methods"]:
        fills = [r["methods"]["default"].get("fill") for r in recs]
        out["auto_fill"] = {f: fills.count(f) for f in sorted({str(f) for f in fills})}
        for ref in ("lime", "occlusion"):
            if ref in result["methods"]:
                out[f"default/{ref}"] = _ratio_ci([r["methods"]["default"]["auprc"] for r in recs],
                                                  [r["methods"][ref]["auprc"] for r in recs])
        if "region_drop" in out["default"]:
            mine = [r["methods"]["default"]["region_drop"] for r in recs]
            for ref in ("lime", "occlusion"):
                if ref in result["methods"]:
                    out[f"default/{ref} drop"] = _ratio_ci(mine, [r["methods"][ref]["region_drop"] for r in recs])
            out["default/the mask drop"] = _ratio_ci(mine, [r["box_drop"] for r in recs])
    return out


def _ratio_ci(a: list[float], b: list[float], n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """The ratio of two means over the same images, with a paired bootstrap 95 % CI."""
    x, y = np.asarray(a), np.asarray(b)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), (n_boot, len(x)))
    boots = x[idx].mean(axis=1) / np.maximum(y[idx].mean(axis=1), 1e-12)
    return float(x.mean() / max(y.mean(), 1e-12)), float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def markdown(result: dict[str, Any], summary: dict[str, Any], command: str) -> str:
    def ci(t: tuple[float, float, float]) -> str:
        return f"{t[0]:.3f} [{t[1]:.3f}, {t[2]:.3f}]"

    drops = all("region_drop" in summary[m] for m in result["methods"])

    lines = [f"# Real-image benchmark: {result['family']}, {result['split']} split (MAE: {result.get('mae', 'bundled')})",
             "", f"`{command}`", "",
             f"{summary['n']} images the model classifies correctly ({result['per_class']} per class; the model's "
             f"accuracy on all {result['images_in_split']} {result['split']} images: {result['model_accuracy']:.3f}). "
             "Pixel AUPRC against the expert mask (figshare: the box; Kvasir: the outline), mean [95 % bootstrap CI]."
             + (" Drop at the mask's area: P(class) minus P(class) with the map's top pixels, as many as the mask "
                "has, filled with the image's mean (one query; the last row: the expert mask hidden the same way); "
                "drop >= the mask's: the share of images where the map's region lowers the answer at least as much "
                "as the expert's mask does. It needs no expert: a map that finds what the model reads outside the "
                "mask scores here, not in AUPRC." if drops else ""), "",
             "| method | AUPRC | median queries |" + (" drop at the mask's area | drop >= the mask's |" if drops else ""),
             "|---|---|---|" + ("---|---|" if drops else "")]
    for m in result["methods"]:
        extra = (f" {ci(summary[m]['region_drop'])} | {summary[m]['beats_mask']:.2f} |" if drops else "")
        lines.append(f"| {m} | {ci(summary[m]['auprc'])} | {summary[m]['queries']:.0f} |" + extra)
    mask_drop = bootstrap_ci([r["box_drop"] for r in result["records"]]) if drops else None
    lines.append(f"| box prevalence (random map) | {ci(summary['prevalence'])} | 0 |"
                 + (f" {ci(mask_drop)} (the expert mask itself) | – |" if mask_drop else ""))
    lines.append("")
    for key in ("default/lime", "default/occlusion"):
        if key in summary:
            lines.append(f"- {key.replace('/', ' / ')}: {ci(summary[key])} (ratio of means, paired bootstrap)")
    for key in ("default/lime drop", "default/occlusion drop", "default/the mask drop"):
        if key in summary:
            lines.append(f"- drop at the mask's area, {key[:-5].replace('/', ' / ')}: {ci(summary[key])} (ratio of "
                         "means, paired bootstrap)")
    if "auto_fill" in summary:
        lines.append(f"- fill chosen by auto: {', '.join(f'{k} {v}' for k, v in summary['auto_fill'].items())}")
        recs = result["records"]
        by_fill = [("mae", [r for r in recs if r["methods"]["default"].get("fill") == "mae"]),
                   ("another fill", [r for r in recs if r["methods"]["default"].get("fill") != "mae"])]
        fixed = [m for m in result["methods"] if m.startswith("fill=")]
        for name, sel in by_fill:
            if sel and fixed:
                means = ", ".join(f"{m} {np.mean([r['methods'][m]['auprc'] for r in sel]):.3f}" for m in fixed)
                lines.append(f"- images where auto chose {name} ({len(sel)}): default "
                             f"{np.mean([r['methods']['default']['auprc'] for r in sel]):.3f}; {means}")
    lines += ["", "Per class (mean AUPRC; the mask's mean share of the image is the random map's score; box drop: "
              "P(class) minus P(class) with the expert mask filled with the image's mean, median over the images: "
              "does the model read the finding at all?):", "",
              "| class | images | box share | box drop | " + " | ".join(result["methods"]) + " |",
              "|---|---|---|---|" + "---|" * len(result["methods"])]
    for label in FAMILIES[result["family"]].classes:
        sel = [r for r in result["records"] if r["label"] == label]
        if sel:
            drop = (f"{np.median([r['box_drop'] for r in sel]):.3f}" if all("box_drop" in r for r in sel) else "–")
            lines.append(f"| {label} | {len(sel)} | {np.mean([r['box_fraction'] for r in sel]):.3f} | {drop} | "
                         + " | ".join(f"{np.mean([r['methods'][m]['auprc'] for r in sel]):.3f}"
                                      for m in result["methods"]) + " |")
    if all("box_drop" in r for r in result["records"]):
        lines += ["", "By how much the model reads the expert's mask (box drop per image; mean AUPRC):", "",
                  "| box drop | images | " + " | ".join(result["methods"]) + " |",
                  "|---|---|" + "---|" * len(result["methods"])]
        for name, lo, hi in DROP_BANDS:
            sel = [r for r in result["records"] if lo <= r["box_drop"] < hi]
            if sel:
                lines.append(f"| {name} | {len(sel)} | " + " | ".join(
                    f"{np.mean([r['methods'][m]['auprc'] for r in sel]):.3f}" for m in result["methods"]) + " |")
    return "\n".join(lines) + "\n"


# Where a map can be judged against the expert's mask at all: the model's answer hardly rests on it (< 0.1), in
# part, or mostly (>= 0.5).
DROP_BANDS = (("< 0.1: does not read it", -np.inf, 0.1), ("0.1 to 0.5: in part", 0.1, 0.5),
              (">= 0.5: reads it", 0.5, np.inf))


def _public_args(args: list[str]) -> list[str]:
    """The command as results.json records it, without this machine's paths: a family's data folder is DATA, an
    absolute --out is OUT, any other absolute path its file name."""
    data_options = {fam.option for fam in FAMILIES.values()}
    out = []
    for prev, x in zip([""] + args[:-1], args):
        if prev in data_options:
            out.append("DATA")
        elif x.startswith("/"):
            out.append("OUT" if prev == "--out" else Path(x).name)
        else:
            out.append(x)
    return out


def _fill_check_main(family: str, root: Path, split: str, per_class: int, mae: str | None, out: Path,
                     command: str, rises: int | None = None, seed: int = 0, masks_per_image: int = 8) -> int:
    """--fill-drops (``rises`` None): each fill hiding the expert's mask; --fill-rises: each fill hiding random
    halves of images of the finding-free class ``rises``."""
    from tqdm import tqdm

    fam = FAMILIES[family]
    adapter = OnnxAdapter(bundled_model(fam.model))
    patch = ExplainConfig().patch_size
    fillers: dict[str, Filler] = {name: make_filler(name, patch) for name in fill_names()}
    if mae is not None:
        fillers["mae (site)"] = make_filler("mae", patch, mae_path=mae)
    classes = fam.explained if rises is None else (rises,)
    finding = fam.explained[0]
    records = []
    chosen = select(fam.load(root, split), adapter, per_class, classes)
    for i, (case, prob) in enumerate(tqdm(chosen, unit="image", file=sys.stderr)):
        rec: dict[str, Any] = {"id": case.id, "label": fam.classes[case.label], "prob": prob}
        if rises is None:
            rec["fill_drops"] = fill_drops(_rgb(case), case.mask, adapter, case.label, fillers)
        else:
            image = _rgb(case)
            masks = half_masks(image.shape[:2], patch, masks_per_image, np.random.default_rng(seed + i))
            rec["fill_rises"] = fill_rises(image, masks, adapter, finding, fillers)
        records.append(rec)
    result = {"family": family, "split": split, "per_class": per_class, "mae": None if mae is None else Path(mae).name,
              "records": records, "command": command}
    if rises is not None:
        result.update(free_class=fam.classes[rises], finding=fam.classes[finding], masks=masks_per_image, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    table = fill_drops_table(result, command) if rises is None else fill_rises_table(result, command)
    (out / "table.md").write_text(table)
    print(table)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m blackbox_lime.evaluation.bench_real", description=__doc__.split("\n")[0])
    p.add_argument("--figshare", default=None, help="family figshare_brain: the folder holding 0/, 1/ and 2/")
    p.add_argument("--kvasir", default=None, help="family kvasir_polyp: the Kvasir-SEG folder holding images/ and masks/")
    p.add_argument("--split", choices=["val", "test"], default="test")
    p.add_argument("--per-class", type=int, default=10, help="correctly classified images explained per class")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma-separated, from {', '.join(METHODS)}, fill=NAME (any fill), or "
                        "cfg:FIELD=VALUE+FIELD=VALUE (the default with ExplainConfig fields changed; for val only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mae", default=None, help="a site MAE (blackbox-lime mae fit) in place of the bundled one")
    p.add_argument("--export-train", default=None, metavar="DIR",
                   help="instead of benchmarking, write the train split's images as PNG files to DIR (what a site "
                        "would give blackbox-lime mae fit) and stop")
    p.add_argument("--out", default=None, help="folder for results.json and table.md")
    p.add_argument("--render", action="store_true", help="rewrite --out's table.md from its results.json, no run")
    p.add_argument("--fill-drops", action="store_true",
                   help="instead of maps: how much of the answer each fill removes when it hides the expert's mask "
                        "(every registered fill; with --mae, that MAE next to the bundled one); no map is made")
    p.add_argument("--fill-rises", action="store_true",
                   help="instead of maps: on images without the finding, how much each fill raises P(finding) when "
                        "it hides a random half of the patches (8 masks per image; families with a finding-free "
                        "class); no map is made")
    p.add_argument("--update", default=None, metavar="DIR",
                   help="run --methods again on the cases of DIR's results.json (same family, split, --per-class, "
                        "--seed, --mae) and keep its other methods (after a change to the default, say)")
    a = p.parse_args(argv)
    given = [(name, getattr(a, fam.option[2:])) for name, fam in FAMILIES.items()
             if getattr(a, fam.option[2:]) is not None]
    if a.render:
        saved = json.loads((Path(a.out) / "results.json").read_text())
        table = markdown(saved, summarize(saved), saved["command"])
        (Path(a.out) / "table.md").write_text(table)
        print(table)
        return 0
    if len(given) != 1:
        p.error("give one family's data: " + " or ".join(f"{f.option} DIR" for f in FAMILIES.values()))
    family, root = given[0]
    fam = FAMILIES[family]
    if a.export_train:
        folder = Path(a.export_train)
        folder.mkdir(parents=True, exist_ok=True)
        cases = fam.load(root, "train")
        for c in cases:
            cv2.imwrite(str(folder / f"{c.id}.png"), c.image if c.image.ndim == 2 else c.image[..., ::-1])
        print(f"{len(cases)} train images written to {folder}", file=sys.stderr)
        return 0
    if a.out is None:
        p.error("--out is required (the folder for results.json and table.md)")
    if a.fill_drops or a.fill_rises:
        free = tuple(k for k in range(len(fam.classes)) if k not in fam.explained)
        if a.fill_rises and not free:
            p.error(f"--fill-rises needs a class without the finding; {family}'s classes "
                    f"({', '.join(fam.classes)}) all have one")
        return _fill_check_main(family, Path(root), a.split, a.per_class, a.mae, Path(a.out),
                                "python -m blackbox_lime.evaluation.bench_real " + " ".join(
                                    _public_args(argv if argv is not None else sys.argv[1:])),
                                rises=free[0] if a.fill_rises else None, seed=a.seed)
    methods = tuple(m.strip() for m in a.methods.split(",") if m.strip())
    unknown = [m for m in methods if m not in METHODS and not m.startswith(("cfg:", "fill="))]
    if unknown:
        p.error(f"unknown method {unknown[0]!r}; known: {', '.join(METHODS)}")
    kept = json.loads((Path(a.update) / "results.json").read_text()) if a.update else None
    if kept is not None:
        asked = {"family": family, "split": a.split, "per_class": a.per_class, "seed": a.seed,
                 "mae": "bundled" if a.mae is None else Path(a.mae).name}
        try:
            same_settings(kept, asked)
        except ValueError as e:
            p.error(str(e))
    result = run(Path(root), a.split, a.per_class, methods, a.seed, log=lambda s: print(s, file=sys.stderr),
                 mae=a.mae, family=family)
    if kept is not None:
        try:
            result = merge(kept, result)
        except ValueError as e:
            p.error(str(e))
    summary = summarize(result)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m blackbox_lime.evaluation.bench_real " + " ".join(
        _public_args(argv if argv is not None else sys.argv[1:]))
    if kept is not None:  # the table is the earlier run's records with these methods run again
        command = f"{kept['command']}, then {command}"
    (out / "results.json").write_text(json.dumps({**result, "summary": summary, "command": command}, indent=1) + "\n")
    table = markdown(result, summary, command)
    (out / "table.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
