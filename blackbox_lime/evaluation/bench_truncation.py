"""Maps from endpoints that list only their top k labels: censored fit against full answers and "missing = 0".

    python -m blackbox_lime.evaluation.bench_truncation --figshare DATA --split test --per-class 10 --top-k 1 \\
        --out docs/bench_truncation/figshare_test
    python -m blackbox_lime.evaluation.bench_truncation --family chest4 --split test --per-class 10 --top-k 2 \\
        --out docs/bench_truncation/chest4_test_top2

A vendor file API that answers its top k labels omits the explained label whenever hiding patches pushes it out
of the top k. This benchmark explains the same images with the same seeds three ways, through the same local
model whose answers are cut as such an endpoint cuts them (:class:`TopK`; the HTTP path itself is tested in
tests/test_file_api.py):

- ``full``: every label's score (what a tensor endpoint returns);
- ``top-k, censored fit``: the omitted scores fitted as bounds (the default for a file endpoint);
- ``top-k, missing = 0``: the omitted scores read as 0, the naive reading.

Family ``figshare_brain`` (real T1 MRI, three exclusive tumour classes, expert boxes; blackbox_lime/evaluation/
real_data.py): the explained class is the true one on correctly classified images, scored by pixel AUPRC against the
box. Family ``chest4`` (chest phantoms, four exclusive classes: normal, nodule, consolidation, effusion;
``chest4-cnn``): every abnormal case's true class is explained, scored against its finding's exact mask. Family
``multilabel`` (chest phantoms with up to three findings, ``multilabel-cnn``): every finding present is
explained, scored against its exact mask. Also reported: each map's correlation with the full-answer map, and the
share of answers that omitted the explained label.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from blackbox_lime.adapters.base import ClassifierAdapter, ModelInfo
from blackbox_lime.adapters.censoring import censoring_of
from blackbox_lime.evaluation.bench_audit import write_table
from blackbox_lime.adapters.onnx import OnnxAdapter
from blackbox_lime.config import ExplainConfig
from blackbox_lime.evaluation.metrics import bootstrap_ci, pixel_auprc
from blackbox_lime.explainer import Explainer
from blackbox_lime.models import bundled_model

WAYS = ("full", "top-k, censored fit", "top-k, missing = 0")


class TopK(ClassifierAdapter):
    """A local model whose answers are cut to their ``k`` highest labels, as a top-k endpoint cuts them: NaN for
    an omitted label (``censored``: declared, so the explainer fits it as a bound) or 0 (not declared: read as 0)."""

    def __init__(self, inner: OnnxAdapter, k: int, censored: bool) -> None:
        super().__init__(max_batch=inner.max_batch)
        self.inner, self.k, self.censored = inner, k, censored
        extra = {**inner.info.extra, **({"censoring": {"top_k": k, "threshold": 0.0}} if censored else {})}
        self._info = ModelInfo(**{**inner.info.__dict__, "extra": extra})

    @property
    def info(self) -> ModelInfo:
        return self._info

    def _predict_batch(self, images: np.ndarray) -> np.ndarray:
        p = self.inner.predict(images)
        cut = np.argsort(-p, axis=1, kind="stable")[:, self.k:]
        out = p.copy()
        np.put_along_axis(out, cut, np.nan if self.censored else 0.0, axis=1)
        censoring = censoring_of(self.info.extra)
        return out if censoring is None else censoring.fill_known(out)  # as FileAdapter does

    def _check_probs(self, raw: Any, n: int) -> np.ndarray:
        p = np.asarray(raw, np.float64)
        return p if self.censored else np.clip(p, 0.0, 1.0)  # "missing = 0" rows do not sum to 1: not checked


def cases(family: str, figshare: str | None, split: str, per_class: int) -> tuple[str, list[tuple[str, np.ndarray,
                                                                                                      int, np.ndarray]]]:
    """(model path, [(case id, image (H, W, 3) float32, target, mask)])."""
    if family == "figshare_brain":
        from blackbox_lime.evaluation.bench_real import _rgb, select
        from blackbox_lime.evaluation.real_data import figshare_brain

        if figshare is None:
            raise SystemExit("--figshare DATA is needed for the figshare_brain family")
        model = str(bundled_model("figshare_brain_cnn.onnx"))
        chosen = select(figshare_brain(figshare, split), OnnxAdapter(Path(model)), per_class)
        return model, [(c.id, _rgb(c), c.label, c.mask) for c, _ in chosen]
    from blackbox_lime.evaluation.phantoms import EXCLUSIVE_CLASSES, FINDINGS, make_exclusive_phantom, make_multilabel_phantom

    if family == "chest4":
        model = str(bundled_model("chest4_cnn.onnx"))
        per = {k: 0 for k in range(1, len(EXCLUSIVE_CLASSES))}
        out4 = []
        for i in range(2000):
            ph, label = make_exclusive_phantom(split, i)
            if label == 0 or per[label] >= per_class:
                continue
            per[label] += 1
            out4.append((f"chest4-{split}-{i}-{EXCLUSIVE_CLASSES[label]}", ph.image, label,
                         ph.masks[EXCLUSIVE_CLASSES[label]]))
            if all(v >= per_class for v in per.values()):
                break
        return model, out4
    out = []
    for i in range(200):
        ph = make_multilabel_phantom(split, i)
        for k, name in enumerate(FINDINGS):
            if ph.labels[name] and ph.masks[name].any():
                out.append((f"multilabel-{split}-{i}-{name}", ph.image, k, ph.masks[name]))
        if len(out) >= 3 * per_class:
            break
    return str(bundled_model("multilabel_cnn.onnx")), out[:3 * per_class]


def run(family: str, figshare: str | None, split: str, per_class: int, k: int, samples: int, seed: int = 0
        ) -> dict[str, Any]:
    from tqdm import tqdm

    model, todo = cases(family, figshare, split, per_class)
    inner = OnnxAdapter(Path(model))
    adapters = {"full": inner, WAYS[1]: TopK(inner, k, True), WAYS[2]: TopK(inner, k, False)}
    cfg = ExplainConfig(n_samples=samples)
    explainers = {w: Explainer(a, cfg) for w, a in adapters.items()}
    records = []
    for cid, image, target, mask in tqdm(todo, unit="case", file=sys.stderr):
        rec: dict[str, Any] = {"id": cid, "target": target, "mask_fraction": float(mask.mean()), "ways": {}}
        full_map = None
        for way, ex in explainers.items():
            t0 = time.perf_counter()
            e = ex.explain(image, target=target, rng=seed)
            full_map = e.saliency if way == "full" else full_map
            assert full_map is not None
            rec["ways"][way] = {"auprc": pixel_auprc(e.saliency, mask),
                                "corr_full": float(np.corrcoef(e.saliency.ravel(), full_map.ravel())[0, 1]),
                                "censored": (e.censoring or {}).get("censored"), "answers": e.queries,
                                "wall_s": round(time.perf_counter() - t0, 3)}
        records.append(rec)
    return {"family": family, "split": split, "top_k": k, "samples": samples, "seed": seed, "model": Path(model).name,
            "classes": list(inner.info.class_names), "records": records}


def markdown(result: dict[str, Any], command: str) -> str:
    recs = result["records"]

    def ci(vals: list[float]) -> str:
        m, lo, hi = bootstrap_ci(vals)
        return f"{m:.3f} [{lo:.3f}, {hi:.3f}]"

    full = np.array([r["ways"]["full"]["auprc"] for r in recs])
    lines = [f"# Top-{result['top_k']} answers: {result['family']}, {result['split']} split", "", f"`{command}`", "",
             f"{len(recs)} explained labels, {result['samples']} queries each, seed {result['seed']}; model "
             f"{result['model']} ({len(result['classes'])} labels: {', '.join(result['classes'])}). Pixel AUPRC against "
             "the expert box or lesion mask, mean [95 % bootstrap CI].", "",
             "| answers | AUPRC | ratio to full answers | worst AUPRC change | correlation with the full-answer map: "
             "median | lowest |", "|---|---|---|---|---|---|"]
    for way in WAYS:
        a = np.array([r["ways"][way]["auprc"] for r in recs])
        corr = [r["ways"][way]["corr_full"] for r in recs]
        lines.append(f"| {way} | {ci(list(a))} | {a.mean() / max(full.mean(), 1e-12):.3f} | "
                     f"{(a - full).min():+.3f} | {np.median(corr):.3f} | {min(corr):.3f} |")
    share = [r["ways"][WAYS[1]]["censored"] / r["ways"][WAYS[1]]["answers"] for r in recs]
    lines += ["", f"- answers that omitted the explained label: median {np.median(share):.0%}, "
                  f"from {min(share):.0%} to {max(share):.0%}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m blackbox_lime.evaluation.bench_truncation",
                                description=__doc__.split("\n")[0])
    p.add_argument("--family", choices=["figshare_brain", "multilabel", "chest4"], default="figshare_brain")
    p.add_argument("--figshare", default=None, help="the figshare brain-tumour folder holding 0/, 1/ and 2/")
    p.add_argument("--split", choices=["val", "test"], default="test")
    p.add_argument("--per-class", type=int, default=10, help="cases per class (multilabel: 3x this many findings)")
    p.add_argument("--top-k", type=int, default=1)
    p.add_argument("--samples", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="folder for results.json and table.md")
    p.add_argument("--render", action="store_true", help="rewrite --out's table.md from its results.json")
    a = p.parse_args(argv)
    if a.render:
        if not a.out:
            raise SystemExit("--render needs --out, the folder holding results.json")
        result = json.loads((Path(a.out) / "results.json").read_text())
        text = markdown(result, result["command"])
        (Path(a.out) / "table.md").write_text(text)
        print(text)
        return 0
    result = run(a.family, a.figshare, a.split, a.per_class, a.top_k, a.samples, a.seed)
    command = "python -m blackbox_lime.evaluation.bench_truncation " + " ".join(
        x if x != a.figshare else "DATA" for x in (argv if argv is not None else sys.argv[1:]) if x != a.out) \
        .replace(" --out", "")
    result["command"] = command
    text = markdown(result, command)
    if a.out:
        write_table(Path(a.out), text.rstrip("\n").split("\n"), result)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
