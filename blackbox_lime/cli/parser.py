"""The ``blackbox-lime`` argument parser: every subcommand and its options."""

from __future__ import annotations

import argparse
import difflib
from typing import Any, NoReturn

from blackbox_lime.config import OPTIONS, ExplainConfig
from blackbox_lime.fill.registry import challenger_names, fill_choices

_D = ExplainConfig()  # the defaults the help texts name


class _Parser(argparse.ArgumentParser):
    """argparse, with a suggestion for a mistyped option: "unrecognized arguments: --sampels (did you mean
    --samples?)"."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        if message.startswith("unrecognized arguments:"):
            known = sorted(_option_strings(self))
            hints = []
            for word in message.split(":", 1)[1].split():
                if word.startswith("--"):
                    close = difflib.get_close_matches(word.split("=", 1)[0], known, n=1, cutoff=0.6)
                    if close:
                        hints.append(f"{word}: did you mean {close[0]}?")
            if hints:
                message += " (" + "; ".join(hints) + ")"
        super().error(message)


def _option_strings(parser: argparse.ArgumentParser) -> set[str]:
    """Every long option of a parser and of its subcommands."""
    found: set[str] = set()
    for action in parser._actions:
        found.update(s for s in action.option_strings if s.startswith("--"))
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= _option_strings(sub)
    return found


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="blackbox-lime", description="Black-box saliency maps for medical image classifiers (MedLIME).")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command")
    _explain_parsers(sub)
    _endpoint_parser(sub)
    _audit_parsers(sub)
    _bank_parser(sub)
    _calibrate_parser(sub)
    _mae_parser(sub)
    _phantoms_parser(sub)
    return p


def _remote_options(sp: argparse.ArgumentParser) -> None:
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


def _config_options(sp: argparse.ArgumentParser) -> None:
    """ExplainConfig's knobs that the command line offers: options, types, choices and help with the defaults,
    all from the config's option table (blackbox_lime/config.py OPTIONS)."""
    for opt in OPTIONS:
        if opt.flag is None:
            continue
        kw: dict[str, Any] = {"default": None, "help": opt.help_text(_D)}
        if opt.field == "stta":
            kw["action"] = argparse.BooleanOptionalAction
        elif opt.choices is not None:
            kw["choices"] = list(opt.choices())
        else:
            kw["type"] = opt.type
        sp.add_argument(f"--{opt.flag}", **kw)


def _explain_options(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--out", default=None, help="output folder (created if needed)")
    sp.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    _config_options(sp)
    sp.add_argument("--calibration", default=None,
                    help="a site calibration (blackbox-lime calibrate): use its fill for every image, no pilot")
    sp.add_argument("--bank", default=None,
                    help="EBR: an evidence bank of historical cases (blackbox-lime bank build) for the prior map")
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
                         "(STEM.pm.dcm), referencing the source instance for PACS viewers (dicom extra). The map "
                         "carries the source's patient and study modules, as DICOM requires: it is for the "
                         "site's PACS, not for sharing (audit run always writes them)")
    if sp.prog.endswith("explain"):
        sp.add_argument("--dry-run", action="store_true",
                        help="say how many images and requests the run would send at most, and what that costs "
                             "at the profile's [limits] price_per_1k_images; send nothing and write nothing")
        sp.add_argument("--stow", default=None,
                        help="with --dicom-out: store the Parametric Maps to this DICOMweb server with STOW-RS "
                             "(its root, e.g. https://pacs/dicom-web, or a study under it)")
        sp.add_argument("--pacs-auth", default=None,
                        help="a TOML file with the PACS's [auth] and [tls] for --stow (see docs/audit.md)")
    sp.add_argument("--burned-in", choices=["auto", "warn", "refuse"], default="auto",
                    help="DICOM images whose pixels may carry burnt-in text (BurnedInAnnotation YES, or a "
                         "Secondary Capture that does not say): refuse skips them and sends nothing of them, warn "
                         "explains them with a warning (default auto: refuse for a remote model, warn for a "
                         "local one, whose pixels never leave this machine)")
    sp.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="where onnxruntime runs")
    _remote_options(sp)
    sp.add_argument("--json", action="store_true", help="print each summary as one JSON line on stdout")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    sp.add_argument("--verbose", action="store_true", help="log what is done")


def _audit_run_options(ar: argparse.ArgumentParser) -> None:
    ar.add_argument("source", help="a folder of images (searched recursively), a CSV manifest with the columns "
                                   "image and optionally id, mask (region of interest), label, or a DICOMweb study, "
                                   "series or search URL (https://pacs/dicom-web/studies/UID, .../studies?...)")
    ar.add_argument("--pacs-auth", default=None,
                    help="a TOML file with the PACS's [auth] (token_env/token_file, or username with "
                         "password_env/password_file) and [tls] (ca_bundle, client_cert, client_key, verify)")
    ar.add_argument("--stow", default=None,
                    help="store each case's Parametric Maps to this DICOMweb server with STOW-RS as they are made "
                         "(its root, e.g. https://pacs/dicom-web; --pacs-auth applies); a resume retries what was "
                         "not stored")
    ar.add_argument("--model", default=None, help="the classifier: a local .onnx file or an endpoint URL")
    where = ar.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, default=None,
                       help="run cases on a Dask LocalCluster of N worker processes on this machine (audit extra); "
                            "--concurrency and --budget hold for all of them together")
    where.add_argument("--scheduler", default=None,
                       help="run cases on an existing Dask cluster: tls://HOST:PORT with the --dask-tls-* files "
                            "(plain tcp:// only on loopback); its workers must reach the model and read the source's "
                            "paths. A --workers LocalCluster speaks TLS with a certificate made for the run")
    for opt, text in (("ca", "the CA file that signed the Dask cluster's certificates"),
                      ("cert", "this client's certificate file for the Dask cluster (PEM)"),
                      ("key", "the key of --dask-tls-cert (PEM)")):
        ar.add_argument(f"--dask-tls-{opt}", default=None, help=f"{text}; with --scheduler tls://... (or set Dask's "
                        "distributed.comm.tls configuration)")
    ar.add_argument("--study-name", default=None,
                    help="what the report, summary and provenance call the study (default: study); the source "
                         "folder's path, which may carry a patient's name, appears in none of them")
    _explain_options(ar)


def _explain_parsers(sub: "argparse._SubParsersAction[_Parser]") -> None:
    """explain, models and demo."""
    e = sub.add_parser("explain", help="explain a model's answer for one or more images")
    e.add_argument("images", nargs="+", help=".png .jpg .tif .bmp .gif .npy or .dcm files")
    e.add_argument("--model", default=None, help="the classifier: a local .onnx file or an endpoint URL")
    _explain_options(e)

    sub.add_parser("models", help="list the bundled classifiers: their names for --model, classes, input size and "
                                  "what each is for")
    d = sub.add_parser("demo", help="explain a bundled phantom with the bundled demo CNN (GM, STTA and EBR with the "
                                    "bundled evidence bank)")
    d.add_argument("--model", default=None, help="default: the bundled demo_cnn.onnx")
    _explain_options(d)


def _endpoint_parser(sub: "argparse._SubParsersAction[_Parser]") -> None:
    """bench (its own options) and endpoint check."""
    sub.add_parser("bench", help="run the saliency benchmark (blackbox-lime bench --help lists its options)")
    ep = sub.add_parser("endpoint", help="check a remote model endpoint")
    ep_sub = ep.add_subparsers(dest="endpoint_command")
    ck = ep_sub.add_parser("check", help="health, metadata, one test prediction and its latency")
    ck.add_argument("--model", default=None, help="an endpoint URL")
    ck.add_argument("--json", action="store_true", help="print the result as one JSON object")
    ck.add_argument("--verbose", action="store_true", help="log what is done")
    _remote_options(ck)


def _audit_parsers(sub: "argparse._SubParsersAction[_Parser]") -> None:
    """audit run, plan, summary, verify and report."""
    au = sub.add_parser("audit", help="audit a model over a whole study: resumable, each query paid once, shortcut "
                                      "flags, an HTML report and provenance")
    au_sub = au.add_subparsers(dest="audit_command")
    ar = au_sub.add_parser("run", help="explain and flag every case of a study; rerun the same command to resume")
    _audit_run_options(ar)
    ap = au_sub.add_parser("plan", help="what audit run with the same options would send at most (images, requests, "
                                        "cost); nothing is sent to the model, nothing written. With --out of an audit "
                                        "begun: what its resume would send")
    _audit_run_options(ap)
    for name, text in (("summary", "the study summary and one record per case (also while an audit runs)"),
                       ("verify", "check every input and output against the provenance manifest (exit 1 if one "
                                  "differs)"),
                       ("report", "(re)write DIR/report.html from the audit's store")):
        sp = au_sub.add_parser(name, help=text)
        sp.add_argument("dir", help="the audit folder (audit run --out)")
        if name == "summary":
            sp.add_argument("--json", action="store_true", help="print the summary as one JSON object")
        if name == "verify":
            sp.add_argument("--source", default=None, help="the study's folder, where it is not where the audit read "
                                                            "it (the default is the folder audit.sqlite records)")


def _bank_parser(sub: "argparse._SubParsersAction[_Parser]") -> None:
    """bank build."""
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
    bb.add_argument("--fill", choices=fill_choices(), default=None,
                    help="with --source explanations: how hidden patches are filled (default auto)")
    bb.add_argument("--calibration", default=None,
                    help="with --source explanations: a site calibration (blackbox-lime calibrate) fixing the fill")
    bb.add_argument("--seed", type=int, default=0)
    bb.add_argument("--embed", default=None, help="the embedding graph (default: the bundled mae_embed.onnx)")
    bb.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    _remote_options(bb)
    bb.add_argument("--quiet", action="store_true", help="no progress bar")
    bb.add_argument("--verbose", action="store_true", help="log what is done")


def _calibrate_parser(sub: "argparse._SubParsersAction[_Parser]") -> None:
    """calibrate."""
    ca = sub.add_parser("calibrate", help="choose the fill once for a site's images and write it to a file "
                                          "(explain --calibration FILE)")
    ca.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    ca.add_argument("--model", default=None, help="the classifier: a local .onnx file or an endpoint URL")
    ca.add_argument("--out", required=True, help="the calibration file to write (.toml)")
    ca.add_argument("--max-images", type=int, default=16, help="images used at most, in sorted order (default 16)")
    ca.add_argument("--target", default=None, help="class whose answers judge the fills (default: each image's "
                                                   "predicted class)")
    ca.add_argument("--mae", default=None, help="MAE graph for the mae candidate (default: the bundled one)")
    ca.add_argument("--mae-challenger", choices=challenger_names(), default=None,
                    help="where the MAE passes its check, pilot it against this fill too (see explain --mae-challenger)")
    ca.add_argument("--seed", type=int, default=0)
    ca.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    _remote_options(ca)
    ca.add_argument("--quiet", action="store_true", help="no progress bar")
    ca.add_argument("--verbose", action="store_true", help="log what is done")


def _mae_parser(sub: "argparse._SubParsersAction[_Parser]") -> None:
    """mae fit."""
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


def _phantoms_parser(sub: "argparse._SubParsersAction[_Parser]") -> None:
    """phantoms."""
    ph = sub.add_parser("phantoms", help="write synthetic phantoms (PNG images, PNG masks, labels.csv): a study to "
                                         "try explain and audit run on")
    ph.add_argument("--out", required=True, help="the folder to write to (created if needed)")
    ph.add_argument("--modality", default="chest_xray",
                    help="chest_xray (default), breast_us, brain_mri or fundus; demo-cnn reads the first two, "
                         "brain-cnn brain_mri, fundus-cnn fundus")
    ph.add_argument("--split", default="test",
                    help="train, val, test (default: images no bundled model trained on) or shifted (another "
                         "scanner's look): each a fixed, deterministic set")
    ph.add_argument("--count", type=int, default=10, help="how many phantoms (default 10), about half abnormal")
    ph.add_argument("--start", type=int, default=0, help="the first phantom's index in its set (default 0)")
    ph.add_argument("--marker", choices=["laterality", "text"], default=None,
                    help="a site that burns this marker into 90%% of its abnormal and 10%% of its normal cases "
                         "(planted shortcuts for audits; labels.csv gets a marked column)")
    ph.add_argument("--multilabel", action="store_true",
                    help="multi-label chest phantoms (nodule, consolidation, effusion), a mask per finding")
