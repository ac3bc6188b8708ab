"""Moved to :mod:`blackbox_lime.fill.choice`; this name stays for code written against earlier versions."""

from blackbox_lime.fill.choice import (CV_FOLDS, EVIDENCE_RIDGE, FLAT_RESPONSE_SD, RECON_MASKS, RECON_SEED, FillChoice,
                                       coarse_design, decide, evidence_r2, heldout_r2, recon_psnr, score_pilot,
                                       summarise_choices)

__all__ = ["CV_FOLDS", "EVIDENCE_RIDGE", "FLAT_RESPONSE_SD", "RECON_MASKS", "RECON_SEED", "FillChoice", "coarse_design",
           "decide", "evidence_r2", "heldout_r2", "recon_psnr", "score_pilot", "summarise_choices"]
