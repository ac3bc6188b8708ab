"""A small, real Open Inference Protocol v2 server on loopback, with the faults deployments have.

It serves one ONNX classifier through onnxruntime over REST (the standard library's threaded HTTP server)
and, where ``tritonclient[grpc]`` is installed, over gRPC. Unlike MLServer it decodes tensors with numpy,
so what it costs is the model and the switches below, not the server. Tests and the remote benchmark
start it as a subprocess (:func:`start`); by hand::

    python -m blackbox_lime.evaluation.oip_server --model onnx/demo_cnn.onnx --port 8090 --grpc-port 8091 \\
        [--delay-ms 100] [--max-body-bytes 4000000] [--empty-metadata] [--output-dtype FP16] \\
        [--binary accept|advertise|never] [--no-version-paths] [--die-after-requests 5] [--log requests.jsonl]

The switches, each a behaviour of a real deployment:

- ``--delay-ms``: latency added to every infer request (a sleep, not compute: as a network and a queue).
- ``--max-body-bytes``: a proxy's body limit. REST bodies over it get HTTP 413; gRPC messages over it get
  RESOURCE_EXHAUSTED ("Received message larger than max") from grpc itself.
- ``--empty-metadata``: no inputs or outputs in the model metadata (KServe's default).
- ``--output-dtype FP16|BF16``: the probabilities as half-precision tensors.
- ``--binary``: ``advertise`` lists ``binary_tensor_data`` in ``/v2`` and accepts it; ``accept`` accepts
  it without listing it (KServe); ``never`` answers binary requests with 400.
- ``--no-version-paths``: ``/versions/N`` answers 501 Not Implemented (KServe REST).
- ``--die-after-requests N``: the process exits abruptly after answering N infer requests (a crash; a test
  then restarts it on the same port, as an orchestrator would).
- ``--log FILE``: one JSON line per infer request: protocol, images, bytes, input datatype, status.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from blackbox_lime.evaluation.demo_server import free_port

MODEL_NAME = "model"
BINARY_HEADER = "Inference-Header-Content-Length"
_NP = {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64, "UINT8": np.uint8}


def to_bf16_bytes(x: np.ndarray) -> bytes:
    """float32 -> bfloat16 bytes (little-endian), rounding to nearest even."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2")
    return rounded.tobytes()


class Model:
    """The served classifier: an onnxruntime session taking float32 (N, C, H, W)."""

    def __init__(self, path: str, input_dtype: str, output_dtype: str) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1  # the server must not crowd the client's cores in a loopback benchmark
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        self.input_name, self.shape = inp.name, [-1 if not isinstance(d, int) else d for d in inp.shape]
        self.input_dtype, self.output_dtype = input_dtype, output_dtype
        self.n_classes = self.session.get_outputs()[0].shape[-1]
        self.lock = threading.Lock()

    def metadata(self, empty: bool) -> dict[str, Any]:
        if empty:
            return {"name": MODEL_NAME, "versions": [], "platform": "", "inputs": [], "outputs": []}
        return {"name": MODEL_NAME, "versions": ["1"], "platform": "onnxruntime",
                "inputs": [{"name": "image", "datatype": self.input_dtype, "shape": self.shape}],
                "outputs": [{"name": "probs", "datatype": self.output_dtype, "shape": [-1, self.n_classes]}]}

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
        with self.lock:
            return np.asarray(self.session.run(None, {self.input_name: x})[0], np.float32)

    def encode(self, probs: np.ndarray) -> bytes:
        if self.output_dtype == "BF16":
            return to_bf16_bytes(probs)
        return probs.astype(np.dtype(_NP[self.output_dtype]).newbyteorder("<")).tobytes()

    def json_data(self, probs: np.ndarray) -> list[float]:
        if self.output_dtype == "FP16":
            return probs.astype(np.float16).astype(float).ravel().tolist()
        return probs.astype(float).ravel().tolist()


@dataclass
class Settings:
    delay: float = 0.0
    max_body: int | None = None
    empty_metadata: bool = False
    binary: str = "advertise"
    version_paths: bool = True
    die_after: int | None = None
    log: Path | None = None
    served: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, **entry: Any) -> None:
        if self.log is not None:
            with self.lock, open(self.log, "a") as f:
                f.write(json.dumps(entry) + "\n")

    def count_and_maybe_die(self) -> None:
        with self.lock:
            self.served += 1
            if self.die_after is not None and self.served >= self.die_after:
                threading.Timer(0.05, lambda: os._exit(3)).start()  # after the answer has gone out


def rest_handler(model: Model, s: Settings) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None,
                  ctype: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, doc: Any) -> None:
            self._send(code, json.dumps(doc).encode())

        def _route(self) -> str | None:
            """The model route's remainder ("", "/ready", "/infer"), or None; 501 for a version path if off."""
            prefix = f"/v2/models/{MODEL_NAME}"
            if not self.path.startswith(prefix):
                return None
            rest = self.path[len(prefix):]
            if rest.startswith("/versions/"):
                if not s.version_paths:
                    return "501"
                rest = "/" + rest.split("/", 3)[3] if rest.count("/") >= 3 else ""
            return rest

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/v2":
                ext = ["binary_tensor_data"] if s.binary == "advertise" else []
                return self._json(200, {"name": "blackbox-lime-oip", "version": "1", "extensions": ext})
            if self.path in ("/v2/health/ready", "/v2/health/live"):
                return self._json(200, {})
            route = self._route()
            if route == "501":
                return self._send(501, b"Not Implemented", ctype="text/plain")
            if route == "":
                return self._json(200, model.metadata(s.empty_metadata))
            if route == "/ready":
                return self._json(200, {"name": MODEL_NAME, "ready": True})
            return self._json(404, {"error": f"Model with name {self.path} does not exist."})

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length", 0))
            route = self._route()
            if s.max_body is not None and length > s.max_body:
                self.rfile.read(length)
                s.record(protocol="rest", images=None, bytes=length, status=413)
                return self._send(413, b"<html><body><h1>413 Request Entity Too Large</h1></body></html>",
                                  ctype="text/html")
            body = self.rfile.read(length)
            if route == "501":
                return self._send(501, b"Not Implemented", ctype="text/plain")
            if route != "/infer":
                return self._json(404, {"error": f"Model with name {self.path} does not exist."})
            header_len = self.headers.get(BINARY_HEADER)
            if header_len is not None and s.binary == "never":
                return self._json(400, {"error": "binary tensor data is not supported"})
            try:
                head = json.loads(body[:int(header_len)] if header_len is not None else body)
                inp = head["inputs"][0]
                dt = _NP[inp["datatype"]]
                if header_len is not None:
                    x = np.frombuffer(body, np.dtype(dt).newbyteorder("<"), offset=int(header_len)).reshape(inp["shape"])
                else:
                    x = np.asarray(inp["data"], dt).reshape(inp["shape"])
            except (KeyError, ValueError, TypeError, IndexError) as exc:
                return self._json(400, {"error": f"Invalid request: {exc}"})
            time.sleep(s.delay)
            probs = model(x)
            s.record(protocol="rest", images=int(x.shape[0]), bytes=length, datatype=inp["datatype"],
                     binary=header_len is not None, status=200)
            out: dict[str, Any] = {"name": "probs", "datatype": model.output_dtype, "shape": list(probs.shape)}
            wants_binary = bool((head.get("parameters") or {}).get("binary_data_output")) or any(
                (o.get("parameters") or {}).get("binary_data") for o in head.get("outputs") or [])
            s.count_and_maybe_die()
            if wants_binary and s.binary != "never":
                raw = model.encode(probs)
                out["parameters"] = {"binary_data_size": len(raw)}
                doc = json.dumps({"model_name": MODEL_NAME, "outputs": [out]}).encode()
                return self._send(200, doc + raw, {BINARY_HEADER: str(len(doc))}, "application/octet-stream")
            if model.output_dtype == "BF16":
                return self._json(400, {"error": "BF16 outputs are sent as binary tensor data only"})
            out["data"] = model.json_data(probs)
            return self._json(200, {"model_name": MODEL_NAME, "outputs": [out]})

    return Handler


def grpc_server(model: Model, s: Settings, port: int) -> Any:
    """The same model over OIP gRPC (tritonclient's stubs), or None where they are not installed."""
    try:
        from concurrent import futures

        import grpc
        from tritonclient.grpc import service_pb2 as pb
        from tritonclient.grpc import service_pb2_grpc as pb_grpc
    except ImportError:
        return None

    class Servicer(pb_grpc.GRPCInferenceServiceServicer):
        def ServerLive(self, request: Any, context: Any) -> Any:  # noqa: N802
            return pb.ServerLiveResponse(live=True)

        def ServerReady(self, request: Any, context: Any) -> Any:  # noqa: N802
            return pb.ServerReadyResponse(ready=True)

        def ModelReady(self, request: Any, context: Any) -> Any:  # noqa: N802
            return pb.ModelReadyResponse(ready=True)

        def ModelMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
            meta = model.metadata(s.empty_metadata)
            tensors = pb.ModelMetadataResponse.TensorMetadata
            return pb.ModelMetadataResponse(
                name=meta["name"], versions=meta["versions"], platform=meta["platform"],
                inputs=[tensors(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in meta["inputs"]],
                outputs=[tensors(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in meta["outputs"]])

        def ModelInfer(self, request: Any, context: Any) -> Any:  # noqa: N802
            if request.model_version and not s.version_paths:
                context.abort(grpc.StatusCode.UNIMPLEMENTED, "model versions are not supported")
            inp = request.inputs[0]
            x = np.frombuffer(request.raw_input_contents[0],
                              np.dtype(_NP[inp.datatype]).newbyteorder("<")).reshape(list(inp.shape))
            time.sleep(s.delay)
            probs = model(x)
            s.record(protocol="grpc", images=int(x.shape[0]), bytes=len(request.raw_input_contents[0]),
                     datatype=inp.datatype, status=200)
            resp = pb.ModelInferResponse(model_name=MODEL_NAME)
            resp.outputs.add(name="probs", datatype=model.output_dtype, shape=list(probs.shape))
            resp.raw_output_contents.append(model.encode(probs))
            s.count_and_maybe_die()
            return resp

    limit = s.max_body if s.max_body is not None else 256 * 1024 * 1024
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8),
                         options=[("grpc.max_receive_message_length", limit),
                                  ("grpc.max_send_message_length", 256 * 1024 * 1024),
                                  ("grpc.so_reuseport", 0)])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    return server


def serve(a: argparse.Namespace) -> None:
    model = Model(a.model, a.input_dtype, a.output_dtype)
    s = Settings(a.delay_ms / 1000.0, a.max_body_bytes, a.empty_metadata, a.binary, not a.no_version_paths,
                 a.die_after_requests, Path(a.log) if a.log else None)
    http = ThreadingHTTPServer(("127.0.0.1", a.port), rest_handler(model, s))
    http.daemon_threads = True
    grpc_srv = grpc_server(model, s, a.grpc_port) if a.grpc_port is not None else None
    if grpc_srv is not None:
        grpc_srv.start()
    if a.ready:
        tmp = Path(a.ready + ".part")
        tmp.write_text(json.dumps({"port": http.server_address[1], "grpc_port": a.grpc_port, "pid": os.getpid()}))
        tmp.replace(a.ready)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    http.serve_forever()


@dataclass
class LoopbackServer:
    """A running server subprocess: its URLs, and ``kill()`` / ``restart()`` for crash tests."""

    args: list[str]
    port: int
    grpc_port: int | None
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v2/models/{MODEL_NAME}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc_port}/{MODEL_NAME}"

    def requests(self) -> list[dict[str, Any]]:
        """The infer requests logged so far (with ``log=True``)."""
        if self.log is None or not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]

    def launch(self, timeout: float = 60.0) -> None:
        ready = Path(tempfile.mkdtemp(prefix="blackbox-lime-oip-")) / "ready.json"
        self.process = subprocess.Popen([sys.executable, "-m", "blackbox_lime.evaluation.oip_server", *self.args,
                                         "--port", str(self.port), "--ready", str(ready),
                                         *(["--grpc-port", str(self.grpc_port)] if self.grpc_port else [])],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        t0 = time.monotonic()
        while not ready.exists():
            if self.process.poll() is not None:
                raise RuntimeError(f"The OIP server exited: {self.process.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            if time.monotonic() - t0 > timeout:
                self.kill()
                raise RuntimeError("The OIP server did not start in time.")
            time.sleep(0.05)
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/v2/health/ready", timeout=10):
            pass

    def kill(self) -> None:
        """SIGKILL: a crash, no goodbye."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        if self.process is not None:
            self.process.wait()

    def restart(self, after: float = 0.0) -> None:
        """Kill, wait ``after`` seconds, start again on the same ports."""
        self.kill()
        time.sleep(after)
        self.launch()

    def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def __enter__(self) -> LoopbackServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def start(model: str | Path, *, grpc: bool = False, delay_ms: float = 0.0, max_body_bytes: int | None = None,
          empty_metadata: bool = False, output_dtype: str = "FP32", input_dtype: str = "FP32",
          binary: str = "advertise", version_paths: bool = True, die_after_requests: int | None = None,
          log: bool = False) -> LoopbackServer:
    """Start the server on free loopback ports and wait until it answers."""
    args = ["--model", str(model), "--delay-ms", str(delay_ms), "--output-dtype", output_dtype,
            "--input-dtype", input_dtype, "--binary", binary]
    if max_body_bytes is not None:
        args += ["--max-body-bytes", str(max_body_bytes)]
    if empty_metadata:
        args.append("--empty-metadata")
    if not version_paths:
        args.append("--no-version-paths")
    if die_after_requests is not None:
        args += ["--die-after-requests", str(die_after_requests)]
    log_path = Path(tempfile.mkdtemp(prefix="blackbox-lime-oip-log-")) / "requests.jsonl" if log else None
    if log_path is not None:
        args += ["--log", str(log_path)]
    server = LoopbackServer(args, free_port(), free_port() if grpc else None, log=log_path)
    server.launch()
    return server


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m blackbox_lime.evaluation.oip_server", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="an ONNX classifier taking float32 (N, C, H, W)")
    p.add_argument("--port", type=int, default=8090)
    p.add_argument("--grpc-port", type=int, default=None)
    p.add_argument("--ready", default=None, help="write the ports here (JSON) once listening")
    p.add_argument("--delay-ms", type=float, default=0.0)
    p.add_argument("--max-body-bytes", type=int, default=None)
    p.add_argument("--empty-metadata", action="store_true")
    p.add_argument("--input-dtype", choices=["FP32", "FP16", "UINT8"], default="FP32")
    p.add_argument("--output-dtype", choices=["FP32", "FP16", "BF16"], default="FP32")
    p.add_argument("--binary", choices=["advertise", "accept", "never"], default="advertise")
    p.add_argument("--no-version-paths", action="store_true")
    p.add_argument("--die-after-requests", type=int, default=None)
    p.add_argument("--log", default=None)
    serve(p.parse_args(argv))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
