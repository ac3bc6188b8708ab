"""``blackbox-lime calibrate`` and ``mae fit``: choose the fill once per site; fit GM's MAE to the site's images."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from blackbox_lime.cli.common import (
    EXIT_OK,
    UserError,
    adapter_from_options,
    as_typed,
    model_key,
    model_record,
    redact_logs,
    target_index,
)


def run_calibrate(a: argparse.Namespace) -> int:
    """Choose the fill for a site's images (pilot queries only) and write it with its evidence."""
    from blackbox_lime.calibration import calibrate, images_digest, to_toml
    from blackbox_lime.config import ExplainConfig
    from blackbox_lime.explainer import _progress
    from blackbox_lime.outputs import atomic_write_bytes, check_writable

    if a.max_images < 1:
        raise UserError(f"--max-images must be an integer >= 1. Got {a.max_images} instead.")
    loaded, _ = _load_site_images(a.images, a.max_images, "nothing was written.")
    out = Path(a.out)
    adapter = adapter_from_options(a)  # before touching the output folder: a bad model or endpoint leaves nothing behind
    redact_logs(adapter)
    with adapter:
        check_writable(out.parent if str(out.parent) else ".")
        target = target_index(a.target, adapter.info.class_names)
        bar = _progress(len(loaded), not a.quiet, unit="image")
        try:
            result = calibrate(adapter, [x.pixels for x in loaded], ExplainConfig(mae_challenger=a.mae_challenger),
                               target=target, seed=a.seed, mae_path=a.mae, progress=bar.update, device=a.device)
        except ValueError as exc:
            raise as_typed(exc) from None
        finally:
            bar.close()
        model = model_key(model_record(a, adapter))
    atomic_write_bytes(out, to_toml(result, model, images_digest([x.sha256 for x in loaded])).encode())
    ev = result["evidence"]
    psnr = ", ".join(f"{k} {v:.2f} dB" for k, v in ev["median_recon_psnr_db"].items())
    scores = ", ".join(f"{k} {v:.3f}" for k, v in ev["median_scores"].items())
    print(f"{out}: fill {result['fill']} for {ev['images']} images (median reconstruction PSNR: {psnr or 'n/a'}; "
          f"median evidence R2: {scores or 'n/a'}; {ev['queries']} queries, {ev['seconds']:.1f}s). {ev['reason']}.",
          file=sys.stderr)
    return EXIT_OK


def _load_site_images(paths: list[str | Path], limit: int | None, what: str) -> tuple[list[Any], list[Path]]:
    """Every image of the given files and folders, read, or a UserError listing the unreadable ones."""
    from blackbox_lime.image_io import IMAGE_SUFFIXES, ImageError, find_images, load_image

    try:
        found = find_images(paths)[:limit]
    except ImageError as exc:
        raise UserError(str(exc)) from None
    if not found:
        raise UserError(f"No images found in {', '.join(map(str, paths))} (looked for {', '.join(IMAGE_SUFFIXES)}).")
    loaded, bad = [], []
    for p in found:
        try:
            loaded.append(load_image(p))
        except ImageError as exc:
            bad.append(f"{p.name} ({exc})")
    if bad:
        raise UserError(f"{len(bad)} of {len(found)} images could not be read: {'; '.join(bad[:5])}"
                        + (" ..." if len(bad) > 5 else "") + f". Remove or fix them; {what}")
    return loaded, found


def run_mae_fit(a: argparse.Namespace) -> int:
    """Fit the MAE on a site's images and write the ONNX graphs and the model card."""
    import numpy as np

    from blackbox_lime.calibration import images_digest
    from blackbox_lime.explainer import to_canvas
    from blackbox_lime.outputs import check_writable

    try:
        import torch  # noqa: F401
    except ImportError:
        raise UserError("mae fit needs torch: pip install 'blackbox-lime[train]' (the explain path does not).") from None
    if a.minutes <= 0:
        raise UserError(f"--minutes must be a number > 0. Got {a.minutes} instead.")
    if a.max_images is not None and a.max_images < 1:
        raise UserError(f"--max-images must be an integer >= 1. Got {a.max_images} instead.")
    out = Path(a.out)
    if out.suffix != ".onnx":
        raise UserError(f"--out must name an .onnx file. Got {a.out!r} instead.")
    loaded, _ = _load_site_images(a.images, a.max_images, "no MAE was written.")
    if len(loaded) < max(a.min_images, 8):
        raise UserError(f"mae fit needs at least {max(a.min_images, 8)} images to fit and hold some out; found "
                        f"{len(loaded)} in {', '.join(a.images)}. Add images or lower --min-images.")
    check_writable(out.parent if str(out.parent) else ".")
    from blackbox_lime.mae_fit import MAEFitError, fit_mae

    canvases = np.stack([np.round(to_canvas(x.pixels, (224, 224), 3, []) * 255).astype(np.uint8) for x in loaded])
    bar = None
    if not a.quiet:
        from tqdm import tqdm

        bar = tqdm(total=round(a.minutes * 60), unit="s", file=sys.stderr, leave=False, dynamic_ncols=True,
                   desc="mae fit")

    def progress(elapsed: float, step: int, loss: float) -> None:
        if bar is not None:
            bar.n = min(bar.total, int(elapsed))
            bar.set_postfix(step=step, loss=f"{loss:.4f}", refresh=False)
            bar.refresh()

    try:
        card = fit_mae(canvases, out, minutes=a.minutes, start=a.start, seed=a.seed, device=a.device,
                       images_sha256=images_digest([x.sha256 for x in loaded]), progress=progress)
    except MAEFitError as exc:
        raise UserError(str(exc)) from None
    finally:
        if bar is not None:
            bar.close()
    t = card["training"]
    psnr = ", ".join(f"{k} {v:.2f}" for k, v in t["held_out_psnr_db"].items())
    print(f"{out}: MAE fitted on {t['train_images']} images ({t['steps']} steps in {t['train_seconds']:.0f}s on "
          f"{t['device']}); held-out PSNR on hidden pixels (dB): {psnr}. Use it with explain --mae {out.name}.",
          file=sys.stderr)
    return EXIT_OK
