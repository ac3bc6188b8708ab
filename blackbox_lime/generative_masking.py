"""Moved to :mod:`blackbox_lime.fill` (the fillers in ``fill/fillers.py``, the factory in ``fill/registry.py``);
this name stays for code written against earlier versions."""

from blackbox_lime.fill.fillers import (BlurFiller, ConstantFiller, Filler, InpaintFiller, MAEFiller, mae_input,
                                        open_mae)
from blackbox_lime.fill.registry import make_filler

__all__ = ["BlurFiller", "ConstantFiller", "Filler", "InpaintFiller", "MAEFiller", "mae_input", "make_filler",
           "open_mae"]
