"""What the subcommands share: exit codes, the user error, the config, the adapter and the target from the options."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from blackbox_lime.config import cli_options, cli_text

EXIT_OK, EXIT_INTERNAL, EXIT_USER = 0, 1, 2
EXIT_CASES_FAILED, EXIT_BUDGET = 3, 4  # audit run
DEMO_IMAGE = "chest_xray_test_00001.png"



class UserError(Exception):
    """An error the user can fix; printed as one line, exit code 2."""


# command-line option -> ExplainConfig field (from the config's option table); options left unset keep the defaults
CONFIG_OPTIONS = cli_options()


def as_typed(exc: ValueError) -> UserError:
    """The library's "The 'n_samples' parameter ..." error, naming the option the user typed (--samples)."""
    return UserError(cli_text(str(exc)))


def config_from_options(a: argparse.Namespace) -> Any:
    from blackbox_lime.config import ExplainConfig

    if getattr(a, "seed", 0) is not None and getattr(a, "seed", 0) < 0:
        raise UserError(f"--seed must be an integer >= 0. Got {a.seed} instead.")
    if getattr(a, "max_pixels", None) is not None and a.max_pixels < 1:
        raise UserError(f"--max-pixels must be an integer >= 1. Got {a.max_pixels} instead.")

    kw = {field: getattr(a, option) for option, field in CONFIG_OPTIONS.items()
          if getattr(a, option, None) is not None}
    if getattr(a, "calibration", None) is None and getattr(a, "fill", None) is None and getattr(a, "endpoint", None):
        a.calibration = profile_calibration(a.endpoint)  # the profile's site calibration, unless the user chose
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
        raise as_typed(exc) from None


def profile_calibration(endpoint: str) -> str | None:
    """The calibration an endpoint profile names, or None (a profile that cannot be read is reported later,
    when the adapter is made)."""
    from blackbox_lime.adapters.errors import ConfigError
    from blackbox_lime.adapters.profile import EndpointProfile

    try:
        return EndpointProfile.from_toml(endpoint).calibration
    except (ConfigError, OSError, ValueError):
        return None


def target_index(value: str | None, class_names: Sequence[str]) -> int | None:
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


def targets_option(value: str | None, info: Any) -> Any:
    """--target: one class (index or name), a comma list, "all" or "positive"; the default is the predicted
    class, or "positive" for a multi-label model."""
    if value is None:
        return "positive" if info.multilabel else None
    if value in info.class_names:
        return list(info.class_names).index(value)
    if value in ("all", "positive"):
        return value
    if "," in value:
        picked = [target_index(v.strip(), info.class_names) for v in value.split(",") if v.strip()]
        if len(set(picked)) != len(picked):
            raise UserError(f"--target {value!r} names a class twice.")
        return picked
    return target_index(value, info.class_names)


def adapter_from_options(a: argparse.Namespace) -> Any:
    """The adapter the options name: --endpoint profile, an endpoint URL, or a local .onnx file."""
    from blackbox_lime.adapters import is_url, load_adapter

    if a.endpoint is None and a.model is None:
        raise UserError("Name the classifier: --model MODEL.onnx, --model URL, or --endpoint PROFILE.toml.")
    if a.endpoint is None and not str(a.model).strip():
        raise UserError("--model is empty; give a .onnx file or an endpoint URL.")
    if a.endpoint is not None and not str(a.endpoint).strip():
        raise UserError("--endpoint is empty; give an endpoint profile (.toml).")
    _check_limits(a)
    kw: dict[str, Any] = {}
    if a.endpoint is None and not is_url(a.model):
        kw["device"] = getattr(a, "device", "auto")
    return load_adapter(None if a.endpoint else str(a.model), endpoint=a.endpoint, budget=a.budget,
                        max_batch=a.max_batch, concurrency=a.concurrency, output_kind=getattr(a, "output_kind", None),
                        allow_insecure_http=a.allow_insecure_http, **kw)


def _check_limits(a: argparse.Namespace) -> None:
    """--budget, --max-batch and --concurrency are integers >= 1; a bundled model's name becomes its file (for this
    process and workers)."""
    for opt in ("budget", "max_batch", "concurrency"):
        v = getattr(a, opt, None)
        if v is not None and v < 1:
            raise UserError(f"--{opt.replace('_', '-')} must be an integer >= 1. Got {v} instead.")
    if a.endpoint is None:
        from blackbox_lime.models import resolve_model

        a.model = resolve_model(str(a.model))


def redact_logs(adapter: Any) -> None:
    """Defence in depth: scrub the adapter's secrets from every log record, whoever emits it."""
    if adapter is None:
        return
    redact: Any = getattr(adapter, "redact", None)
    if redact is None or not getattr(redact, "secrets", None):
        return

    class _Scrub(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            record.msg, record.args = redact(record.getMessage()), ()
            return True

    for h in logging.getLogger().handlers:
        h.addFilter(_Scrub())


def burned_in_policy(a: argparse.Namespace, adapter: Any) -> str:
    """--burned-in auto: refuse where pixels leave this machine (a remote model), warn where they do not."""
    if a.burned_in == "auto":
        return "warn" if adapter.computes_locally else "refuse"
    return str(a.burned_in)


def model_record(a: argparse.Namespace, adapter: Any) -> dict[str, Any]:
    from blackbox_lime.outputs import file_sha256

    if getattr(adapter, "transport", None) is not None:
        return {"endpoint": adapter.transport.describe()}
    model = Path(a.model)
    return {"model": {"file": model.name, "sha256": file_sha256(model)}}


def explainer_and_target(a: argparse.Namespace, adapter: Any, cfg: Any) -> tuple[Any, Any]:
    """The explainer and the --target of explain and audit run: the checks that need the model (a patch
    size that must fit the MAE's patches, the bank's grid, the class names)."""
    from blackbox_lime.evidence_bank import BankError
    from blackbox_lime.explainer import Explainer

    try:
        explainer = Explainer(adapter, cfg, mae_path=a.mae, device=a.device, bank=a.bank)
    except BankError as exc:
        raise UserError(f"--bank: {exc}") from None
    except ValueError as exc:
        raise as_typed(exc) from None
    if not 0.0 <= a.threshold <= 1.0:
        raise UserError(f"--threshold must be a probability in [0, 1]. Got {a.threshold} instead.")
    return explainer, targets_option(a.target, adapter.info)


def model_key(record: dict[str, Any]) -> dict[str, Any]:
    """What identifies the model in a calibration: a local file's SHA-256, or an endpoint's URL and model."""
    if "model" in record and isinstance(record["model"], dict) and "sha256" in record["model"]:
        return {"sha256": record["model"]["sha256"]}
    ep = record.get("endpoint", {})
    return {k: ep[k] for k in ("url", "model") if ep.get(k) is not None}


def check_calibration(a: argparse.Namespace, hashes: dict[str, Any]) -> None:
    from blackbox_lime.calibration import CalibrationError, check_fits

    try:
        check_fits(a.calibration_data, Path(a.calibration).name, model_key(hashes),
                   hashes.get("mae", {}).get("sha256"))
    except CalibrationError as exc:
        raise UserError(str(exc)) from None


def traffic_note(exp: Any) -> str:
    """'' when every image went once at max_batch; else ' (3 retries; 2 requests refused for size: 32 -> 16 per
    request)'."""
    t = exp.traffic or {}
    parts = []
    if t.get("retries"):
        parts.append(f"{t['retries']} retr{'y' if t['retries'] == 1 else 'ies'}")
    if t.get("refused_for_size"):
        parts.append(f"{t['refused_for_size']} request{'s' if t['refused_for_size'] != 1 else ''} refused for size: "
                     f"{t['max_batch']} -> {t['request_size']} per request")
    return f" ({'; '.join(parts)})" if parts else ""


def fill_line(exp: Any) -> str:
    """'fill=mae'; for fill auto, what decided it: the pilot's scores ('fill=auto->mean (mean 0.58, blur 0.40;
    64 queries)'), or the reconstruction check where the MAE passed it ('fill=auto->mae (reconstruction mae 27.1 dB,
    blur 26.5 dB; no query)')."""
    fill = exp.fill
    if fill.get("mode") != "auto":
        return f"fill={fill.get('chosen')}"
    spent = fill["queries_spent_on_choice"]
    cost = f"{spent} queries" if spent else "no query"
    if fill["scores"]:
        scores = ", ".join(f"{k} {'flat' if v is None else format(v, '.2f')}" for k, v in fill["scores"].items())
        return f"fill=auto->{fill['chosen']} ({scores}; {cost})"
    psnr = ", ".join(f"{k} {v:.1f} dB" for k, v in (fill.get("recon_psnr_db") or {}).items())
    return f"fill=auto->{fill['chosen']} (reconstruction {psnr}; {cost})" if psnr else f"fill=auto->{fill['chosen']}"


def list_models() -> str:
    """``blackbox-lime models``: each bundled classifier's name, classes, input size and purpose (read from the file)."""
    from blackbox_lime.adapters.onnx import OnnxAdapter
    from blackbox_lime.models import BUNDLED_CLASSIFIERS, bundled_model

    lines = []
    for name, (file, purpose) in BUNDLED_CLASSIFIERS.items():
        try:
            path = bundled_model(file)
        except FileNotFoundError:
            continue  # not in this installation
        with OnnxAdapter(path) as adapter:
            info = adapter.info
        h, w = info.input_size
        kind = "multi-label" if info.multilabel else "classes"
        lines.append(f"{name:<20} {kind} {', '.join(info.class_names)}; input {h}x{w}x{info.channels}\n"
                     f"{'':<20} {purpose}")
    return "\n".join(lines) + "\n\nUse a name as --model NAME (a path or an endpoint URL works as before)."


def query_plan(a: argparse.Namespace, cfg: Any, explanations: int, budget: int | None = None) -> dict[str, Any]:
    """What ``explanations`` explanations under ``cfg`` would send to the classifier the options name, at most,
    and what that costs at the profile's ``[limits] price_per_1k_images``; nothing is sent (an endpoint is read
    from its profile or URL, never asked)."""
    from blackbox_lime.adapters import plan_limits
    from blackbox_lime.adapters.errors import AdapterError
    from blackbox_lime.cost import explanation_plan

    if a.endpoint is None and a.model is None:
        raise UserError("Name the classifier: --model MODEL.onnx, --model URL, or --endpoint PROFILE.toml.")
    _check_limits(a)
    try:
        limits = plan_limits(None if a.endpoint else str(a.model), endpoint=a.endpoint, allow_insecure_http=a.allow_insecure_http,
                             budget=budget if budget is not None else getattr(a, "budget", None),
                             max_batch=a.max_batch)
    except (AdapterError, ValueError, OSError) as exc:
        raise UserError(str(exc)) from None
    plan = explanation_plan(cfg, int(limits["max_batch"]))  # type: ignore[call-overload]
    price = limits["price_per_1k_images"]
    cap = limits["budget"]
    return {"dry_run": True, "explanations": explanations,
            "per_explanation": {"images": plan.images, "requests": plan.requests, "stta_images": plan.stta_images},
            "images": plan.images * explanations, "requests": plan.requests * explanations,
            "max_batch": limits["max_batch"], "price_per_1k_images": price,
            "cost": None if price is None else round(plan.cost(float(price), explanations) or 0.0, 4),  # type: ignore[arg-type]
            "budget": cap, "explanations_within_budget": None if cap is None else min(explanations, int(cap) // plan.images)}  # type: ignore[call-overload]


def plan_text(doc: dict[str, Any], what: str) -> str:
    """The plan in one paragraph."""
    per = doc["per_explanation"]
    stta = f" ({per['stta_images']} of them STTA's)" if per["stta_images"] else ""
    size = "one image each" if doc["max_batch"] == 1 else f"up to {doc['max_batch']} images each"
    text = (f"{what}: at most {per['images']:,} images per explanation{stta} in at most {per['requests']:,} requests "
            f"({size}), so at most {doc['images']:,} images in {doc['requests']:,} requests for "
            f"{doc['explanations']:,} explanation(s).")
    if doc["cost"] is not None:
        text += f" At {doc['price_per_1k_images']:g} per 1,000 images: at most {doc['cost']:,.2f}."
    else:
        text += " No price is known: set [limits] price_per_1k_images in the endpoint profile to see the cost."
    if doc["budget"] is not None:
        within = doc["explanations_within_budget"]
        text += (f" The budget of {doc['budget']:,} images covers "
                 + ("all of them." if within >= doc["explanations"] else f"{within:,} of them."))
    return text + " Nothing was sent."
