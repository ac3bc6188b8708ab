"""Vendor file APIs (protocol "file"): encodings, bodies, answer formats, presets, censored top-k answers, DICOM
requests that carry pixels only, and maps from a real loopback server equal to the local ones."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from quantised import Quantised

from blackbox_lime.adapters import ConfigError, ResponseError
from blackbox_lime.adapters.censoring import Censoring
from blackbox_lime.adapters.file_api import (EMPTY_TYPE2, FileRequest, FileResponse, FileTransport, encode_image,
                                             resolve_preset, secondary_capture)
from blackbox_lime.adapters.onnx import OnnxAdapter
from blackbox_lime.adapters.profile import EndpointProfile
from blackbox_lime.config import ExplainConfig
from blackbox_lime.evaluation.file_server import FileApiServer, decode_file
from blackbox_lime.explainer import Explainer
from blackbox_lime.models import resolve_model
from blackbox_lime.surrogate import SparseSurrogate, censored_fit

NAMES = ("normal", "effusion", "nodule", "pneumothorax")


def transport(fmt: str = "label-score-list", **res: object) -> FileTransport:
    t = FileTransport("http://127.0.0.1:9/predict", FileRequest(), FileResponse(format=fmt, **res))  # type: ignore[arg-type]
    t.class_names = NAMES
    return t


# -- censoring ---------------------------------------------------------------------------------------


def test_bounds_follow_top_k_threshold_and_the_mass_left() -> None:
    c = Censoring(top_k=2, threshold=0.0, sums_to_one=True)
    row = np.array([[0.5, np.nan, 0.3, np.nan]])  # full list: at most 0.3, and at most the 0.2 left over
    assert c.bounds(row)[0, 1] == pytest.approx(0.2) and np.isinf(c.bounds(row)[0, 0])
    assert c.impute(row)[0].tolist() == pytest.approx([0.5, 0.1, 0.3, 0.1])
    ml = Censoring(top_k=2, threshold=0.0, sums_to_one=False)  # findings: only the smallest listed bounds them
    assert ml.bounds(row)[0, 3] == pytest.approx(0.3) and ml.impute(row)[0, 3] == pytest.approx(0.15)
    t = Censoring(top_k=3, threshold=0.25, sums_to_one=False)  # fewer than k listed: below the threshold
    assert t.bounds(np.array([[0.9, np.nan, 0.4, np.nan]]))[0, 1] == pytest.approx(0.25)


@pytest.mark.parametrize("censoring, row, message", [
    (Censoring(), [0.7, np.nan, 0.3, np.nan],
     r"omits the label 'effusion' \(2 of 4 labels listed\), and the profile declares neither \[response\] top_k nor "
     r"threshold"),
    (Censoring(top_k=1), [0.7, np.nan, 0.3, np.nan], r"lists 2 labels, more than the profile's \[response\] top_k = 1"),
    (Censoring(top_k=3), [0.7, np.nan, 0.3, np.nan],
     r"omits the label 'effusion' although it lists only 2 labels, fewer than \[response\] top_k = 3: the endpoint "
     r"also cuts by a score threshold\. Set \[response\] threshold"),
])
def test_unexplained_omissions_name_the_label_and_the_key(censoring: Censoring, row: list[float], message: str) -> None:
    with pytest.raises(ResponseError, match=message):
        censoring.check(np.array(row), NAMES, "The answer")


def test_censored_fit_recovers_a_linear_model_that_zero_filling_misreads() -> None:
    """Known answer: y linear in 12 patch indicators; y is omitted (censored) wherever it falls below 0.35, as a
    top-k endpoint omits a label that lost its rank. The censored fit recovers the true weights; reading the
    omitted scores as 0 does not."""
    rng = np.random.default_rng(0)
    X = (rng.random((400, 12)) > 0.5).astype(float)
    w = np.r_[0.3, 0.2, 0.1, np.zeros(9)]
    y = 0.1 + X @ w
    upper = np.where(y < 0.35, 0.35, np.inf)
    weights = np.ones(len(y))

    def make() -> SparseSurrogate:
        return SparseSurrogate(lambda1=0.0, lambda2=1e-6)

    start = np.where(np.isfinite(upper), 0.175, y)
    model, completed, rounds = censored_fit(make, X, start, upper, weights)
    zero = make().fit(X, np.where(np.isfinite(upper), 0.0, y), weights)
    assert rounds > 1 and np.isfinite(upper).mean() > 0.3
    assert np.abs(model.coef_ - w).max() < 0.02
    assert np.abs(zero.coef_ - w).max() > 0.1
    assert np.all(completed[np.isfinite(upper)] <= 0.35 + 1e-12)


# -- answers -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt, res, doc", [
    ("label-score-list", {}, [{"label": "nodule", "score": 0.6}, {"label": "normal", "score": 0.4}]),
    ("label-score-map", {}, {"nodule": 0.6, "normal": 0.4}),
    ("label-score-list", {"scores": "predictions", "label_key": "tagName", "score_key": "probability"},
     {"predictions": [{"tagName": "nodule", "probability": 0.6}, {"tagName": "normal", "probability": 0.4}]}),
    ("parallel-lists", {"scores": "predictions.0", "label_key": "displayNames", "score_key": "confidences"},
     {"predictions": [{"displayNames": ["nodule", "normal"], "confidences": [0.6, 0.4]}]}),
])
def test_every_format_gives_the_same_row(fmt: str, res: dict, doc: object) -> None:
    row = transport(fmt, **res).parse(doc)
    assert np.isnan(row[[1, 3]]).all() and row[[0, 2]].tolist() == [0.4, 0.6]


def test_array_format_is_class_order() -> None:
    assert transport("array").parse([0.1, 0.2, 0.3, 0.4]).tolist() == [0.1, 0.2, 0.3, 0.4]


@pytest.mark.parametrize("fmt, res, doc, message", [
    ("label-score-list", {}, [{"label": "cat", "score": 0.9}],
     r"the answer lists the label 'cat', which is not in \[output\] class_names \(normal, effusion, nodule, "
     r"pneumothorax\); add it there"),
    ("label-score-list", {}, [{"label": "nodule", "score": 0.5}, {"label": "nodule", "score": 0.4}],
     r"the answer lists the label 'nodule' twice\."),
    ("label-score-map", {}, {"nodule": "high"}, r"the score of 'nodule' is 'high', not a finite number\."),
    ("label-score-list", {"scores": "result.labels"}, {"result": {"top": []}},
     r"the answer has no 'result\.labels' \(\[response\] scores = 'result\.labels'\); result has the keys top\."),
    ("label-score-list", {}, [{"name": "nodule", "p": 0.5}],
     r"item 0 of the answer has no 'label' and 'score' \(it has \['name', 'p'\]\); set \[response\] label_key"),
    ("array", {}, [0.5, 0.5], r"the answer holds 2 scores but \[output\] class_names names 4 classes\."),
])
def test_bad_answers_name_the_key(fmt: str, res: dict, doc: object, message: str) -> None:
    with pytest.raises(ResponseError, match=message):
        transport(fmt, **res).parse(doc)


def test_presets_fill_keys_and_explicit_keys_win() -> None:
    req, res, auth = resolve_preset("vertex-automl", {}, {"top_k": 100}, {})
    assert req == {"encoding": "png", "body": "json-base64", "field": "instances.0.content"}
    assert res["format"] == "parallel-lists" and res["top_k"] == 100 and auth == {}
    _, _, auth = resolve_preset("custom-vision", {}, {}, {"token_env": "CV_KEY"})
    assert auth == {"header": "Prediction-Key", "scheme": "", "token_env": "CV_KEY"}
    with pytest.raises(ConfigError, match=r"preset must be one of huggingface, torchserve, custom-vision, "
                                          r"vertex-automl\. Got 'sagemaker' instead\."):
        resolve_preset("sagemaker", {}, {}, {})


# -- profiles ----------------------------------------------------------------------------------------


def profile(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "vendor.toml"
    p.write_text(text)
    return p


def test_a_preset_makes_a_file_profile(tmp_path: Path) -> None:
    prof = EndpointProfile.from_toml(profile(tmp_path, 'url = "https://vendor.example/predict"\npreset = "torchserve"\n'
                                             '[response]\ntop_k = 3\n'))
    assert prof.protocol == "file" and prof.url == "https://vendor.example/predict"
    assert prof.response == {"scores": "", "format": "label-score-map", "top_k": 3}


@pytest.mark.parametrize("text, message", [
    ('url = "https://v.example/v2/models/m"\nprotocol = "oip-rest"\n[response]\ntop_k = 2\n',
     r"'response' is for protocol = \"file\" \(a vendor file API\), but the profile says protocol = 'oip-rest'"),
    ('url = "https://v.example/p"\nprotocol = "file"\n[request]\nencoding = "webp"\n',
     r"\[request\] encoding must be one of png, jpeg, dicom\. Got 'webp' instead\."),
    ('url = "https://v.example/p"\nprotocol = "file"\n[request]\nheaders = { Authorization = "Bearer x" }\n',
     r"\[request\] headers holds a credential header; tokens are never written in profiles"),
    ('url = "https://v.example/p"\nprotocol = "file"\n[response]\nformat = "csv"\n',
     r"\[response\] format must be one of label-score-list, label-score-map, array, parallel-lists"),
    ('url = "https://v.example/p"\nprotocol = "file"\n[response]\nthreshold = 1.5\n',
     r"\[response\] threshold must be a number in \[0, 1\)\. Got 1\.5 instead\."),
    ('url = "https://v.example/p"\nprotocol = "file"\n[response]\ntopk = 2\n',
     r"unknown key 'topk' in \[response\]; known keys: format, label_key"),
])
def test_bad_file_profiles_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        EndpointProfile.from_toml(profile(tmp_path, text))


def test_logits_need_complete_answers(tmp_path: Path) -> None:
    p = profile(tmp_path, 'url = "http://127.0.0.1:9/p"\npreset = "huggingface"\n[output]\nkind = "logits"\n'
                          'class_names = ["normal", "effusion", "nodule", "pneumothorax", "mass", "other"]\n')
    with pytest.raises(ConfigError, match=r"kind = 'logits' needs every label's score in every answer, but the profile "
                                          r"declares top_k = 5 of 6 labels"):
        EndpointProfile.from_toml(p).build()


# -- encodings ---------------------------------------------------------------------------------------


def test_png_is_lossless_and_jpeg_is_not() -> None:
    px = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    assert np.array_equal(decode_file(encode_image(px, "png")), px)
    grey = px[..., :1]
    assert np.array_equal(decode_file(encode_image(grey, "png")), grey)
    jpg = decode_file(encode_image(px, "jpeg", 90))
    assert jpg.shape == px.shape and not np.array_equal(jpg, px)


def test_png_writer_is_lossless_for_every_reader_and_carries_nothing_else() -> None:
    import struct

    from PIL import Image

    from blackbox_lime.adapters.file_api import png_bytes

    rng = np.random.default_rng(0)
    for shape in ((224, 224, 3), (224, 224, 1), (5, 7, 3), (1, 1, 1)):
        px = rng.integers(0, 256, shape, dtype=np.uint8)
        for level in (0, 1, 9):
            data = png_bytes(px, level)
            assert np.array_equal(decode_file(data), px), (shape, level)  # OpenCV, as the loopback server reads it
            pil = np.asarray(Image.open(io.BytesIO(data)))  # Pillow, as TorchServe's handler reads it
            assert np.array_equal(pil.reshape(shape), px), (shape, level)
            chunks, at = [], 8
            while at < len(data):
                n = struct.unpack(">I", data[at:at + 4])[0]
                chunks.append(data[at + 4:at + 8])
                at += 12 + n
            assert chunks == [b"IHDR", b"IDAT", b"IEND"]  # no text, time or other metadata chunk
    smooth = np.tile(np.arange(224, dtype=np.uint8)[:, None, None], (1, 224, 3))
    assert len(png_bytes(smooth, 0)) > 224 * 224 * 3 > 20 * len(png_bytes(smooth, 1))  # 0: stored; Up filter works
    with pytest.raises(ValueError, match=r"png_bytes takes uint8 \(H, W, 1 or 3\) pixels; got float32"):
        png_bytes(smooth.astype(np.float32))
    with pytest.raises(ConfigError, match=r"^\[request\] png_compression must be an integer from 0 to 9. Got 10 "
                                          r"instead.$"):
        FileRequest(png_compression=10)


def test_secondary_capture_holds_the_pixels_and_nothing_else() -> None:
    px = np.random.default_rng(1).integers(0, 256, (16, 20, 1), dtype=np.uint8)
    ds = pydicom.dcmread(io.BytesIO(secondary_capture(px)))
    assert np.array_equal(ds.pixel_array, px[..., 0])
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and ds.Modality == "OT" and ds.ConversionType == "WSD"
    for name in EMPTY_TYPE2:
        assert name in ds and not ds[name].value, name
    kept = {e.keyword for e in ds} - set(EMPTY_TYPE2)
    assert kept == {"SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality",
                    "ConversionType", "SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns",
                    "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "PixelData"}
    again = pydicom.dcmread(io.BytesIO(secondary_capture(px)))
    assert again.SOPInstanceUID != ds.SOPInstanceUID and again.StudyInstanceUID != ds.StudyInstanceUID


# -- against the loopback server ---------------------------------------------------------------------


def file_profile(tmp_path: Path, url: str, extra: str = "", names: tuple[str, ...] = ("normal", "abnormal"),
                 kind: str = "probabilities") -> Path:
    return profile(tmp_path, f'url = "{url}"\nprotocol = "file"\n{extra}\n[output]\nkind = "{kind}"\n'
                             f'class_names = {json.dumps(list(names))}\n')


def test_complete_answers_give_the_local_map_bit_for_bit(tmp_path: Path) -> None:
    from blackbox_lime.evaluation.phantoms import iter_abnormal_cases

    model = resolve_model("demo-cnn")
    image = next(iter_abnormal_cases("chest_xray", "test")).image
    cfg = ExplainConfig(n_samples=60, fill="mean")
    local = Explainer(Quantised(model), cfg).explain(image, target=1, rng=0)
    with FileApiServer(model, format="label-score-map") as server:
        prof = file_profile(tmp_path, server.url, 'preset = "torchserve"\n[response]\ntop_k = 2')
        with EndpointProfile.from_toml(prof).build() as adapter:
            remote = Explainer(adapter, cfg).explain(image, target=1, rng=0)
        assert server.requests == remote.queries == local.queries
        assert all(ct == "image/png" for ct in server.content_types)
    assert np.array_equal(remote.saliency, local.saliency)
    assert remote.probs.tolist() == local.probs.tolist()
    assert "censoring" not in remote.summary()
    # stored PNGs (png_compression = 0, for a fast link): the same map, from bodies of the raw pixels' size
    with FileApiServer(model, format="label-score-map", record=True) as server:
        prof = file_profile(tmp_path, server.url, 'preset = "torchserve"\n[request]\npng_compression = 0')
        with EndpointProfile.from_toml(prof).build() as adapter:
            stored = Explainer(adapter, cfg).explain(image, target=1, rng=0)
        sizes = [len(b) for b in server.bodies]
    assert np.array_equal(stored.saliency, local.saliency)
    assert 224 * 224 * 3 < min(sizes) and max(sizes) < 224 * 224 * 3 + 5_000  # 224 x 224 RGB and little else


def test_top_k_answers_are_fitted_as_bounds(tmp_path: Path) -> None:
    """A multi-label phantom with consolidation and effusion, both certain; the endpoint lists its top 2 of 3
    findings. Effusion is omitted from most answers, yet its map stays the full-answer map, and the JSON and the
    warning say how many answers were censored."""
    from blackbox_lime.evaluation.phantoms import make_multilabel_phantom

    model = resolve_model("multilabel-cnn")
    names = ("nodule", "consolidation", "effusion")
    image = make_multilabel_phantom("test", 2).image
    cfg = ExplainConfig(n_samples=200, fill="mean")
    with FileApiServer(model) as full_server, FileApiServer(model, top_k=2) as cut_server:
        full_prof = file_profile(tmp_path, full_server.url, 'preset = "huggingface"', names, "multilabel")
        with EndpointProfile.from_toml(full_prof).build() as full_adapter:
            full = Explainer(full_adapter, cfg).explain(image, target=[1, 2], rng=0)
        cut_prof = file_profile(tmp_path, cut_server.url, 'preset = "huggingface"\n[response]\ntop_k = 2', names,
                                "multilabel")
        with EndpointProfile.from_toml(cut_prof).build() as cut_adapter:
            cut = Explainer(cut_adapter, cfg).explain(image, target=[1, 2], rng=0)
    consolidation, effusion = cut.explanations
    assert consolidation.censoring == {"top_k": 2, "threshold": 0.0, "answers": 200, "censored": 3}
    assert effusion.censoring == {"top_k": 2, "threshold": 0.0, "answers": 200, "censored": 170}
    assert all("censoring" not in e.summary() for e in full.explanations)
    for f, c in zip(full.explanations, cut.explanations):
        assert np.corrcoef(f.saliency.ravel(), c.saliency.ravel())[0, 1] > 0.95
    assert not any("in only" in w for w in consolidation.warnings)
    assert any("listed 'effusion' in only 30 of its 200 answers (it lists its top 2)" in w for w in effusion.warnings)


def test_dicom_requests_carry_pixels_only(tmp_path: Path) -> None:
    """A source DICOM full of canary values, explained through a DICOM multipart file endpoint: no canary in any
    request body, and every request a Secondary Capture."""
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    canaries = {"PatientName": "CANARY^PATIENT", "PatientID": "CANARY-ID-77", "InstitutionName": "CANARY HOSPITAL",
                "StudyDescription": "CANARY STUDY", "ReferringPhysicianName": "CANARY^DOCTOR",
                "AccessionNumber": "CANARYACC", "StationName": "CANARYSTATION"}
    for k, v in canaries.items():
        setattr(ds, k, v)
    src = tmp_path / "CANARY-FILE-NAME.dcm"
    ds.save_as(src)
    from blackbox_lime.image_io import load_image

    pixels = load_image(src).pixels
    with FileApiServer(resolve_model("demo-cnn"), record=True) as server:
        prof = file_profile(tmp_path, server.url, '[request]\nencoding = "dicom"\nbody = "multipart"\nfield = "study"\n'
                                                  '[response]\ntop_k = 2')
        with EndpointProfile.from_toml(prof).build() as adapter:
            Explainer(adapter, ExplainConfig(n_samples=20, fill="mean")).explain(pixels, target=1, rng=0)
        bodies = server.bodies
    assert len(bodies) == 20
    for body in bodies:
        for value in [*canaries.values(), "CANARY-FILE-NAME", ds.StudyInstanceUID, ds.SOPInstanceUID]:
            assert value.encode() not in body
        assert b'name="study"; filename="image.dcm"' in body and b"1.2.840.10008.5.1.4.1.1.7" in body


def test_retry_after_and_refusals(tmp_path: Path) -> None:
    with FileApiServer(resolve_model("demo-cnn"), status=429, fail_first=2, retry_after="0") as server:
        with EndpointProfile.from_toml(file_profile(tmp_path, server.url, 'preset = "huggingface"')).build() as adapter:
            probs = adapter.predict(np.zeros((1, 224, 224, 3), np.float32))
            assert adapter.retries == 2 and np.isfinite(probs).all()
    with FileApiServer(resolve_model("demo-cnn"), token="right") as server:
        with EndpointProfile.from_toml(file_profile(tmp_path, server.url, 'preset = "huggingface"')).build() as adapter:
            with pytest.raises(ResponseError, match=r"answered HTTP 401"):
                adapter.predict(np.zeros((1, 224, 224, 3), np.float32))
    with FileApiServer(resolve_model("demo-cnn"), not_json=True) as server:
        with EndpointProfile.from_toml(file_profile(tmp_path, server.url, 'preset = "huggingface"')).build() as adapter:
            with pytest.raises(ResponseError, match=r"/predict is not JSON; it starts with <html>Service temporarily "
                                                    r"unavailable</html>\."):
                adapter.predict(np.zeros((1, 224, 224, 3), np.float32))


@pytest.mark.parametrize("body, field", [("json-base64", "instances.0.content"), ("multipart", "file"), ("raw", "file")])
def test_every_body_reaches_the_server(tmp_path: Path, body: str, field: str) -> None:
    with FileApiServer(resolve_model("demo-cnn"), format="vertex") as server:
        prof = file_profile(tmp_path, server.url, f'preset = "vertex-automl"\n[request]\nbody = "{body}"\n'
                                                  f'field = "{field}"')
        with EndpointProfile.from_toml(prof).build() as adapter:
            x = np.random.default_rng(2).random((2, 224, 224, 3)).astype(np.float32)
            got = adapter.predict(x)
        want = Quantised(resolve_model("demo-cnn")).predict(x)
    assert np.array_equal(got, want)


def test_the_readme_and_docs_profiles_are_valid(tmp_path: Path) -> None:
    """The file-endpoint profiles shown in README.md and docs/remote.md parse as written."""
    import re

    root = Path(__file__).resolve().parents[1]
    blocks = []
    for doc in ("README.md", "docs/remote.md"):
        text = (root / doc).read_text()
        blocks += [re.sub(r"^  ", "", b, flags=re.M) for b in re.findall(r"```toml\n(.*?)```", text, re.S)
                   if 'protocol = "file"' in b or "preset" in b]
    assert len(blocks) >= 2
    for block in blocks:
        prof = EndpointProfile.from_toml(profile(tmp_path, block))
        assert prof.protocol == "file" and prof.response["format"] == "label-score-list"


def test_an_audit_through_a_file_endpoint_and_its_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from blackbox_lime.cli import main
    from blackbox_lime.evaluation.phantoms import write_phantoms

    study = tmp_path / "study"
    write_phantoms(study, "chest_xray", "test", 3)
    out = tmp_path / "audit"
    with FileApiServer(resolve_model("demo-cnn"), top_k=1) as server:
        prof = file_profile(tmp_path, server.url, 'preset = "huggingface"\n[response]\ntop_k = 1')
        args = ["audit", "run", str(study), "--endpoint", str(prof), "--out", str(out), "--samples", "40",
                "--fill", "mean", "--quiet"]
        assert main(args) == 0
        sent = server.requests
        assert main(args) == 0  # a resume: every case is done, nothing is asked again
        assert server.requests == sent
    summary = json.loads((out / "summary.json").read_text())
    assert [c["state"] for c in summary["cases"]] == ["done"] * 3
    for c in summary["cases"]:
        record = json.loads((out / next(o for o in c["outputs"] if o.endswith(".json"))).read_text())
        # two exclusive classes, top 1 listed: the omitted one is what the listed one leaves, so nothing is censored
        assert record["censoring"] == {"top_k": 1, "threshold": 0.0, "answers": 40, "censored": 0}
        assert record["model"]["protocol"] == "file" and record["model"]["url"] == server.url


def test_a_bad_answer_exits_2_naming_the_label_and_writes_nothing(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from blackbox_lime.cli import main
    from blackbox_lime.models import bundled_example

    out = tmp_path / "out"
    with FileApiServer(resolve_model("demo-cnn"), top_k=1) as server:
        prof = file_profile(tmp_path, server.url, "")  # no preset: label-score-list, and no top_k declared
        code = main(["explain", str(bundled_example("chest_xray_test_00001.png")), "--endpoint", str(prof),
                     "--out", str(out), "--samples", "40", "--fill", "mean", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert "omits the label" in err and "declares neither [response] top_k nor threshold" in err
    assert "Traceback" not in err


def test_the_truncation_benchmark_cuts_answers_as_an_endpoint_does() -> None:
    from blackbox_lime.evaluation.bench_truncation import TopK

    inner = OnnxAdapter(Path(resolve_model("multilabel-cnn")))
    x = np.random.default_rng(0).random((3, 224, 224, 3)).astype(np.float32)
    full = inner.predict(x)
    cut, zero = TopK(inner, 1, True).predict(x), TopK(inner, 1, False).predict(x)
    top = np.argmax(full, axis=1)
    assert np.array_equal(cut[np.arange(3), top], full[np.arange(3), top])
    assert (np.isnan(cut).sum(axis=1) == 2).all() and (zero == 0).sum() == 6
    assert TopK(inner, 1, True).info.extra["censoring"] == {"top_k": 1, "threshold": 0.0}


def test_endpoint_check_on_a_file_endpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from blackbox_lime.cli import main

    names = ("nodule", "consolidation", "effusion")
    with FileApiServer(resolve_model("multilabel-cnn"), top_k=1) as server:
        prof = file_profile(tmp_path, server.url, 'preset = "huggingface"\n[response]\ntop_k = 1', names, "multilabel")
        assert main(["endpoint", "check", "--endpoint", str(prof), "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert main(["endpoint", "check", "--endpoint", str(prof)]) == 0
        text = capsys.readouterr().out
    tp = doc["test_prediction"]
    assert tp["labels_listed"] == 1 and tp["truncated"] is True and tp["probs"].count(None) == 2
    assert 10_000 < tp["request_bytes"] < 224 * 224 * 3  # a PNG of the canvas, compressed
    assert doc["endpoint"]["protocol"] == "file" and doc["endpoint"]["preset"] == "huggingface"
    assert "=not listed" in text and "1 of 3 labels listed (truncated; the profile declares top_k 1, threshold 0.0)" in text
    assert "KiB of PNG" in text


def test_a_multilabel_audit_reports_censoring_per_finding(tmp_path: Path) -> None:
    """Findings answered top 1 of 3: the answers (NaN where omitted) go through the audit's answer store, a rerun
    asks nothing again, and each finding's record says how many answers omitted it."""
    from blackbox_lime.cli import main
    from blackbox_lime.evaluation.phantoms import write_multilabel_phantoms

    write_multilabel_phantoms(tmp_path / "study", "test", 2)
    out = tmp_path / "audit"
    with FileApiServer(resolve_model("multilabel-cnn"), top_k=1) as server:
        prof = file_profile(tmp_path, server.url, 'preset = "huggingface"\n[response]\ntop_k = 1',
                            ("nodule", "consolidation", "effusion"), "multilabel")
        args = ["audit", "run", str(tmp_path / "study"), "--endpoint", str(prof), "--out", str(out), "--samples", "40",
                "--fill", "mean", "--quiet"]
        assert main(args) == 0
        sent = server.requests
        assert main(args) == 0 and server.requests == sent == 80
    summary = json.loads((out / "summary.json").read_text())
    for c in summary["cases"]:
        record = json.loads((out / next(o for o in c["outputs"] if o.endswith(".json"))).read_text())
        for f in record["findings"]:
            assert f["censoring"]["top_k"] == 1 and f["censoring"]["answers"] == 40
            assert 0 < f["censoring"]["censored"] <= 40



def test_a_file_endpoint_restarting_mid_run_leaves_the_map_bit_identical(tmp_path: Path) -> None:
    """The vendor's server process is killed in the middle of a map and started again a second later on the same
    port: the refused requests are retried until it answers, and the map equals the local one on the same PNG
    pixels."""
    import subprocess
    import sys
    import threading
    import time

    from blackbox_lime.evaluation.demo_server import free_port
    from blackbox_lime.evaluation.phantoms import iter_abnormal_cases

    model = resolve_model("demo-cnn")
    image = next(iter_abnormal_cases("chest_xray", "test")).image
    cfg = ExplainConfig(n_samples=120, fill="mean")
    local = Explainer(Quantised(model), cfg).explain(image, target=1, rng=0)
    port = free_port()

    def serve(n: int) -> subprocess.Popen[bytes]:
        ready = tmp_path / f"ready-{n}"
        proc = subprocess.Popen([sys.executable, "-m", "blackbox_lime.evaluation.file_server", "--model", model,
                                 "--format", "label-score-map", "--delay-ms", "50", "--port", str(port), "--ready",
                                 str(ready)], stdout=subprocess.DEVNULL)
        t0 = time.monotonic()
        while not (ready.is_file() and ready.read_text()):
            assert proc.poll() is None and time.monotonic() - t0 < 60, "the file-API server did not start"
            time.sleep(0.05)
        return proc

    lives = [serve(1)]

    def restart() -> None:
        time.sleep(0.6)  # 120 requests of 50 ms, 4 in flight: the map needs 1.5 s at least
        lives[0].kill()
        lives[0].wait()
        time.sleep(1.0)
        lives.append(serve(2))

    t = threading.Thread(target=restart)
    try:
        url = f"http://127.0.0.1:{port}/predict"
        with EndpointProfile.from_toml(file_profile(tmp_path, url, 'preset = "torchserve"')).build() as adapter:
            t.start()
            remote = Explainer(adapter, cfg).explain(image, target=1, rng=0)
    finally:
        t.join()
        for proc in lives:
            proc.kill()
            proc.wait()
    assert len(lives) == 2 and remote.traffic["retries"] > 0  # requests went to both lives of the server
    assert np.array_equal(remote.saliency, local.saliency)
