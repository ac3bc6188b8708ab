"""An MLServer runtime that serves an ONNX image classifier with onnxruntime (Open Inference Protocol).

MLServer (1.7.1) imports this file through model-settings.json (``"implementation":
"runtime.OnnxClassifier"``) and serves the model over OIP REST and gRPC. The model metadata (input and
output names, shapes, datatypes) is read from the ONNX graph, so clients can discover it with
``GET /v2/models/<name>`` or gRPC ``ModelMetadata``.

``parameters.extra`` in model-settings.json may set:

- ``delay_ms``: an artificial service time added to every request without holding the event loop, as a
  stand-in for network and queueing latency (the concurrency benchmark uses 50 ms);
- ``threads``: onnxruntime intra-op threads (default: onnxruntime's choice).
"""

from __future__ import annotations

import asyncio

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.errors import MLServerError
from mlserver.types import InferenceRequest, InferenceResponse, MetadataTensor
from mlserver.utils import get_model_uri

_DATATYPES = {"tensor(float)": "FP32", "tensor(float16)": "FP16", "tensor(double)": "FP64", "tensor(uint8)": "UINT8"}


class OnnxClassifier(MLModel):
    async def load(self) -> bool:
        path = await get_model_uri(self._settings)
        extra = (self._settings.parameters.extra or {}) if self._settings.parameters else {}
        self._delay = float(extra.get("delay_ms", 0)) / 1000.0
        opts = ort.SessionOptions()
        if extra.get("threads"):
            opts.intra_op_num_threads = int(extra["threads"])
        self._session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        inp, out = self._session.get_inputs()[0], self._session.get_outputs()[0]
        self._input, self._output = inp.name, out.name
        dims = lambda shape: [d if isinstance(d, int) else -1 for d in shape]
        self._settings.inputs = [MetadataTensor(name=inp.name, datatype=_DATATYPES.get(inp.type, "FP32"),
                                                shape=dims(inp.shape))]
        self._settings.outputs = [MetadataTensor(name=out.name, datatype=_DATATYPES.get(out.type, "FP32"),
                                                 shape=dims(out.shape))]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        if len(payload.inputs) != 1:
            raise MLServerError(f"expected exactly one input tensor, got {len(payload.inputs)}", status_code=400)
        x = NumpyCodec.decode_input(payload.inputs[0])
        if self._delay:
            await asyncio.sleep(self._delay)
        try:
            probs = self._session.run([self._output], {self._input: np.ascontiguousarray(x)})[0]
        except Exception as exc:  # onnxruntime's own exception types are private
            raise MLServerError(f"onnxruntime refused the input: {str(exc).splitlines()[0][:300]}", status_code=400)
        return InferenceResponse(model_name=self.name, model_version=self.version,
                                 outputs=[NumpyCodec.encode_output(self._output, probs)])
