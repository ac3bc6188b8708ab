"""Stopping when the map has settled (``n_samples="auto"``): queries against AUPRC, per group of phantoms.

    python -m blackbox_lime.evaluation.bench_stopping --split val --images 6 --out docs/bench_stopping/val
    python -m blackbox_lime.evaluation.bench_stopping --split test --images 6 --rules 0.85/1 --out docs/bench_stopping/test
    python -m blackbox_lime.evaluation.bench_stopping --split test --images 3 --seeds 3 --rules 0.85/1 \
        --out docs/bench_stopping/test_consistency

    python -m blackbox_lime.evaluation.bench_stopping --split shifted --images 6 --rules 0.85/1 \
        --out docs/bench_stopping/shifted

For each abnormal case of each group (the two demo classifiers on both phantom families, the two unseen
families, and the multi-label classifier on the multi-label chest phantoms, where every finding present is
explained from one set of queries and the rule stops when all of them have settled; AUPRC is then the mean over
the findings, each against its own mask) the default explanation at the fixed 500 samples is made once with its
samples kept. ``--split shifted`` is the phantoms' held-out acquisition shift, run as test. ``--figshare DIR`` or
``--kvasir DIR`` runs a real family instead (bench_real's cases: each image's true class against the expert's mask;
``--images`` per class):

    python -m blackbox_lime.evaluation.bench_stopping --split test --images 10 --rules 0.85/1 --figshare DATA \
        --out docs/bench_stopping/test_figshare

Because a design's rows do not depend on how many follow (blackbox_lime/stopping.py), the explanation that ``n_samples="auto"`` would
make after any round is the fit on a prefix of those samples: every rule (threshold / patience) is replayed from
the same answers, and the round it stops at, its queries and its map's pixel AUPRC against the lesion mask are
read off. The test run also makes the real ``n_samples="auto"`` explanation for each rule given and checks that it
stops where the replay says, with the same map. Writes ``table.md``, ``results.json`` and
``queries_vs_auprc.png`` (one panel per group: mean AUPRC against samples, with each rule's median stopping
point).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from blackbox_lime.adapters.onnx import OnnxAdapter
from blackbox_lime.config import ExplainConfig
from blackbox_lime.evaluation.bench_audit import write_table
from blackbox_lime.evaluation.metrics import bootstrap_ci, consistency, pixel_auprc
from blackbox_lime.evaluation.phantoms import FINDINGS, abnormal_cases, make_multilabel_phantom
from blackbox_lime.explainer import Explainer
from blackbox_lime.fill.registry import fill_kind
from blackbox_lime.models import bundled_model
from blackbox_lime.stopping import Settling, halves, round_bounds
from blackbox_lime.surrogate import SparseSurrogate, proximity_kernel

GROUPS = (("demo_cnn", "chest_xray"), ("demo_cnn", "breast_us"), ("demo_vit", "chest_xray"),
          ("demo_vit", "breast_us"), ("brain_cnn", "brain_mri"), ("fundus_cnn", "fundus"),
          ("multilabel_cnn", "chest_multilabel"))
# The real families (blackbox_lime/evaluation/real_data.py), run when their data is given (--figshare, --kvasir):
# the explained class is each image's true one, on the first --images correctly classified images per class.
REAL_GROUPS = (("figshare_brain_cnn", "figshare_brain"), ("kvasir_polyp_cnn", "kvasir_polyp"))
RULES = tuple(f"{t}/{p}" for t in (0.8, 0.85, 0.9, 0.95) for p in (1, 2))


def real_cases(family: str, root: str | Path, split: str, n: int, adapter: OnnxAdapter
               ) -> list[tuple[str, np.ndarray, dict[int, np.ndarray]]]:
    """A real family's cases as bench_real picks them: (id, RGB image in [0, 1], true class -> the expert's mask)."""
    from blackbox_lime.evaluation.bench_real import FAMILIES, _rgb, select

    fam = FAMILIES[family]
    chosen = select(fam.load(root, split), adapter, n, fam.explained)
    return [(c.id, _rgb(c), {c.label: c.mask}) for c, _ in chosen]


def cases(family: str, split: str, n: int, abnormal: int) -> list[tuple[int, np.ndarray, dict[int, np.ndarray]]]:
    """A group's cases: (index, image, the explained class -> its lesion mask). The multi-label group explains every
    finding present (the first ``n`` cases with at least one), each scored against its own mask; the others their
    ``abnormal`` class."""
    if family == "chest_multilabel":  # FINDINGS is the multi-label model's class order (test_onnx_models checks it)
        out = []
        for i in itertools.count():
            ph = make_multilabel_phantom(split, i)
            if any(ph.labels.values()):
                out.append((i, ph.image, {j: ph.masks[k] for j, k in enumerate(FINDINGS) if ph.labels[k]}))
            if len(out) == n:
                return out
    return [(ph.index, ph.image, {abnormal: ph.mask}) for ph in abnormal_cases(family, split, n)]


def _replay(ex: Explainer, cfg: ExplainConfig, image: np.ndarray, masks: dict[int, np.ndarray], seed: int,
            maps: list[list[np.ndarray]] | None = None) -> dict[str, Any]:
    """The fixed explanation and, per round of the auto rule, its reliability, samples and map AUPRC (the mean over
    the explained targets, each against its own mask; the auto rule stops when every target has settled)."""
    targets = list(masks)
    found = ex.explain_set(image, target=targets if len(targets) > 1 else targets[0], rng=seed, keep_samples=True)
    e = found[0]
    assert e.samples is not None
    vis, probs = e.samples["visible"], e.samples["probs"]
    spent = e.fill.get("queries_spent_on_choice", 0) + e.fill.get("pilot_samples_per_fill", 0) \
        if e.fill.get("scores") else 0
    kept = e.fill.get("pilot_samples_per_fill", 0) if e.fill.get("scores") else 0
    chosen = e.fill["chosen"]
    per = cfg.nested_samples if fill_kind(chosen).per_mask else 1
    n_design = len(vis) - 1 - kept
    pilot_vis, pilot_probs = vis[len(vis) - kept:], probs[len(probs) - kept:]
    settle = Settling(cfg, targets, ex.grid)
    rounds = []
    for end in round_bounds(n_design, per, cfg.stop_min - 1 - spent, cfg.stop_round):
        X = np.concatenate([vis[:1 + end], pilot_vis])
        P = np.concatenate([probs[:1 + end], pilot_probs])
        rel = settle.reliability(X, P, halves(end, per, kept))
        kernel = proximity_kernel(X, cfg.kernel_width)
        scores, sals = [], []
        for target, mask in masks.items():  # the fit of each map without a prior
            coef = SparseSurrogate(**settle.options).fit(X.astype(np.float64), P[:, target], kernel).coef_
            sals.append(ex.grid.upsample(coef, image.shape[:2], cfg.map_sigma))
            scores.append(pixel_auprc(sals[-1], mask))
        if maps is not None:  # every round's maps (one per target), for the consistency across seeds
            maps.append(sals)
        rounds.append({"end": end, "samples": 1 + end + spent, "reliability": round(rel, 4),
                       "auprc": float(np.mean(scores))})
    if maps is not None:
        maps.append([x.saliency for x in found])  # last: the fixed explanation's own maps
    return {"fixed_auprc": float(np.mean([pixel_auprc(x.saliency, masks[x.target]) for x in found])),
            "fixed_queries": e.queries, "rounds": rounds, "fill": chosen, "targets": targets}


def stop_of(rounds: list[dict[str, Any]], threshold: float, patience: int) -> dict[str, Any]:
    """The round a rule stops at (the last round when it never settles)."""
    run = 0
    for r in rounds:
        run = run + 1 if r["reliability"] >= threshold else 0
        if run >= patience:
            return r
    return rounds[-1]


def settled_at(rounds: list[dict[str, Any]], fixed: float, share: float = 0.95) -> int:
    """The samples of the first round whose map scores at least ``share`` of the fixed map's AUPRC: where a rule that
    could read the lesion mask would stop this case (no label-free rule can know it); the last round when none
    does."""
    return next((r["samples"] for r in rounds if r["auprc"] >= share * fixed), rounds[-1]["samples"])


def oracle_lines(records: list[dict[str, Any]], groups: list[str], ends: tuple[int, ...] = (96, 144, 192, 240)
                 ) -> list[str]:
    """What any stopping rule could reach on these maps: per group, the share of cases whose map after ``ends``
    samples already scores >= 0.95x their fixed map's AUPRC, the mean AUPRC ratio of a fixed budget of that many
    samples, and the median of :func:`settled_at` (an oracle that reads the mask)."""
    head = " | ".join(f"{e}: within 0.95x / ratio" for e in ends)
    lines = ["", "What any rule could reach (no queries: read off the same rounds). For each budget, the share of cases "
             "whose map already scores >= 0.95x the fixed map's AUPRC and the group's mean AUPRC ratio at that fixed "
             "budget; then the median samples of an oracle that stops each case at the first such round (it reads "
             "the mask, which no label-free rule can).", "",
             f"| group | {head} | oracle median samples |", "|---|" + "---|" * (len(ends) + 1)]
    for key in groups:
        rs = [r for r in records if key == "all" or f"{r['model']}/{r['family']}" == key]
        if not rs:
            continue
        fixed = float(np.mean([r["fixed_auprc"] for r in rs]))
        cells = []
        for e in ends:
            at = [next(x for x in r["rounds"] if x["end"] >= e or x is r["rounds"][-1]) for r in rs]
            within = np.mean([x["auprc"] >= 0.95 * r["fixed_auprc"] for x, r in zip(at, rs)])
            cells.append(f"{within:.2f} / {np.mean([x['auprc'] for x in at]) / fixed:.2f}")
        oracle = np.median([settled_at(r["rounds"], r["fixed_auprc"]) for r in rs])
        lines.append(f"| {key} | " + " | ".join(cells) + f" | {oracle:.0f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m blackbox_lime.evaluation.bench_stopping", description=__doc__)
    p.add_argument("--split", choices=["val", "test", "shifted"], default="val",
                   help="shifted: the phantoms' held-out acquisition shift (evaluation only, as test)")
    p.add_argument("--groups", default="", help="comma list of model/family groups (default all: "
                   + ", ".join(f"{m}/{f}" for m, f in GROUPS) + ")")
    p.add_argument("--images", type=int, default=6, help="abnormal cases per group (real families: per class)")
    p.add_argument("--figshare", default=None, help="run the real family figshare_brain instead of the phantoms: the "
                   "folder holding 0/, 1/ and 2/ (as for bench_real)")
    p.add_argument("--kvasir", default=None, help="run the real family kvasir_polyp instead of the phantoms: the "
                   "Kvasir-SEG folder holding images/ and masks/ (as for bench_real)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, default=1,
                   help="with N > 1, also the consistency across seeds (seed .. seed + N - 1): the mean pairwise "
                        "correlation of each case's maps, fixed 500 and each rule's stopped map")
    p.add_argument("--rules", default=",".join(RULES), help="threshold/patience pairs, comma separated")
    p.add_argument("--out", required=True)
    p.add_argument("--from-results", action="store_true", help="redo the tables from OUT/results.json's records")
    a = p.parse_args(argv)
    rules = [(float(r.split("/")[0]), int(r.split("/")[1])) for r in a.rules.split(",")]
    cfg = ExplainConfig()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    t0 = time.time()
    saved_config = None
    if a.from_results:  # the tables are redone; the records keep the configuration they were made with
        saved = json.loads((out / "results.json").read_text())
        records, saved_config = saved["records"], saved.get("config")
    roots = {"figshare_brain": a.figshare, "kvasir_polyp": a.kvasir}
    if any(roots.values()):
        chosen = [g for g in REAL_GROUPS if roots[g[1]]]
    else:
        chosen = [g for g in GROUPS if not a.groups or f"{g[0]}/{g[1]}" in a.groups.split(",")]
    for model, family in chosen if not a.from_results else ():
        with OnnxAdapter(bundled_model(f"{model}.onnx")) as adapter:
            ex = Explainer(adapter, cfg)
            picked = (real_cases(family, roots[family], a.split, a.images, adapter) if family in roots
                      else cases(family, a.split, a.images, adapter.info.abnormal_index))
            for index, image, masks in picked:
                maps: list[list[np.ndarray]] = []
                rec = _replay(ex, cfg, image, masks, a.seed, maps)
                rec.update(model=model, family=family, index=index)
                if a.seeds > 1:
                    runs = [(rec["rounds"], maps)]
                    for s in range(a.seed + 1, a.seed + a.seeds):
                        more: list[list[np.ndarray]] = []
                        other = _replay(ex, cfg, image, masks, s, more)
                        runs.append((other["rounds"], more))
                    k = len(masks)  # per target, then the mean over the targets
                    rec["consistency"] = {"fixed": float(np.mean([consistency([m[-1][j] for _, m in runs])
                                                                  for j in range(k)]))}
                    for t, pat in rules:
                        at = [rs.index(stop_of(rs, t, pat)) for rs, _ in runs]
                        rec["consistency"][f"{t}/{pat}"] = float(np.mean(
                            [consistency([m[i][j] for (_, m), i in zip(runs, at)]) for j in range(k)]))
                if a.split != "val":  # the real thing stops where the replay says
                    rec["auto"] = {}
                    targets = list(masks)
                    for t, pat in rules:
                        auto = Explainer(adapter, ExplainConfig(n_samples="auto", stop_corr=t, stop_patience=pat))
                        found = auto.explain_set(image, target=targets if len(targets) > 1 else targets[0], rng=a.seed)
                        e = found[0]
                        assert e.stopping is not None
                        rec["auto"][f"{t}/{pat}"] = {"samples": e.stopping["samples"], "queries": e.queries,
                                                     "auprc": float(np.mean([pixel_auprc(x.saliency, masks[x.target])
                                                                             for x in found])),
                                                     "reason": e.stopping["reason"]}
                records.append(rec)
                (out / "results.json").write_text(json.dumps({"records": records}) + "\n")  # kept as it goes
                print(f"{model}/{family} {index}: fixed {rec['fixed_auprc']:.3f}, "
                      f"{len(rec['rounds'])} rounds ({time.time() - t0:.0f} s)", file=sys.stderr)
    per = ("correctly classified real images per class" if any(r["family"] in roots for r in records)
           else "abnormal cases per group")
    lines = [f"Split {a.split}, {a.images} {per}, seed {a.seed}"
             + (f" (consistency over seeds {a.seed}..{a.seed + a.seeds - 1})" if a.seeds > 1 else "") + "; default explanation (fill auto, "
             f"map_sigma {cfg.map_sigma}); rounds: first check at {cfg.stop_min} samples, then every "
             f"{cfg.stop_round}; ceiling {cfg.max_samples}. Rule = split-half reliability threshold / patience "
             "(rounds running). AUPRC is the replayed map's; ratio = mean AUPRC / the fixed 500's mean.", "",
             "| group | fixed 500 AUPRC | rule | median queries | p95 queries | AUPRC [95 % CI] | ratio |"
             + (" consistency, fixed 500 | consistency, rule |" if a.seeds > 1 else ""),
             "|---|---|---|---|---|---|---|" + ("---|---|" if a.seeds > 1 else "")]
    summary: dict[str, Any] = {}
    for model, family in GROUPS + REAL_GROUPS + (("all", "all"),):
        rs = [r for r in records if (r["model"], r["family"]) == (model, family) or model == "all"]
        if not rs:
            continue
        fixed = float(np.mean([r["fixed_auprc"] for r in rs]))
        for t, pat in rules:
            stops = [stop_of(r["rounds"], t, pat) for r in rs]
            q = [s["samples"] for s in stops]
            au = [s["auprc"] for s in stops]
            _, lo, hi = bootstrap_ci(au)
            key = f"{model}/{family}" if model != "all" else "all"
            summary.setdefault(key, {})[f"{t}/{pat}"] = {"median_queries": float(np.median(q)),
                                                          "p95_queries": float(np.percentile(q, 95)),
                                                          "auprc": float(np.mean(au)), "fixed_auprc": fixed,
                                                          "ratio": float(np.mean(au)) / fixed if fixed else None}
            cons = ""
            if a.seeds > 1:
                cf = np.nanmean([r["consistency"]["fixed"] for r in rs])
                cr = np.nanmean([r["consistency"][f"{t}/{pat}"] for r in rs])
                summary[key][f"{t}/{pat}"].update(consistency_fixed=float(cf), consistency=float(cr))
                cons = f" {cf:.3f} | {cr:.3f} |"
            lines.append(f"| {key} | {fixed:.3f} | {t:g}/{pat} | {np.median(q):.0f} | {np.percentile(q, 95):.0f} | "
                         f"{np.mean(au):.3f} [{lo:.3f}, {hi:.3f}] | {np.mean(au) / fixed:.3f} |" + cons)
    lines += oracle_lines(records, [k for k in summary])
    if a.split != "val":
        agree = [r["auto"][k]["samples"] == stop_of(r["rounds"], float(k.split("/")[0]), int(k.split("/")[1]))["samples"]
                 for r in records for k in r["auto"]]
        lines += ["", f"The real n_samples=\"auto\" explanation stopped where the replay said in {sum(agree)} of "
                      f"{len(agree)} (case, rule) pairs."]
    write_table(out, lines, {"split": a.split, "images": a.images, "seed": a.seed,
                             "config": saved_config or cfg.to_dict(),
                             "summary": summary, "records": records})
    _plot(records, rules, out / "queries_vs_auprc.png")
    return 0


def _plot(records: list[dict[str, Any]], rules: list[tuple[float, int]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [g for g in GROUPS + REAL_GROUPS if any((r["model"], r["family"]) == g for r in records)]
    cols = min(4, max(1, len(groups)))
    rows = max(1, -(-len(groups) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.3 * cols, 3.5 * rows), sharey=True, squeeze=False)
    for ax, (model, family) in zip(axes.ravel(), groups):
        rs = [r for r in records if (r["model"], r["family"]) == (model, family)]
        n = min(len(r["rounds"]) for r in rs)
        xs = np.mean([[x["samples"] for x in r["rounds"][:n]] for r in rs], axis=0)
        ys = np.mean([[x["auprc"] for x in r["rounds"][:n]] for r in rs], axis=0)
        ax.plot(xs, ys, "-o", ms=3, color="k", label="map after each round (mean)")
        ax.axhline(np.mean([r["fixed_auprc"] for r in rs]), color="grey", ls="--", label="fixed 500")
        for (t, pat), c in zip(rules, plt.cm.viridis(np.linspace(0, 0.9, len(rules)))):
            stops = [stop_of(r["rounds"], t, pat) for r in rs]
            ax.plot(np.median([s["samples"] for s in stops]), np.mean([s["auprc"] for s in stops]), "v", color=c,
                    ms=8, label=f"stop {t:g}/{pat}")
        ax.set_title(f"{model} / {family}", fontsize=9)
        ax.set_xlabel("samples")
    for ax in axes.ravel()[len(groups):]:
        ax.set_visible(False)
    axes[0, 0].set_ylabel("pixel AUPRC")
    axes[0, 0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
