"""The ``blackbox-lime`` command.

    blackbox-lime demo [--out DIR]                      explain a bundled phantom with the bundled CNN
    blackbox-lime explain IMAGE [IMAGE ...] --model MODEL.onnx --out DIR [options]
    blackbox-lime phantoms --out DIR [--modality M] [--split S] [--count N]

Exit codes: 0 success, 2 a user error (bad image, model, option or output folder; one line, no
traceback), 1 an internal error (a bug: please report it with the traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

EXIT_OK, EXIT_INTERNAL, EXIT_USER = 0, 1, 2
DEMO_IMAGE = "chest_xray_test_00001.png"

log = logging.getLogger("blackbox_lime.cli")


class UserError(Exception):
    """An error the user can fix; printed as one line, exit code 2."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="blackbox-lime", description="Black-box saliency maps for medical image classifiers (MedLIME).")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command")

    def explain_options(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--out", default=None, help="output folder (created if needed)")
        sp.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        sp.add_argument("--samples", type=int, default=None, help="perturbed images queried per explanation (default 500)")
        sp.add_argument("--patch-size", type=int, default=None, help="patch side in model-input pixels (default 16)")
        sp.add_argument("--fill", choices=["mae", "mean", "blur", "zero"], default=None, help="how hidden patches are filled (default mae)")
        sp.add_argument("--mae", default=None, help="MAE graph for --fill mae (default: the bundled mae_recon.onnx)")
        sp.add_argument("--target", default=None, help="class to explain, by index or name (default: the predicted class)")
        sp.add_argument("--frame", type=int, default=None, help="frame of a multi-frame DICOM")
        sp.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="where onnxruntime runs")
        sp.add_argument("--json", action="store_true", help="print each summary as one JSON line on stdout")
        sp.add_argument("--quiet", action="store_true", help="no progress bar")
        sp.add_argument("--verbose", action="store_true", help="log what is done")

    e = sub.add_parser("explain", help="explain a model's answer for one or more images")
    e.add_argument("images", nargs="+", help=".png .jpg .tif .npy or .dcm files")
    e.add_argument("--model", required=True, help="the classifier: a local .onnx file")
    explain_options(e)

    d = sub.add_parser("demo", help="explain a bundled phantom with the bundled demo CNN")
    d.add_argument("--model", default=None, help="default: the bundled demo_cnn.onnx")
    explain_options(d)

    ph = sub.add_parser("phantoms", help="write synthetic phantoms (PNG images, PNG masks, labels.csv)")
    ph.add_argument("--out", required=True)
    ph.add_argument("--modality", default="chest_xray")
    ph.add_argument("--split", default="test")
    ph.add_argument("--count", type=int, default=10)
    ph.add_argument("--start", type=int, default=0)
    return p


def _config(a: argparse.Namespace) -> Any:
    from blackbox_lime.config import ExplainConfig

    kw: dict[str, Any] = {}
    if a.samples is not None:
        kw["n_samples"] = a.samples
    if a.patch_size is not None:
        kw["patch_size"] = a.patch_size
    if a.fill is not None:
        kw["fill"] = a.fill
    return ExplainConfig(**kw)


def _target(value: str | None, class_names: Sequence[str]) -> int | None:
    if value is None:
        return None
    if value.lstrip("-").isdigit():
        k = int(value)
        if 0 <= k < len(class_names):
            return k
    elif value in class_names:
        return list(class_names).index(value)
    raise UserError(f"--target {value!r} is not a class of this model; use an index 0..{len(class_names) - 1} "
                    f"or a name ({', '.join(class_names)}).")


def run_explain(images: list[Path], model: Path, a: argparse.Namespace) -> int:
    from adapters import load_adapter
    from blackbox_lime import __version__
    from blackbox_lime.explainer import Explainer
    from blackbox_lime.image_io import ImageError, load_image
    from blackbox_lime.outputs import check_writable, explanation_files, file_sha256, write_all

    cfg = _config(a)
    out = check_writable(a.out)
    adapter = load_adapter(str(model), device=a.device)
    with adapter:
        explainer = Explainer(adapter, cfg, mae_path=a.mae, device=a.device)
        target = _target(a.target, adapter.info.class_names)
        hashes = {"model": {"file": model.name, "sha256": file_sha256(model)}}
        mae = getattr(explainer.filler, "path", None)
        if mae is not None:
            hashes["mae"] = {"file": Path(mae).name, "sha256": file_sha256(mae)}
        failed = 0
        stems: set[str] = set()
        for path in images:
            t0 = time.perf_counter()
            try:
                loaded = load_image(path, frame=a.frame)
                t_io = time.perf_counter() - t0
                exp = explainer.explain(loaded.pixels, target=target, rng=a.seed, progress=not a.quiet)
            except (ImageError, ValueError) as exc:
                print(f"blackbox-lime: error: {exc}", file=sys.stderr)
                failed += 1
                continue
            stem = path.stem if path.stem not in stems else f"{path.stem}_{len(stems)}"
            stems.add(stem)
            report = {
                "tool": "blackbox-lime", "version": __version__,
                "input": {"file": path.name, "sha256": loaded.sha256, "format": loaded.format,
                          "shape": list(loaded.pixels.shape), "notes": loaded.notes},
                **exp.summary(), "models": hashes,
                "outputs": [f"{stem}.saliency.npy", f"{stem}.overlay.png", f"{stem}.json"],
            }
            report["timings_s"]["read_image"] = round(t_io, 4)
            write_all(explanation_files(out, stem, loaded.pixels, exp, report))
            if a.json:
                print(json.dumps({k: report[k] for k in ("input", "target", "target_name", "target_prob", "probs", "r2",
                                                         "queries", "requests", "timings_s", "seed", "outputs")}))
            elif not a.quiet:
                print(f"{path.name}: {exp.target_name} p={exp.target_prob:.3f} R2={exp.r2:.3f} "
                      f"{exp.queries} queries {exp.timings['total']:.1f}s -> {out / (stem + '.overlay.png')}",
                      file=sys.stderr)
    return EXIT_USER if failed else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    a = parser.parse_args(argv)
    if a.version:
        from blackbox_lime import __version__

        print(f"blackbox-lime {__version__}")
        return EXIT_OK
    if a.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USER
    logging.basicConfig(level=logging.INFO if getattr(a, "verbose", False) else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from adapters.errors import AdapterError
    from blackbox_lime.outputs import OutputError

    try:
        if a.command == "phantoms":
            from blackbox_lime.phantoms import write_phantoms

            print(write_phantoms(a.out, a.modality, a.split, a.count, a.start))
            return EXIT_OK
        if a.command == "demo":
            from blackbox_lime.models import bundled_example, bundled_model

            a.out = a.out or "blackbox_lime_demo"
            model = Path(a.model) if a.model else bundled_model("demo_cnn.onnx")
            return run_explain([bundled_example(DEMO_IMAGE)], model, a)
        if a.out is None:
            raise UserError("--out is required: the folder to write the saliency maps to.")
        return run_explain([Path(p) for p in a.images], Path(a.model), a)
    except (UserError, AdapterError, OutputError, ValueError, FileNotFoundError) as exc:
        print(f"blackbox-lime: error: {exc}", file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:
        print("blackbox-lime: interrupted; no partial output was left.", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
