"""TorchServe serving an ONNX classifier as a vendor file API: a real serving framework for the file-API tests.

TorchServe (``torchserve`` 0.12, its Java frontend and Python workers) answers ``POST /predictions/NAME`` with one
encoded image in and, through ``torchserve_handler.py``, the stock image classifier's answer out: the top ``k``
labels as ``{"label": probability}``. Token authorisation is on, as TorchServe ships it: every inference request
needs ``Authorization: Bearer KEY`` with the inference key TorchServe writes to ``key_file.json``.

It needs Java (Debian's ``openjdk-17-jre-headless``) and the ``torchserve`` extra. The tests find the
``torchserve`` and ``torch-model-archiver`` commands beside this interpreter or on PATH, or in the folder that
``BLACKBOX_LIME_TORCHSERVE_BIN`` names; :func:`start` archives the model, writes a loopback configuration into a
temporary folder and waits until the model answers ``/ping``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HANDLER = Path(__file__).with_name("torchserve_handler.py")


def torchserve_bin() -> Path | None:
    """The folder holding ``torchserve`` and ``torch-model-archiver``, or None when they (or Java) are missing."""
    if shutil.which("java") is None:
        return None
    env = os.environ.get("BLACKBOX_LIME_TORCHSERVE_BIN")
    for folder in ([Path(env)] if env else []) + [Path(sys.executable).parent] + \
            [Path(p) for p in os.environ.get("PATH", "").split(os.pathsep) if p]:
        if (folder / "torchserve").is_file() and (folder / "torch-model-archiver").is_file():
            return folder
    return None


@dataclass
class TorchServe:
    folder: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    def url(self, name: str = "classifier") -> str:
        """The inference URL of one served archive."""
        return f"http://127.0.0.1:{self.port}/predictions/{name}"

    @property
    def log(self) -> str:
        path = self.folder / "logs" / "model_log.log"
        return path.read_text(errors="replace")[-2000:] if path.is_file() else "(no model log)"

    def key(self, kind: str = "inference") -> str:
        """The ``inference`` or ``management`` key TorchServe generated at start (``key_file.json``)."""
        keys = json.loads((self.folder / "key_file.json").read_text())
        return str(keys[kind]["key"])

    def stop(self, timeout: float = 20.0) -> None:
        """Stop TorchServe's whole process group (its launcher, the Java frontend and the workers) and wait for it."""
        if self.process is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            t0 = time.monotonic()
            while time.monotonic() - t0 < timeout:
                try:
                    os.killpg(self.process.pid, 0)
                except ProcessLookupError:
                    break
                self.process.poll()
                time.sleep(0.1)
            else:
                continue
            break
        self.process.wait()

    def __enter__(self) -> TorchServe:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def archive(model: str | Path, class_names: list[str], store: Path, name: str, top_k: int, bin_dir: Path) -> None:
    """``torch-model-archiver``: the ONNX file, its labels and the handler's ``topk`` into ``store/NAME.mar``."""
    work = store.parent / f"{name}-src"
    work.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model, work / "model.onnx")
    (work / "index_to_name.json").write_text(json.dumps({str(i): n for i, n in enumerate(class_names)}))
    (work / "model-config.yaml").write_text(f"minWorkers: 1\nmaxWorkers: 1\nhandler:\n  topk: {int(top_k)}\n")
    subprocess.run([str(bin_dir / "torch-model-archiver"), "--model-name", name, "--version", "1.0",
                    "--handler", str(HANDLER), "--extra-files",
                    f"{work / 'model.onnx'},{work / 'index_to_name.json'}",
                    "--config-file", str(work / "model-config.yaml"), "--export-path", str(store), "--force"],
                   check=True, capture_output=True)


def start(model: str | Path, folder: Path, top_ks: dict[str, int] | None = None, timeout: float = 120.0) -> TorchServe:
    """Serve ``model`` (an ONNX classifier with class names in its metadata) from TorchServe on free loopback ports,
    once per entry of ``top_ks`` (archive name -> how many labels its answers list; default ``{"classifier": 5}``,
    the stock handler's cut). ``folder`` holds the configuration, model store, logs and key file. Waits until every
    archive has a ready worker."""
    from blackbox_lime.adapters.onnx import OnnxAdapter
    from blackbox_lime.evaluation.demo_server import free_port

    top_ks = top_ks or {"classifier": 5}
    bin_dir = torchserve_bin()
    if bin_dir is None:
        raise RuntimeError("TorchServe is not available: it needs Java (apt-get install openjdk-17-jre-headless) "
                           "and pip install torchserve torch-model-archiver pyyaml (the test extra has them).")
    folder.mkdir(parents=True, exist_ok=True)
    store = folder / "model-store"
    store.mkdir(exist_ok=True)
    names = list(OnnxAdapter(Path(model)).info.class_names)
    for name, k in top_ks.items():
        archive(model, names, store, name, k, bin_dir)
    port, mgmt, metrics = free_port(), free_port(), free_port()
    (folder / "config.properties").write_text(
        f"inference_address=http://127.0.0.1:{port}\nmanagement_address=http://127.0.0.1:{mgmt}\n"
        f"metrics_address=http://127.0.0.1:{metrics}\nmodel_store={store}\n"
        f"load_models={','.join(f'{n}.mar' for n in top_ks)}\n"
        "default_workers_per_model=1\nenable_envvars_config=false\ninstall_py_dep_per_model=false\n")
    server = TorchServe(folder, port)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "LOG_LOCATION": str(folder / "logs"), "METRICS_LOCATION": str(folder / "logs")}
    server.process = subprocess.Popen(
        [str(bin_dir / "torchserve"), "--start", "--foreground", "--ncs", "--ts-config", str(folder / "config.properties"),
         "--model-store", str(store)], cwd=str(folder), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        start_new_session=True)
    t0, waiting = time.monotonic(), set(top_ks)
    while waiting:
        if server.process.poll() is not None:
            raise RuntimeError(f"TorchServe exited: {server.log}")
        for name in list(waiting):
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{mgmt}/models/{name}",
                                                 headers={"Authorization": f"Bearer {server.key('management')}"})
                with urllib.request.urlopen(request, timeout=2) as r:
                    if any(w.get("status") == "READY" for m in json.loads(r.read()) for w in m.get("workers", [])):
                        waiting.discard(name)
            except (urllib.error.URLError, OSError, ValueError, KeyError):
                pass
        if waiting and time.monotonic() - t0 > timeout:
            server.stop()
            raise RuntimeError(f"TorchServe did not start in {timeout:g} s: {server.log}")
        time.sleep(0.3)
    return server
