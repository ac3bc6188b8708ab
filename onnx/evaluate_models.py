"""Measure the shipped models (onnxruntime only, no torch): the numbers in onnx/MODEL_CARD.md.

    python onnx/evaluate_models.py [--per-modality 500] [--mae-cases 60] [--out onnx/model_eval.json]
                                   [--mae onnx/mae_recon.onnx] [--only-mae] [--split test|shifted]

1. Classifier test AUROC per modality (``--per-modality`` test phantoms each).
2. Do the classifiers look at the lesion? On abnormal test cases, the lesion's bounding patches
   (every 16-px patch its mask touches) are filled with MAE reconstructions, and separately an
   equal number of random patches away from the lesion; the mean drop in P(abnormal) is reported.
3. MAE reconstruction PSNR on hidden pixels against OpenCV Telea inpainting, at masking ratios
   0.25, 0.5 and 0.75, per modality, with the noise-free oracle that bounds any inpainting.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np

from data import GRID, MODALITIES, PATCH, auroc, load_split

from blackbox_lime.adapters.onnx import OnnxAdapter  # noqa: E402  (data puts the repo on sys.path)
from blackbox_lime.fill.fillers import MAEFiller  # noqa: E402
from blackbox_lime.patches import PatchGrid  # noqa: E402
from blackbox_lime.evaluation.phantoms import make_phantom  # noqa: E402

HERE = Path(__file__).resolve().parent


def rgb(gray_u8: np.ndarray) -> np.ndarray:
    return np.repeat((gray_u8.astype(np.float32) / 255.0)[..., None], 3, axis=2)


def classifier_auroc(model: OnnxAdapter, data: dict) -> dict[str, float]:
    p = np.concatenate([model.predict(np.stack([rgb(g) for g in data["images"][i:i + 64]]))[:, 1]
                        for i in range(0, len(data["labels"]), 64)])
    return {m: round(auroc(p[data["modality"] == k], data["labels"][data["modality"] == k]), 4)
            for k, m in enumerate(MODALITIES)}


def lesion_fill_check(model: OnnxAdapter, mae: MAEFiller, data: dict, cases: int, rng: np.random.Generator) -> dict:
    grid = PatchGrid(224, 224, PATCH)
    out: dict[str, dict[str, float]] = {}
    for k, m in enumerate(MODALITIES):
        idx = np.nonzero((data["labels"] == 1) & (data["modality"] == k))[0][:cases]
        drops_lesion, drops_random, base = [], [], []
        for i in idx:
            img = rgb(data["images"][i])
            mask = data["masks"][i]
            touched = mask.reshape(GRID, PATCH, GRID, PATCH).any(axis=(1, 3)).reshape(-1)
            near = cv2.dilate(mask.astype(np.uint8), np.ones((33, 33), np.uint8)).astype(bool)
            near_p = near.reshape(GRID, PATCH, GRID, PATCH).any(axis=(1, 3)).reshape(-1)
            far = np.nonzero(~near_p)[0]
            rand = rng.choice(far, size=min(int(touched.sum()), len(far)), replace=False)
            vis_lesion = ~touched
            vis_random = np.ones(grid.n_patches, bool)
            vis_random[rand] = False
            visible = np.stack([vis_lesion, vis_random])
            hidden_px = grid.hidden_pixels(visible)
            fills = mae.fill(img, hidden_px)
            batch = grid.composite(visible, img, fills, np.array([0, 1]))
            p0 = model.predict(img[None])[0, 1]
            p = model.predict(batch)[:, 1]
            base.append(p0)
            drops_lesion.append(p0 - p[0])
            drops_random.append(p0 - p[1])
        out[m] = {"cases": len(idx), "p_abnormal": round(float(np.mean(base)), 4),
                  "drop_lesion_patches": round(float(np.mean(drops_lesion)), 4),
                  "drop_random_patches": round(float(np.mean(drops_random)), 4)}
    return out


def noise_free(modality: str, split: str, index: int, realisations: int) -> np.ndarray:
    """The case's expectation over its acquisition noise (Monte Carlo over ``noise_seed``)."""
    acc = np.zeros((224, 224), np.float64)
    for r in range(realisations):
        acc += make_phantom(modality, split, index, noise_seed=r).image[..., 0]
    return (acc / realisations).astype(np.float32)


def mae_vs_telea(mae: MAEFiller, data: dict, cases: int, rng: np.random.Generator, split: str = "test",
                 realisations: int = 32) -> dict:
    """PSNR on hidden pixels: the MAE, Telea inpainting, and the noise-free oracle.

    The oracle predicts each hidden pixel by the case's expectation over its acquisition noise (it
    knows the anatomy and lesions exactly, not the noise). No inpainting can do better, up to what
    the ~1 px correlation of ultrasound speckle across a patch edge tells about the next pixels.
    Its gain over Telea is the largest gain possible.
    """
    grid = PatchGrid(224, 224, PATCH)
    clean = {}
    for k, m in enumerate(MODALITIES):
        for j in range(cases):
            clean[k, j] = noise_free(m, split, j, realisations)
    res: dict[str, dict[str, dict[str, float]]] = {}
    for ratio in (0.25, 0.5, 0.75):
        res[str(ratio)] = {}
        for k, m in enumerate(MODALITIES):
            idx = np.nonzero(data["modality"] == k)[0][:cases]
            err_mae, err_telea, err_oracle = [], [], []
            for j, i in enumerate(idx):
                img = rgb(data["images"][i])
                visible = np.ones((1, grid.n_patches), bool)
                visible[0, rng.permutation(grid.n_patches)[: int(round(ratio * grid.n_patches))]] = False
                hidden = grid.hidden_pixels(visible)[0]
                recon = mae.fill(img, hidden[None])[0]
                telea = cv2.inpaint(data["images"][i], hidden.astype(np.uint8), 3, cv2.INPAINT_TELEA).astype(np.float32) / 255.0
                truth = img[..., 0][hidden]
                err_mae.append(np.mean((recon[..., 0][hidden] - truth) ** 2))
                err_telea.append(np.mean((telea[hidden] - truth) ** 2))
                err_oracle.append(np.mean((clean[k, j][hidden] - truth) ** 2))
            pm, pt, po = (10 * np.log10(1.0 / np.mean(e)) for e in (err_mae, err_telea, err_oracle))
            res[str(ratio)][m] = {"psnr_mae_db": round(float(pm), 2), "psnr_telea_db": round(float(pt), 2),
                                  "gain_db": round(float(pm - pt), 2), "psnr_oracle_db": round(float(po), 2),
                                  "max_gain_db": round(float(po - pt), 2), "cases": len(idx)}
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-modality", type=int, default=500)
    ap.add_argument("--lesion-cases", type=int, default=100)
    ap.add_argument("--mae-cases", type=int, default=60)
    ap.add_argument("--out", default=str(HERE / "model_eval.json"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mae", default=str(HERE / "mae_recon.onnx"), help="the MAE graph to measure")
    ap.add_argument("--only-mae", action="store_true", help="skip the classifier checks")
    ap.add_argument("--split", choices=["test", "shifted"], default="test")
    a = ap.parse_args()
    t0 = time.time()
    test = load_split(a.split, a.per_modality)
    mae = MAEFiller(a.mae, batch_size=32)
    report: dict = {"split": a.split, "test_cases_per_modality": a.per_modality, "classifiers": {}}
    for name in ("demo_cnn", "demo_vit"):
        path = HERE / f"{name}.onnx"
        if a.only_mae or not path.exists():
            continue
        with OnnxAdapter(path) as model:
            rng = np.random.default_rng(a.seed)
            report["classifiers"][name] = {"auroc": classifier_auroc(model, test),
                                           "lesion_fill": lesion_fill_check(model, mae, test, a.lesion_cases, rng)}
        print(name, json.dumps(report["classifiers"][name]), flush=True)
    report["mae_vs_telea"] = mae_vs_telea(mae, test, a.mae_cases, np.random.default_rng(a.seed), a.split)
    report["seconds"] = round(time.time() - t0)
    print(json.dumps(report["mae_vs_telea"], indent=1))
    Path(a.out).write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)


def print_table(r: dict) -> None:
    print("\n| model | AUROC chest | AUROC breast | lesion-fill drop chest / breast | random-fill drop chest / breast |")
    print("|---|---|---|---|---|")
    for name, c in r["classifiers"].items():
        lf = c["lesion_fill"]
        print(f"| {name} | {c['auroc']['chest_xray']:.4f} | {c['auroc']['breast_us']:.4f} | "
              f"{lf['chest_xray']['drop_lesion_patches']:.3f} / {lf['breast_us']['drop_lesion_patches']:.3f} | "
              f"{lf['chest_xray']['drop_random_patches']:.3f} / {lf['breast_us']['drop_random_patches']:.3f} |")
    print("\n| ratio | modality | MAE PSNR (dB) | Telea PSNR (dB) | gain (dB) | noise-free oracle PSNR (dB) "
          "| largest possible gain (dB) |")
    print("|---|---|---|---|---|---|---|")
    for ratio, per in r["mae_vs_telea"].items():
        for m, v in per.items():
            print(f"| {ratio} | {m} | {v['psnr_mae_db']:.2f} | {v['psnr_telea_db']:.2f} | {v['gain_db']:+.2f} | "
                  f"{v['psnr_oracle_db']:.2f} | {v['max_gain_db']:+.2f} |")


if __name__ == "__main__":
    main()
