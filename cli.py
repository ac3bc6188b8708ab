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

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_INTERNAL, EXIT_USER = 0, 1, 2
EXIT_CASES_FAILED, EXIT_BUDGET = 3, 4  # audit run
DEMO_IMAGE = "chest_xray_test_00001.png"

log = logging.getLogger("blackbox_lime.cli")


class UserError(Exception):
    """An error the user can fix; printed as one line, exit code 2."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="blackbox-lime", description="Black-box saliency maps for medical image classifiers (MedLIME).")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command")

    def remote_options(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--endpoint", default=None, help="an endpoint profile (TOML) for a remote model")
        sp.add_argument("--budget", type=int, default=None, help="hard limit on images sent to the model, retries included")
        sp.add_argument("--max-batch", type=int, default=None, help="images per request (default: the profile's, or 32)")
        sp.add_argument("--concurrency", type=int, default=None, help="requests in flight at once (remote models)")
        sp.add_argument("--output-kind", choices=["probabilities", "logits", "multilabel", "multilabel_logits"],
                        default=None, help="what the model's output row is: exclusive probabilities or logits (softmax), "
                                           "or a multi-label model's per-finding probabilities or logits (sigmoid); "
                                           "default: the model's metadata or the profile's [output] kind")
        sp.add_argument("--allow-insecure-http", action="store_true",
                        help="permit plain http:// or grpc:// to a host that is not loopback (pixels travel unencrypted)")

    def explain_options(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--out", default=None, help="output folder (created if needed)")
        sp.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        sp.add_argument("--samples", type=int, default=None, help="perturbed images queried per explanation (default 500)")
        sp.add_argument("--patch-size", type=int, default=None, help="patch side in model-input pixels (default 16)")
        sp.add_argument("--fill", choices=["auto", "mae", "mean", "blur", "zero"], default=None,
                        help="how hidden patches are filled (default auto: per image, the MAE where it reconstructs "
                             "the image within 2 dB of a blur, else mean or blur by a pilot share of --samples)")
        sp.add_argument("--calibration", default=None,
                        help="a site calibration (blackbox-lime calibrate): use its fill for every image, no pilot")
        sp.add_argument("--lambda1", type=float, default=None,
                        help="surrogate L1 weight (default: tuned on the val split; lower keeps weaker evidence)")
        sp.add_argument("--lambda1-scale", choices=["response", "absolute"], default=None,
                        help="response (default): --lambda1 is relative to how much the answer moves; absolute: as is")
        sp.add_argument("--lambda1-cap", type=float, default=None,
                        help="use at most this fraction (0, 1] of the L1 weight that would empty the map (default 0.5; 1: no cap)")
        sp.add_argument("--kernel-width", type=float, default=None, help="proximity kernel width (default 1.0)")
        sp.add_argument("--stta", action=argparse.BooleanOptionalAction, default=None,
                        help="STTA: adapt the input's photometry to the model first (costs views*(2*iterations+2) "
                             "queries; default: off)")
        sp.add_argument("--stta-iterations", type=int, default=None, help="STTA's SPSA iterations (default 8)")
        sp.add_argument("--stta-views", type=int, default=None, help="STTA's views of the image (default 4)")
        sp.add_argument("--bank", default=None,
                        help="EBR: an evidence bank of historical cases (blackbox-lime bank build) for the prior map")
        sp.add_argument("--neighbours", type=int, default=None, help="EBR: nearest bank cases used (default 25)")
        sp.add_argument("--lambda2", type=float, default=None, help="weight of the pull towards the evidence prior")
        sp.add_argument("--mae", default=None, help="MAE graph for --fill mae (default: the bundled mae_recon.onnx)")
        sp.add_argument("--target", default=None,
                        help="what to explain: a class by index or name, a comma list, 'all', or 'positive' (every "
                             "finding with P >= --threshold, else the highest); default: the predicted class, or "
                             "'positive' for a multi-label model. Several targets share one set of queries")
        sp.add_argument("--threshold", type=float, default=0.5, help="for --target positive (default 0.5)")
        sp.add_argument("--frame", type=int, default=None, help="frame of a multi-frame DICOM")
        sp.add_argument("--max-pixels", type=int, default=None,
                        help="refuse images whose header claims more pixels than this, before decoding them "
                             "(default 100000000: 10^8, rows x columns x frames)")
        sp.add_argument("--dicom-out", action="store_true",
                        help="for DICOM inputs, also write each map as a DICOM Parametric Map on the source's grid "
                             "(STEM.pm.dcm), referencing the source instance for PACS viewers (dicom extra)")
        sp.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="where onnxruntime runs")
        remote_options(sp)
        sp.add_argument("--json", action="store_true", help="print each summary as one JSON line on stdout")
        sp.add_argument("--quiet", action="store_true", help="no progress bar")
        sp.add_argument("--verbose", action="store_true", help="log what is done")

    e = sub.add_parser("explain", help="explain a model's answer for one or more images")
    e.add_argument("images", nargs="+", help=".png .jpg .tif .bmp .gif .npy or .dcm files")
    e.add_argument("--model", default=None, help="the classifier: a local .onnx file or an endpoint URL")
    explain_options(e)

    d = sub.add_parser("demo", help="explain a bundled phantom with the bundled demo CNN (GM, STTA and EBR with the "
                                    "bundled evidence bank)")
    d.add_argument("--model", default=None, help="default: the bundled demo_cnn.onnx")
    explain_options(d)

    sub.add_parser("bench", help="run the saliency benchmark (blackbox-lime bench --help lists its options)")
    ep = sub.add_parser("endpoint", help="check a remote model endpoint")
    ep_sub = ep.add_subparsers(dest="endpoint_command")
    ck = ep_sub.add_parser("check", help="health, metadata, one test prediction and its latency")
    ck.add_argument("--model", default=None, help="an endpoint URL")
    ck.add_argument("--json", action="store_true", help="print the result as one JSON object")
    ck.add_argument("--verbose", action="store_true", help="log what is done")
    remote_options(ck)

    au = sub.add_parser("audit", help="audit a model over a whole study: resumable, each query paid once, shortcut "
                                      "flags, an HTML report and provenance")
    au_sub = au.add_subparsers(dest="audit_command")
    ar = au_sub.add_parser("run", help="explain and flag every case of a study; rerun the same command to resume")
    ar.add_argument("source", help="a folder of images (searched recursively) or a CSV manifest with the columns "
                                   "image and optionally id, mask (region of interest), label")
    ar.add_argument("--model", default=None, help="the classifier: a local .onnx file or an endpoint URL")
    where = ar.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, default=None,
                       help="run cases on a Dask LocalCluster of N worker processes on this machine (audit extra); "
                            "--concurrency and --budget hold for all of them together")
    where.add_argument("--scheduler", default=None,
                       help="run cases on an existing Dask cluster (tcp://HOST:PORT); its workers must reach the "
                            "model and read the source's paths")
    explain_options(ar)
    for name, text in (("summary", "the study summary and one record per case (also while an audit runs)"),
                       ("verify", "check every input and output against the provenance manifest (exit 1 if one "
                                  "differs)"),
                       ("report", "(re)write DIR/report.html from the audit's store")):
        sp = au_sub.add_parser(name, help=text)
        sp.add_argument("dir", help="the audit folder (audit run --out)")
        if name == "summary":
            sp.add_argument("--json", action="store_true", help="print the summary as one JSON object")

    bk = sub.add_parser("bank", help="build an evidence bank of historical cases for EBR")
    bk_sub = bk.add_subparsers(dest="bank_command")
    bb = bk_sub.add_parser("build", help="embed historical abnormal cases and store their evidence maps")
    src = bb.add_mutually_exclusive_group(required=True)
    src.add_argument("--cases", default=None,
                     help="a CSV with columns image, label (1 = abnormal) and, for --source masks, mask; paths relative "
                          "to the CSV (blackbox-lime phantoms writes one)")
    src.add_argument("--phantoms", choices=["chest_xray", "breast_us"], default=None,
                     help="the first --count abnormal train phantoms of this modality with their lesion masks (the "
                          "bank the benchmark and the demo use)")
    bb.add_argument("--count", type=int, default=200, help="with --phantoms: abnormal cases in the bank (default 200)")
    bb.add_argument("--out", required=True, help="the bank file to write (.npz)")
    bb.add_argument("--source", choices=["masks", "explanations"], default="masks",
                    help="masks (default): the annotated lesion masks; explanations: MedLIME maps through --model")
    bb.add_argument("--model", default=None,
                    help="the classifier the bank is for: sets the patch grid (input size); needed for explanations")
    bb.add_argument("--patch-size", type=int, default=None, help="patch side (default 16, as for explain)")
    bb.add_argument("--input-size", type=int, default=None,
                    help="the model's input side in px when no --model is given (default: the MAE's, 224)")
    bb.add_argument("--samples", type=int, default=None, help="queries per explanation with --source explanations")
    bb.add_argument("--fill", choices=["auto", "mae", "mean", "blur", "zero"], default=None,
                    help="with --source explanations: how hidden patches are filled (default auto)")
    bb.add_argument("--calibration", default=None,
                    help="with --source explanations: a site calibration (blackbox-lime calibrate) fixing the fill")
    bb.add_argument("--seed", type=int, default=0)
    bb.add_argument("--embed", default=None, help="the embedding graph (default: the bundled mae_embed.onnx)")
    bb.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    remote_options(bb)
    bb.add_argument("--quiet", action="store_true", help="no progress bar")
    bb.add_argument("--verbose", action="store_true", help="log what is done")

    ca = sub.add_parser("calibrate", help="choose the fill once for a site's images and write it to a file "
                                          "(explain --calibration FILE)")
    ca.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    ca.add_argument("--model", default=None, help="the classifier: a local .onnx file or an endpoint URL")
    ca.add_argument("--out", required=True, help="the calibration file to write (.toml)")
    ca.add_argument("--max-images", type=int, default=16, help="images used at most, in sorted order (default 16)")
    ca.add_argument("--target", default=None, help="class whose answers judge the fills (default: each image's "
                                                   "predicted class)")
    ca.add_argument("--mae", default=None, help="MAE graph for the mae candidate (default: the bundled one)")
    ca.add_argument("--seed", type=int, default=0)
    ca.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    remote_options(ca)
    ca.add_argument("--quiet", action="store_true", help="no progress bar")
    ca.add_argument("--verbose", action="store_true", help="log what is done")

    mp = sub.add_parser("mae", help="fit GM's MAE to your own images")
    mp_sub = mp.add_subparsers(dest="mae_command")
    mf = mp_sub.add_parser("fit", help="fine-tune the bundled MAE (or train one) on a site's unlabelled images; "
                                       "needs the train extra (torch)")
    mf.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    mf.add_argument("--out", required=True, help="the MAE graph to write (.onnx); .embed.onnx and .card.json beside it")
    mf.add_argument("--minutes", type=float, default=6.0, help="training time budget in minutes (default 6)")
    mf.add_argument("--from", dest="start", choices=["bundled", "scratch"], default="bundled",
                    help="fine-tune the bundled MAE (default) or train from scratch")
    mf.add_argument("--min-images", type=int, default=50, help="refuse fewer images than this (default 50)")
    mf.add_argument("--max-images", type=int, default=None, help="use at most this many images, in sorted order")
    mf.add_argument("--seed", type=int, default=0)
    mf.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="where torch trains")
    mf.add_argument("--quiet", action="store_true", help="no progress bar")
    mf.add_argument("--verbose", action="store_true", help="log what is done")

    ph = sub.add_parser("phantoms", help="write synthetic phantoms (PNG images, PNG masks, labels.csv)")
    ph.add_argument("--out", required=True)
    ph.add_argument("--modality", default="chest_xray")
    ph.add_argument("--split", default="test")
    ph.add_argument("--count", type=int, default=10)
    ph.add_argument("--start", type=int, default=0)
    ph.add_argument("--marker", choices=["laterality", "text"], default=None,
                    help="a site that burns this marker into 90%% of its abnormal and 10%% of its normal cases "
                         "(planted shortcuts for audits; labels.csv gets a marked column)")
    ph.add_argument("--multilabel", action="store_true",
                    help="multi-label chest phantoms (nodule, consolidation, effusion), a mask per finding")
    return p


# command-line option -> ExplainConfig field; options left unset keep the config's defaults
_CONFIG_OPTIONS = {"samples": "n_samples", "patch_size": "patch_size", "fill": "fill", "lambda1": "lambda1",
                   "lambda1_scale": "lambda1_scale", "lambda1_cap": "lambda1_cap", "kernel_width": "kernel_width",
                   "stta": "stta", "stta_iterations": "stta_iterations", "stta_views": "stta_views",
                   "neighbours": "n_neighbours", "lambda2": "lambda2"}


def _as_typed(exc: ValueError) -> UserError:
    """The library's "The 'n_samples' parameter ..." error, naming the option the user typed (--samples)."""
    msg = str(exc)
    for option, field in _CONFIG_OPTIONS.items():
        msg = msg.replace(f"The {field!r} parameter", f"--{option.replace('_', '-')}")
    return UserError(msg)


def _config(a: argparse.Namespace) -> Any:
    from blackbox_lime.config import ExplainConfig

    if getattr(a, "seed", 0) is not None and getattr(a, "seed", 0) < 0:
        raise UserError(f"--seed must be an integer >= 0. Got {a.seed} instead.")
    if getattr(a, "max_pixels", None) is not None and a.max_pixels < 1:
        raise UserError(f"--max-pixels must be an integer >= 1. Got {a.max_pixels} instead.")

    kw = {field: getattr(a, option) for option, field in _CONFIG_OPTIONS.items()
          if getattr(a, option, None) is not None}
    if getattr(a, "calibration", None) is None and getattr(a, "fill", None) is None and getattr(a, "endpoint", None):
        a.calibration = _profile_calibration(a.endpoint)  # the profile's site calibration, unless the user chose
    if getattr(a, "calibration", None) is not None:
        from blackbox_lime.calibration import CalibrationError, read_calibration

        if a.fill is not None:
            raise UserError("Give either --fill or --calibration (which fixes the fill), not both.")
        try:
            a.calibration_data = read_calibration(a.calibration)
        except CalibrationError as exc:
            raise UserError(f"--calibration: {exc}") from None
        kw["fill"] = a.calibration_data["fill"]["chosen"]
    try:
        return ExplainConfig(**kw)
    except ValueError as exc:
        raise _as_typed(exc) from None


def _profile_calibration(endpoint: str) -> str | None:
    """The calibration an endpoint profile names, or None (a profile that cannot be read is reported later,
    when the adapter is made)."""
    from adapters.errors import ConfigError
    from adapters.profile import EndpointProfile

    try:
        return EndpointProfile.from_toml(endpoint).calibration
    except (ConfigError, OSError, ValueError):
        return None


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


def _targets(value: str | None, info: Any) -> Any:
    """--target: one class (index or name), a comma list, "all" or "positive"; the default is the predicted
    class, or "positive" for a multi-label model."""
    if value is None:
        return "positive" if info.multilabel else None
    if value in info.class_names:
        return list(info.class_names).index(value)
    if value in ("all", "positive"):
        return value
    if "," in value:
        picked = [_target(v.strip(), info.class_names) for v in value.split(",") if v.strip()]
        if len(set(picked)) != len(picked):
            raise UserError(f"--target {value!r} names a class twice.")
        return picked
    return _target(value, info.class_names)


def _adapter(a: argparse.Namespace) -> Any:
    """The adapter the options name: --endpoint profile, an endpoint URL, or a local .onnx file."""
    from adapters import load_adapter

    if a.endpoint is None and a.model is None:
        raise UserError("Name the classifier: --model MODEL.onnx, --model URL, or --endpoint PROFILE.toml.")
    if a.endpoint is None and not str(a.model).strip():
        raise UserError("--model is empty; give a .onnx file or an endpoint URL.")
    if a.endpoint is not None and not str(a.endpoint).strip():
        raise UserError("--endpoint is empty; give an endpoint profile (.toml).")
    for opt in ("budget", "max_batch", "concurrency"):
        v = getattr(a, opt)
        if v is not None and v < 1:
            raise UserError(f"--{opt.replace('_', '-')} must be an integer >= 1. Got {v} instead.")
    kw: dict[str, Any] = {}
    if a.endpoint is None and "://" not in str(a.model):
        kw["device"] = getattr(a, "device", "auto")
    return load_adapter(None if a.endpoint else str(a.model), endpoint=a.endpoint, budget=a.budget,
                        max_batch=a.max_batch, concurrency=a.concurrency, output_kind=getattr(a, "output_kind", None),
                        allow_insecure_http=a.allow_insecure_http, **kw)


def _redact_logs(adapter: Any) -> None:
    """Defence in depth: scrub the adapter's secrets from every log record, whoever emits it."""
    if adapter is None:
        return
    redact = getattr(adapter, "redact", None)
    if redact is None or not getattr(redact, "secrets", None):
        return

    class _Scrub(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            record.msg, record.args = redact(record.getMessage()), ()
            return True

    for h in logging.getLogger().handlers:
        h.addFilter(_Scrub())


def _model_record(a: argparse.Namespace, adapter: Any) -> dict[str, Any]:
    from blackbox_lime.outputs import file_sha256

    if getattr(adapter, "transport", None) is not None:
        return {"endpoint": adapter.transport.describe()}
    model = Path(a.model)
    return {"model": {"file": model.name, "sha256": file_sha256(model)}}


def _explainer_and_target(a: argparse.Namespace, adapter: Any, cfg: Any) -> tuple[Any, Any]:
    """The explainer and the --target of explain and audit run: the checks that need the model (a patch
    size that must fit the MAE's patches, the bank's grid, the class names)."""
    from blackbox_lime.evidence_bank import BankError
    from blackbox_lime.explainer import Explainer

    try:
        explainer = Explainer(adapter, cfg, mae_path=a.mae, device=a.device, bank=a.bank)
    except BankError as exc:
        raise UserError(f"--bank: {exc}") from None
    except ValueError as exc:
        raise _as_typed(exc) from None
    if not 0.0 <= a.threshold <= 1.0:
        raise UserError(f"--threshold must be a probability in [0, 1]. Got {a.threshold} instead.")
    return explainer, _targets(a.target, adapter.info)


def run_explain(images: list[Path], a: argparse.Namespace) -> int:
    from blackbox_lime.outputs import (
        check_writable,
        file_sha256,
    )

    cfg = _config(a)
    adapter = _adapter(a)  # before touching the output folder: a bad model or endpoint leaves nothing behind
    _redact_logs(adapter)
    with adapter:
        explainer, target = _explainer_and_target(a, adapter, cfg)
        hashes = _model_record(a, adapter)
        if explainer.mae is not None:
            hashes["mae"] = {"file": explainer.mae.path.name, "sha256": file_sha256(explainer.mae.path)}
        if a.calibration is not None:
            _check_calibration(a, hashes)
            hashes["calibration"] = {"file": Path(a.calibration).name, "sha256": file_sha256(a.calibration),
                                     "fill": cfg.fill}
        created = not Path(a.out).exists()
        out = check_writable(a.out)  # only once every check passed: a refused call leaves no folder behind
        try:
            return _explain_images(images, a, adapter, explainer, target, hashes, out)
        finally:
            if created and out.is_dir() and not any(out.iterdir()):
                out.rmdir()  # every image failed: leave no empty folder behind


def _explain_images(images: list[Path], a: argparse.Namespace, adapter: Any, explainer: Any, target: Any,
                    hashes: dict[str, Any], out: Path) -> int:
    from blackbox_lime.explanation import ExplanationSet
    from blackbox_lime.image_io import DEFAULT_MAX_PIXELS, ImageError, load_image
    from blackbox_lime.outputs import OutputError, file_sha256

    if a.bank is not None:
        hashes["evidence_bank"] = {"file": Path(a.bank).name, "sha256": file_sha256(a.bank)}
    failed = 0
    stems: set[str] = set()
    for path in images:
        t0 = time.perf_counter()
        r0 = adapter.retries
        try:
            loaded = load_image(path, frame=a.frame, max_pixels=a.max_pixels or DEFAULT_MAX_PIXELS)
            t_io = time.perf_counter() - t0
            if not a.quiet:
                for note in loaded.notes:  # what was done to the pixels, said once (also in the JSON)
                    print(f"blackbox-lime: note: {path.name}: {note}", file=sys.stderr)
            exp = explainer.explain(loaded.pixels, target=target, rng=a.seed, progress=not a.quiet,
                                    threshold=a.threshold)
        except (ImageError, ValueError) as exc:
            print(f"blackbox-lime: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        stem = path.stem if path.stem not in stems else f"{path.stem}_{len(stems)}"
        stems.add(stem)
        try:
            if isinstance(exp, ExplanationSet) or adapter.info.multilabel:
                _write_findings(a, out, stem, path, loaded, list(exp) if isinstance(exp, ExplanationSet) else [exp],
                                hashes, adapter.retries - r0, t_io)
            else:
                _write_one(a, out, stem, path, loaded, exp, hashes, adapter.retries - r0, t_io)
        except OutputError as exc:
            print(f"blackbox-lime: error: {path.name}: {exc}", file=sys.stderr)
            failed += 1
    return EXIT_USER if failed else EXIT_OK


def _write_one(a: argparse.Namespace, out: Path, stem: str, path: Path, loaded: Any, exp: Any,
               hashes: dict[str, Any], retries: int, t_io: float) -> None:
    """One image's three files (all or nothing), its JSON line and its summary lines."""
    from blackbox_lime import __version__
    from blackbox_lime.outputs import explanation_files, write_all

    report = {
        "tool": "blackbox-lime", "version": __version__,
        "input": {"file": path.name, "sha256": loaded.sha256, "format": loaded.format,
                  "shape": list(loaded.pixels.shape), "notes": loaded.notes},
        **exp.summary(), "retries": retries, "models": hashes,
        "outputs": [f"{stem}.saliency.npy", f"{stem}.overlay.png", f"{stem}.json"],
    }
    report["timings_s"]["read_image"] = round(t_io, 4)
    pm = _dicom_maps(a, path, loaded, [(stem, exp.saliency, exp.target_name)], out)
    report["outputs"] += sorted(p.name for p in pm)
    write_all({**explanation_files(out, stem, loaded.pixels, exp, report), **pm})
    if a.json:
        print(json.dumps({k: report[k] for k in ("input", "target", "target_name", "target_prob", "probs", "r2",
                                                 "r2_heldout", "r2_evidence", "fill", "warnings",
                                                 "queries", "requests", "retries", "timings_s", "seed",
                                                 "outputs")}))
    if not a.quiet:
        for warning in exp.warnings:
            print(f"blackbox-lime: warning: {path.name}: {warning}", file=sys.stderr)
    if not a.json and not a.quiet:
        if exp.adaptation is not None and exp.adaptation["adapted"]:
            print(f"{path.name}: STTA adapted the input: P({exp.target_name}) "
                  f"{exp.adaptation['p_label_before']:.3f} -> {exp.adaptation['p_label_after']:.3f}",
                  file=sys.stderr)
        print(f"{path.name}: {exp.target_name} p={exp.target_prob:.3f} {_fill_line(exp)} "
              f"R2={exp.r2:.3f} held-out R2={exp.r2_heldout:.3f} evidence R2={exp.r2_evidence:.3f} {exp.queries} queries "
              f"{exp.timings['total']:.1f}s -> {out / (stem + '.overlay.png')}", file=sys.stderr)


def run_audit_command(a: argparse.Namespace) -> int:
    """audit run | summary | verify | report."""
    from blackbox_lime.audit.store import StoreError

    if a.audit_command is None:
        raise UserError("Use: blackbox-lime audit run SOURCE --model MODEL --out DIR (or audit summary|verify|report DIR).")
    try:
        if a.audit_command == "run":
            return run_audit(a)
        return _audit_read(a)
    except StoreError as exc:
        raise UserError(str(exc)) from None


def _audit_config(a: argparse.Namespace, cfg: Any, model: dict[str, Any], explainer: Any) -> dict[str, Any]:
    """What an audit's maps depend on, by option name: a resume must give the same values."""
    from blackbox_lime.outputs import file_sha256

    config: dict[str, Any] = {"source": str(Path(a.source).resolve()),
                              "--model" if a.endpoint is None else "--endpoint": model}
    for option, field in _CONFIG_OPTIONS.items():
        config[f"--{option.replace('_', '-')}"] = getattr(cfg, field)
    config.update({"--seed": a.seed, "--target": a.target, "--threshold": a.threshold, "--frame": a.frame,
                   "--output-kind": a.output_kind,
                   "--mae": None if explainer.mae is None else file_sha256(explainer.mae.path),
                   "--bank": None if a.bank is None else file_sha256(a.bank),
                   "--calibration": None if a.calibration is None else file_sha256(a.calibration)})
    return config


def run_audit(a: argparse.Namespace) -> int:
    """Explain and flag every case of a study, resumably; write the report and the provenance manifest."""
    import secrets

    from blackbox_lime.audit.answers import StoredAdapter
    from blackbox_lime.audit.provenance import write_provenance
    from blackbox_lime.audit.report import write_report
    from blackbox_lime.audit.runner import AuditRunner
    from blackbox_lime.image_io import DEFAULT_MAX_PIXELS
    from blackbox_lime.audit.source import SourceError, read_source, source_root
    from blackbox_lime.audit.store import STORE_NAME, AuditStore, config_difference
    from blackbox_lime.explainer import _progress
    from blackbox_lime.outputs import check_writable

    if a.out is None:
        raise UserError("--out is required: the audit folder (rerun the same command to resume).")
    out = Path(a.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {a.out} is a file; give a folder for the audit (new, or one to resume).")
    store_path = out / STORE_NAME
    resuming = store_path.is_file()
    if out.is_dir() and not resuming and any(out.iterdir()):
        raise UserError(f"--out {a.out} holds other files and no audit; give a new or empty folder.")
    if a.budget is not None and a.budget < 1:
        raise UserError(f"--budget must be an integer >= 1. Got {a.budget} instead.")
    if a.workers is not None and a.workers < 1:
        raise UserError(f"--workers must be an integer >= 1. Got {a.workers} instead.")
    budget, a.budget = a.budget, None  # the audit's budget spans resumes: the store keeps the count
    old = AuditStore.open(store_path) if resuming else None  # read-write: closing it leaves no -wal/-shm behind
    try:
        salt = old.get("salt") if old is not None else secrets.token_hex(16)
        try:
            cases = read_source(a.source, salt)
        except SourceError as exc:
            raise UserError(f"{exc} Nothing was written.") from None
        cfg = _config(a)
        adapter = _adapter(a)  # before anything is written: a bad model or endpoint leaves nothing behind
        _redact_logs(adapter)
        try:
            explainer, target = _explainer_and_target(a, adapter, cfg)
            model = _model_record(a, adapter)
            if a.calibration is not None:
                _check_calibration(a, model)
            meta = getattr(adapter, "meta", None)
            if "endpoint" in model and meta is not None:  # what the endpoint said it serves, for the provenance
                model["endpoint"]["metadata"] = {
                    "name": meta.name, "input": [meta.input_name, meta.input_datatype, list(meta.input_shape)],
                    "output": [meta.output_name, list(meta.output_shape or [])]}
            config = _audit_config(a, cfg, _model_key(model), explainer)
            if old is not None:
                diff = config_difference(old.config, config)
                if diff is not None:
                    raise UserError(f"{a.out} holds an audit started with other options: {diff}. Resume it with the "
                                    "same options, or give a new --out.")
                then = [c.id for c in old.cases()]
                if then != [c.id for c in cases]:
                    raise UserError(f"The source changed since the audit in {a.out} started: {len(then)} cases then, "
                                    f"{len(cases)} now. Audit the changed study in a new --out.")
                old.close()
                old = None
            check_writable(out)
            if resuming:
                store = AuditStore.open(store_path)
            else:
                kind = "folder" if Path(a.source).is_dir() else "manifest"
                store = AuditStore.create(store_path, config, cases, {
                    "salt": salt, "model": model, "source_kind": kind,
                    "root": str(source_root(a.source).resolve())})
            with store:
                store.put("budget", budget)
                stored = StoredAdapter(adapter, store, budget)
                explainer.adapter = stored  # every query of the audit goes through the store
                counts = store.counts()
                bar = _progress(len(cases), not a.quiet, unit="case")
                if hasattr(bar, "update"):
                    bar.update(counts["done"])

                def progress(case: Any, state: str) -> None:
                    if hasattr(bar, "set_postfix"):
                        bar.set_postfix(sent=store.totals()["sent"], failed=store.counts()["failed"], refresh=False)
                    bar.update(1)

                try:
                    if a.workers is not None or a.scheduler is not None:
                        result = _run_on_cluster(a, out, store, cfg, target, salt, budget, progress)
                    else:
                        result = AuditRunner(out, store, stored, explainer, root=source_root(a.source), seed=a.seed,
                                             target=target, frame=a.frame, salt=salt, threshold=a.threshold,
                                             max_pixels=a.max_pixels or DEFAULT_MAX_PIXELS, progress=progress).run()
                except KeyboardInterrupt:
                    bar.close()  # before the message, so the bar does not overwrite it
                    print(f"blackbox-lime: interrupted; every answered query is stored. Run the same command to "
                          f"resume the audit in {a.out}.", file=sys.stderr)
                    return 130
                finally:
                    bar.close()
                store.put("updated", time.time())
                report = write_report(out, store)
                digest = write_provenance(out, store, source_root(a.source))
                totals = store.totals()
        finally:
            adapter.close()
    finally:
        if old is not None:
            old.close()
    if a.json:
        from blackbox_lime.audit.report import study_summary

        with AuditStore.open(store_path, readonly=True) as ro:
            print(json.dumps(study_summary(ro)["study"]))
    for case_id, reason in result.failures[:10]:
        print(f"blackbox-lime: case {case_id} failed: {reason}", file=sys.stderr)
    print(f"{a.out}: {result.done} of {len(cases)} cases explained, {result.failed} failed, {result.pending} pending; "
          f"{totals['sent']} images sent in all ({totals['reused']} answers reused from the store). Report: {report}. "
          f"provenance.json SHA-256 {digest}.", file=sys.stderr)
    if result.stopped is not None:
        print(f"blackbox-lime: stopped: {result.stopped}", file=sys.stderr)
        return EXIT_BUDGET
    return EXIT_CASES_FAILED if result.failed else EXIT_OK


def _run_on_cluster(a: argparse.Namespace, out: Path, store: Any, cfg: Any, target: Any, salt: str,
                    budget: int | None, progress: Any) -> Any:
    """audit run --workers N | --scheduler ADDR: the cases on Dask workers, this process the only writer."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise UserError("--workers and --scheduler need Dask: pip install 'blackbox-lime[audit]'.") from None
    from blackbox_lime.audit.cluster import WorkerSettings, run_on_cluster
    from blackbox_lime.audit.source import source_root
    from blackbox_lime.image_io import DEFAULT_MAX_PIXELS

    settings = WorkerSettings(
        model=None if a.model is None else (a.model if "://" in str(a.model) else str(Path(a.model).resolve())),
        endpoint=None if a.endpoint is None else str(Path(a.endpoint).resolve()), max_batch=a.max_batch,
        output_kind=a.output_kind, allow_insecure_http=a.allow_insecure_http, device=a.device, config=cfg,
        mae=None if a.mae is None else str(Path(a.mae).resolve()),
        bank=None if a.bank is None else str(Path(a.bank).resolve()), seed=a.seed, target=target,
        threshold=a.threshold, frame=a.frame, salt=salt, root=str(source_root(a.source).resolve()), budget=budget,
        concurrency=a.concurrency or 1, max_pixels=a.max_pixels or DEFAULT_MAX_PIXELS)
    cluster = None
    quiet = logging.INFO if a.verbose else logging.WARNING
    for name in ("distributed", "distributed.scheduler", "distributed.nanny", "distributed.core", "distributed.http"):
        logging.getLogger(name).setLevel(quiet)
    try:
        if a.workers is not None:
            cluster = LocalCluster(n_workers=a.workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                                   dashboard_address=None, silence_logs=quiet)
            client = Client(cluster)
        else:
            client = Client(a.scheduler, timeout=20)
    except (OSError, TimeoutError, ValueError) as exc:
        raise UserError(f"Cannot reach the Dask scheduler {a.scheduler or 'LocalCluster'}: {exc}. Start it (dask "
                        "scheduler / dask worker) or check the address.") from None
    try:
        return run_on_cluster(client, out, store, settings, progress)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _audit_read(a: argparse.Namespace) -> int:
    """audit summary | verify | report DIR."""
    from blackbox_lime.audit.store import STORE_NAME, AuditStore

    out = Path(a.dir)
    if a.audit_command == "verify":
        from blackbox_lime.audit.provenance import verify

        if not out.is_dir():
            raise UserError(f"{a.dir} is not an audit folder (audit run --out).")
        ok, message, _ = verify(out)
        print(f"{a.dir}: {message}" if ok else f"blackbox-lime: verify: {message}", file=sys.stdout if ok else sys.stderr)
        return EXIT_OK if ok else EXIT_INTERNAL
    with AuditStore.open(out / STORE_NAME, readonly=a.audit_command == "summary") as store:
        if a.audit_command == "report":
            from blackbox_lime.audit.provenance import refresh_report_hashes
            from blackbox_lime.audit.report import write_report

            path = write_report(out, store)
            refresh_report_hashes(out)
            print(f"{path}", file=sys.stderr)
            return EXIT_OK
        from blackbox_lime.audit.report import study_summary

        summary = study_summary(store)
    if a.json:
        print(json.dumps(summary))
        return EXIT_OK
    st = summary["study"]
    t = st["totals"]
    lines = [f"audit     {a.dir}: {st['cases']} cases; {st['done']} done, {st['failed']} failed, {st['pending']} pending"
             + (" (complete)" if st["complete"] else ""),
             f"queries   {t['sent']} images sent in {t['requests']} requests ({t['retries']} retries); "
             f"{t['reused']} answers reused from the store" + (f"; budget {st['budget']}" if st["budget"] else ""),
             f"flagged   {st['flagged_cases']} of {st['done']} explained cases"
             + (f" ({st['explained_findings']} findings explained)" if len(st["by_finding"]) > 1 else "")
             + "".join(f"; {f} {d['cases']}" for f, d in st["flags"].items() if d["cases"])]
    lines.append(f"{'case':<20} {'state':<8} {'class':<12} {'P':>6} {'evid.R2':>8} {'queries':>8}  flags")
    for c in summary["cases"]:  # one row per (case, explained finding)
        p = "" if c.get("target_prob") is None else f"{c['target_prob']:.3f}"
        r2 = "" if c.get("r2_evidence") is None else f"{c['r2_evidence']:.3f}"
        extra = ", ".join(c.get("flags") or []) if c["state"] != "failed" else c.get("reason", "")
        lines.append(f"{c['id']:<20} {c['state']:<8} {str(c.get('target_name') or ''):<12} {p:>6} {r2:>8} "
                     f"{str(c.get('queries') or ''):>8}  {extra}")
    print("\n".join(lines))
    return EXIT_OK


def _dicom_maps(a: argparse.Namespace, path: Path, loaded: Any, maps: list[tuple[str, Any, str]],
                out: Path) -> dict[Path, bytes]:
    """--dicom-out: the Parametric Maps of a DICOM input ({} for other inputs, or where none can be written)."""
    if not getattr(a, "dicom_out", False):
        return {}
    if loaded.format != "dicom":
        print(f"blackbox-lime: note: {path.name} is not DICOM; --dicom-out writes maps for DICOM inputs only.",
              file=sys.stderr)
        return {}
    from blackbox_lime.dicom_out import DicomOutError, parametric_map_files

    try:
        files = parametric_map_files(path.read_bytes(), maps, a.frame)
    except DicomOutError as exc:
        print(f"blackbox-lime: warning: {path.name}: no DICOM Parametric Map: {exc}", file=sys.stderr)
        return {}
    return {out / name: data for name, data in files.items()}


def _write_findings(a: argparse.Namespace, out: Path, stem: str, path: Path, loaded: Any, exps: list[Any],
                    hashes: dict[str, Any], retries: int, t_io: float) -> None:
    """Several findings of one image from one set of queries: their files, the JSON line and the summary lines."""
    from blackbox_lime import __version__
    from blackbox_lime.outputs import finding_stems, findings_files, shared_summary, write_all

    report = {"tool": "blackbox-lime", "version": __version__,
              "input": {"file": path.name, "sha256": loaded.sha256, "format": loaded.format,
                        "shape": list(loaded.pixels.shape), "notes": loaded.notes},
              **shared_summary(exps), "retries": retries, "models": hashes}
    report["timings_s"]["read_image"] = round(t_io, 4)
    names = finding_stems([e.target_name for e in exps])
    pm = _dicom_maps(a, path, loaded, [(f"{stem}.{n}", e.saliency, e.target_name) for n, e in zip(names, exps)], out)
    files = {**findings_files(out, stem, loaded.pixels, exps, report, [p.name for p in pm]), **pm}
    report_doc = json.loads(files[out / f"{stem}.json"])
    write_all(files)
    if a.json:
        keep = ("name", "index", "probability", "r2", "r2_heldout", "r2_evidence", "warnings", "files")
        print(json.dumps({**{k: report_doc[k] for k in ("input", "probs", "fill", "queries", "requests", "retries",
                                                         "queries_shared", "seed", "outputs")},
                          "findings": [{k: f[k] for k in keep} for f in report_doc["findings"]]}))
    if not a.quiet:
        for exp in exps:
            for warning in exp.warnings:
                print(f"blackbox-lime: warning: {path.name}: {exp.target_name}: {warning}", file=sys.stderr)
    if not a.json and not a.quiet:
        found = ", ".join(f"{e.target_name} p={e.target_prob:.3f} R2={e.r2:.3f}" for e in exps)
        print(f"{path.name}: {len(exps)} finding(s) from one set of {exps[0].queries} queries: {found} -> "
              f"{out / (stem + '.findings.png')}", file=sys.stderr)


def _model_key(record: dict[str, Any]) -> dict[str, Any]:
    """What identifies the model in a calibration: a local file's SHA-256, or an endpoint's URL and model."""
    if "model" in record and isinstance(record["model"], dict) and "sha256" in record["model"]:
        return {"sha256": record["model"]["sha256"]}
    ep = record.get("endpoint", {})
    return {k: ep[k] for k in ("url", "model") if ep.get(k) is not None}


def _check_calibration(a: argparse.Namespace, hashes: dict[str, Any]) -> None:
    from blackbox_lime.calibration import CalibrationError, check_fits

    try:
        check_fits(a.calibration_data, Path(a.calibration).name, _model_key(hashes),
                   hashes.get("mae", {}).get("sha256"))
    except CalibrationError as exc:
        raise UserError(str(exc)) from None


def run_calibrate(a: argparse.Namespace) -> int:
    """Choose the fill for a site's images (pilot queries only) and write it with its evidence."""
    from blackbox_lime.calibration import calibrate, images_digest, to_toml
    from blackbox_lime.explainer import _progress
    from blackbox_lime.outputs import atomic_write_bytes, check_writable

    if a.max_images < 1:
        raise UserError(f"--max-images must be an integer >= 1. Got {a.max_images} instead.")
    loaded, _ = _load_site_images(a.images, a.max_images, "nothing was written.")
    out = Path(a.out)
    adapter = _adapter(a)  # before touching the output folder: a bad model or endpoint leaves nothing behind
    _redact_logs(adapter)
    with adapter:
        check_writable(out.parent if str(out.parent) else ".")
        target = _target(a.target, adapter.info.class_names)
        bar = _progress(len(loaded), not a.quiet, unit="image")
        try:
            result = calibrate(adapter, [x.pixels for x in loaded], target=target, seed=a.seed, mae_path=a.mae,
                               progress=bar.update, device=a.device)
        except ValueError as exc:
            raise _as_typed(exc) from None
        finally:
            bar.close()
        model = _model_key(_model_record(a, adapter))
    atomic_write_bytes(out, to_toml(result, model, images_digest([x.sha256 for x in loaded])).encode())
    ev = result["evidence"]
    psnr = ", ".join(f"{k} {v:.2f} dB" for k, v in ev["median_recon_psnr_db"].items())
    scores = ", ".join(f"{k} {v:.3f}" for k, v in ev["median_scores"].items())
    print(f"{out}: fill {result['fill']} for {ev['images']} images (median reconstruction PSNR: {psnr or 'n/a'}; "
          f"median evidence R2: {scores or 'n/a'}; {ev['queries']} queries, {ev['seconds']:.1f}s). {ev['reason']}.",
          file=sys.stderr)
    return EXIT_OK


def _load_site_images(paths: list[str], limit: int | None, what: str) -> tuple[list[Any], list[Path]]:
    """Every image of the given files and folders, read, or a UserError listing the unreadable ones."""
    from blackbox_lime.image_io import IMAGE_SUFFIXES, ImageError, find_images, load_image

    try:
        found = find_images(paths)[:limit]
    except ImageError as exc:
        raise UserError(str(exc)) from None
    if not found:
        raise UserError(f"No images found in {', '.join(paths)} (looked for {', '.join(IMAGE_SUFFIXES)}).")
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


def _fill_line(exp: Any) -> str:
    """'fill=mae' or, for fill auto, 'fill=auto->mean (mae 0.12, mean 0.58, blur 0.40; 64 queries)'."""
    fill = exp.fill
    if fill.get("mode") != "auto":
        return f"fill={fill.get('chosen')}"
    scores = ", ".join(f"{k} {'flat' if v is None else format(v, '.2f')}" for k, v in fill["scores"].items())
    return f"fill=auto->{fill['chosen']} ({scores}; {fill['queries_spent_on_choice']} queries)"


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
    from blackbox_lime.evidence_bank import phantom_bank
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
    adapter = _adapter(a) if (a.model is not None or a.endpoint is not None) else None
    _redact_logs(adapter)
    try:
        if adapter is not None:
            size, channels = adapter.info.input_size, adapter.info.channels
        else:
            size, channels = (a.input_size or embedder.size,) * 2, embedder.channels
        grid = PatchGrid(size[0], size[1], patch)
        explainer = None
        if a.source == "explanations":
            a.patch_size = patch
            cfg = _config(a)  # --samples, --fill or --calibration, --patch-size
            if a.calibration is not None:
                _check_calibration(a, {**_model_record(a, adapter)})
            try:
                explainer = Explainer(adapter, cfg, device=a.device)
            except ValueError as exc:
                raise _as_typed(exc) from None
        images, maps, ids = [], [], []
        bar = _progress(len(rows), not a.quiet, unit="case")
        try:
            for r in rows:
                try:
                    pixels = load_image(cases.parent / r["image"]).pixels
                    if explainer is not None:
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
            meta["model"] = _model_record(a, adapter)
        target = adapter.info.class_names[adapter.info.abnormal_index] if adapter is not None else "abnormal"
        return build_bank(images, maps, ids, embedder, grid, target, a.source, meta)
    finally:
        if adapter is not None:
            adapter.close()


def run_endpoint_check(a: argparse.Namespace) -> int:
    """Health, metadata, a one-image prediction and a full-batch prediction, with latencies."""
    import numpy as np

    from blackbox_lime.explainer import to_canvas
    from blackbox_lime.image_io import load_image
    from blackbox_lime.models import bundled_example

    if a.model is not None and "://" not in a.model and a.endpoint is None:
        raise UserError("endpoint check needs --endpoint PROFILE.toml or --model URL (not a local file).")
    result: dict[str, Any] = {}
    adapter = _adapter(a)
    _redact_logs(adapter)
    with adapter:
        info = adapter.info
        result["endpoint"] = adapter.transport.describe()
        result["ready"] = adapter.ready()
        meta = adapter.meta
        result["metadata"] = None if meta is None else {
            "name": meta.name, "input": {"name": meta.input_name, "shape": list(meta.input_shape),
                                         "datatype": meta.input_datatype},
            "output": {"name": meta.output_name, "shape": list(meta.output_shape or [])}}
        result["model"] = {"input_size": list(info.input_size), "channels": info.channels,
                           "class_names": list(info.class_names), "abnormal_index": info.abnormal_index,
                           **{k: info.extra[k] for k in ("layout", "dtype", "output") if k in info.extra}}
        image = to_canvas(load_image(bundled_example(DEMO_IMAGE)).pixels, info.input_size, info.channels, [])
        t = time.perf_counter()
        probs = adapter.predict(image[None])
        one = time.perf_counter() - t
        result["test_prediction"] = {"image": DEMO_IMAGE, "probs": [round(float(p), 6) for p in probs[0]],
                                     "latency_s": round(one, 4), "batch_size": 1}
        n = adapter.max_batch
        t = time.perf_counter()
        batch_probs = adapter.predict(np.repeat(image[None], n, axis=0))
        full = time.perf_counter() - t
        agree = bool(np.allclose(batch_probs, probs[0], atol=1e-5))
        result["batch_prediction"] = {"batch_size": n, "latency_s": round(full, 4),
                                      "per_image_s": round(full / n, 5), "matches_single": agree}
        result["counters"] = adapter.counters()
    if a.json:
        print(json.dumps(result))
    else:
        ready = {True: "ready", False: "NOT ready", None: "unknown (the protocol has no health route)"}[result["ready"]]
        lines = [f"endpoint  {result['endpoint'].get('url')} ({result['endpoint']['protocol']}"
                 + (f", model {result['endpoint']['model']}" if result['endpoint'].get('model') else "") + ")",
                 f"health    {ready}"]
        if meta is not None:
            lines.append(f"metadata  input {meta.input_name} {meta.input_datatype} {list(meta.input_shape)}; "
                         f"output {meta.output_name} {list(meta.output_shape or [])}")
        else:
            lines.append("metadata  none (declared in the profile)")
        tp, bp = result["test_prediction"], result["batch_prediction"]
        lines.append(f"predict   {DEMO_IMAGE}: " + ", ".join(f"{c}={p:.4f}" for c, p in zip(info.class_names, tp["probs"]))
                     + f" in {tp['latency_s'] * 1000:.0f} ms (batch 1)")
        lines.append(f"batch     {bp['batch_size']} images in {bp['latency_s'] * 1000:.0f} ms "
                     f"({bp['per_image_s'] * 1000:.1f} ms/image); same answer as batch 1: {'yes' if agree else 'NO'}")
        print("\n".join(lines))
    if result["ready"] is False or not agree:
        return EXIT_USER
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["bench"]:  # the benchmark has its own options: blackbox-lime bench --help
        from blackbox_lime.bench import main as bench_main

        return bench_main(args[1:])
    parser = _parser()
    a = parser.parse_args(args)
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
        if a.command == "calibrate":
            return run_calibrate(a)
        if a.command == "mae":
            if a.mae_command != "fit":
                raise UserError("Use: blackbox-lime mae fit IMAGES --out site_mae.onnx.")
            return run_mae_fit(a)
        if a.command == "phantoms":
            from blackbox_lime.phantoms import write_phantoms

            if a.multilabel:
                from blackbox_lime.phantoms import write_multilabel_phantoms

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
        if a.out is None:
            raise UserError("--out is required: the folder to write the saliency maps to.")
        return run_explain([Path(p) for p in a.images], a)
    except (UserError, AdapterError, OutputError, ValueError, FileNotFoundError) as exc:  # BankError is a ValueError
        print(f"blackbox-lime: error: {exc}", file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:
        print("blackbox-lime: interrupted; no partial output was left.", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
