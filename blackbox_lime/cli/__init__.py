"""The ``blackbox-lime`` command.

    blackbox-lime demo [--out DIR]                      explain a bundled phantom with the bundled CNN and bank
    blackbox-lime explain IMAGE [IMAGE ...] --model MODEL --out DIR [options]
    blackbox-lime endpoint check (--endpoint PROFILE.toml | --model URL)
    blackbox-lime calibrate IMAGES_OR_FOLDERS ... --model MODEL --out fill.toml   choose the fill once per site
    blackbox-lime mae fit IMAGES_OR_FOLDERS ... --out site_mae.onnx [--minutes 6]   fit GM's MAE to your images
    blackbox-lime audit run SOURCE --model MODEL --out DIR [explain options] [--budget N]   audit a whole study
    blackbox-lime audit summary DIR [--json] | audit verify DIR | audit report DIR
    blackbox-lime bank build --cases CASES.csv --out BANK.npz [--source masks|explanations --model MODEL]
    blackbox-lime phantoms --out DIR [--modality M] [--split S] [--count N]
    blackbox-lime bench [--quick] [--split val|test|shifted] ...   the saliency benchmark

MODEL is a local .onnx file or an endpoint URL: http(s)://host:port/v2/models/NAME (Open Inference
Protocol REST), http(s)://.../v1/models/NAME:predict (TF-Serving / Vertex JSON) or
grpc(s)://host:port/NAME (Open Inference Protocol gRPC). --endpoint names a TOML profile with the
URL, preprocessing, auth (token from an environment variable or a file), TLS, limits and budget.

Exit codes: 0 success, 2 a user error (bad image, model, option or output folder; one line, no
traceback), 1 an internal error (a bug: please report it with the traceback). audit run: 3 when the
audit completed but some cases failed, 4 when its budget ran out (rerun with a larger --budget to go
on); audit verify: 1 when a file differs from the provenance manifest.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from blackbox_lime.cli.audit import run_audit_command
from blackbox_lime.cli.bank import run_bank_build
from blackbox_lime.cli.common import DEMO_IMAGE, EXIT_OK, EXIT_USER, UserError
from blackbox_lime.cli.endpoint import run_endpoint_check
from blackbox_lime.cli.explain import run_explain
from blackbox_lime.cli.parser import build_parser
from blackbox_lime.cli.site import run_calibrate, run_mae_fit


def main(argv: Sequence[str] | None = None) -> int:
    """The command. A reader that closes the pipe early (``audit summary DIR | head -3``) ends it quietly."""
    try:
        code = _main(argv)
        sys.stdout.flush()  # here, not at exit: a closed pipe is caught below
        return code
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to say, and nobody to hear
        return EXIT_OK


def _main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["bench"]:  # the benchmark has its own options: blackbox-lime bench --help
        from blackbox_lime.evaluation.bench import main as bench_main

        return bench_main(args[1:])
    parser = build_parser()
    a = parser.parse_args(args)
    if a.version:
        from blackbox_lime._version import __version__

        print(f"blackbox-lime {__version__}")
        return EXIT_OK
    if a.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USER
    logging.basicConfig(level=logging.INFO if getattr(a, "verbose", False) else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from blackbox_lime.image_io import silence_dicom_libraries

    silence_dicom_libraries()  # their warnings quote DICOM fields: no patient name on stderr
    from blackbox_lime.adapters.errors import AdapterError
    from blackbox_lime.outputs import OutputError

    try:
        if a.command == "calibrate":
            return run_calibrate(a)
        if a.command == "mae":
            if a.mae_command != "fit":
                raise UserError("Use: blackbox-lime mae fit IMAGES --out site_mae.onnx.")
            return run_mae_fit(a)
        if a.command == "models":
            from blackbox_lime.cli.common import list_models

            print(list_models())
            return EXIT_OK
        if a.command == "phantoms":
            from blackbox_lime.evaluation.phantoms import write_phantoms

            if a.multilabel:
                from blackbox_lime.evaluation.phantoms import write_multilabel_phantoms

                print(write_multilabel_phantoms(a.out, a.split, a.count, a.start))
                return EXIT_OK
            print(write_phantoms(a.out, a.modality, a.split, a.count, a.start, a.marker))
            return EXIT_OK
        if a.command == "audit":
            return run_audit_command(a)
        if a.command == "bank":
            if a.bank_command != "build":
                raise UserError("Use: blackbox-lime bank build --cases CASES.csv --out BANK.npz.")
            return run_bank_build(a)
        if a.command == "endpoint":
            if a.endpoint_command != "check":
                raise UserError("Use: blackbox-lime endpoint check --endpoint PROFILE.toml (or --model URL).")
            return run_endpoint_check(a)
        if a.command == "demo":
            from blackbox_lime.models import bundled_example, bundled_model

            a.out = a.out or "blackbox_lime_demo"
            if a.model is None and a.endpoint is None:
                a.model = str(bundled_model("demo_cnn.onnx"))
            # the whole method: GM (the default fill), STTA, and EBR with the bundled bank of train phantoms
            a.stta = True if a.stta is None else a.stta
            a.bank = a.bank or str(bundled_model("bank_chest_xray.npz"))
            return run_explain([bundled_example(DEMO_IMAGE)], a)
        if a.out is None and not getattr(a, "dry_run", False):
            raise UserError("--out is required: the folder to write the saliency maps to.")
        return run_explain([Path(p) for p in a.images], a)
    except (UserError, AdapterError, OutputError, ValueError, FileNotFoundError) as exc:  # BankError is a ValueError
        from blackbox_lime.config import cli_text

        print(f"blackbox-lime: error: {cli_text(str(exc))}", file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:
        print("blackbox-lime: interrupted; no partial output was left.", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
