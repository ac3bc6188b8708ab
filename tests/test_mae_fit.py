"""blackbox-lime mae fit: a site-fitted MAE under the mae_recon.onnx contract (needs torch: the train extra)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from blackbox_lime import cli

pytest.importorskip("torch")
pytestmark = [pytest.mark.torch, pytest.mark.slow]


def _site(folder: Path, n: int, size: int = 64) -> list[Path]:
    """``n`` small grayscale PNGs (the loader maps them to the MAE's 224 x 224 canvas)."""
    from blackbox_lime.evaluation.phantoms import make_phantom

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        img = cv2.resize(make_phantom("brain_mri", "val", i).image[..., 0], (size, size), interpolation=cv2.INTER_AREA)
        p = folder / f"img{i:02d}.png"
        cv2.imwrite(str(p), np.round(img * 255).astype(np.uint8))
        paths.append(p)
    return paths


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[Path]]:
    d = tmp_path_factory.mktemp("site")
    paths = _site(d / "images", 24)
    out = d / "models" / "site_mae.onnx"
    assert cli.main(["mae", "fit", str(d / "images"), "--out", str(out), "--minutes", "0.02", "--min-images", "20",
                     "--quiet"]) == 0
    return d, out, paths


def test_fit_writes_the_contract_the_facts_and_a_card(fitted) -> None:
    from blackbox_lime.calibration import images_digest
    from blackbox_lime.evidence_bank import Embedder
    from blackbox_lime.fill.fillers import MAEFiller
    from blackbox_lime.image_io import load_image

    _, out, paths = fitted
    assert sorted(p.name for p in out.parent.iterdir()) == ["site_mae.card.json", "site_mae.embed.onnx", "site_mae.onnx"]
    filler = MAEFiller(out)
    assert (filler.size, filler.patch, filler.channels) == (224, 16, 3)
    # A fine-tune keeps the bundled normalisation, which its weights expect.
    bundled = MAEFiller()
    np.testing.assert_array_equal(filler.mean, bundled.mean)
    from blackbox_lime.adapters.onnx import read_metadata

    facts = read_metadata(filler.session)["training"]
    assert facts["start"] == "bundled" and facts["images"] == 24 and facts["held_out_images"] == 4
    assert facts["train_images"] == 20 and facts["steps"] >= 1
    assert facts["images_sha256"] == images_digest([load_image(p).sha256 for p in paths])
    assert set(facts["held_out_psnr_db"]) == {"blur", "telea", "mae_before", "mae"}
    card = json.loads((out.parent / "site_mae.card.json").read_text())
    assert card["training"] == facts and card["files"] == {"recon": "site_mae.onnx", "embed": "site_mae.embed.onnx"}
    # The contract: visible pixels are copied exactly, hidden ones predicted.
    canvas = load_image(paths[0]).pixels
    canvas = cv2.resize(canvas, (224, 224)).reshape(224, 224, 1)
    hidden = np.zeros((1, 224, 224), bool)
    hidden[0, 32:96, 48:112] = True
    fill = filler.fill(canvas, hidden)[0]
    assert fill.shape == (224, 224, 1)
    # Resumed from the bundled weights: after a step or two it still fills close to the bundled MAE.
    before = bundled.fill(canvas, hidden)[0]
    assert 0 < np.abs(fill - before)[hidden[0]].mean() < 0.05
    emb = Embedder(out.parent / "site_mae.embed.onnx")
    assert emb.embed(np.repeat(canvas, 3, axis=2)[None]).shape == (1, 192)


def test_explain_uses_the_fitted_mae(fitted, tmp_path: Path, linear_model: Path) -> None:
    _, out, paths = fitted
    assert cli.main(["explain", str(paths[0]), "--model", str(linear_model), "--mae", str(out), "--fill", "mae",
                     "--samples", "40", "--out", str(tmp_path / "o"), "--quiet"]) == 0
    report = json.loads((tmp_path / "o" / "img00.json").read_text())
    assert report["models"]["mae"]["file"] == "site_mae.onnx"


def test_fit_refuses_bad_requests_and_writes_nothing(tmp_path: Path, capsys) -> None:
    _site(tmp_path / "few", 5)

    def err(*args: str) -> str:
        assert cli.main(["mae", "fit", *args]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1
        return lines[0]

    out = tmp_path / "m" / "x.onnx"
    assert err(str(tmp_path / "few"), "--out", str(out)) == (
        f"blackbox-lime: error: mae fit needs at least 50 images to fit and hold some out; found 5 in "
        f"{tmp_path / 'few'}. Add images or lower --min-images.")
    (tmp_path / "few" / "zz.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    msg = err(str(tmp_path / "few"), "--out", str(out))
    assert msg.startswith("blackbox-lime: error: 1 of 6 images could not be read: zz.png (")
    assert msg.endswith("Remove or fix them; no MAE was written.")
    (tmp_path / "none").mkdir()
    assert err(str(tmp_path / "none"), "--out", str(out)).startswith(
        f"blackbox-lime: error: No images found in {tmp_path / 'none'} (looked for .png")
    assert err(str(tmp_path / "few"), "--out", str(tmp_path / "x.pt")) == \
        f"blackbox-lime: error: --out must name an .onnx file. Got {str(tmp_path / 'x.pt')!r} instead."
    assert err(str(tmp_path / "few"), "--out", str(out), "--minutes", "0") == \
        "blackbox-lime: error: --minutes must be a number > 0. Got 0.0 instead."
    assert not (tmp_path / "m").exists()
