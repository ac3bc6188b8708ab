"""KServe's own model server, serving an ONNX classifier through onnxruntime: a second real server for the tests.

KServe (``kserve.ModelServer``) serves OIP REST and gRPC as deployed KServe runtimes do: empty model metadata by
default, binary tensor data accepted but not listed in ``/v2``, an 8 MiB gRPC message limit, 501 for version
paths. It cannot share an environment with MLServer (they pin different FastAPI versions), so it runs from its
own virtual environment, as a script that imports nothing of blackbox_lime::

    python -m venv kserve-venv && kserve-venv/bin/pip install "kserve>=0.21,<0.22" onnxruntime
    kserve-venv/bin/python blackbox_lime/evaluation/kserve_server.py --model onnx/demo_cnn.onnx \\
        --http-port 8085 --grpc-port 8086

The tests find that interpreter in ``BLACKBOX_LIME_KSERVE_PYTHON`` (``.ci/run`` sets it) and start this file with
it (:func:`start`).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODEL_NAME = "model"


def serve(model_path: str, http_port: int, grpc_port: int) -> None:  # pragma: no cover - runs in the KServe venv
    import numpy as np
    import onnxruntime as ort
    from kserve import InferOutput, InferResponse, Model, ModelServer

    class OnnxModel(Model):  # type: ignore[misc]
        def __init__(self, name: str, path: str) -> None:
            super().__init__(name)
            self.path = path
            self.load()

        def load(self) -> bool:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            self.session = ort.InferenceSession(self.path, opts, providers=["CPUExecutionProvider"])
            self.input_name = self.session.get_inputs()[0].name
            self.ready = True
            return True

        def predict(self, payload: Any, headers: Any = None, response_headers: Any = None) -> Any:
            x = payload.inputs[0].as_numpy().astype(np.float32)
            probs = np.asarray(self.session.run(None, {self.input_name: x})[0], np.float32)
            out = InferOutput(name="probs", shape=list(probs.shape), datatype="FP32")
            out.set_data_from_numpy(probs, binary_data=False)
            return InferResponse(response_id=payload.id or "", model_name=self.name, infer_outputs=[out])

    ModelServer(http_port=http_port, grpc_port=grpc_port, workers=1, enable_latency_logging=False).start(
        [OnnxModel(MODEL_NAME, model_path)])


def kserve_python() -> str | None:
    """The interpreter that has KServe: ``BLACKBOX_LIME_KSERVE_PYTHON``, or this one if it imports kserve."""
    env = os.environ.get("BLACKBOX_LIME_KSERVE_PYTHON")
    if env:
        return env if Path(env).is_file() else None
    try:
        import kserve  # noqa: F401
    except ImportError:
        return None
    return sys.executable


@dataclass
class KServeServer:
    python: str
    model: str
    http_port: int
    grpc_port: int
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/v2/models/{MODEL_NAME}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc_port}/{MODEL_NAME}"

    def launch(self, timeout: float = 90.0) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [self.python, str(Path(__file__).resolve()), "--model", self.model, "--http-port", str(self.http_port),
                 "--grpc-port", str(self.grpc_port)], stdout=log, stderr=subprocess.STDOUT,
                cwd=str(self.log.parent))
        t0 = time.monotonic()
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"KServe exited: {self.log.read_text(errors='replace')[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/v2/models/{MODEL_NAME}/ready", timeout=2):
                    return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() - t0 > timeout:
                self.kill()
                raise RuntimeError(f"KServe did not start in {timeout:g} s: {self.log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.2)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        if self.process is not None:
            self.process.wait()

    def __enter__(self) -> KServeServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.kill()


def start(model: str | Path, log: Path, python: str | None = None) -> KServeServer:
    """Start KServe on free loopback ports serving ``model`` (an ONNX classifier) and wait until it is ready."""
    from blackbox_lime.evaluation.demo_server import free_port

    exe = python or kserve_python()
    if exe is None:
        raise RuntimeError("KServe is not installed: set BLACKBOX_LIME_KSERVE_PYTHON to a Python that has "
                           "kserve>=0.21 and onnxruntime (its own virtual environment; .ci/run makes one).")
    server = KServeServer(exe, str(Path(model).resolve()), free_port(), free_port(), log)
    server.launch()
    return server


if __name__ == "__main__":  # pragma: no cover
    p = argparse.ArgumentParser(description="KServe serving an ONNX classifier (OIP REST and gRPC) on loopback")
    p.add_argument("--model", required=True)
    p.add_argument("--http-port", type=int, default=8085)
    p.add_argument("--grpc-port", type=int, default=8086)
    a = p.parse_args()
    serve(a.model, a.http_port, a.grpc_port)
