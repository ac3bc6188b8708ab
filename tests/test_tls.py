"""TLS is verified by default: real HTTPS and gRPC-over-TLS servers on loopback with a private CA (trustme)."""

from __future__ import annotations

import json
import ssl
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

trustme = pytest.importorskip("trustme")

from blackbox_lime.adapters import ConnectionFailed  # noqa: E402
from blackbox_lime.adapters.profile import EndpointProfile  # noqa: E402
from blackbox_lime.adapters.remote import RemotePolicy  # noqa: E402
from fake_endpoint import SIZE, linear_probs  # noqa: E402

META = {"name": "linear", "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, 3, SIZE, SIZE]}],
        "outputs": [{"name": "probs", "datatype": "FP32", "shape": [-1, 2]}]}


class Handler(BaseHTTPRequestHandler):
    seen_auth: list[str | None] = []

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, doc: dict) -> None:
        body = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._send({"extensions": []} if self.path == "/v2" else META)

    def do_POST(self) -> None:
        Handler.seen_auth.append(self.headers.get("Authorization"))
        doc = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        inp = doc["inputs"][0]
        probs = linear_probs(np.asarray(inp["data"], np.float32).reshape(inp["shape"]))
        self._send({"outputs": [{"name": "probs", "datatype": "FP32", "shape": list(probs.shape),
                                 "data": probs.ravel().tolist()}]})


@pytest.fixture(scope="module")
def ca() -> Any:
    return trustme.CA()


def https_server(ca: Any, require_client_cert: bool = False) -> tuple[ThreadingHTTPServer, str]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    if require_client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ca.configure_trust(ctx)
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"https://127.0.0.1:{srv.server_address[1]}/v2/models/linear"


def profile(tmp_path: Path, url: str, tls: str = "", auth: str = "") -> EndpointProfile:
    p = tmp_path / "p.toml"
    p.write_text(f'url = "{url}"\n[limits]\nmax_attempts = 3\nbackoff_s = 0\n[tls]\n{tls}\n[auth]\n{auth}\n')
    return EndpointProfile.from_toml(p)


def batch() -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 1, (2, SIZE, SIZE, 3)).astype(np.float32)


def test_an_unknown_ca_is_refused_without_retrying(ca: Any, tmp_path: Path) -> None:
    srv, url = https_server(ca)
    try:
        with pytest.raises(ConnectionFailed) as e:
            profile(tmp_path, url).build()
        msg = str(e.value)
        assert msg.startswith(f"TLS verification failed for {url}: the server's certificate could not be verified. "
                              "If the endpoint uses a private CA, set tls.ca_bundle in the profile.")
        assert "gave up" not in msg and e.value.retryable is False
    finally:
        srv.shutdown()


def test_a_ca_bundle_makes_it_work(ca: Any, tmp_path: Path) -> None:
    srv, url = https_server(ca)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    try:
        a = profile(tmp_path, url, tls='ca_bundle = "ca.pem"').build()
        x = batch()
        assert np.allclose(a.predict(x), linear_probs(x.transpose(0, 3, 1, 2)), atol=1e-6)
    finally:
        srv.shutdown()


def test_mutual_tls_client_certificate(ca: Any, tmp_path: Path) -> None:
    srv, url = https_server(ca, require_client_cert=True)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    client = ca.issue_cert("site-a.hospital.example")
    client.cert_chain_pems[0].write_to_path(str(tmp_path / "site.pem"))
    client.private_key_pem.write_to_path(str(tmp_path / "site.key"))
    try:
        with pytest.raises(ConnectionFailed):
            profile(tmp_path, url, tls='ca_bundle = "ca.pem"').build(policy=RemotePolicy(max_attempts=1))
        a = profile(tmp_path, url, tls='ca_bundle = "ca.pem"\nclient_cert = "site.pem"\nclient_key = "site.key"').build()
        assert a.predict(batch()).shape == (2, 2)
    finally:
        srv.shutdown()


def test_grpc_over_tls_with_call_credentials(ca: Any, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    grpc = pytest.importorskip("grpc")
    pb_grpc = pytest.importorskip("tritonclient.grpc.service_pb2_grpc")
    from test_grpc_faults import Servicer

    cert = ca.issue_cert("127.0.0.1", "localhost")
    creds = grpc.ssl_server_credentials([(cert.private_key_pem.bytes(), b"".join(c.bytes() for c in cert.cert_chain_pems))])
    servicer = Servicer()
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, srv)
    port = srv.add_secure_port("127.0.0.1:0", creds)
    srv.start()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    monkeypatch.setenv("BBL_GRPC_TLS_TOKEN", "tok-tls-31415926")
    url = f"grpcs://127.0.0.1:{port}/linear"
    try:
        with pytest.raises(ConnectionFailed, match=r"is unavailable"):  # the CA is not trusted
            profile(tmp_path, url).build(policy=RemotePolicy(max_attempts=1, timeout=5.0))
        a = profile(tmp_path, url, tls='ca_bundle = "ca.pem"', auth='token_env = "BBL_GRPC_TLS_TOKEN"').build()
        x = batch()
        assert np.allclose(a.predict(x), linear_probs(x.transpose(0, 3, 1, 2)), atol=1e-6)
        assert servicer.metadata[-1]["authorization"] == "Bearer tok-tls-31415926"
        a.close()
    finally:
        srv.stop(None)
