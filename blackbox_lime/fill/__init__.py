"""Fill: what hidden patches are filled with, and how one image's fill is chosen.

- :mod:`~blackbox_lime.fill.fillers`: the fillers (GM's MAE; mean, blur, zero, Telea inpainting);
- :mod:`~blackbox_lime.fill.registry`: the fills by name and capability (where a new fill is added);
- :mod:`~blackbox_lime.fill.choice`: the pure scoring of fill "auto" (reconstruction check, pilots, the rule,
  a site's calibration);
- :mod:`~blackbox_lime.fill.policy`: :class:`FixedFill` and :class:`AutoFill`, which plan one image's fill
  given a sampler, and the budget arithmetic of "auto".
"""

from blackbox_lime.fill.choice import FillChoice, summarise_choices
from blackbox_lime.fill.fillers import BlurFiller, ConstantFiller, Filler, InpaintFiller, MAEFiller
from blackbox_lime.fill.policy import AutoFill, FillPlan, FillPolicy, FixedFill, make_policy
from blackbox_lime.fill.registry import (AUTO, FillContext, FillKind, fill_choices, fill_kind, fill_names,
                                         is_generative, make_filler, register)

__all__ = ["AUTO", "AutoFill", "BlurFiller", "ConstantFiller", "FillChoice", "FillContext", "FillKind", "FillPlan",
           "FillPolicy", "Filler", "FixedFill", "InpaintFiller", "MAEFiller", "fill_choices", "fill_kind",
           "fill_names", "is_generative", "make_filler", "make_policy", "register", "summarise_choices"]
