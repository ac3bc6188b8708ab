"""The audit's shortcut flags on planted shortcuts: thresholds chosen on val, flag rates reported on test.

    python -m blackbox_lime.evaluation.bench_audit --split val  --cases 24 --out docs/bench_audit/val    # choose thresholds
    python -m blackbox_lime.evaluation.bench_audit --split test --cases 40 --out docs/bench_audit/test   # report (never tuned on)

Groups:

- **shortcut** (the known positive): ``onnx/shortcut_marker.onnx``, a model trained on a site that
  burns a laterality marker into 90 % of its abnormal radiographs (``onnx/train_shortcut.py``), on
  that site's chest phantoms that carry the marker (``phantoms.marked_phantom``);
- **clean** (the known negatives): the demo CNN and ViT on clean chest and ultrasound phantoms, and on
  test only, held out from tuning, the unseen families' own classifiers on clean brain MRI and fundus
  phantoms, and the shortcut model on the site's unmarked cases.

Every case is explained as ``audit run`` does (default configuration, ``--samples``, seed 0) and the
share of its positive evidence in the border band, outside the anatomy and (abnormal cases) outside a
region of interest is recorded. The ROI stands in for a site's annotation: the lesion mask dilated by
one patch (16 px). ``--split val`` picks per share the threshold (0.05 steps) with the highest
Youden's J (flag rate on shortcut cases minus flag rate on clean cases); where several thresholds tie, the
middle of their range (the widest margin on both sides). ``--rescore`` re-applies this to a saved run.
``--split test`` applies ``blackbox_lime.audit.flags.SHORTCUT_THRESHOLDS`` and reports flag rates.

``--cluster`` measures Dask scale-out (``python -m blackbox_lime.evaluation.bench_audit --cluster --out
docs/bench_audit/cluster``): the same audit on a LocalCluster of 1 and of 2 workers against MLServer on
loopback serving a latency-bound model (linear in the patch means of a 32 x 32 input, 100 ms added per
request), the endpoint's limit ``--concurrency 2`` shared by the workers. The runs take turns over
``--rounds`` rounds; the time of the run itself (cluster start excluded), medians.

``--overhead`` measures what exactly-once costs (``python -m blackbox_lime.evaluation.bench_audit --overhead --cases 8
--out docs/bench_audit/overhead``): seconds per case of a plain ``explain`` loop (read, explain, write)
against ``audit run`` (the same plus hashing every image, the store's commits and the flags), and a resumed
audit whose every answer is already stored (nothing sent: what a resume costs per case). The modes take
turns over ``--rounds`` rounds on the same cases; medians per case.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from blackbox_lime.adapters.onnx import OnnxAdapter
from blackbox_lime.audit.flags import SHORTCUT_THRESHOLDS, anatomy_mask, border_mask, evidence_share
from blackbox_lime.evaluation.bench import git_commit
from blackbox_lime.config import ExplainConfig
from blackbox_lime.explainer import Explainer
from blackbox_lime.models import bundled_model
from blackbox_lime.evaluation.phantoms import make_phantom, marked_phantom

# (group, model, family, kind): kind "marked" = the site's marked cases, "unmarked" = its unmarked ones, "clean" = plain
VAL_GROUPS = (("shortcut/marked", "shortcut_marker", "chest_xray", "marked"),
              ("demo_cnn/chest_xray", "demo_cnn", "chest_xray", "clean"),
              ("demo_cnn/breast_us", "demo_cnn", "breast_us", "clean"),
              ("demo_vit/chest_xray", "demo_vit", "chest_xray", "clean"))
TEST_GROUPS = VAL_GROUPS + (("demo_vit/breast_us", "demo_vit", "breast_us", "clean"),
                            ("brain_cnn/brain_mri", "brain_cnn", "brain_mri", "clean"),
                            ("fundus_cnn/fundus", "fundus_cnn", "fundus", "clean"),
                            ("shortcut/unmarked", "shortcut_marker", "chest_xray", "unmarked"))
SHARES = ("border", "outside_anatomy", "outside_roi")


def cases_for(family: str, split: str, kind: str, n: int) -> list[tuple[Any, np.ndarray | None]]:
    """The first n cases of the kind, in index order: (phantom, marker pixels or None)."""
    out: list[tuple[Any, np.ndarray | None]] = []
    i = 0
    while len(out) < n:
        if kind == "clean":
            out.append((make_phantom(family, split, i), None))
        else:
            ph, marker = marked_phantom(family, split, i, "laterality")
            if marker.any() == (kind == "marked"):
                out.append((ph, marker))
        i += 1
    return out


def roi_of(mask: np.ndarray) -> np.ndarray:
    return cv2.dilate(mask.astype(np.uint8), np.ones((33, 33), np.uint8)).astype(bool)


def run_group(group: tuple[str, str, str, str], split: str, n: int, samples: int, seed: int) -> list[dict[str, Any]]:
    name, model, family, kind = group
    records = []
    with OnnxAdapter(bundled_model(f"{model}.onnx")) as adapter:
        explainer = Explainer(adapter, ExplainConfig(n_samples=samples))
        for ph, _ in cases_for(family, split, kind, n):
            t = time.perf_counter()
            exp = explainer.explain(ph.image, rng=seed)
            anat = anatomy_mask(ph.image)
            shares = {"border": evidence_share(exp.saliency, border_mask(exp.saliency.shape)),
                      "outside_anatomy": None if anat is None else evidence_share(exp.saliency, ~anat),
                      "outside_roi": evidence_share(exp.saliency, ~roi_of(ph.mask)) if ph.label else None}
            records.append({"group": name, "model": model, "family": family, "kind": kind, "index": ph.index,
                            "label": ph.label, "target_name": exp.target_name, "target_prob": round(exp.target_prob, 4),
                            "r2_evidence": None if not np.isfinite(exp.r2_evidence) else round(exp.r2_evidence, 4),
                            "shares": {k: None if v is None else round(v, 4) for k, v in shares.items()},
                            "seconds": round(time.perf_counter() - t, 2)})
            print(f"{name} {ph.index}: " + " ".join(f"{k}={v}" for k, v in records[-1]["shares"].items()), flush=True)
    return records


def rate(records: list[dict[str, Any]], share: str, threshold: float) -> tuple[int, int]:
    """(flagged, scored) cases; a flat answer (no evidence R^2) raises no shortcut flag, as in audit run."""
    vals = [r["shares"][share] for r in records if r["shares"][share] is not None and r["r2_evidence"] is not None]
    return sum(v > threshold for v in vals), len(vals)


def choose(records: list[dict[str, Any]]) -> dict[str, Any]:
    pos = [r for r in records if r["kind"] == "marked"]
    neg = [r for r in records if r["kind"] == "clean"]
    out: dict[str, Any] = {}
    for share in SHARES:
        scored = []
        for t in np.round(np.arange(0.05, 1.0, 0.05), 2):
            tp, np_ = rate(pos, share, t)
            fp, nn = rate(neg, share, t)
            if np_ and nn:
                scored.append((float(t), tp / np_ - fp / nn, tp / np_, fp / nn))
        if not scored:
            out[share] = None
            continue
        top = max(j for _, j, _, _ in scored)
        tied = [x for x in scored if x[1] >= top - 1e-12]
        # the middle of the thresholds that tie: the widest margin on both sides
        mid = round(round((tied[0][0] + tied[-1][0]) / 2 / 0.05) * 0.05, 2)
        t, j, tpr, fpr = min(scored, key=lambda x: (abs(x[0] - mid), -x[1]))
        out[share] = {"threshold": t, "youden_j": round(j, 4), "tpr": round(tpr, 4), "fpr": round(fpr, 4),
                      "tied_range": [tied[0][0], tied[-1][0]]}
    return out


def table(records: list[dict[str, Any]], thresholds: dict[str, float], groups: list[str]) -> list[str]:
    lines = ["| group | cases | flat answers | " + " | ".join(f"flag {s} (> {thresholds[f'shortcut_{s}']:g})"
                                                            for s in SHARES)
             + " | median share border | median share outside anatomy |", "|---" * 8 + "|"]
    for g in groups:
        rs = [r for r in records if r["group"] == g]
        cells = []
        for s in SHARES:
            k, n = rate(rs, s, thresholds[f"shortcut_{s}"])
            cells.append(f"{k}/{n} ({k / n:.2f})" if n else "n/a")
        med = [np.median([r["shares"][s] for r in rs if r["shares"][s] is not None] or [np.nan])
               for s in ("border", "outside_anatomy")]
        flat = sum(r["r2_evidence"] is None for r in rs)
        lines.append(f"| {g} | {len(rs)} | {flat} | " + " | ".join(cells) + f" | {med[0]:.3f} | {med[1]:.3f} |")
    return lines


def overhead(a: argparse.Namespace) -> int:
    import shutil
    import tempfile

    from blackbox_lime.audit.answers import StoredAdapter
    from blackbox_lime.audit.runner import AuditRunner
    from blackbox_lime.audit.source import read_source
    from blackbox_lime.audit.store import AuditStore
    from blackbox_lime.image_io import load_image
    from blackbox_lime.outputs import explanation_files, write_all
    from blackbox_lime.evaluation.phantoms import write_phantoms

    tmp = Path(tempfile.mkdtemp(prefix="bench_audit_"))
    t_start = time.perf_counter()
    try:
        src = tmp / "src"
        write_phantoms(src, "chest_xray", "test", a.cases)
        cfg = ExplainConfig(n_samples=a.samples)
        times: dict[str, list[float]] = {"explain": [], "audit": [], "audit, every answer stored": []}
        with OnnxAdapter(bundled_model("demo_cnn.onnx")) as adapter:
            explainer = Explainer(adapter, cfg)
            images = sorted(src.glob("*[0-9].png"))
            for r in range(a.rounds):
                out = tmp / f"explain{r}"
                out.mkdir()
                for path in images:
                    t = time.perf_counter()
                    loaded = load_image(path)
                    exp = explainer.explain(loaded.pixels, rng=a.seed)
                    write_all(explanation_files(out, path.stem, loaded.pixels, exp, exp.summary()))
                    times["explain"].append(time.perf_counter() - t)
                for mode in ("audit", "audit, every answer stored"):
                    out = tmp / f"audit{r}"
                    if mode == "audit":
                        out.mkdir()
                        cases = read_source(src, "salt")
                        store = AuditStore.create(out / "audit.sqlite", {}, cases, {})
                    else:  # the same audit, its cases set back to pending and their files gone: a resume
                        shutil.rmtree(out / "cases")
                        store = AuditStore.open(out / "audit.sqlite")
                        store.db.execute("UPDATE cases SET state = 'pending', record = NULL")
                    stored = StoredAdapter(adapter, store)
                    explainer.adapter = stored
                    stamps = [time.perf_counter()]
                    AuditRunner(out, store, stored, explainer, root=src, seed=a.seed, target=None, frame=None,
                                salt="salt", progress=lambda c, s: stamps.append(time.perf_counter())).run()
                    explainer.adapter = adapter
                    times[mode] += list(np.diff(stamps))
                    if mode != "audit":
                        assert stored.sent == 0, "a resumed audit sent queries"
                    store.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: float(np.median(v)) for k, v in times.items()}
    lines = ["# What exactly-once costs", "",
             f"`python -m blackbox_lime.evaluation.bench_audit --overhead --cases {a.cases} --rounds {a.rounds} --samples "
             f"{a.samples} --out {a.out}` (demo CNN, local onnxruntime, chest test phantoms, default config, commit "
             f"{(git_commit() or 'unknown')[:10]}). Seconds per case, the modes in turns over the same cases.", "",
             "| mode | cases timed | median s/case | ratio to explain |", "|---|---|---|---|"]
    lines += [f"| {k} | {len(times[k])} | {med[k]:.3f} | {med[k] / med['explain']:.3f} |" for k in times]
    lines += ["", f"Wall time {time.perf_counter() - t_start:.0f} s."]
    write_table(Path(a.out), lines, {"seconds": times, "median": med, "commit": git_commit()})
    return 0


def write_table(out: Path, lines: list[str], result: dict[str, Any]) -> None:
    """table.md and results.json into ``out`` (created), and the table on stdout."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    print("\n".join(lines))


def cluster_bench(a: argparse.Namespace) -> int:
    import shutil
    import tempfile

    from distributed import Client, LocalCluster

    from blackbox_lime.evaluation import demo_server
    from blackbox_lime.audit.cluster import WorkerSettings, run_on_cluster
    from blackbox_lime.audit.source import read_source
    from blackbox_lime.audit.store import AuditStore
    from blackbox_lime.evaluation.bench_remote import linear_model

    tmp = Path(tempfile.mkdtemp(prefix="bench_cluster_"))
    t_start = time.perf_counter()
    times: dict[int, list[float]] = {1: [], 2: []}
    sent: dict[int, list[int]] = {1: [], 2: []}
    try:
        src = tmp / "src"
        src.mkdir()
        rng = np.random.default_rng(a.seed)
        for i in range(a.cases):
            cv2.imwrite(str(src / f"img_{i:02d}.png"), (rng.uniform(0.15, 0.85, (32, 32, 3)) * 255).astype(np.uint8))
        with demo_server.start(linear_model(tmp / "linear.onnx"), delay_ms=100) as server:
            for r in range(a.rounds):
                for workers in ((1, 2) if r % 2 == 0 else (2, 1)):
                    out = tmp / f"audit_{r}_{workers}"
                    out.mkdir()
                    store = AuditStore.create(out / "audit.sqlite", {}, read_source(src, "salt"), {})
                    settings = WorkerSettings(
                        model=server.rest_url, endpoint=None, max_batch=16, output_kind=None, allow_insecure_http=False,
                        device="cpu", config=ExplainConfig(n_samples=a.samples, patch_size=8, fill="mean"), mae=None,
                        bank=None, seed=a.seed, target=None, threshold=0.5, frame=None, salt="salt", root=str(src),
                        budget=None, concurrency=2)
                    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                                      dashboard_address=None, silence_logs=40) as cluster, Client(cluster) as client:
                        t = time.perf_counter()
                        result = run_on_cluster(client, out, store, settings)
                        times[workers].append(time.perf_counter() - t)
                    assert result.done == a.cases, result
                    sent[workers].append(store.totals()["sent"])
                    store.close()
                    print(f"round {r + 1}: {workers} worker(s) {times[workers][-1]:.2f} s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = {w: float(np.median(v)) for w, v in times.items()}
    lines = ["# Audits on Dask: 2 workers against 1", "",
             f"`python -m blackbox_lime.evaluation.bench_audit --cluster --cases {a.cases} --samples {a.samples} --rounds "
             f"{a.rounds} --out {a.out}` (MLServer on loopback, a latency-bound model with 100 ms per request, "
             f"--max-batch 16, --concurrency 2 shared by the workers, --fill mean, commit "
             f"{(git_commit() or 'unknown')[:10]}). Seconds for the whole audit of {a.cases} cases, cluster start "
             "excluded.", "",
             "| workers | runs | median s | images sent per run | speed-up |", "|---|---|---|---|---|"]
    lines += [f"| {w} | {len(times[w])} | {med[w]:.2f} | {sent[w][0]} | {med[1] / med[w]:.2f}x |" for w in (1, 2)]
    lines += ["", f"Wall time {time.perf_counter() - t_start:.0f} s."]
    write_table(Path(a.out), lines, {"seconds": times, "median": med, "sent": sent, "commit": git_commit()})
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m blackbox_lime.evaluation.bench_audit", description=__doc__.splitlines()[0])
    p.add_argument("--split", choices=["val", "test"], default=None)
    p.add_argument("--overhead", action="store_true", help="measure the cost of the store instead")
    p.add_argument("--cluster", action="store_true", help="measure 2 Dask workers against 1 instead")
    p.add_argument("--rounds", type=int, default=3, help="--overhead: rounds of every mode")
    p.add_argument("--cases", type=int, default=24, help="cases per group")
    p.add_argument("--samples", type=int, default=500, help="queries per explanation (explain's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--rescore", action="store_true", help="re-choose and re-tabulate the records saved in --out")
    a = p.parse_args(argv)
    if a.overhead:
        return overhead(a)
    if a.cluster:
        return cluster_bench(a)
    if a.split is None:
        p.error("give --split val|test or --overhead")
    t0 = time.perf_counter()
    groups = VAL_GROUPS if a.split == "val" else TEST_GROUPS
    measured = None
    if a.rescore:
        saved = json.loads((Path(a.out) / "results.json").read_text())
        records, measured = saved["records"], saved.get("commit")
    else:
        records = [r for g in groups for r in run_group(g, a.split, a.cases, a.samples, a.seed)]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"split": a.split, "cases_per_group": a.cases, "samples": a.samples, "seed": a.seed,
                              "commit": measured or git_commit(), "records": records}
    head = [f"# Audit shortcut flags, {a.split} split", "",
            f"`python -m blackbox_lime.evaluation.bench_audit --split {a.split} --cases {a.cases} --samples {a.samples} "
            f"--out {a.out}` ({a.cases} cases per group, {a.samples} queries each, seed {a.seed}, commit "
            f"{(result['commit'] or 'unknown')[:10]}). Shares are of each map's positive evidence for the explained "
            "(predicted) class. The ROI (abnormal cases only) is the lesion mask dilated by 16 px.", ""]
    if a.split == "val":
        chosen = choose(records)
        result["chosen"] = chosen
        thresholds = {f"shortcut_{s}": chosen[s]["threshold"] for s in SHARES}
        head += ["Chosen thresholds (highest Youden's J, shortcut/marked against the clean groups; the middle of "
                 "the tied range):", "",
                 "| share | threshold | J | thresholds with that J | flag rate, shortcut | flag rate, clean |",
                 "|---|---|---|---|---|---|"]
        head += [f"| {s} | {c['threshold']:g} | {c['youden_j']:.3f} | {c['tied_range'][0]:g}-{c['tied_range'][1]:g} | "
                 f"{c['tpr']:.3f} | {c['fpr']:.3f} |" for s, c in chosen.items()]
        head += ["", "Flag rates at the chosen thresholds:", ""]
    else:
        thresholds = dict(SHORTCUT_THRESHOLDS)
        head += ["Flag rates at the shipped thresholds (`blackbox_lime/audit/flags.py`):", ""]
    result["thresholds"] = thresholds
    lines = head + table(records, thresholds, [g[0] for g in groups])
    lines += ["", f"Wall time {time.perf_counter() - t0:.0f} s."]
    write_table(out, lines, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
