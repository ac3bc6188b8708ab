"""Multi-label saliency benchmark: every finding of an image explained from one set of queries.

    python -m blackbox_lime.evaluation.bench_multilabel --split test --cases 20 --out docs/bench_multilabel/test

The multi-label chest phantoms (``phantoms.make_multilabel_phantom``: nodule, consolidation, effusion,
each present independently with its own exact mask) and the bundled multi-label classifier
(``onnx/multilabel_cnn.onnx``, trained on the train split). Per case, the findings present are
explained, each method spending one set of queries for all of them:

- **MedLIME**: ``explain(image, target=[present findings])``, the default configuration, ``--samples``
  queries in all (one query set, a surrogate per finding);
- **lime**: the ``lime`` package with ``labels=`` the findings present (its samples shared by the
  labels, as ``top_labels`` does), ``--samples`` queries in all;
- **occlusion**: 16 px patches filled with the image mean, one query per patch plus the image (197),
  every finding's map from the same queries.

Scored per finding by pixel AUPRC against that finding's mask (the cases where it is present). Goal
(issue 27): per finding, at the same total queries, >= 1.5x lime's AUPRC and >= occlusion's.
``--split val`` runs the same on val (nothing is tuned here; it is there to look before test).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from blackbox_lime.adapters.onnx import OnnxAdapter
from blackbox_lime.evaluation import baselines
from blackbox_lime.evaluation.bench import git_commit
from blackbox_lime.evaluation.bench_audit import write_table
from blackbox_lime.config import ExplainConfig
from blackbox_lime.explainer import Explainer
from blackbox_lime.evaluation.metrics import bootstrap_ci, pixel_auprc
from blackbox_lime.models import bundled_model
from blackbox_lime.patches import PatchGrid
from blackbox_lime.evaluation.phantoms import FINDINGS, make_multilabel_phantom

METHODS = ("MedLIME", "lime", "occlusion")


def cases(split: str, n: int) -> list[Any]:
    out: list[Any] = []
    i = 0
    while len(out) < n:
        ph = make_multilabel_phantom(split, i)
        if any(ph.labels.values()):
            out.append(ph)
        i += 1
    return out


def run(a: argparse.Namespace) -> dict[str, Any]:
    records = []
    with OnnxAdapter(bundled_model("multilabel_cnn.onnx")) as adapter:
        names = list(adapter.info.class_names)
        assert names == list(FINDINGS) and adapter.info.multilabel
        explainer = Explainer(adapter, ExplainConfig(n_samples=a.samples))
        grid = PatchGrid(224, 224, 16)
        for ph in cases(a.split, a.cases):
            present = [names.index(k) for k in FINDINGS if ph.labels[k]]
            maps: dict[str, dict[int, np.ndarray]] = {}
            cost: dict[str, tuple[int, float]] = {}
            q, t = adapter.queries, time.perf_counter()
            found = explainer.explain(ph.image, target=present, rng=a.seed)
            maps["MedLIME"] = {e.target: e.saliency for e in found}
            cost["MedLIME"] = (adapter.queries - q, time.perf_counter() - t)
            q, t = adapter.queries, time.perf_counter()
            maps["lime"] = baselines.lime_package_labels(ph.image, adapter, present, a.samples,
                                                         np.random.default_rng(a.seed))
            cost["lime"] = (adapter.queries - q, time.perf_counter() - t)
            q, t = adapter.queries, time.perf_counter()
            deltas = baselines.occlusion_deltas(ph.image, adapter, None)  # (P, K)
            maps["occlusion"] = {k: grid.upsample(deltas[:, k], (224, 224)) for k in present}
            cost["occlusion"] = (adapter.queries - q, time.perf_counter() - t)
            probs = found[0].probs
            for k in present:
                rec = {"index": ph.index, "finding": names[k], "p": round(float(probs[k]), 4),
                       "mask_px": int(ph.masks[names[k]].sum()), "findings_in_case": len(present)}
                for m in METHODS:
                    rec[m] = round(pixel_auprc(maps[m][k], ph.masks[names[k]]), 4)
                    rec[f"{m}_queries"], rec[f"{m}_seconds"] = cost[m][0], round(cost[m][1], 2)
                records.append(rec)
            print(f"case {ph.index} ({', '.join(names[k] for k in present)}): " + "; ".join(
                f"{m} " + ",".join(f"{r[m]:.2f}" for r in records[-len(present):]) for m in METHODS), flush=True)
    return {"records": records, "findings": names}


def table(result: dict[str, Any], a: argparse.Namespace) -> list[str]:
    recs = result["records"]
    lines = [f"# Multi-label benchmark, {a.split} split", "",
             f"`python -m blackbox_lime.evaluation.bench_multilabel --split {a.split} --cases {a.cases} --samples {a.samples} "
             f"--out {a.out}` (commit {(result['commit'] or 'unknown')[:10]}; {a.cases} cases with at least one "
             f"finding, each finding scored where present; MedLIME and lime spend {a.samples} queries per case for "
             "all its findings together, occlusion 197). Pixel AUPRC, mean [95 % CI].", "",
             "| finding | cases | P(finding) median | MedLIME | lime (labels share samples) | occlusion | "
             "MedLIME / lime | MedLIME / occlusion |", "|---|---|---|---|---|---|---|---|"]
    for f in result["findings"] + ["all findings"]:
        rs = recs if f == "all findings" else [r for r in recs if r["finding"] == f]
        if not rs:
            continue
        cells = []
        means = {}
        for m in METHODS:
            mean, lo, hi = bootstrap_ci([r[m] for r in rs])
            means[m] = mean
            cells.append(f"{mean:.3f} [{lo:.3f}, {hi:.3f}]")
        lines.append(f"| {f} | {len(rs)} | {np.median([r['p'] for r in rs]):.3f} | " + " | ".join(cells)
                     + f" | {means['MedLIME'] / max(means['lime'], 1e-9):.2f}x | "
                       f"{means['MedLIME'] / max(means['occlusion'], 1e-9):.2f}x |")
    by_case: dict[Any, Any] = {}
    for r in recs:
        by_case.setdefault(r["index"], r)
    lines += ["", "| method | queries per case (median) | seconds per case (median) |", "|---|---|---|"]
    for m in METHODS:
        lines.append(f"| {m} | {np.median([r[f'{m}_queries'] for r in by_case.values()]):.0f} | "
                     f"{np.median([r[f'{m}_seconds'] for r in by_case.values()]):.2f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m blackbox_lime.evaluation.bench_multilabel", description=__doc__.splitlines()[0])
    p.add_argument("--split", choices=["val", "test"], default="test")
    p.add_argument("--cases", type=int, default=20)
    p.add_argument("--samples", type=int, default=1000, help="queries per case for MedLIME and lime")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    result = run(a)
    result.update(split=a.split, cases=a.cases, samples=a.samples, seed=a.seed, commit=git_commit())
    write_table(Path(a.out), table(result, a) + ["", f"Wall time {time.perf_counter() - t0:.0f} s."], result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
