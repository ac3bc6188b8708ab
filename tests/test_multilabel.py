"""Multi-label models: K findings explained from one set of queries (known answer), output kinds, targets,
file names, and the outputs of the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from blackbox_lime.adapters import load_adapter
from blackbox_lime.adapters.errors import ResponseError
from blackbox_lime.config import ExplainConfig
from blackbox_lime.explainer import Explainer
from blackbox_lime.explanation import Explanation, ExplanationSet
from blackbox_lime.outputs import finding_stems
from blackbox_lime.cli import main
from graphs import linear_patch_model, multilabel_region_model

# three findings, each read from one patch of the 14 x 14 grid; "nodule/mass" and "pleural effusion" test names
REGIONS = {"nodule/mass": 20, "pleural effusion": 100, "pneumothorax": 175, "rare finding": None}


@pytest.fixture(scope="module")
def ml_model(tmp_path_factory) -> Path:
    return multilabel_region_model(tmp_path_factory.mktemp("ml") / "ml.onnx", REGIONS)


@pytest.fixture(scope="module")
def ml_image() -> np.ndarray:
    """Bright where the first two findings look, dark where the third does, on a textured background."""
    rng = np.random.default_rng(5)
    img = rng.uniform(0.2, 0.3, (224, 224, 3)).astype(np.float32)
    for j, level in zip(list(REGIONS.values())[:3], (0.95, 0.6, 0.02)):  # P: 0.9998, 0.985, 0.055
        r, c = divmod(j, 14)
        img[r * 16:(r + 1) * 16, c * 16:(c + 1) * 16] = level
    return img


def test_every_finding_peaks_in_its_own_region_from_one_explanations_queries(ml_model, ml_image):
    cfg = ExplainConfig(n_samples=300, fill="mean")
    with load_adapter(str(ml_model)) as a:
        assert a.info.multilabel and a.info.class_names == tuple(REGIONS)
        one = Explainer(a, cfg).explain(ml_image, target=0, rng=0)
        q = a.queries
        found = Explainer(a, cfg).explain(ml_image, target="all", rng=0)
        assert a.queries - q == one.queries == 300  # three maps for the queries of one
    assert isinstance(found, ExplanationSet) and found.targets == [0, 1, 2, 3] and found.queries == 300
    assert found.several and isinstance(one, Explanation)
    with load_adapter(str(ml_model)) as a:  # one output path: the set form of a single class says it is one
        single = Explainer(a, cfg).explain_set(ml_image, target=0, rng=0)
        asked_one = Explainer(a, cfg).explain_set(ml_image, target=[0], rng=0)
    assert not single.several and len(single) == 1 and asked_one.several
    np.testing.assert_array_equal(single[0].saliency, one.saliency)
    np.testing.assert_array_equal(asked_one[0].saliency, one.saliency)
    for exp, patch in zip(found, list(REGIONS.values())[:3]):
        w = exp.patch_weights.reshape(-1)
        assert int(np.argmax(np.abs(w))) == patch, exp.target_name
        assert exp.shared_with == list(REGIONS)
    np.testing.assert_array_equal(found[0].saliency, one.saliency)  # the same samples, the same fit
    assert found[0].patch_weights.reshape(-1)[20] > 0 and found[2].response_sd < found[0].response_sd


def test_positive_targets_and_the_fallback_to_the_highest(ml_model, ml_image):
    cfg = ExplainConfig(n_samples=100, fill="mean")
    with load_adapter(str(ml_model)) as a:
        ex = Explainer(a, cfg)
        assert ex.explain(ml_image, target="positive", rng=0).targets == [0, 1]
        assert ex.explain(ml_image, target="positive", threshold=0.99, rng=0).targets == [0]  # none: the highest
        assert ex.explain(ml_image, target=[2, 0], rng=0).targets == [2, 0]
        with pytest.raises(ValueError, match=r"target must list distinct class indices in \[0, 3\]"):
            ex.explain(ml_image, target=[1, 1])
        with pytest.raises(ValueError, match=r"target must be a class index, a list of them, 'all' or 'positive'"):
            ex.explain(ml_image, target="some")


def test_a_finding_the_model_never_sees_gets_a_weak_map_warning_not_an_error(ml_model, ml_image):
    with load_adapter(str(ml_model)) as a:
        found = Explainer(a, ExplainConfig(n_samples=100, fill="mean")).explain(ml_image, target="all", rng=0)
    assert any("P(rare finding) hardly moved" in w for w in found[3].warnings)  # sigmoid(-3) whatever the image
    assert np.isnan(found[3].r2_evidence)
    assert not any("hardly moved" in w for e in found.explanations[:3] for w in e.warnings)


def test_a_multilabel_model_declared_exclusive_is_told_to_declare_multilabel(ml_model, ml_image):
    with load_adapter(str(ml_model), output_kind="probabilities") as a:
        with pytest.raises(ResponseError, match=r"the probabilities do not sum to 1 \(row sums from .*\), so the classes "
                                                r"are not exclusive\. If each column is its own finding's probability "
                                                r"\(a multi-label model\), declare its output as multilabel: "
                                                r"--output-kind on the command line"):
            a.predict(ml_image[None])


def test_multilabel_logits_pass_through_a_sigmoid_per_column(tmp_path, ml_image):
    logit_model = multilabel_region_model(tmp_path / "logits.onnx", REGIONS, logits=True)
    prob_model = multilabel_region_model(tmp_path / "probs.onnx", REGIONS)
    with load_adapter(str(logit_model)) as a, load_adapter(str(prob_model)) as b:
        assert a.info.extra["output"] == "multilabel_logits"
        np.testing.assert_allclose(a.predict(ml_image[None]), b.predict(ml_image[None]), atol=1e-6)
    with load_adapter(str(logit_model), output_kind="multilabel") as c:
        with pytest.raises(ResponseError, match=r"declare its output as logits \(a softmax over exclusive classes\) or "
                                                r"multilabel_logits \(a sigmoid per finding\)"):
            c.predict(ml_image[None])


def test_finding_names_become_distinct_safe_file_names():
    assert finding_stems(["nodule/mass", "pleural effusion", "a b", "a/b", "A_B", "..", ""]) == \
        ["nodule_mass", "pleural_effusion", "a_b", "a_b-2", "A_B-3", "finding5", "finding6"]


def test_cli_writes_a_map_and_overlay_per_finding_one_json_and_an_overview(ml_model, ml_image, tmp_path, capsys):
    png = tmp_path / "cxr.png"
    cv2.imwrite(str(png), np.round(ml_image[..., 0] * 255).astype(np.uint8))
    out = tmp_path / "out"
    assert main(["explain", str(png), "--model", str(ml_model), "--out", str(out), "--samples", "120", "--fill", "mean",
                 "--quiet", "--json"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert [f["name"] for f in line["findings"]] == ["nodule/mass", "pleural effusion"]  # default: positive
    assert line["queries"] == 120 and line["queries_shared"] is True
    names = sorted(p.name for p in out.iterdir())
    assert names == ["cxr.findings.png", "cxr.json", "cxr.nodule_mass.overlay.png", "cxr.nodule_mass.saliency.npy",
                     "cxr.pleural_effusion.overlay.png", "cxr.pleural_effusion.saliency.npy"]
    doc = json.loads((out / "cxr.json").read_text())
    assert doc["outputs"] == names and [f["index"] for f in doc["findings"]] == [0, 1]
    assert doc["findings"][0]["files"] == ["cxr.nodule_mass.saliency.npy", "cxr.nodule_mass.overlay.png"]
    assert np.load(out / "cxr.nodule_mass.saliency.npy").shape == (224, 224)
    overview = cv2.imread(str(out / "cxr.findings.png"))
    single = cv2.imread(str(out / "cxr.nodule_mass.overlay.png"))
    assert overview.shape[1] == 3 * single.shape[1]  # the input and two findings side by side
    assert main(["explain", str(png), "--model", str(ml_model), "--out", str(tmp_path / "o2"), "--samples", "60",
                 "--fill", "mean", "--quiet", "--target", "pneumothorax,nodule/mass", "--json"]) == 0
    assert [f["name"] for f in json.loads(capsys.readouterr().out)["findings"]] == ["pneumothorax", "nodule/mass"]


def test_exclusive_models_keep_todays_names_and_a_list_target_shares_queries(tmp_path, linear_weights, capsys):
    model = linear_patch_model(tmp_path / "lin.onnx", linear_weights, 0.3)
    png = tmp_path / "x.png"
    cv2.imwrite(str(png), np.full((224, 224), 120, np.uint8))
    assert main(["explain", str(png), "--model", str(model), "--out", str(tmp_path / "a"), "--samples", "60",
                 "--fill", "mean", "--quiet"]) == 0
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["x.json", "x.overlay.png", "x.saliency.npy"]
    assert main(["explain", str(png), "--model", str(model), "--out", str(tmp_path / "b"), "--samples", "60",
                 "--fill", "mean", "--quiet", "--target", "all"]) == 0
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [
        "x.abnormal.overlay.png", "x.abnormal.saliency.npy", "x.findings.png", "x.json", "x.normal.overlay.png",
        "x.normal.saliency.npy"]


def test_bad_threshold_and_output_kind_exit_2(ml_model, tmp_path, capsys):
    png = tmp_path / "x.png"
    cv2.imwrite(str(png), np.full((224, 224), 120, np.uint8))
    assert main(["explain", str(png), "--model", str(ml_model), "--out", str(tmp_path / "o"), "--threshold", "1.5"]) == 2
    assert "--threshold must be a probability in [0, 1]. Got 1.5 instead." in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit):
        main(["explain", str(png), "--model", str(ml_model), "--out", str(tmp_path / "o"), "--output-kind", "softmax"])


def test_an_audit_of_a_multilabel_model_records_and_flags_every_finding(ml_model, ml_image, tmp_path, capsys):
    src = tmp_path / "study"
    src.mkdir()
    for i in range(2):
        cv2.imwrite(str(src / f"x{i}.png"), np.round(np.roll(ml_image[..., 0], 16 * i, axis=0) * 255).astype(np.uint8))
    out = tmp_path / "audit"
    assert main(["audit", "run", str(src), "--model", str(ml_model), "--out", str(out), "--samples", "80",
                 "--fill", "mean", "--quiet", "--target", "all"]) == 0
    capsys.readouterr()
    assert main(["audit", "summary", str(out), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["study"]["explained_findings"] == 8 and s["study"]["totals"]["sent"] == 160  # 4 findings, 80 queries
    assert sorted(s["study"]["by_finding"]) == sorted(REGIONS)
    rows = [r for r in s["cases"] if r["finding"] == "rare finding"]
    assert len(rows) == 2 and all("flat_answer" in r["flags"] for r in rows)
    first = s["cases"][0]
    assert first["outputs"][0].endswith(".nodule_mass.saliency.npy") and (out / first["outputs"][0]).is_file()
    html = (out / "report.html").read_text()
    assert "Flags by finding" in html and "finding:pleural_effusion" in html
    assert main(["audit", "verify", str(out)]) == 0
