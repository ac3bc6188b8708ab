"""The gRPC adapter against a scripted Open Inference Protocol servicer on loopback (faults, decoding, auth)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent import futures
from typing import Any

import numpy as np
import pytest

grpc = pytest.importorskip("grpc")
pb = pytest.importorskip("tritonclient.grpc.service_pb2")
pb_grpc = pytest.importorskip("tritonclient.grpc.service_pb2_grpc")

from fake_endpoint import linear_probs

from blackbox_lime.adapters import AdapterTimeout, ConnectionFailed, PayloadTooLarge, ResponseError, ServerError
from blackbox_lime.adapters.profile import EndpointProfile
from blackbox_lime.adapters.remote import RemotePolicy


class Servicer(pb_grpc.GRPCInferenceServiceServicer):
    """The linear 32x32 model; ``script(i)`` returns None (answer), a (StatusCode, details) fault,
    or "typed" / "badshape" to change how the answer is encoded."""

    def __init__(self) -> None:
        self.script: Callable[[int], Any] = lambda i: None
        self.calls = 0
        self.metadata: list[dict[str, str]] = []

    def ModelMetadata(self, request: Any, context: Any) -> Any:
        return pb.ModelMetadataResponse(
            name=request.name, versions=["1"], platform="scripted",
            inputs=[pb.ModelMetadataResponse.TensorMetadata(name="image", datatype="FP32", shape=[-1, 3, 32, 32])],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(name="probs", datatype="FP32", shape=[-1, 2])])

    def ModelReady(self, request: Any, context: Any) -> Any:
        return pb.ModelReadyResponse(ready=True)

    def ModelInfer(self, request: Any, context: Any) -> Any:
        i = self.calls
        self.calls += 1
        self.metadata.append(dict(context.invocation_metadata()))
        step = self.script(i)
        if isinstance(step, tuple):
            context.abort(step[0], step[1])
        x = np.frombuffer(request.raw_input_contents[0], "<f4").reshape(list(request.inputs[0].shape))
        probs = linear_probs(x).astype("<f4")
        resp = pb.ModelInferResponse(model_name=request.model_name)
        shape = [probs.shape[0], 3] if step == "badshape" else list(probs.shape)
        out = resp.outputs.add(name="probs", datatype="FP32", shape=shape)
        if step == "typed":
            out.contents.fp32_contents.extend(probs.ravel().tolist())
        else:
            resp.raw_output_contents.append(probs.tobytes())
        return resp


@pytest.fixture(scope="module")
def server():  # type: ignore[no-untyped-def]
    servicer = Servicer()
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    yield servicer, f"grpc://127.0.0.1:{port}/linear"
    srv.stop(None)


@pytest.fixture
def scripted(server):  # type: ignore[no-untyped-def]
    servicer, url = server
    servicer.calls, servicer.script, servicer.metadata = 0, (lambda i: None), []
    return servicer, url


def build(url: str, sleeps: list[float] | None = None, **kw: Any):  # type: ignore[no-untyped-def]
    rec = sleeps if sleeps is not None else []
    return EndpointProfile.from_url(url).build(sleep=rec.append, **kw)


def batch(n: int = 5) -> np.ndarray:
    return np.random.default_rng(1).uniform(0, 1, (n, 32, 32, 3)).astype(np.float32)


def want(x: np.ndarray) -> np.ndarray:
    return linear_probs(x.transpose(0, 3, 1, 2))


def test_metadata_ready_and_raw_contents(scripted) -> None:  # type: ignore[no-untyped-def]
    _, url = scripted
    a = build(url)
    assert a.info.input_size == (32, 32) and a.ready() is True
    x = batch()
    assert np.allclose(a.predict(x), want(x), atol=1e-6)


def test_typed_contents_are_decoded(scripted) -> None:  # type: ignore[no-untyped-def]
    servicer, url = scripted
    servicer.script = lambda i: "typed"
    x = batch()
    assert np.allclose(build(url).predict(x), want(x), atol=1e-6)


def test_unavailable_then_success(scripted) -> None:  # type: ignore[no-untyped-def]
    servicer, url = scripted
    servicer.script = lambda i: (grpc.StatusCode.UNAVAILABLE, "draining") if i < 2 else None
    sleeps: list[float] = []
    a = build(url, sleeps)
    x = batch()
    assert np.allclose(a.predict(x), want(x), atol=1e-6)
    assert servicer.calls == 3 and a.retries == 2 and len(sleeps) == 2


def test_resource_exhausted_is_retried(scripted) -> None:  # type: ignore[no-untyped-def]
    servicer, url = scripted
    servicer.script = lambda i: (grpc.StatusCode.RESOURCE_EXHAUSTED, "rate limit") if i == 0 else None
    a = build(url)
    a.predict(batch())
    assert a.retries == 1


def test_deadline_exceeded_is_a_timeout_after_retries(scripted) -> None:  # type: ignore[no-untyped-def]
    servicer, url = scripted
    servicer.script = lambda i: (grpc.StatusCode.DEADLINE_EXCEEDED, "too slow")
    with pytest.raises(AdapterTimeout, match=r"\(ModelInfer\) did not answer within .*DEADLINE_EXCEEDED.*gave up after 2 attempts"):
        build(url, policy=RemotePolicy(max_attempts=2)).predict(batch())
    assert servicer.calls == 2


@pytest.mark.parametrize("code, hint", [
    ("INVALID_ARGUMENT", "check the profile's input section"),
    ("NOT_FOUND", "check the model name and version"),
    ("UNAUTHENTICATED", "set the profile's [auth] token_env or token_file"),
])
def test_permanent_codes_are_not_retried_and_quote_the_server(scripted, code: str, hint: str) -> None:  # type: ignore[no-untyped-def]
    servicer, url = scripted
    servicer.script = lambda i: (getattr(grpc.StatusCode, code), f"server says {code.lower()}")
    a = build(url)
    with pytest.raises(ServerError) as e:
        a.predict(batch())
    assert servicer.calls == 1 and a.retries == 0
    assert f"answered {code}: server says {code.lower()}" in str(e.value) and hint in str(e.value)


def test_wrong_output_shape_is_a_protocol_error(scripted) -> None:  # type: ignore[no-untyped-def]
    servicer, url = scripted
    servicer.script = lambda i: "badshape"
    with pytest.raises(ResponseError, match=r"raw_output_contents\[0\] holds 40 bytes but outputs\[0\]\.shape \[5, 3\]"):
        build(url).predict(batch())


def test_unreachable_port_is_a_connection_error() -> None:
    with pytest.raises(ConnectionFailed, match=r"grpc://127\.0\.0\.1:9 \(ModelMetadata\) is unavailable"):
        build("grpc://127.0.0.1:9/linear", policy=RemotePolicy(max_attempts=1, timeout=2.0))


def test_token_travels_as_call_metadata_and_never_in_errors(scripted, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    servicer, url = scripted
    token = "tok-CANARY-grpc-5551234"
    monkeypatch.setenv("GRPC_TEST_TOKEN", token)
    profile = tmp_path / "p.toml"
    profile.write_text(f'url = "{url}"\n[auth]\ntoken_env = "GRPC_TEST_TOKEN"\n')
    servicer.script = lambda i: None if i == 0 else (grpc.StatusCode.PERMISSION_DENIED, f"token {token} revoked")
    a = EndpointProfile.from_toml(profile).build()
    a.predict(batch(1))
    assert servicer.metadata[0]["authorization"] == f"Bearer {token}"
    with pytest.raises(ServerError) as e:
        a.predict(batch(1))
    assert token not in str(e.value) and "[REDACTED]" in str(e.value)


def test_message_size_limit_is_configurable_and_named(scripted, tmp_path) -> None:  # type: ignore[no-untyped-def]
    servicer, url = scripted
    p = tmp_path / "p.toml"
    p.write_text(f'url = "{url}"\n[limits]\nmax_message_mb = 0.01\n')
    a = EndpointProfile.from_toml(p).build()
    with pytest.raises(PayloadTooLarge, match=r"refused the message for its size \(RESOURCE_EXHAUSTED: CLIENT: Sent "
                                              r"message larger than max .*this client's limits\.max_message_mb\)\. Even "
                                              r"one image per request is too large"):
        a.predict(batch(5))  # 5 x 3 x 32 x 32 float32 = 61 kB > 10 kB, and one image (12 kB) too
    assert servicer.calls == 0 and a.retries == 0


def test_a_message_limit_that_fits_two_images_gets_requests_of_two(scripted, tmp_path) -> None:  # type: ignore[no-untyped-def]
    servicer, url = scripted
    p = tmp_path / "p.toml"
    p.write_text(f'url = "{url}"\n[limits]\nmax_message_mb = 0.03\nmax_batch = 8\n')  # 31 kB: 2 images of 12 kB
    a = EndpointProfile.from_toml(p).build()
    x = batch(5)
    assert np.allclose(a.predict(x), want(x), atol=1e-6)
    assert a.request_size == 2 and a.refused_for_size == 2 and servicer.calls == 3


def test_the_infer_request_s_wire_bytes_are_protobuf_s_own() -> None:
    """The tensor is written once into the request's wire bytes (its raw_input_contents appended after the other
    fields): byte for byte what protobuf serialises, for FP32 and FP16, and the server parses it back."""
    from blackbox_lime.adapters.grpc import OipGrpcTransport, _varint

    assert [_varint(n) for n in (0, 1, 127, 128, 300, 2 ** 21)] == [b"\x00", b"\x01", b"\x7f", b"\x80\x01",
                                                                   b"\xac\x02", b"\x80\x80\x80\x01"]
    transport = OipGrpcTransport("grpc://127.0.0.1:1", "m", "2")
    try:
        for dtype, oip in ((np.float32, "FP32"), (np.float16, "FP16")):
            x = np.random.default_rng(0).random((3, 3, 40, 40)).astype(dtype)  # 28.8 kB: a two-byte length
            req = pb.ModelInferRequest(model_name="m", model_version="2")
            req.inputs.append(pb.ModelInferRequest.InferInputTensor(name="image", datatype=oip, shape=list(x.shape)))
            wire = transport._infer_bytes(req, x)
            req.raw_input_contents.append(x.tobytes())
            assert wire == req.SerializeToString()
            back = pb.ModelInferRequest.FromString(wire)
            assert np.array_equal(np.frombuffer(back.raw_input_contents[0], dtype).reshape(x.shape), x)
    finally:
        transport.close()
