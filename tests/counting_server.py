"""A real Open Inference Protocol REST server on loopback that records every image it receives.

    python tests/counting_server.py --port 0 --log received.txt --ready ready.txt [--delay-ms 20]

It serves one model, ``linear`` (the model of tests/fake_endpoint.py: P(abnormal) linear in the patch
means of a 32 x 32 image), over HTTP with the standard library's threaded server, and appends the
SHA-256 of each received image (float32, channels-last, as the client composed it) to ``--log``, one
line per image, flushed before the answer is sent. Tests count those lines: what an audit paid for.
The most infer requests it answered at once is written to ``LOG.inflight``.
It writes its port to ``--ready`` once it listens. ``--status 503`` logs what it receives, then refuses it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_endpoint import MODEL, SIZE, linear_probs  # noqa: E402

META = {"name": MODEL, "versions": ["1"], "platform": "numpy",
        "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, 3, SIZE, SIZE]}],
        "outputs": [{"name": "probs", "datatype": "FP32", "shape": [-1, 2]}]}


def image_sha256(chw: np.ndarray) -> str:
    """What the client's store keys on: the float32 image channels-last, with its shape."""
    x = np.ascontiguousarray(chw.transpose(1, 2, 0), dtype=np.float32)
    h = hashlib.sha256(repr(x.shape).encode())
    h.update(x.tobytes())
    return h.hexdigest()


def serve(port: int, log: Path, ready: Path, delay: float, status: int = 200) -> None:
    lock = threading.Lock()
    out = open(log, "a")
    busy = {"now": 0, "max": 0}  # infer requests being answered at once; the most is written to LOG.inflight

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _send(self, code: int, doc: object) -> None:
            body = json.dumps(doc).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/v2":
                self._send(200, {"name": "counting", "extensions": []})
            elif self.path == f"/v2/models/{MODEL}":
                self._send(200, META)
            elif self.path in (f"/v2/models/{MODEL}/ready", "/v2/health/ready"):
                self._send(200, {})
            else:
                self._send(404, {"error": f"no route {self.path}"})

        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path != f"/v2/models/{MODEL}/infer":
                self._send(404, {"error": f"no route {self.path}"})
                return
            with lock:
                busy["now"] += 1
                if busy["now"] > busy["max"]:
                    busy["max"] = busy["now"]
                    Path(str(log) + ".inflight").write_text(str(busy["max"]))
            try:
                doc = json.loads(body)
                inp = doc["inputs"][0]
                x = np.asarray(inp["data"], np.float32).reshape(inp["shape"])
                time.sleep(delay)
                with lock:
                    out.write("".join(image_sha256(im) + "\n" for im in x))
                    out.flush()
            finally:
                with lock:
                    busy["now"] -= 1
            if status != 200:  # an endpoint that receives the images, then fails (an overloaded server: 503)
                self._send(status, {"error": "overloaded"})
                return
            probs = linear_probs(x).astype(np.float32)
            self._send(200, {"model_name": MODEL, "outputs": [
                {"name": "probs", "datatype": "FP32", "shape": list(probs.shape), "data": probs.ravel().tolist()}]})

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    ready.write_text(str(server.server_address[1]))
    server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--log", required=True)
    p.add_argument("--ready", required=True)
    p.add_argument("--delay-ms", type=float, default=0.0)
    p.add_argument("--status", type=int, default=200, help="answer every infer request with this status (e.g. 503)")
    a = p.parse_args()
    serve(a.port, Path(a.log), Path(a.ready), a.delay_ms / 1000, a.status)


if __name__ == "__main__":
    main()
