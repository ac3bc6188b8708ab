"""An Open Inference Protocol REST endpoint emulated with ``responses`` (in process, no sockets).

The model behind it is linear in the patch means of a 32 x 32 image (patch 8, 16 patches):
P(abnormal) = B + sum_j A_j * mean(patch j), the same on every call, so any saliency computed through
it is exactly reproducible. ``faults`` decides, per request, whether to answer normally or to fail.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import requests
import responses

BASE = "http://127.0.0.1:8999"
MODEL = "linear"
URL = f"{BASE}/v2/models/{MODEL}"
SIZE, PATCH = 32, 8
A = np.array([0.30, -0.20, 0.0, 0.05, 0.0, 0.25, 0.0, 0.0, -0.1, 0.0, 0.15, 0.0, 0.0, 0.0, 0.0, 0.1])
B = 0.2


def linear_probs(x: np.ndarray) -> np.ndarray:
    """x: (n, 3, 32, 32) -> (n, 2)."""
    n = x.shape[0]
    means = x.reshape(n, 3, SIZE // PATCH, PATCH, SIZE // PATCH, PATCH).mean(axis=(1, 3, 5)).reshape(n, -1)
    p = np.clip(B + means @ A, 0.0, 1.0)
    return np.stack([1.0 - p, p], axis=1)


@dataclass
class FakeEndpoint:
    """Registers the OIP routes on a ``responses.RequestsMock``; records every infer request."""

    rsps: responses.RequestsMock
    faults: Callable[[int], Any] | None = None  # request index -> None (answer) or a fault
    bodies: list[bytes] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    answer: Callable[[np.ndarray], Any] | None = None  # override the answer: a JSON-able doc, or a raw str body
    calls: int = 0  # JSON infer requests (a fault script counts these)
    binary_refused: int = 0  # binary tensor requests, refused with 422 as MLServer does (the extension is not listed)

    def install(self) -> FakeEndpoint:
        self.rsps.add(responses.GET, f"{BASE}/v2", json={"name": "fake", "extensions": []})
        self.rsps.add(responses.GET, URL, json={
            "name": MODEL, "versions": ["1"], "platform": "fake",
            "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, 3, SIZE, SIZE]}],
            "outputs": [{"name": "probs", "datatype": "FP32", "shape": [-1, 2]}]})
        self.rsps.add(responses.GET, URL + "/ready", status=200)
        self.rsps.add_callback(responses.POST, URL + "/infer", callback=self._infer)
        return self

    def _infer(self, request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        if "Inference-Header-Content-Length" in request.headers:
            self.binary_refused += 1
            return 422, {}, json.dumps({"detail": [{"msg": "Input should be a valid dictionary or object"}]})
        i = self.calls
        self.calls += 1
        body = request.body if isinstance(request.body, bytes) else str(request.body).encode()
        self.bodies.append(body)
        self.headers.append(dict(request.headers))
        fault = self.faults(i) if self.faults else None
        if isinstance(fault, BaseException):
            raise fault
        if fault is not None:
            return fault  # (status, headers, body)
        doc = json.loads(body)
        inp = doc["inputs"][0]
        x = np.asarray(inp["data"], np.float32).reshape(inp["shape"])
        if self.answer is not None:
            doc = self.answer(x)
            return 200, {}, doc if isinstance(doc, str) else json.dumps(doc)  # a str is sent as the raw body
        probs = linear_probs(x).astype(np.float32)
        out = {"name": "probs", "datatype": "FP32", "shape": list(probs.shape), "data": probs.ravel().tolist()}
        return 200, {}, json.dumps({"model_name": MODEL, "outputs": [out]})


def image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.2, 0.8, (SIZE, SIZE, 3)).astype(np.float32)
