"""Tune the map's guided filter (``map_guide``, ``map_guide_eps``) on the validation splits (never on test).

    python -m blackbox_lime.evaluation.tune_guide [--images 8] [--kvasir DATA --figshare DATA] --out docs/tune_val/guide
    python -m blackbox_lime.evaluation.tune_guide --base cfg:mask_ratios=0.1/0.25/0.5 --out ...  # another base map

Each abnormal val phantom of the six phantom groups (both shipped classifiers on chest and ultrasound, the brain
MRI and the fundus classifiers), and with ``--kvasir`` / ``--figshare`` each case of the real families that
``bench_real`` picks on their val splits, is explained once at the default configuration (seed 0). The map is then
remade from the same patch weights for every (radius, eps) on the grid, so the grid costs no queries for AUPRC.
Two scores per setting and group:

* pixel AUPRC against the lesion mask (phantoms: the exact mask; Kvasir: the endoscopists' outline; figshare: the
  box), as the benchmarks measure it;
* the drop at the mask's area, which needs no expert: P(class) minus P(class) with the map's top pixels (as many
  as the mask has) set to the image's mean colour, one query per setting and case (``bench_real``'s measure).

Rule, fixed before the run: a setting becomes the default only if no group's mean drop falls below the unguided
map's (worst group first: a map that agrees more with the experts but less with the model is not taken), and then
by the mean AUPRC ratio over the groups.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from blackbox_lime.adapters.onnx import OnnxAdapter
from blackbox_lime.config import ExplainConfig
from blackbox_lime.evaluation.bench_real import _public_args, region_drops, variant
from blackbox_lime.evaluation.bench_stopping import GROUPS, REAL_GROUPS, cases, real_cases
from blackbox_lime.evaluation.metrics import pixel_auprc
from blackbox_lime.explainer import Explainer, to_canvas
from blackbox_lime.models import bundled_model

RADII = (0.0, 0.25, 0.5, 0.625, 0.75, 0.875, 1.0)  # patches; 0: the unguided map
EPS = (1e-4, 1e-3, 1e-2)
REAL_PER_CLASS = {"figshare_brain": 10, "kvasir_polyp": 30}  # as the bench_real val runs (docs/bench_real/*_val_*)


def settings() -> list[tuple[float, float]]:
    return [(0.0, EPS[1])] + [(r, e) for r in RADII[1:] for e in EPS]


def label(radius: float, eps: float) -> str:
    return "unguided" if radius == 0 else f"{radius:g} patch, eps {eps:g}"


def run(images: int, roots: dict[str, str], log: Any = print, base: ExplainConfig | None = None) -> dict[str, Any]:
    grid_settings = settings()
    groups: dict[str, dict[str, list[list[float]]]] = {}
    t0 = time.time()
    todo = [(m, f, None) for m, f in GROUPS[:6]] + [(m, f, roots[f]) for m, f in REAL_GROUPS if f in roots]
    for model, family, root in todo:
        name = f"{model}/{family}"
        auprc: list[list[float]] = []
        drop: list[list[float]] = []
        with OnnxAdapter(bundled_model(f"{model}.onnx")) as adapter:
            ex = Explainer(adapter, replace(base or ExplainConfig(), map_guide=0.0))
            chosen = (real_cases(family, root, "val", REAL_PER_CLASS[family], adapter)
                      if root is not None else cases(family, "val", images, adapter.info.abnormal_index))
            for _, image, masks in chosen:
                target, mask = next(iter(masks.items()))
                e = ex.explain_set(image, target=target, rng=0)[0]
                canvas = to_canvas(image, adapter.info.input_size, adapter.info.channels, [])
                if canvas.shape[:2] != mask.shape:
                    raise ValueError(f"{name}: the images must come at the model's input size {canvas.shape[:2]}")
                maps = [ex.grid.upsample(e.patch_weights.ravel(), image.shape[:2], ex.config.map_sigma, canvas, r, eps)
                        for r, eps in grid_settings]
                auprc.append([pixel_auprc(m, mask) for m in maps])
                drop.append(region_drops(canvas, maps, int(mask.sum()), adapter, target))
        groups[name] = {"auprc": auprc, "drop": drop}
        log(f"{name}: {len(auprc)} cases, {time.time() - t0:.0f} s")
    return {"images": images, "settings": [list(s) for s in grid_settings], "groups": groups,
            "base": (base or ExplainConfig()).to_dict()}


def summarize(result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for i, (r, eps) in enumerate(result["settings"]):
        row: dict[str, Any] = {"radius": r, "eps": eps, "label": label(r, eps), "auprc": {}, "drop": {}}
        ratios, drop_change = [], []
        for g, d in result["groups"].items():
            a = np.array(d["auprc"]); dr = np.array(d["drop"])
            row["auprc"][g], row["drop"][g] = float(a[:, i].mean()), float(dr[:, i].mean())
            ratios.append(a[:, i].mean() / a[:, 0].mean())
            drop_change.append(dr[:, i].mean() - dr[:, 0].mean())
        row["mean_auprc_ratio"], row["worst_drop_change"] = float(np.mean(ratios)), float(min(drop_change))
        rows.append(row)
    return rows


def pick(rows: list[dict[str, Any]]) -> dict[str, Any]:
    eligible = [r for r in rows if r["worst_drop_change"] >= 0]
    return max(eligible, key=lambda r: r["mean_auprc_ratio"])


def markdown(result: dict[str, Any], rows: list[dict[str, Any]], command: str) -> str:
    groups = list(result["groups"])
    n = {g: len(d["auprc"]) for g, d in result["groups"].items()}
    best = pick(rows)
    head = ["setting"] + [f"{g} ({n[g]})" for g in groups] + ["mean AUPRC ratio", "worst drop change"]
    out = [f"`{command}`", "", "Val split, seed 0, the default map's patch weights remade with each guided filter. "
           "Each cell: pixel AUPRC / drop at the mask's area (P(class) lost when the map's top pixels, as many as "
           "the mask has, are set to the image's mean colour). Ratio: the mean over groups of AUPRC / the unguided "
           "map's; worst drop change: the lowest over groups of the mean drop minus the unguided map's.", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"{r['auprc'][g]:.3f} / {r['drop'][g]:.3f}" for g in groups]
        out.append(f"| {r['label']}{' (chosen)' if r is best else ''} | " + " | ".join(cells)
                   + f" | {r['mean_auprc_ratio']:.3f} | {r['worst_drop_change']:+.3f} |")
    out += ["", f"Rule (no group's drop below the unguided map's, then the mean AUPRC ratio): **{best['label']}**."]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=8, help="abnormal val phantoms per group (the real families: "
                                                         "as their bench_real val runs)")
    p.add_argument("--kvasir", metavar="DATA", help="a local copy of Kvasir-SEG (images/, masks/)")
    p.add_argument("--figshare", metavar="DATA", help="a local copy of dataset-brain-tumor/categorized")
    p.add_argument("--base", default=None, metavar="cfg:FIELD=VALUE",
                   help="explain with the default configuration changed like bench_real's cfg: methods (e.g. "
                        "cfg:mask_ratios=0.1/0.25/0.5); its unguided row then scores that configuration")
    p.add_argument("--out", default="bench_out/tune_guide")
    a = p.parse_args(argv)
    roots = {k: v for k, v in (("kvasir_polyp", a.kvasir), ("figshare_brain", a.figshare)) if v}
    result = run(a.images, roots, log=lambda s: print(s, file=sys.stderr, flush=True),
                 base=variant(a.base) if a.base else None)
    command = "python -m blackbox_lime.evaluation.tune_guide " + " ".join(
        _public_args(argv if argv is not None else sys.argv[1:]))
    result["command"] = command
    rows = summarize(result)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1))
    table = markdown(result, rows, command)
    (out / "table.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
