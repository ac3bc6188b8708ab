"""Speed benchmark: the default MedLIME explanation against ``lime``'s LimeImageExplainer.

    pip install ".[cpu,bench]"
    python -m blackbox_lime.evaluation.bench_speed [--reps 5] [--images 3] [--out bench_out/speed.json]

Both explain the same 224x224 phantoms with the same classifier (``onnx/demo_cnn.onnx`` through the
same onnxruntime adapter), side by side in one run, alternating which goes first. lime runs with its
defaults (quickshift segments, 1000 samples, batch_size 10). MedLIME runs with its defaults (MAE fill,
see ExplainConfig), plus reading the image and writing the three output files. A second MedLIME row
uses 1000 samples, lime's query count, for an equal-budget comparison.

Prints a markdown table of medians and their ratio, and the time per stage.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from blackbox_lime.adapters.onnx import OnnxAdapter
from blackbox_lime.config import ExplainConfig
from blackbox_lime.explainer import Explainer
from blackbox_lime.image_io import load_image
from blackbox_lime.models import bundled_model
from blackbox_lime.outputs import explanation_files, write_all
from blackbox_lime.evaluation.phantoms import make_phantom


def run_medlime(explainer: Explainer, png: Path, out: Path) -> dict[str, float]:
    t0 = time.perf_counter()
    img = load_image(png)
    t_read = time.perf_counter() - t0
    exp = explainer.explain(img.pixels, rng=0)
    t1 = time.perf_counter()
    write_all(explanation_files(out, png.stem, img.pixels, exp, exp.summary()))
    t_write = time.perf_counter() - t1
    st = dict(exp.timings)
    st["io"] = t_read + t_write
    st["wall"] = time.perf_counter() - t0
    st["queries"] = exp.queries
    return st


def run_lime(model: OnnxAdapter, image: np.ndarray) -> dict[str, float]:
    from lime import lime_image

    q0 = model.queries
    t0 = time.perf_counter()
    explainer = lime_image.LimeImageExplainer(random_state=0)
    explainer.explain_instance(image.astype(np.float64), lambda x: model.predict(x.astype(np.float32)),
                               hide_color=None, random_seed=0)
    return {"wall": time.perf_counter() - t0, "queries": model.queries - q0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default="bench_out/speed.json")
    a = ap.parse_args()
    model = OnnxAdapter(a.model or bundled_model("demo_cnn.onnx"))
    ours = Explainer(model, ExplainConfig())
    ours_1000 = Explainer(model, ExplainConfig(n_samples=1000))
    tmp = Path(tempfile.mkdtemp())
    cases = []
    for i in range(a.images):
        ph = make_phantom("chest_xray" if i % 2 == 0 else "breast_us", "test", i + 1)
        png = tmp / f"case{i}.png"
        cv2.imwrite(str(png), np.round(ph.image[..., 0] * 255).astype(np.uint8))
        cases.append((png, load_image(png).pixels.repeat(3, axis=2)))
    run_medlime(ours, cases[0][0], tmp)  # warm up onnxruntime sessions
    rows: dict[str, list[dict[str, float]]] = {"medlime": [], "medlime_1000": [], "lime": []}
    for rep in range(a.reps):
        for k, (png, img) in enumerate(cases):
            order = ["medlime", "lime", "medlime_1000"] if (rep + k) % 2 == 0 else ["lime", "medlime", "medlime_1000"]
            for name in order:
                if name == "lime":
                    rows[name].append(run_lime(model, img))
                else:
                    rows[name].append(run_medlime(ours if name == "medlime" else ours_1000, png, tmp))
    med = {k: statistics.median(r["wall"] for r in v) for k, v in rows.items()}
    stages = ["masks", "fill", "classifier", "compose", "surrogate", "io"]
    stage_med = {k: {s: statistics.median(r[s] for r in rows[k]) for s in stages} for k in ("medlime", "medlime_1000")}
    overhead = {k: statistics.median((r["wall"] - r["fill"] - r["classifier"]) / r["wall"] for r in rows[k])
                for k in ("medlime", "medlime_1000")}
    result = {"median_wall_s": med, "ratio_medlime_over_lime": med["medlime"] / med["lime"],
              "ratio_medlime1000_over_lime": med["medlime_1000"] / med["lime"], "stages_median_s": stage_med,
              "overhead_fraction_median": overhead, "runs_per_method": len(rows["lime"]),
              "queries": {k: rows[k][0]["queries"] for k in rows}, "provider": model.info.extra["provider"]}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"result": result, "runs": rows}, indent=2) + "\n")
    print(f"\n{len(rows['lime'])} runs per method ({a.images} phantoms x {a.reps} reps), onnxruntime on "
          f"{result['provider']}\n")
    print("| method | queries | median wall (s) | ratio to lime |")
    print("|---|---|---|---|")
    print(f"| lime LimeImageExplainer (defaults) | {result['queries']['lime']} | {med['lime']:.2f} | 1.00 |")
    print(f"| MedLIME default | {result['queries']['medlime']} | {med['medlime']:.2f} | {result['ratio_medlime_over_lime']:.2f} |")
    print(f"| MedLIME, 1000 samples | {result['queries']['medlime_1000']} | {med['medlime_1000']:.2f} | "
          f"{result['ratio_medlime1000_over_lime']:.2f} |")
    print("\n| MedLIME stage (median s) | " + " | ".join(stages) + " | overhead share |")
    print("|---|" + "---|" * (len(stages) + 1))
    for run in ("medlime", "medlime_1000"):
        print(f"| {run} | " + " | ".join(f"{stage_med[run][s]:.3f}" for s in stages) + f" | {overhead[run]:.1%} |")


if __name__ == "__main__":
    main()
