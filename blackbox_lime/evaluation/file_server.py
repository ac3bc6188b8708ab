"""A vendor-style file API on loopback: one encoded image in, labelled scores out, for tests and benchmarks.

    python -m blackbox_lime.evaluation.file_server --model demo-cnn --format label-score-list --top-k 2 --port 0

It serves a local ONNX classifier the way commercial endpoints do: the request is one PNG, JPEG or DICOM file
(raw, multipart or base64 in JSON), decoded with OpenCV or pydicom, scaled to [0, 1] and run through the model one
image at a time; the answer lists labels and scores in one of the formats vendors use (Hugging Face's list,
TorchServe's map, Custom Vision's ``predictions``, Vertex AutoML's parallel lists, or a plain array), cut to the
top k and above a threshold like theirs. Faults for the tests: a fixed status (401, 429 with Retry-After, 503) for
the first N requests or all of them, an answer that is not JSON, a delay. Every request body can be kept
(``record``) so a test can search what left the client.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import threading
import time
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from blackbox_lime.adapters.onnx import OnnxAdapter

FORMATS = ("label-score-list", "label-score-map", "array", "custom-vision", "vertex")


def decode_file(data: bytes) -> np.ndarray:
    """A PNG, JPEG or DICOM file -> uint8 (H, W, C) RGB or greyscale pixels."""
    if data[128:132] == b"DICM":
        import pydicom

        ds = pydicom.dcmread(io.BytesIO(data))
        px = np.asarray(ds.pixel_array, np.uint8)
        return px[..., None] if px.ndim == 2 else px
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError("not an image this server can decode")
    return img[..., None] if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _json_image(doc: Any) -> bytes:
    """The base64 string in a JSON request: Vertex's instances[0].content, or a top-level inputs/image/file."""
    if isinstance(doc, dict) and isinstance(doc.get("instances"), list) and doc["instances"]:
        first = doc["instances"][0]
        value = first.get("content") if isinstance(first, dict) else first
    else:
        value = next((doc[k] for k in ("inputs", "image", "file", "data") if isinstance(doc, dict) and k in doc), None)
    if not isinstance(value, str):
        raise ValueError("no base64 image in the JSON body")
    return base64.b64decode(value)


class FileApiServer:
    """The server, in a thread of this process (``with FileApiServer(...) as s: s.url``)."""

    def __init__(self, model: str | Path, *, format: str = "label-score-list", top_k: int | None = None,
                 threshold: float = 0.0, status: int | None = None, fail_first: int = 0,
                 retry_after: str | None = None, not_json: bool = False, delay: float = 0.0, record: bool = False,
                 token: str | None = None, port: int = 0) -> None:
        if format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}")
        self.adapter = OnnxAdapter(Path(model), max_batch=1)
        self.names = self.adapter.info.class_names
        self.format, self.top_k, self.threshold = format, top_k, threshold
        self.status, self.fail_first, self.retry_after = status, fail_first, retry_after
        self.not_json, self.delay, self.token = not_json, delay, token
        self.bodies: list[bytes] = []  # every request body, with ``record``
        self.record = record
        self.requests = 0
        self.content_types: list[str] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/predict"

    def __enter__(self) -> FileApiServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def scores(self, pixels: np.ndarray) -> np.ndarray:
        h, w = self.adapter.info.input_size
        if pixels.shape[:2] != (h, w):
            pixels = cv2.resize(pixels, (w, h), interpolation=cv2.INTER_AREA).reshape(h, w, -1)
        if pixels.shape[-1] != self.adapter.info.channels:
            pixels = np.repeat(pixels, 3, axis=-1) if pixels.shape[-1] == 1 else pixels[..., :1]
        return self.adapter.predict((pixels.astype(np.float32) / 255.0)[None])[0]

    def answer(self, p: np.ndarray) -> Any:
        order = [int(i) for i in np.argsort(-p, kind="stable")]
        if self.top_k is not None:
            order = order[: self.top_k]
        order = [i for i in order if p[i] >= self.threshold]
        pairs = [(self.names[i], float(p[i])) for i in order]
        if self.format == "label-score-list":
            return [{"label": n, "score": s} for n, s in pairs]
        if self.format == "label-score-map":
            return dict(pairs)
        if self.format == "custom-vision":
            return {"id": "00000000", "iteration": "1",
                    "predictions": [{"tagName": n, "probability": s, "tagId": str(i)} for i, (n, s) in enumerate(pairs)]}
        if self.format == "vertex":
            return {"predictions": [{"displayNames": [n for n, _ in pairs], "confidences": [s for _, s in pairs],
                                     "ids": [str(i) for i in order]}], "deployedModelId": "1"}
        return [float(v) for v in p]  # array: every class, in order

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # a reply is two writes (headers, body): no 40 ms delayed-ACK stall

            def log_message(self, *args: object) -> None:
                pass

            def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_PUT(self) -> None:
                self.do_POST()

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length", "0"))
                data = self.rfile.read(n)
                with server._lock:
                    server.requests += 1
                    count = server.requests
                    if server.record:
                        server.bodies.append(bytes(data))
                    server.content_types.append(self.headers.get("Content-Type", ""))
                if server.delay:
                    time.sleep(server.delay)
                if server.token is not None and self.headers.get("Authorization") != f"Bearer {server.token}":
                    return self._send(401, b'{"error": "invalid token"}')
                if server.status is not None and (server.fail_first == 0 or count <= server.fail_first):
                    extra = {"Retry-After": server.retry_after} if server.retry_after else {}
                    return self._send(server.status, json.dumps({"error": f"status {server.status}"}).encode(), extra)
                if server.not_json:
                    return self._send(200, b"<html>Service temporarily unavailable</html>")
                ctype = self.headers.get("Content-Type", "")
                try:
                    if ctype.startswith("multipart/form-data"):
                        msg = BytesParser(policy=HTTP).parsebytes(
                            f"Content-Type: {ctype}\r\n\r\n".encode() + data)
                        part = next(p for p in msg.iter_parts() if p.get_filename() is not None)
                        payload = part.get_payload(decode=True)
                        assert isinstance(payload, bytes)
                        data = payload
                    elif ctype.startswith("application/json"):
                        data = _json_image(json.loads(data))
                    pixels = decode_file(data)
                except Exception as exc:  # a bad request: the answer says why, as a vendor's would
                    return self._send(400, json.dumps({"error": f"cannot read the image: {exc}"}).encode())
                doc = server.answer(server.scores(pixels))
                self._send(200, json.dumps(doc).encode())

        return Handler


def main(argv: list[str] | None = None) -> int:
    from blackbox_lime.models import resolve_model

    p = argparse.ArgumentParser(prog="python -m blackbox_lime.evaluation.file_server", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="demo-cnn", help="a bundled model's name or an .onnx file")
    p.add_argument("--format", choices=FORMATS, default="label-score-list")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--threshold", type=float, default=0.0)
    p.add_argument("--delay-ms", type=float, default=0.0)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--ready", default=None, help="write the URL to this file once listening")
    a = p.parse_args(argv)
    with FileApiServer(resolve_model(a.model), format=a.format, top_k=a.top_k, threshold=a.threshold,
                       delay=a.delay_ms / 1000, port=a.port) as s:
        if a.ready:
            Path(a.ready).write_text(s.url)
        print(s.url, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
