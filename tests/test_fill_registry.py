"""The fill wing: the registry (a new fill is one class and one line), capabilities instead of names, the policies'
budget arithmetic, and the Telea inpainting fill."""

from __future__ import annotations

import numpy as np
import pytest

from blackbox_lime import cli
from blackbox_lime.adapters.onnx import OnnxAdapter
from blackbox_lime.config import ExplainConfig
from blackbox_lime.explainer import Explainer
from blackbox_lime.fill import registry
from blackbox_lime.fill.fillers import ConstantFiller, Filler, InpaintFiller
from blackbox_lime.fill.policy import AutoFill, FixedFill, MIN_PILOT, auto_sample_needs
from blackbox_lime.fill.registry import FillKind, fill_choices, fill_kind, make_filler
from blackbox_lime.patches import PatchGrid


class StripeFiller(Filler):
    """A test fill: hidden pixels become horizontal stripes of 0.2 and 0.8."""

    def __init__(self) -> None:
        self.name, self.notes = "stripes", []

    def fill(self, canvas: np.ndarray, hidden_px: np.ndarray) -> np.ndarray:
        rows = np.where(np.arange(canvas.shape[0]) % 2 == 0, 0.2, 0.8).astype(np.float32)
        return np.broadcast_to(rows[None, :, None, None], (len(hidden_px),) + canvas.shape).copy()

    def depends_on_mask(self) -> bool:
        return False


@pytest.fixture
def stripes(monkeypatch: pytest.MonkeyPatch) -> FillKind:
    kind = FillKind("stripes", lambda c: StripeFiller(), "stripes (a test fill)")
    monkeypatch.setitem(registry._REGISTRY, kind.name, kind)
    return kind


def test_a_registered_fill_reaches_config_factory_explainer_and_cli(stripes: FillKind, linear_model: object) -> None:
    """One class and one registry entry: the config accepts the name, the factory makes it, an explanation uses it
    (the map of a model linear in the patches still finds its one weighted patch), and the CLI offers it."""
    assert "stripes" in fill_choices() and fill_kind("stripes").pilot
    assert isinstance(make_filler("stripes", 16), StripeFiller)
    adapter = OnnxAdapter(linear_model)  # type: ignore[arg-type]
    image = np.full((64, 64, 3), 0.5, np.float32)
    exp = Explainer(adapter, ExplainConfig(fill="stripes", n_samples=60)).explain(image, target=1, rng=0)
    assert exp.fill == {"mode": "fixed", "chosen": "stripes"}
    assert exp.config["fill_model"] == {"kind": "stripes"}
    auto = ExplainConfig(fill_candidates=("mae", "stripes", "mean"))
    assert auto.pilot_candidates == 2  # two classic candidates; the MAE is judged by its reconstruction check
    parser = cli.build_parser()
    assert parser.parse_args(["explain", "x.png", "--fill", "stripes"]).fill == "stripes"


def test_unknown_and_duplicate_names() -> None:
    with pytest.raises(ValueError, match=r"The 'fill' parameter must be one of mae, mean, blur, zero, telea\. Got "
                                         r"'noise' instead\."):
        make_filler("noise", 16)
    with pytest.raises(ValueError, match=r"A fill named 'mean' is already registered\."):
        registry.register(FillKind("mean", lambda c: ConstantFiller("mean"), "again"))
    with pytest.raises(ValueError, match=r"A fill named 'auto' is already registered\."):
        registry.register(FillKind("auto", lambda c: ConstantFiller("mean"), "the policy's name"))


class FlatPainter(ConstantFiller):
    """A generative fill that paints every hidden pixel 0.9: it reconstructs a 0.3 image badly."""

    def __init__(self) -> None:
        super().__init__("mean")
        self.name = "painter"

    def fill(self, canvas: np.ndarray, hidden_px: np.ndarray) -> np.ndarray:
        return np.full((len(hidden_px),) + canvas.shape, 0.9, np.float32)


def test_the_gate_keys_off_the_generative_capability(monkeypatch: pytest.MonkeyPatch, linear_model: object) -> None:
    """Fill "auto" gates whatever fill is registered as generative, by the reconstruction check and under its own
    name, and pilots the classic candidates when it fails; a forced one gets the check and the off-domain warning."""
    kind = FillKind("painter", lambda c: FlatPainter(), "a generative test fill", generative=True, pilot=False,
                    challenger=False)
    monkeypatch.setitem(registry._REGISTRY, kind.name, kind)
    adapter = OnnxAdapter(linear_model)  # type: ignore[arg-type]
    image = np.full((64, 64, 3), 0.3, np.float32)
    image[:16, :16] = 0.6
    cfg = ExplainConfig(fill_candidates=("painter", "mean", "blur"), n_samples=120, pilot_samples=32)
    exp = Explainer(adapter, cfg).explain(image, target=1, rng=0)
    assert exp.fill["gate"] == "failed" and set(exp.fill["recon_psnr_db"]) == {"painter", "blur"}
    assert exp.fill["chosen"] in ("mean", "blur") and set(exp.fill["scores"]) == {"mean", "blur"}
    forced = Explainer(adapter, ExplainConfig(fill="painter", n_samples=60)).explain(image, target=1, rng=0)
    assert forced.fill["mode"] == "fixed" and set(forced.fill["recon_psnr_db"]) == {"painter", "blur"}
    assert any(w.startswith("Fill off the image's domain") for w in forced.warnings)
    plain = Explainer(adapter, ExplainConfig(fill="mean", n_samples=60)).explain(image, target=1, rng=0)
    assert "recon_psnr_db" not in plain.fill and not any(w.startswith("Fill off") for w in plain.warnings)


def test_policies_know_their_budget(linear_model: object) -> None:
    grid = PatchGrid(64, 64, 16)
    cfg = ExplainConfig(mae_challenger="zero", pilot_samples=32)
    assert [n for n, _ in auto_sample_needs(cfg)] == [4 * MIN_PILOT + 1, 2 * 2 * MIN_PILOT + 1]
    assert auto_sample_needs(ExplainConfig()) == []  # the default auto pilots nothing
    policy = AutoFill(grid, cfg, {"mean": ConstantFiller("mean"), "zero": ConstantFiller("zero")}, {}, 2)
    assert policy.min_samples() == 33
    assert FixedFill(grid, ExplainConfig(fill="mean"), ConstantFiller("mean"), 2).min_samples() == 2
    assert auto_sample_needs(ExplainConfig(fill="blur")) == []
    with pytest.raises(ValueError, match=r"The 'n_samples' parameter must be at least 33 with fill 'auto' and an MAE "
                                         r"challenger"):
        ExplainConfig(n_samples=32, mae_challenger="zero")


def test_telea_continues_what_surrounds_a_hole() -> None:
    """Known answers: a constant image is filled with its constant; a horizontal ramp's hidden block is filled
    close to the ramp; a fully hidden image gets its mean; a colour image keeps its channels apart."""
    filler = InpaintFiller()
    flat = np.full((48, 48, 1), 0.4, np.float32)
    hidden = np.zeros((2, 48, 48), bool)
    hidden[0, 16:32, 16:32] = True
    hidden[1] = True
    out = filler.fill(flat, hidden)
    assert out.shape == (2, 48, 48, 1) and np.allclose(out, 0.4, atol=0.01)  # OpenCV's Telea is not exact on a flat
    ramp = np.repeat(np.linspace(0, 1, 48, dtype=np.float32)[None, :], 48, axis=0)[..., None]
    got = filler.fill(ramp, hidden[:1])[0]
    block = hidden[0]
    assert np.abs(got[block] - ramp[block]).max() < 0.15  # a smooth continuation, not a constant
    assert np.abs(got[block] - ramp[block]).mean() < 0.05
    assert np.array_equal(got[~block], ramp[~block])  # visible pixels untouched
    rgb = np.stack([np.full((48, 48), 0.2), np.full((48, 48), 0.5), np.full((48, 48), 0.8)], -1).astype(np.float32)
    assert np.allclose(filler.fill(rgb, hidden[:1])[0][block], [0.2, 0.5, 0.8], atol=0.01)
    assert np.allclose(filler.fill(rgb, hidden[1:])[0], [0.2, 0.5, 0.8], atol=1e-4)  # all hidden: the mean


# -- coded warnings ------------------------------------------------------------------------------------------------


def test_warnings_carry_codes_into_the_json_and_the_audit_flags(monkeypatch: pytest.MonkeyPatch,
                                                                 linear_model: object) -> None:
    """Every warning is its text (as before) and a code; the JSON lists the codes in the texts' order; the audit's
    flags come from the codes, and from the numbers only for records written before them."""
    import pickle

    from blackbox_lime.audit.flags import case_flags
    from blackbox_lime.map_warnings import CODES, MapWarning, codes_of

    kind = FillKind("painter", lambda c: FlatPainter(), "a generative test fill", generative=True, pilot=False,
                    challenger=False)
    monkeypatch.setitem(registry._REGISTRY, kind.name, kind)
    adapter = OnnxAdapter(linear_model)  # type: ignore[arg-type]
    image = np.full((64, 64, 3), 0.3, np.float32)  # flat: the linear model's answer cannot move much
    exp = Explainer(adapter, ExplainConfig(fill="painter", n_samples=60)).explain(image, target=1, rng=0)
    codes = exp.summary()["warning_codes"]
    assert codes == codes_of(exp.warnings) and "off_domain" in codes and set(codes) <= set(CODES)
    off = exp.warnings[codes.index("off_domain")]
    assert isinstance(off, str) and off.startswith("Fill off the image's domain") and off.code == "off_domain"
    assert pickle.loads(pickle.dumps(off)).code == "off_domain"
    assert json_roundtrip(exp.summary())["warnings"] == [str(w) for w in exp.warnings]
    with pytest.raises(ValueError, match=r"Unknown warning code 'loud'"):
        MapWarning("loud", "text")
    saliency = np.zeros((64, 64))
    summary = {"warning_codes": ["flat_answer", "low_fidelity"], "probs": [0.2, 0.8]}
    assert case_flags(image, saliency, summary)["flags"] == ["low_fidelity", "flat_answer"]
    old = {"response_sd": 0.5, "r2_evidence": 0.0, "r2_heldout": 0.01, "probs": [0.2, 0.8]}  # no codes: the numbers
    assert case_flags(image, saliency, old)["flags"] == ["no_focal_evidence"]


def json_roundtrip(doc: dict) -> dict:
    import json

    return json.loads(json.dumps(doc, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


# -- the option table ----------------------------------------------------------------------------------------------


def test_one_option_table_drives_the_checks_the_parser_and_its_help() -> None:
    """Every command-line option of a config knob comes from config.OPTIONS: its help names the config's own default
    (so a changed default cannot leave a stale help text), its choices are the registry's, and the library's error
    for a bad value names the option the user typed."""
    from dataclasses import fields

    from blackbox_lime.cli.common import CONFIG_OPTIONS, as_typed
    from blackbox_lime.config import OPTIONS

    d = ExplainConfig()
    parser = cli.build_parser()
    explain = next(a for a in parser._subparsers._actions if a.dest == "command").choices["explain"]  # type: ignore[union-attr]
    actions = {a.dest: a for a in explain._actions}
    flagged = [o for o in OPTIONS if o.flag]
    assert {o.field for o in OPTIONS} == {f.name for f in fields(ExplainConfig)}  # every knob is checked
    assert CONFIG_OPTIONS == {o.flag.replace("-", "_"): o.field for o in flagged}
    for o in flagged:
        assert actions[o.flag.replace("-", "_")].help == o.help_text(d)
    assert "(default 500)" in actions["samples"].help and f"({d.challenger_samples} queries each)" in actions[
        "mae_challenger"].help
    assert actions["fill"].choices == list(fill_choices()) and "telea" in actions["mae_challenger"].choices
    try:
        ExplainConfig(map_sigma=9.0)
    except ValueError as exc:
        assert str(as_typed(exc)) == "--map-sigma must be a float in the range [0, 8]. Got 9.0 instead."
    else:
        raise AssertionError("map_sigma=9 passed the check")
