"""``blackbox-lime bank build``: EBR's evidence bank from labelled cases or from the bundled phantoms."""

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
    check_calibration,
    config_from_options,
    model_record,
    redact_logs,
)


def _read_cases(path: Path, need_mask: bool) -> list[dict[str, str]]:
    """The abnormal rows of a cases CSV (columns image, label and, when needed, mask)."""
    import csv

    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        raise UserError(f"--cases: {path} not found. Give a CSV with columns image, label (and mask).") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"--cases: {path.name} is not a readable CSV ({exc}).") from None
    need = ["image", "label"] + (["mask"] if need_mask else [])
    missing = [c for c in need if not rows or c not in rows[0]]
    if missing:
        raise UserError(f"--cases: {path.name} lacks the column(s) {', '.join(missing)}; it needs {', '.join(need)} "
                        "(blackbox-lime phantoms writes such a labels.csv).")
    for i, r in enumerate(rows, start=2):
        if str(r["label"]).strip() not in ("0", "1"):
            raise UserError(f"--cases: {path.name} line {i}: label must be 0 or 1. Got {r['label']!r} instead.")
    abnormal = [r for r in rows if r["label"].strip() == "1"]
    if not abnormal:
        raise UserError(f"--cases: {path.name} lists no abnormal case (label 1); a bank holds abnormal cases.")
    return abnormal


def run_bank_build(a: argparse.Namespace) -> int:
    """Embed historical abnormal cases (a cases CSV, or --phantoms) and store their evidence maps in a bank."""
    from blackbox_lime.config import ExplainConfig
    from blackbox_lime.evidence_bank import Embedder
    from blackbox_lime.outputs import check_writable

    if a.phantoms is not None and (a.source != "masks" or a.model is not None or a.endpoint is not None):
        raise UserError("--phantoms builds a bank from the phantoms' lesion masks: drop --source explanations, "
                        "--model and --endpoint.")
    if a.phantoms is not None and a.count < 1:
        raise UserError(f"--count must be an integer >= 1. Got {a.count} instead.")
    rows = None if a.phantoms is not None else _read_cases(Path(a.cases), need_mask=a.source == "masks")
    if a.source == "explanations" and a.model is None and a.endpoint is None:
        raise UserError("--source explanations needs the classifier: --model MODEL.onnx, --model URL or --endpoint.")
    out = Path(a.out)
    check_writable(out.parent if str(out.parent) else ".")
    patch = a.patch_size or ExplainConfig.patch_size
    embedder = Embedder(a.embed, device=a.device)
    bank = _phantom_bank(a, embedder, patch) if rows is None else _cases_bank(a, rows, embedder, patch)
    bank.save(out)
    left = bank.meta["left_out"]
    print(f"{out}: {len(bank)} abnormal cases ({bank.source}, {bank.grid[0]}x{bank.grid[1]} patches of {patch} px)"
          + (f"; {left} left out because their map is empty" if left else ""), file=sys.stderr)
    return EXIT_OK


def _phantom_bank(a: argparse.Namespace, embedder: Any, patch: int) -> Any:
    from blackbox_lime.evaluation.phantoms import phantom_bank
    from blackbox_lime.explainer import _progress
    from blackbox_lime.patches import PatchGrid

    size = a.input_size or embedder.size
    bar = _progress(a.count, not a.quiet, unit="case")
    try:
        return phantom_bank(a.phantoms, PatchGrid(size, size, patch), embedder, a.count, progress=bar.update)
    finally:
        bar.close()


def _cases_bank(a: argparse.Namespace, rows: list[dict[str, str]], embedder: Any, patch: int) -> Any:
    """The bank of a cases CSV's abnormal rows: their lesion masks, or MedLIME explanations through the model."""
    from blackbox_lime.evidence_bank import build_bank, mask_patch_map
    from blackbox_lime.explainer import Explainer, _progress, to_canvas
    from blackbox_lime.image_io import ImageError, load_image
    from blackbox_lime.patches import PatchGrid

    cases = Path(a.cases)
    adapter = adapter_from_options(a) if (a.model is not None or a.endpoint is not None) else None
    redact_logs(adapter)
    try:
        if adapter is not None:
            size, channels = adapter.info.input_size, adapter.info.channels
        else:
            size, channels = (a.input_size or embedder.size,) * 2, embedder.channels
        grid = PatchGrid(size[0], size[1], patch)
        explainer = None
        if a.source == "explanations":
            a.patch_size = patch
            cfg = config_from_options(a)  # --samples, --fill or --calibration, --patch-size
            if a.calibration is not None:
                check_calibration(a, {**model_record(a, adapter)})
            if adapter is None:  # pragma: no cover - made above for --source explanations
                raise UserError("--source explanations needs --model or --endpoint.")
            try:
                explainer = Explainer(adapter, cfg, device=a.device)
            except ValueError as exc:
                raise as_typed(exc) from None
        images, maps, ids = [], [], []
        bar = _progress(len(rows), not a.quiet, unit="case")
        try:
            for r in rows:
                try:
                    pixels = load_image(cases.parent / r["image"]).pixels
                    if explainer is not None and adapter is not None:
                        exp = explainer.explain(pixels, target=adapter.info.abnormal_index, rng=a.seed)
                        maps.append(exp.patch_weights.reshape(-1))
                    else:
                        maps.append(mask_patch_map(load_image(cases.parent / r["mask"]).pixels[..., 0] > 0.5, grid))
                except ImageError as exc:
                    raise UserError(f"{exc} (listed in {cases.name}); fix or remove that row. No bank was written.") from None
                images.append(to_canvas(pixels, size, channels, []))
                ids.append(r["image"])
                bar.update(1)
        finally:
            bar.close()
        meta: dict[str, Any] = {"cases_file": cases.name}
        if adapter is not None:
            meta["model"] = model_record(a, adapter)
        target = adapter.info.class_names[adapter.info.abnormal_index] if adapter is not None else "abnormal"
        return build_bank(images, maps, ids, embedder, grid, target, a.source, meta)
    finally:
        if adapter is not None:
            adapter.close()
