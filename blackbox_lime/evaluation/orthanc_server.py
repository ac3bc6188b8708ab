"""Orthanc with its DICOMweb plugin on loopback: the real PACS of the PACS tests and benchmark.

Debian's ``orthanc`` and ``orthanc-dicomweb`` packages (``.ci/run`` installs them). :func:`start` writes a
temporary configuration (loopback only, no DICOM port, storage in the given folder, basic authentication off
unless ``users`` is given) and waits until the DICOMweb root answers; :meth:`Orthanc.restart` stops and starts the
same server on the same port and storage (the PACS restarting mid-audit)::

    with orthanc_server.start(tmp_path) as pacs:
        pacs.upload(dicom_bytes)
        pacs.dicomweb   # http://127.0.0.1:PORT/dicom-web
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc/plugins")


def orthanc_binary() -> str | None:
    """Orthanc's executable when both it and its DICOMweb plugin are installed, else None."""
    exe = shutil.which("Orthanc") or next((p for p in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc") if Path(p).is_file()),
                                          None)
    if exe is None or _plugin() is None:
        return None
    return exe


def _plugin() -> str | None:
    return next((str(Path(d) / "libOrthancDicomWeb.so") for d in PLUGIN_DIRS
                 if (Path(d) / "libOrthancDicomWeb.so").is_file()), None)


@dataclass
class Orthanc:
    folder: Path
    port: int
    users: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def _headers(self) -> dict[str, str]:
        if not self.users:
            return {}
        user, password = next(iter(self.users.items()))
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}

    def rest(self, method: str, path: str, body: bytes | None = None, content_type: str = "application/dicom") -> Any:
        """Orthanc's own REST API (uploads, lookups, deletions): the parsed JSON answer."""
        request = urllib.request.Request(self.url + path, data=body, method=method,
                                         headers={**self._headers(), **({"Content-Type": content_type} if body else {})})
        with urllib.request.urlopen(request, timeout=30) as r:
            text = r.read()
        return json.loads(text) if text else None

    def upload(self, data: bytes) -> dict[str, Any]:
        """Store one DICOM file (Orthanc's POST /instances)."""
        return dict(self.rest("POST", "/instances", data))

    def instances(self) -> list[str]:
        return list(self.rest("GET", "/instances"))

    def launch(self, timeout: float = 60.0) -> None:
        exe = orthanc_binary()
        if exe is None:
            raise RuntimeError("Orthanc with its DICOMweb plugin is not installed: apt-get install orthanc "
                               "orthanc-dicomweb")
        storage = self.folder / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        config = {"Name": "blackbox-lime-test", "HttpPort": self.port, "DicomServerEnabled": False,
                  "RemoteAccessAllowed": False, "StorageDirectory": str(storage), "IndexDirectory": str(storage),
                  "AuthenticationEnabled": bool(self.users), "RegisteredUsers": self.users, "HttpsCACertificates": "",
                  "Plugins": [_plugin()], "StableAge": 1, "LimitFindResults": 0, "LimitFindInstances": 0,
                  "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False,
                               "Host": f"127.0.0.1:{self.port}", "Ssl": False}}
        (self.folder / "orthanc.json").write_text(json.dumps(config))
        log = open(self.folder / "orthanc.log", "ab")
        self.process = subprocess.Popen([exe, str(self.folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT,
                                        cwd=str(self.folder))
        log.close()
        t0 = time.monotonic()
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {self.log()}")
            try:
                request = urllib.request.Request(f"{self.dicomweb}/studies", headers=self._headers())
                with urllib.request.urlopen(request, timeout=2):
                    return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() - t0 > timeout:
                self.stop()
                raise RuntimeError(f"Orthanc did not start in {timeout:g} s: {self.log()}")
            time.sleep(0.1)

    def log(self) -> str:
        p = self.folder / "orthanc.log"
        return p.read_text(errors="replace")[-2000:] if p.is_file() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def restart(self, down_s: float = 0.0) -> None:
        """Stop, stay down ``down_s`` seconds, start again on the same port and storage."""
        self.stop()
        time.sleep(down_s)
        self.launch()

    def __enter__(self) -> Orthanc:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def start(folder: Path, users: dict[str, str] | None = None) -> Orthanc:
    """Orthanc on a free loopback port with its storage in ``folder``; ``users`` turns on basic authentication."""
    from blackbox_lime.evaluation.demo_server import free_port

    folder.mkdir(parents=True, exist_ok=True)
    server = Orthanc(folder, free_port(), dict(users or {}))
    server.launch()
    return server
