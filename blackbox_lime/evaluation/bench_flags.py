"""What the fidelity flags should read: how far the answer moves, and how well the map fits it, per answer kind.

    python -m blackbox_lime.evaluation.bench_flags --split val --per-class 8 --out docs/bench_flags/val

For each bundled classifier on its own phantom family (demo-cnn on chest and ultrasound; brain-cnn and fundus-cnn,
the unseen families), the first ``--per-class`` normal and abnormal phantoms of the split are explained at the
defaults, for the class the model predicts. Each row records P(predicted), the answer's spread under masking
(``response_sd``) and the three R^2 (in-sample, held-out, evidence). The audit's flags separate a confident
answer that no region moves ("no focal evidence": a finding about the model) from an answer that moves but is not
fitted by the map ("low fidelity"); this table is where their statistic and threshold come from (val only).

Writes ``results.json`` and ``table.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from blackbox_lime.adapters.onnx import OnnxAdapter
from blackbox_lime.config import ExplainConfig
from blackbox_lime.evaluation.phantoms import make_phantom
from blackbox_lime.explainer import Explainer
from blackbox_lime.models import bundled_model

GROUPS = (("demo_cnn.onnx", "chest_xray"), ("demo_cnn.onnx", "breast_us"), ("brain_cnn.onnx", "brain_mri"),
          ("fundus_cnn.onnx", "fundus"))


def run(split: str, per_class: int, seed: int = 0) -> list[dict[str, Any]]:
    from tqdm import tqdm

    rows = []
    for model, family in GROUPS:
        adapter = OnnxAdapter(bundled_model(model))
        explainer = Explainer(adapter, ExplainConfig())
        found = {0: 0, 1: 0}
        index = 0
        bar = tqdm(total=2 * per_class, desc=f"{model}/{family}", file=sys.stderr)
        while min(found.values()) < per_class and index < 50 * per_class:
            ph = make_phantom(family, split, index)
            index += 1
            if found[ph.label] >= per_class:
                continue
            found[ph.label] += 1
            exp = explainer.explain(ph.image, rng=seed)  # the predicted class
            rows.append({"model": model, "family": family, "index": index - 1, "label": ph.label,
                         "predicted": exp.target, "prob": exp.target_prob, "response_sd": exp.response_sd,
                         "r2": exp.r2, "r2_heldout": exp.r2_heldout, "r2_evidence": exp.r2_evidence,
                         "fill": (exp.fill or {}).get("chosen")})
            bar.update(1)
        bar.close()
    return rows


def _q(values: list[float]) -> str:
    v = np.asarray([x for x in values if np.isfinite(x)])
    if v.size == 0:
        return "–"
    return " / ".join(f"{q:.3f}" for q in np.percentile(v, [10, 50, 90]))


def table(rows: list[dict[str, Any]], command: str) -> str:
    lines = ["# What the fidelity flags read", "", f"`{command}`", "",
             "Per group and predicted class: p10 / median / p90 over the cases.", "",
             "| model / family | predicted | cases | P(predicted) | response sd | R² | held-out R² | evidence R² |",
             "|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["model"], r["family"]) for r in rows}, key=lambda k: [g[:2] for g in GROUPS].index(k))
    for model, family in keys:
        for pred, name in ((0, "normal"), (1, "abnormal")):
            sel = [r for r in rows if r["model"] == model and r["family"] == family and r["predicted"] == pred]
            if not sel:
                continue
            lines.append(f"| {model.removesuffix('.onnx')} / {family} | {name} | {len(sel)} | "
                         f"{_q([r['prob'] for r in sel])} | {_q([r['response_sd'] for r in sel])} | "
                         f"{_q([r['r2'] for r in sel])} | {_q([r['r2_heldout'] for r in sel])} | "
                         f"{_q([r['r2_evidence'] for r in sel])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m blackbox_lime.evaluation.bench_flags",
                                description=__doc__.split("\n")[0])
    p.add_argument("--split", choices=["val", "test"], default="val")
    p.add_argument("--per-class", type=int, default=8)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    rows = run(a.split, a.per_class)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m blackbox_lime.evaluation.bench_flags " + " ".join(argv if argv is not None else sys.argv[1:])
    (out / "results.json").write_text(json.dumps({"command": command, "rows": rows}, indent=1) + "\n")
    text = table(rows, command)
    (out / "table.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
