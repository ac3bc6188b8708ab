"""The fills by name: one registry that the config check, the CLI's choices, the factory and fill "auto" read.

A new fill is one :class:`~blackbox_lime.fill.fillers.Filler` class and one :func:`register` line. What fill
"auto" may do with a fill is said by its capabilities, never by its name:

- ``generative``: a learned model paints the hidden pixels (GM's MAE). "auto" judges it by the reconstruction
  check (no queries) and gates it; a forced one gets the same check and its off-domain warning.
- ``pilot``: a classic candidate that "auto" may pilot with queries when the generative fill fails its check.
- ``challenger``: may be piloted against a generative fill that passed its check (``mae_challenger``).
- ``per_mask``: its fill depends on which patches are hidden (made per fill group); False for a fill made once
  per image (mean, blur, zero). The query plan (blackbox_lime/cost.py) counts the design's chunks with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from blackbox_lime.fill.fillers import BlurFiller, ConstantFiller, Filler, InpaintFiller, MAEFiller

#: fill "auto": a policy over the registered fills, not a fill itself (blackbox_lime/fill/policy.py).
AUTO = "auto"


@dataclass(frozen=True)
class FillContext:
    """What a factory may need: the patch side (px), the MAE graph (None: the bundled one) and the MAE's
    onnxruntime settings."""
    patch_size: int
    mae_path: str | Path | None = None
    batch_size: int = 64
    threads: int | None = None
    device: str = "auto"


@dataclass(frozen=True)
class FillKind:
    """A registered fill: its name, factory, capabilities (see the module) and a one-line help."""
    name: str
    factory: Callable[[FillContext], Filler]
    help: str
    generative: bool = False
    pilot: bool = True
    challenger: bool = True
    per_mask: bool = True


_REGISTRY: dict[str, FillKind] = {}


def register(kind: FillKind) -> FillKind:
    """Add a fill (its name must be new and not "auto")."""
    if kind.name == AUTO or kind.name in _REGISTRY:
        raise ValueError(f"A fill named {kind.name!r} is already registered.")
    _REGISTRY[kind.name] = kind
    return kind


def fill_names() -> tuple[str, ...]:
    """Every registered fill, in registration order."""
    return tuple(_REGISTRY)


def fill_choices() -> tuple[str, ...]:
    """What ``fill`` may be set to: "auto" and every registered fill."""
    return (AUTO,) + fill_names()


def challenger_names() -> tuple[str, ...]:
    """The fills that may be piloted against a generative fill."""
    return tuple(k for k, v in _REGISTRY.items() if v.challenger)


def fill_kind(name: str) -> FillKind:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"The 'fill' parameter must be one of {', '.join(fill_names())}. Got {name!r} "
                         "instead.") from None


def is_generative(name: str) -> bool:
    return name in _REGISTRY and _REGISTRY[name].generative


def make_filler(kind: str, patch_size: int, mae_path: str | Path | None = None, batch_size: int = 64,
                threads: int | None = None, device: str = "auto") -> Filler:
    """The filler registered as ``kind``."""
    return fill_kind(kind).factory(FillContext(patch_size, mae_path, batch_size, threads, device))


register(FillKind("mae", lambda c: MAEFiller(c.mae_path, batch_size=c.batch_size, threads=c.threads, device=c.device),
                  "the local MAE's reconstruction (GM)", generative=True, pilot=False, challenger=False))
register(FillKind("mean", lambda c: ConstantFiller("mean"), "the image's per-channel mean", per_mask=False))
register(FillKind("blur", lambda c: BlurFiller(sigma_px=c.patch_size / 2.0), "a Gaussian blur of the image",
                  per_mask=False))
register(FillKind("zero", lambda c: ConstantFiller("zero"), "black", per_mask=False))
register(FillKind("telea", lambda c: InpaintFiller(), "Telea inpainting from the visible pixels around each hole"))
