"""Fault injection on the HTTP adapters with ``responses``: every ordinary failure of an endpoint."""

from __future__ import annotations

import json
import time
from email.utils import formatdate

import numpy as np
import pytest
import requests
import responses
from fake_endpoint import BASE, URL, FakeEndpoint, image, linear_probs

from blackbox_lime.adapters import (
    AdapterTimeout,
    BudgetExhausted,
    ConnectionFailed,
    ResponseError,
    ServerError,
)
from blackbox_lime.adapters.http import BINARY_HEADER
from blackbox_lime.adapters.profile import EndpointProfile
from blackbox_lime.adapters.remote import RemotePolicy
from blackbox_lime.config import ExplainConfig
from blackbox_lime.explainer import Explainer


def adapter(sleeps: list[float] | None = None, binary: str = "never", **kw: object):  # type: ignore[no-untyped-def]
    """These tests drive the JSON path (binary "auto" probing is tested on its own below)."""
    rec = sleeps if sleeps is not None else []
    profile = EndpointProfile.from_url(URL)
    profile.limits["binary"] = binary
    return profile.build(sleep=rec.append, **kw)  # type: ignore[arg-type]


def batch(n: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (n, 32, 32, 3)).astype(np.float32)


def expected(x: np.ndarray) -> np.ndarray:
    return linear_probs(x.transpose(0, 3, 1, 2))


@pytest.fixture
def rsps():  # type: ignore[no-untyped-def]
    with responses.RequestsMock(assert_all_requests_are_fired=False) as r:
        yield r


def test_metadata_discovery_and_json_round_trip(rsps: responses.RequestsMock) -> None:
    ep = FakeEndpoint(rsps).install()
    a = adapter()
    assert a.info.input_size == (32, 32) and a.info.name == "linear" and a.ready() is True
    x = batch()
    assert np.allclose(a.predict(x), expected(x), atol=1e-6)
    sent = json.loads(ep.bodies[0])
    assert sent["inputs"][0]["name"] == "image" and sent["inputs"][0]["shape"] == [4, 3, 32, 32]
    assert sent["inputs"][0]["datatype"] == "FP32" and sent["outputs"] == [{"name": "probs"}]
    assert np.array_equal(np.asarray(sent["inputs"][0]["data"], np.float32), x.transpose(0, 3, 1, 2).ravel())


def test_503_then_success(rsps: responses.RequestsMock) -> None:
    ep = FakeEndpoint(rsps, faults=lambda i: (503, {}, "deploying") if i == 0 else None).install()
    sleeps: list[float] = []
    a = adapter(sleeps)
    x = batch()
    assert np.allclose(a.predict(x), expected(x), atol=1e-6)
    assert ep.calls == 2 and len(sleeps) == 1 and a.retries == 1


def test_429_retry_after_seconds_is_honoured(rsps: responses.RequestsMock) -> None:
    FakeEndpoint(rsps, faults=lambda i: (429, {"Retry-After": "3"}, "slow down") if i == 0 else None).install()
    sleeps: list[float] = []
    adapter(sleeps).predict(batch())
    assert sleeps == [3.0]


def test_429_retry_after_http_date_is_honoured_and_capped(rsps: responses.RequestsMock) -> None:
    soon, late = formatdate(time.time() + 4, usegmt=True), formatdate(time.time() + 3600, usegmt=True)
    script = {0: (429, {"Retry-After": soon}, "later"), 1: (429, {"Retry-After": late}, "much later")}
    FakeEndpoint(rsps, faults=script.get).install()
    sleeps: list[float] = []
    adapter(sleeps, policy=RemotePolicy(retry_after_cap=20.0)).predict(batch())
    assert 2.0 <= sleeps[0] <= 4.0 and sleeps[1] == 20.0


def test_connection_reset_is_retried(rsps: responses.RequestsMock) -> None:
    reset = requests.exceptions.ConnectionError(ConnectionResetError(104, "Connection reset by peer"))
    ep = FakeEndpoint(rsps, faults=lambda i: reset if i < 2 else None).install()
    a = adapter()
    a.predict(batch())
    assert ep.calls == 3 and a.retries == 2


def test_read_timeout_is_retried_then_reported(rsps: responses.RequestsMock) -> None:
    FakeEndpoint(rsps, faults=lambda i: requests.exceptions.ReadTimeout("read timed out")).install()
    a = adapter(policy=RemotePolicy(max_attempts=3, timeout=7.0))
    with pytest.raises(AdapterTimeout, match=r"http://127\.0\.0\.1:8999/v2/models/linear/infer did not answer within 7s "
                                             r"\(read timeout\)\. \(gave up after 3 attempts"):
        a.predict(batch())
    assert a.requests == 3


def test_connection_refused_names_the_fix(rsps: responses.RequestsMock) -> None:
    refused = requests.exceptions.ConnectionError("HTTPConnectionPool: Failed to establish a new connection: [Errno 111] Connection refused")
    FakeEndpoint(rsps, faults=lambda i: refused).install()
    with pytest.raises(ConnectionFailed, match=r"connection refused \(is the server running, and is the port right\?\)"):
        adapter(policy=RemotePolicy(max_attempts=2)).predict(batch())


@pytest.mark.parametrize("status, body, hint", [
    (400, '{"error": "Unexpected shape for input image"}', "the request was refused as malformed"),
    (401, '{"error": "missing bearer token"}', "the endpoint wants credentials"),
    (404, '{"error": "Model linear not found"}', "no such model or version at this URL"),
    (422, '{"detail": [{"msg": "value is not a valid float"}]}', "the server could not process the tensor"),
])
def test_other_4xx_are_not_retried_and_quote_the_server(rsps: responses.RequestsMock, status: int, body: str,
                                                         hint: str) -> None:
    ep = FakeEndpoint(rsps, faults=lambda i: (status, {}, body)).install()
    a = adapter()
    with pytest.raises(ServerError) as e:
        a.predict(batch())
    msg = str(e.value)
    assert e.value.status == status and ep.calls == 1 and a.retries == 0
    assert msg.startswith(f"http://127.0.0.1:8999/v2/models/linear/infer answered HTTP {status}")
    assert body in msg and hint in msg


def test_long_error_bodies_are_truncated(rsps: responses.RequestsMock) -> None:
    FakeEndpoint(rsps, faults=lambda i: (400, {}, "x" * 5000)).install()
    with pytest.raises(ServerError, match=r"x{300}\.\.\. \(truncated\)"):
        adapter().predict(batch())


@pytest.mark.parametrize("answer, message", [
    (lambda x: "not json {", r"The inference response from .* is not valid JSON"),
    (lambda x: {"oops": []}, r"The inference response has no 'outputs' list; got keys \['oops'\]"),
    (lambda x: {"outputs": [{"name": "probs", "datatype": "FP32", "shape": [len(x), 2], "data": [0.5] * 3}]},
     r"The inference response field outputs\[0\]\.data has 3 values but outputs\[0\]\.shape \[4, 2\] needs 8"),
    (lambda x: {"outputs": [{"name": "probs", "datatype": "FP32", "shape": [len(x), 3], "data": [0.2] * 3 * len(x)}]},
     r"The endpoint \(response field outputs\['probs'\]\) returned an output of shape \(4, 3\); expected \(4, 2\)"),
    (lambda x: {"outputs": [{"name": "probs", "datatype": "FP32", "shape": [len(x), 2], "data": [float("nan")] * 2 * len(x)}]},
     r"The endpoint \(response field outputs\['probs'\]\) returned NaN or infinite probabilities"),
    (lambda x: {"outputs": [{"name": "probs", "datatype": "FP32", "shape": [len(x), 2], "data": [1.7, -0.7] * len(x)}]},
     r"The endpoint \(response field outputs\['probs'\]\) returned values outside \[0, 1\] \(min -0\.7, max 1\.7\)"),
    (lambda x: {"outputs": [{"name": "other", "datatype": "FP32", "shape": [len(x), 2], "data": [0.5] * 2 * len(x)}]},
     r"The inference response has no output named 'probs'; it has \['other'\]"),
])
def test_malformed_200_answers_are_protocol_errors(rsps: responses.RequestsMock, answer, message: str) -> None:  # type: ignore[no-untyped-def]
    ep = FakeEndpoint(rsps).install()
    ep.answer = answer
    a = adapter()
    with pytest.raises(ResponseError, match=message):
        a.predict(batch())
    assert a.retries == 0


def test_binary_tensor_extension_request_and_response(rsps: responses.RequestsMock) -> None:
    rsps.add(responses.GET, f"{BASE}/v2", json={"name": "triton", "extensions": ["binary_tensor_data"]})
    rsps.add(responses.GET, URL, json={"name": "linear", "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, 3, 32, 32]}],
                                       "outputs": [{"name": "probs", "datatype": "FP32", "shape": [-1, 2]}]})
    seen: dict[str, object] = {}

    def infer(request: requests.PreparedRequest) -> tuple[int, dict[str, str], bytes]:
        n = int(request.headers[BINARY_HEADER])
        body = request.body
        assert isinstance(body, (bytes, bytearray))  # the binary body is written once into a bytearray
        head = json.loads(body[:n])
        x = np.frombuffer(body[n:], "<f4").reshape(head["inputs"][0]["shape"])
        seen["head"], seen["x"] = head, x
        probs = linear_probs(x).astype("<f4")
        extra = {"name": "aux", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": 4}}
        out = {"name": "probs", "datatype": "FP32", "shape": list(probs.shape),
               "parameters": {"binary_data_size": probs.nbytes}}
        header = json.dumps({"outputs": [extra, out]}).encode()
        return 200, {BINARY_HEADER: str(len(header)), "Content-Type": "application/octet-stream"}, \
            header + np.float32(9.0).tobytes() + probs.tobytes()

    rsps.add_callback(responses.POST, URL + "/infer", callback=infer)
    a = adapter(binary="auto")  # the server lists the extension: binary from the first request, no probe
    x = batch()
    p = a.predict(x)
    assert a.transport.binary_in_use is True and a.retries == 0
    assert np.allclose(p, expected(x), atol=1e-6)
    head = seen["head"]
    assert head["inputs"][0]["parameters"] == {"binary_data_size": 4 * 3 * 32 * 32 * 4}  # type: ignore[index]
    assert np.array_equal(seen["x"], x.transpose(0, 3, 1, 2))


def test_tfserving_instances_and_predictions(rsps: responses.RequestsMock) -> None:
    url = "http://127.0.0.1:8999/v1/models/chest:predict"
    seen: list[dict] = []

    def predict(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        doc = json.loads(request.body)  # type: ignore[arg-type]
        seen.append(doc)
        x = np.asarray(doc["instances"], np.float32)  # NHWC instances
        logits = np.log(linear_probs(x.transpose(0, 3, 1, 2)))
        return 200, {}, json.dumps({"predictions": logits.tolist()})

    rsps.add_callback(responses.POST, url, callback=predict)
    prof = EndpointProfile.from_url(url)
    prof.input = {"size": [32, 32], "layout": "NHWC"}
    prof.output = {"kind": "logits"}
    a = prof.build()
    x = batch(3)
    assert np.allclose(a.predict(x), expected(x), atol=1e-6)
    assert np.asarray(seen[0]["instances"]).shape == (3, 32, 32, 3)


def test_budget_exhausted_mid_explanation(rsps: responses.RequestsMock) -> None:
    FakeEndpoint(rsps).install()
    a = adapter(budget=50, max_batch=8)
    ex = Explainer(a, ExplainConfig(n_samples=100, fill="mean", patch_size=8, batch_size=16))
    with pytest.raises(BudgetExhausted, match=r"Query budget exhausted: 49 of 50 queries used, and the next call needs 16\."):
        ex.explain(image(), rng=0)
    assert a.queries <= 50


def test_mixed_fault_run_equals_the_fault_free_run_bit_for_bit(rsps: responses.RequestsMock) -> None:
    """>= 1000 requests with 20% 503, 5% 429, 5% timeouts and 2% resets: same saliency, bit for bit."""
    cfg = ExplainConfig(n_samples=1000, fill="mean", patch_size=8, batch_size=64)
    FakeEndpoint(rsps).install()
    clean = Explainer(adapter(max_batch=1), cfg).explain(image(3), rng=7)

    rng = np.random.default_rng(2026)
    counts = {"503": 0, "429": 0, "timeout": 0, "reset": 0}

    def fault(i: int) -> object:
        u = rng.random()
        if u < 0.20:
            counts["503"] += 1
            return 503, {}, "Service Unavailable"
        if u < 0.25:
            counts["429"] += 1
            return 429, {"Retry-After": "0"}, "Too Many Requests"
        if u < 0.30:
            counts["timeout"] += 1
            return requests.exceptions.ReadTimeout("read timed out")
        if u < 0.32:
            counts["reset"] += 1
            return requests.exceptions.ConnectionError(ConnectionResetError(104, "Connection reset by peer"))
        return None

    rsps.reset()
    ep = FakeEndpoint(rsps, faults=fault).install()
    a = adapter(max_batch=1, policy=RemotePolicy(max_attempts=12))
    faulty = Explainer(a, cfg).explain(image(3), rng=7)
    assert ep.calls >= 1000 + 300 and a.retries == sum(counts.values())
    assert min(counts.values()) > 0
    assert np.array_equal(faulty.saliency, clean.saliency)
    assert np.array_equal(faulty.patch_weights, clean.patch_weights)


def test_redirects_are_not_followed(rsps: responses.RequestsMock) -> None:
    """A 307 would re-send the pixels to another host: refuse it, and name the target."""
    FakeEndpoint(rsps, faults=lambda i: (307, {"Location": "https://elsewhere.example/infer?sig=abc"}, "")).install()
    a = adapter()
    with pytest.raises(ServerError, match=r"answered HTTP 307, a redirect to https://elsewhere\.example/infer\. "
                                          r"Redirects are not followed, so pixels go only to the configured endpoint"):
        a.predict(batch())
    assert a.requests == 1 and [c.request.url for c in rsps.calls if "elsewhere" in c.request.url] == []


def test_a_multilabel_endpoint_declared_in_the_profile_explains_every_finding_from_one_set(rsps, tmp_path) -> None:
    """OIP REST answering (N, 3) independent sigmoids; the profile declares kind and finding names."""
    def answer(x: np.ndarray) -> dict:
        means = x.mean(axis=(1, 2, 3))
        p = np.stack([1 / (1 + np.exp(-8 * (means - 0.4))), 1 / (1 + np.exp(-8 * (x[:, :, :8, :8].mean(axis=(1, 2, 3))
                                                                              - 0.5))), np.full_like(means, 0.2)], 1)
        return {"model_name": "linear", "outputs": [{"name": "probs", "datatype": "FP32", "shape": list(p.shape),
                                                     "data": p.astype(np.float32).ravel().tolist()}]}

    ep = FakeEndpoint(rsps, answer=answer).install()
    prof = tmp_path / "ml.toml"
    prof.write_text(f'url = "{URL}"\n[output]\nkind = "multilabel"\nclass_names = ["opacity", "corner", "rare"]\n'
                    'abnormal_index = 0\n')
    with EndpointProfile.from_toml(str(prof)).build() as a:
        assert a.info.multilabel and a.info.class_names == ("opacity", "corner", "rare")
        found = Explainer(a, ExplainConfig(n_samples=60, patch_size=8, fill="mean")).explain(batch(1)[0], target="all")
        # binary "auto" on an endpoint that does not list it: the first request (1 image) tried binary, got 422 and
        # went again as JSON; everything after was JSON
        assert found.targets == [0, 1, 2] and found.traffic["images_asked"] == 60 and ep.binary_refused == 1
        assert found.queries == a.queries == 61 and found.traffic["retries"] == 1
    assert ep.calls == a.requests - 1
    corner = found[1].patch_weights.reshape(-1)
    assert int(np.argmax(np.abs(corner))) == 0  # the second finding reads the top-left 8 x 8 patch only
    assert any("P(rare) hardly moved" in w for w in found[2].warnings)
    with EndpointProfile.from_url(URL).build() as plain:  # no names: told to declare the three
        with pytest.raises(ResponseError, match=r"returned an output of shape \(2, 3\); expected \(2, 2\) class "
                                                r"probabilities: 3 values per image but 2 class names are known "
                                                r"\(normal, abnormal\)\. Declare the model's 3 class or finding names"):
            plain.predict(batch(2))
    prof.write_text(f'url = "{URL}"\n[output]\nclass_names = ["opacity", "corner", "rare"]\n')
    with EndpointProfile.from_toml(str(prof)).build() as exclusive:  # declared exclusive: told to say multilabel
        with pytest.raises(ResponseError, match="declare its output as multilabel"):
            exclusive.predict(batch(2))
