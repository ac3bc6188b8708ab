"""Choose the fill once per site: ``blackbox-lime calibrate`` and the calibration file ``explain`` reads.

A per-image choice that flips between images of one study makes their maps incomparable. A site
therefore runs the choice of ``fill="auto"`` (:meth:`Explainer.choose_fill`) over a handful of its own
images
(:func:`~blackbox_lime.fill_choice.summarise_choices`: the MAE when it passes the reconstruction check on
most images, else the rule over the classic fills' median scores), and writes the chosen fill with its evidence
to a small TOML file:

    [fill]
    chosen = "mean"
    candidates = ["mae", "mean", "blur"]
    reason = "the MAE failed the reconstruction check on ...; mean ..."
    [fill.median_recon_psnr_db]
    mae = 14.2
    blur = 19.0
    [fill.median_scores]
    mean = 0.41
    ...
    [evidence]
    images = 8
    images_sha256 = "..."          # of the sorted per-image SHA-256s: which images, not their names
    ...

``explain --calibration fill.toml`` (and ``bank build``) then use that fill for every image, with no
pilot queries. The file records the model and the MAE it was made with; using it with another model
or MAE is refused, because the choice depends on both.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from blackbox_lime.adapters.base import ClassifierAdapter
from blackbox_lime._version import __version__
from blackbox_lime.config import ExplainConfig
from blackbox_lime.explainer import Explainer
from blackbox_lime.outputs import file_sha256
from blackbox_lime.fill.choice import summarise_choices
from blackbox_lime.fill.registry import fill_names

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# Pilot samples per candidate for a site's calibration: the choice is made once, so it can afford
# a larger pilot than one explanation's (ExplainConfig.pilot_samples). A calibration always pilots, even where an
# explanation's auto does not (the default): choosing from pilots over the site's images is what it is for.
CALIBRATION_PILOT = 64


class CalibrationError(ValueError):
    """A calibration file that cannot be read or does not fit the model and MAE in use."""


def calibrate(adapter: ClassifierAdapter, images: Sequence[np.ndarray], config: ExplainConfig | None = None, *,
              target: int | None = None, seed: int = 0, mae_path: str | Path | None = None,
              progress: Callable[[int], None] | None = None, **explainer_options: Any) -> dict[str, Any]:
    """Run the choice of fill "auto" on each image and decide one fill for all of them.

    Returns ``{"fill": chosen, "evidence": {...}, "per_image": [FillChoice.summary(), ...]}``."""
    base = config or ExplainConfig()
    pilot = max(base.pilot_samples, CALIBRATION_PILOT)
    challenger = max(base.challenger_samples, CALIBRATION_PILOT)
    cfg = replace(base, fill="auto", pilot_samples=pilot, challenger_samples=challenger,
                  n_samples=max(base.sample_ceiling, 2 * base.pilot_candidates * pilot + 1, 4 * challenger + 1))
    explainer = Explainer(adapter, cfg, mae_path=None if mae_path is None else str(mae_path), **explainer_options)
    q0, t0 = adapter.queries, time.perf_counter()
    per_image = []
    for i, image in enumerate(images):
        per_image.append(explainer.choose_fill(image, target=target, rng=seed + i).summary())
        if progress is not None:
            progress(1)
    chosen, evidence = summarise_choices(per_image, cfg.fill_candidates, cfg.fill_margin, cfg.challenger_margin)
    evidence.update(candidates=list(cfg.fill_candidates), pilot_samples_per_fill=cfg.pilot_per_fill,
                    margin=cfg.fill_margin, images=len(per_image), queries=adapter.queries - q0,
                    seconds=round(time.perf_counter() - t0, 2))
    mae = explainer.mae
    return {"fill": chosen, "evidence": evidence, "per_image": per_image,
            "mae": None if mae is None else {"file": mae.path.name, "sha256": file_sha256(mae.path)}}


def images_digest(sha256s: Sequence[str]) -> str:
    """One SHA-256 for a set of images: of their sorted SHA-256s (file names never enter it)."""
    return hashlib.sha256("\n".join(sorted(sha256s)).encode()).hexdigest()


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(float(v)) if isinstance(v, float) else str(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def to_toml(result: dict[str, Any], model: dict[str, Any], images_sha256: str) -> str:
    """The calibration file's text (see the module docstring)."""
    ev = result["evidence"]
    lines = ["# blackbox-lime calibration: the fill for this site's images (blackbox-lime calibrate).",
             "# explain --calibration FILE uses it for every image; made with the model and MAE below.", "",
             "[fill]", f"chosen = {_toml_value(result['fill'])}", f"candidates = {_toml_value(ev['candidates'])}",
             f"reason = {_toml_value(ev['reason'])}", f"margin = {_toml_value(float(ev['margin']))}", "",
             "[fill.median_recon_psnr_db]"]
    lines += [f"{k} = {_toml_value(float(v))}" for k, v in ev["median_recon_psnr_db"].items()]
    lines += ["", "[fill.median_scores]"]
    lines += [f"{k} = {_toml_value(float(v))}" for k, v in ev["median_scores"].items()]
    lines += ["", "[fill.per_image_choices]"]
    lines += [f"{k} = {int(v)}" for k, v in ev["per_image_choices"].items()]
    lines += ["", "[evidence]", f"images = {int(ev['images'])}", f"images_sha256 = {_toml_value(images_sha256)}",
              f"pilot_samples_per_fill = {int(ev['pilot_samples_per_fill'])}", f"queries = {int(ev['queries'])}",
              f"seconds = {_toml_value(float(ev['seconds']))}", f"tool_version = {_toml_value(__version__)}",
              f"created = {_toml_value(time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()))}"]
    for key, rec in (("model", model), ("mae", result.get("mae"))):
        if rec:
            lines += ["", f"[evidence.{key}]"] + [f"{k} = {_toml_value(v)}" for k, v in rec.items()]
    return "\n".join(lines) + "\n"


def read_calibration(path: str | Path) -> dict[str, Any]:
    """Read and check a calibration file; ``CalibrationError`` names what is wrong and the fix."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CalibrationError(f"{p} not found. Write one with: blackbox-lime calibrate IMAGES --model MODEL "
                               f"--out {p.name}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CalibrationError(f"{p.name} is not a readable calibration file ({exc}); write it again with "
                               "blackbox-lime calibrate.") from None
    fill = data.get("fill", {}).get("chosen") if isinstance(data.get("fill"), dict) else None
    if fill not in fill_names():
        raise CalibrationError(f"{p.name} has no valid [fill] chosen (one of {', '.join(fill_names())}); got "
                               f"{fill!r}. Write it again with blackbox-lime calibrate.")
    return data


def check_fits(data: dict[str, Any], name: str, model: dict[str, Any], mae_sha256: str | None) -> None:
    """Refuse a calibration made with another model, or (for the MAE fill) another MAE."""
    made = data.get("evidence", {}).get("model", {})
    for key in ("sha256", "url", "model"):
        if key in made and key in model and made[key] != model[key]:
            raise CalibrationError(
                f"--calibration {name} was made with another model ({key} {made[key]!r}, this one {model[key]!r}); "
                "calibrate again for this model, or choose --fill yourself.")
    made_mae = data.get("evidence", {}).get("mae", {}).get("sha256")
    if data["fill"]["chosen"] == "mae" and made_mae and mae_sha256 and made_mae != mae_sha256:
        raise CalibrationError(f"--calibration {name} chose the MAE fill with another MAE than --mae gives; "
                               "calibrate again with this MAE.")
