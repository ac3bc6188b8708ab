"""Start the demo model server: MLServer serving a bundled ONNX classifier over OIP REST and gRPC.

It runs ``examples/endpoint/runtime.py`` (an onnxruntime MLServer runtime) on 127.0.0.1 only, as a
subprocess: MLServer and the gRPC client stubs cannot be imported into one process. The tests, the
remote benchmark and README use it::

    python -m blackbox_lime.evaluation.demo_server                        # REST :8080, gRPC :8081, until Ctrl-C
    python -m blackbox_lime.evaluation.demo_server --delay-ms 50 --http-port 9080 --grpc-port 9081

Needs the ``serve`` extra (``pip install 'blackbox-lime[serve]'``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from blackbox_lime.models import bundled_example, bundled_model

MODEL_NAME = "demo_cnn"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class DemoServer:
    """A running MLServer subprocess; use as a context manager, or call ``stop()``."""

    process: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    folder: Path
    log_path: Path
    model: str = MODEL_NAME

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/v2/models/{self.model}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc_port}/{self.model}"

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> DemoServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start(model: str | Path | None = None, *, http_port: int | None = None, grpc_port: int | None = None,
          delay_ms: float = 0.0, threads: int | None = None, timeout: float = 90.0) -> DemoServer:
    """Start MLServer on 127.0.0.1 and wait until the model is ready. Raises RuntimeError with the log tail."""
    exe = _mlserver_exe()
    if exe is None:
        raise RuntimeError("MLServer is not installed: pip install 'blackbox-lime[serve]'.")
    model_path = Path(model) if model else bundled_model("demo_cnn.onnx")
    runtime = bundled_example("endpoint/runtime.py")
    folder = Path(tempfile.mkdtemp(prefix="blackbox-lime-server-"))
    shutil.copy(runtime, folder / "runtime.py")
    http_port = http_port or free_port()
    grpc_port = grpc_port or free_port()
    settings = json.loads(bundled_example("endpoint/settings.json").read_text())
    settings.update(http_port=http_port, grpc_port=grpc_port)
    (folder / "settings.json").write_text(json.dumps(settings, indent=2))
    model_settings = json.loads(bundled_example("endpoint/model-settings.json").read_text())
    extra = {"delay_ms": delay_ms, **({"threads": threads} if threads else {})}
    model_settings["parameters"].update(uri=str(model_path.resolve()), extra=extra)
    (folder / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    log_path = folder / "mlserver.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [exe, "start", str(folder)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=folder, env=env)
    server = DemoServer(proc, http_port, grpc_port, folder, log_path, str(model_settings["name"]))
    deadline = time.monotonic() + timeout
    ready_url = f"http://127.0.0.1:{http_port}/v2/models/{server.model}/ready"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = server.log_tail()
            server.stop()
            raise RuntimeError(f"MLServer exited with code {proc.returncode} while starting:\n{tail}")
        try:
            with urllib.request.urlopen(ready_url, timeout=2) as r:
                if r.status == 200:
                    return server
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    tail = server.log_tail()
    server.stop()
    raise RuntimeError(f"MLServer did not become ready within {timeout:g}s:\n{tail}")


def _mlserver_exe() -> str | None:
    """The mlserver command of this interpreter's environment (PATH may not include it)."""
    beside = Path(sys.executable).parent / "mlserver"
    return str(beside) if beside.is_file() else shutil.which("mlserver")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m blackbox_lime.evaluation.demo_server", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="ONNX classifier to serve (default: the bundled demo_cnn.onnx)")
    p.add_argument("--http-port", type=int, default=8080)
    p.add_argument("--grpc-port", type=int, default=8081)
    p.add_argument("--delay-ms", type=float, default=0.0, help="artificial latency per request")
    a = p.parse_args(argv)
    try:
        server = start(a.model, http_port=a.http_port, grpc_port=a.grpc_port, delay_ms=a.delay_ms)
    except RuntimeError as exc:
        print(f"demo_server: error: {exc}", file=sys.stderr)
        return 2
    print(f"serving {server.model}: REST {server.rest_url}  gRPC {server.grpc_url}  (Ctrl-C stops)", flush=True)
    try:
        server.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
