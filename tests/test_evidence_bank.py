"""EBR: the Nadaraya-Watson prior (closed form), mask maps, bank files, retrieval, the surrogate's fitted
scale of the prior, and the explainer's use of a bank."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from blackbox_lime.adapters.onnx import OnnxAdapter
from blackbox_lime import ExplainConfig, Explainer
from blackbox_lime.evidence_bank import (
    BankError,
    Embedder,
    EvidenceBank,
    EvidencePrior,
    EvidenceUse,
    build_bank,
    mask_patch_map,
    nadaraya_watson,
)
from blackbox_lime.patches import PatchGrid
from blackbox_lime.evaluation.phantoms import make_phantom, phantom_bank
from blackbox_lime.surrogate import SparseSurrogate
from graphs import true_attribution

GRID = PatchGrid(224, 224, 16)


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


@pytest.fixture(scope="module")
def chest_bank(embedder: Embedder) -> EvidenceBank:
    return phantom_bank("chest_xray", GRID, embedder, count=12)


def test_nadaraya_watson_matches_the_closed_form() -> None:
    keys = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]])
    maps = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [5.0, 5.0, 5.0]])
    key = np.array([1.0, 0.0])
    ref, neighbours, h = nadaraya_watson(key, keys, maps, k=3, bandwidth=0.5)
    d2 = np.array([0.0, 2 - 2 * 0.8, 2.0])  # |a - b|^2 = 2 - 2 cos for unit vectors
    kern = np.exp(-d2 / (2 * 0.25))
    np.testing.assert_allclose(ref, kern / kern.sum(), atol=1e-12)  # the maps are the unit vectors
    assert [n["index"] for n in neighbours] == [0, 1, 2] and h == 0.5  # the farthest case (index 3) is not used
    assert sum(n["weight"] for n in neighbours) == pytest.approx(1.0, abs=1e-5)
    _, _, h_median = nadaraya_watson(key, keys, maps, k=3)
    assert h_median == pytest.approx(np.sqrt(0.4))  # the median neighbour distance


def test_mask_patch_map_is_the_covered_fraction_of_each_patch() -> None:
    mask = np.zeros((224, 224), bool)
    mask[16:32, 80:96] = True  # patch 1 * 14 + 5 = 19, whole
    mask[16:24, 96:112] = True  # half of patch 20
    w = mask_patch_map(mask, GRID)
    assert w[19] == 1.0 and w[20] == 0.5 and w.sum() == 1.5
    small = mask[::2, ::2]  # another size is resized to the grid's canvas
    assert np.abs(mask_patch_map(small, GRID) - w).max() < 0.1


def test_bank_round_trips_through_a_file(tmp_path: Path, chest_bank: EvidenceBank) -> None:
    path = chest_bank.save(tmp_path / "bank.npz")
    back = EvidenceBank.load(path)
    assert np.array_equal(back.embeddings, chest_bank.embeddings) and np.array_equal(back.maps, chest_bank.maps)
    assert back.case_ids == chest_bank.case_ids and back.grid == (14, 14) and back.source == "masks"
    assert np.abs(back.maps).max(axis=1).tolist() == [1.0] * len(back)  # each map scaled to max |w| = 1
    assert not list(tmp_path.glob("*.part"))


def test_bad_bank_files_are_named_with_the_fix(tmp_path: Path, chest_bank: EvidenceBank, embedder: Embedder) -> None:
    with pytest.raises(BankError, match=r"^Evidence bank not found: .*nope\.npz\. Build one with `blackbox-lime bank build`\.$"):
        EvidenceBank.load(tmp_path / "nope.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a bank")
    with pytest.raises(BankError, match=r"^junk\.npz is not an evidence bank \("):
        EvidenceBank.load(junk)
    other = tmp_path / "other.npz"
    np.savez(other, embeddings=np.zeros((1, 2)), maps=np.zeros((1, 4)), header=np.frombuffer(b'{"format": "x"}', np.uint8))
    with pytest.raises(BankError, match=r"^other\.npz is not a readable evidence bank \(format 'x'\)"):
        EvidenceBank.load(other)
    with pytest.raises(BankError, match=r"^The evidence bank was built on a 14x14 grid of 16-px patches; this explanation "
                                        r"uses 7x7 patches of 32 px\. Rebuild the bank with --patch-size 32"):
        chest_bank.check_fits(PatchGrid(224, 224, 32), embedder)
    alien = dataclasses.replace(chest_bank, embedder={"file": "x.onnx", "sha256": "ab" * 32})
    with pytest.raises(BankError, match=r"^The evidence bank was built with the embedder x\.onnx \(abababababab\.\.\.\), "
                                        r"not mae_embed\.onnx"):
        alien.check_fits(GRID, embedder)


def test_retrieval_finds_a_bank_case_as_its_own_nearest_neighbour(chest_bank: EvidenceBank, embedder: Embedder) -> None:
    ph = make_phantom("chest_xray", "train", int(chest_bank.case_ids[3].split("/")[-1]))
    ref, neighbours = EvidencePrior(chest_bank, embedder, n_neighbours=1)(ph.image)
    assert neighbours[0]["case"] == chest_bank.case_ids[3] and neighbours[0]["similarity"] == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(ref, chest_bank.maps[3], atol=1e-6)  # one neighbour: its own map


def test_centred_keys_separate_cases_that_raw_cosine_cannot(chest_bank: EvidenceBank) -> None:
    raw = chest_bank.embeddings / np.linalg.norm(chest_bank.embeddings, axis=1, keepdims=True)
    raw_sim = raw @ raw.T
    centred_sim = chest_bank.retrieval_keys @ chest_bank.retrieval_keys.T
    off = ~np.eye(len(chest_bank), dtype=bool)
    # the MAE's mean token shares one large component across chest phantoms: raw cosines bunch near 1
    assert np.median(raw_sim[off]) > 0.9
    assert abs(np.median(centred_sim[off])) < 0.3 and centred_sim[off].min() < -0.5


def test_surrogate_fits_the_scale_of_the_prior() -> None:
    """Known answer: y linear in the design along the prior's shape. alpha is exactly that scale, and
    a prior pointing the other way gets alpha = 0 (it pulls towards zero)."""
    rng = np.random.default_rng(0)
    X = (rng.random((400, 10)) < 0.5).astype(float)
    shape = np.linspace(-1, 1, 10)
    y = 0.3 + X @ (0.07 * shape)
    fit = SparseSurrogate(0.0, 1.0, reference=shape, reference_scale="fit").fit(X, y)
    assert fit.reference_scale_ == pytest.approx(0.07, rel=1e-9)
    np.testing.assert_allclose(fit.coef_, 0.07 * shape, atol=1e-9)
    against = SparseSurrogate(0.0, 1.0, reference=-shape, reference_scale="fit").fit(X, y)
    assert against.reference_scale_ == 0.0
    fixed = SparseSurrogate(0.0, 1.0, reference=shape, reference_scale="fixed").fit(X, y)
    assert fixed.reference_scale_ == 1.0
    with pytest.raises(ValueError, match="^reference_scale must be 'fixed' or 'fit'. Got 'x' instead.$"):
        SparseSurrogate(reference_scale="x").fit(X, y)


def test_a_true_prior_helps_a_small_budget(linear_model: Path, linear_weights: np.ndarray,
                                           phantom_image: np.ndarray, embedder: Embedder) -> None:
    """With few samples, the prior of a bank whose map is the truth's shape brings the weights closer to
    the known answer than the same penalty towards zero."""
    truth = true_attribution(phantom_image, linear_weights)
    bank = build_bank([phantom_image], [truth], ["truth"], embedder, GRID, "abnormal", "explanations")
    cfg = ExplainConfig(fill="zero", n_samples=60, lambda1=1e-5, lambda2=0.3, nested_samples=1)
    with OnnxAdapter(linear_model) as model:
        with_prior = Explainer(model, cfg, bank=bank).explain(phantom_image, target=1, rng=0)
        without = Explainer(model, cfg).explain(phantom_image, target=1, rng=0)
    err_with = np.abs(with_prior.patch_weights.reshape(-1) - truth).mean()
    err_without = np.abs(without.patch_weights.reshape(-1) - truth).mean()
    assert err_with < 0.5 * err_without
    assert with_prior.evidence["reference_scale"] == pytest.approx(np.abs(truth).max(), rel=0.1)
    assert with_prior.neighbours == [{"similarity": 1.0, "weight": 1.0, "case": "truth"}]
    assert with_prior.config["evidence_bank"]["cases"] == 1


def test_lambda2_defaults_to_the_tuned_weight_with_a_prior_only(linear_model: Path, phantom_image: np.ndarray,
                                                               chest_bank: EvidenceBank) -> None:
    from blackbox_lime.config import LAMBDA2_NO_PRIOR, LAMBDA2_PRIOR

    cfg = ExplainConfig(fill="zero", n_samples=40)
    assert (cfg.lambda2_for(prior=True), cfg.lambda2_for(prior=False)) == (LAMBDA2_PRIOR, LAMBDA2_NO_PRIOR)
    assert ExplainConfig(lambda2=0.05).lambda2_for(prior=False) == 0.05
    with OnnxAdapter(linear_model) as model:
        with_bank = Explainer(model, cfg, bank=chest_bank).explain(phantom_image, target=1, rng=0)
        plain = Explainer(model, cfg).explain(phantom_image, target=1, rng=0)
    assert with_bank.evidence["lambda2"] == with_bank.config["lambda2_effective"] == LAMBDA2_PRIOR
    assert list(with_bank.evidence) == ["neighbours", "bandwidth", "n_neighbours", "reference_scale", "lambda2"]
    assert EvidenceUse.from_summary(with_bank.evidence).summary() == with_bank.evidence
    assert plain.config["lambda2_effective"] == LAMBDA2_NO_PRIOR and plain.config["lambda2"] is None


def test_bank_is_not_used_for_another_class(linear_model: Path, phantom_image: np.ndarray,
                                            chest_bank: EvidenceBank) -> None:
    with OnnxAdapter(linear_model) as model:
        exp = Explainer(model, ExplainConfig(fill="zero", n_samples=40), bank=chest_bank).explain(
            phantom_image, target=0, rng=0)
    assert exp.neighbours == [] and exp.evidence is None
    assert "the evidence bank holds evidence for 'abnormal', so it was not used for the class 'normal'" in exp.notes


def test_bank_and_reference_together_are_refused(linear_model: Path, chest_bank: EvidenceBank) -> None:
    with OnnxAdapter(linear_model) as model:
        with pytest.raises(ValueError, match=r"^Pass either bank= \(the evidence bank\) or reference= "):
            Explainer(model, ExplainConfig(fill="zero"), bank=chest_bank, reference=lambda c: (np.zeros(196), []))


def test_an_embedder_without_mae_metadata_is_named(linear_model: Path) -> None:
    from blackbox_lime.fill.fillers import MAEFiller

    msg = r"^linear\.onnx lacks the MAE metadata \(image_size, patch_size, channels, mean, std\)\. Export it with onnx/export_mae\.py\.$"
    with pytest.raises(ValueError, match=msg):
        Embedder(linear_model)
    with pytest.raises(ValueError, match=msg):
        MAEFiller(linear_model)


def test_evidence_record_is_typed_and_reads_back() -> None:
    """EBR's record: a dataclass written to the JSON in one place, in the historical key order; a custom prior
    without ``last`` reports only its neighbours until the surrogate has weighed it."""
    rec = EvidenceUse(3, {"bandwidth": 0.25, "n_neighbours": 3})
    assert rec.summary() == {"neighbours": 3, "bandwidth": 0.25, "n_neighbours": 3}
    fitted = rec.fitted(0.5, 0.1)
    assert rec.reference_scale is None and fitted.summary() == {"neighbours": 3, "bandwidth": 0.25, "n_neighbours": 3,
                                                                "reference_scale": 0.5, "lambda2": 0.1}
    assert EvidenceUse.from_summary(fitted.summary()) == fitted
    assert EvidenceUse(2).fitted(1.0, 0.3).summary() == {"neighbours": 2, "reference_scale": 1.0, "lambda2": 0.3}
