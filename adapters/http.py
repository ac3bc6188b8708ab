"""Remote classifiers over HTTP: Open Inference Protocol (KServe v2) REST, and TF-Serving / Vertex JSON.

Two transports share one pooled ``requests.Session`` setup (TLS verified by default, optional CA
bundle and mTLS client certificate, auth headers from the profile) and one mapping of failures onto
the adapter error tree. Retries, budget, concurrency and rate limits are not here: they are the
:class:`~blackbox_lime.adapters.remote.RemoteAdapter`'s, the same for every protocol.

Open Inference Protocol REST::

    GET  {base}/v2                                  server metadata (extensions)
    GET  {base}/v2/models/{m}[/versions/{v}]        model metadata (input/output names, shapes, datatypes)
    GET  {base}/v2/models/{m}[/versions/{v}]/ready  readiness
    POST {base}/v2/models/{m}[/versions/{v}]/infer  one batch as one tensor

The request body is JSON, or JSON + raw bytes (the binary tensor extension, with the header
``Inference-Header-Content-Length``) when the server lists ``binary_tensor_data`` among its
extensions. Binary and JSON responses are both decoded.

TF-Serving / Vertex AI: ``POST {url}`` with ``{"instances": [...]}``; the answer is
``{"predictions": [...]}``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson
import requests
import urllib3
from requests.adapters import HTTPAdapter

from .errors import (AdapterError, AdapterTimeout, ConfigError, ConnectionFailed, ModelLoadError, ResponseError,
                     ServerError)
from .preprocess import OUTPUT_DTYPES, decode_raw_output
from .remote import EndpointMeta, Transport, check_endpoint_url, parse_retry_after, safe_url, server_error

log = logging.getLogger(__name__)

BINARY_HEADER = "Inference-Header-Content-Length"
_NUMPY = orjson.OPT_SERIALIZE_NUMPY


class HttpTransport(Transport):
    """Shared HTTP plumbing: session, TLS, auth headers and the error mapping.

    Parameters
    ----------
    url : the endpoint (https://, or http:// to loopback; see ``allow_insecure_http``).
    headers : extra request headers, e.g. {"Authorization": "Bearer ..."}; never logged.
    verify : verify TLS certificates (default True); ``ca_bundle`` overrides the trust store.
    client_cert, client_key : PEM files for mutual TLS.
    timeout, connect_timeout : seconds (timeout: the longest wait for the next bytes of an answer).
    pool : connections kept open (set to the adapter's concurrency).
    response_deadline : seconds one whole request may take, its answer read in full (default: twice ``timeout``).
        A server that keeps sending (an endless stream, one byte a second) is cut off there.
    max_response_bytes : the largest answer to an inference request read (None: derived from the request, see
        :meth:`infer_cap`). Metadata answers are capped at 1 MiB and error bodies are read up to 64 KiB.
    """

    def __init__(self, url: str, *, headers: Mapping[str, str] | None = None, verify: bool = True,
                 ca_bundle: str | None = None, client_cert: str | None = None, client_key: str | None = None,
                 timeout: float = 60.0, connect_timeout: float = 10.0, pool: int = 4,
                 allow_insecure_http: bool = False, response_deadline: float | None = None,
                 max_response_bytes: int | None = None) -> None:
        parts = check_endpoint_url(url, allow_insecure_http)
        if parts.scheme not in ("http", "https"):
            raise ConfigError(f"{safe_url(url)} is not an HTTP URL; use http(s):// with a REST protocol.")
        self.url = url.rstrip("/")
        self.session = requests.Session()
        self.session.trust_env = False  # only the configured endpoint: no proxy or netrc from the environment
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=max(1, pool))
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        self.session.headers.update({"User-Agent": "blackbox-lime", **(headers or {})})
        self.session.verify = ca_bundle if (verify and ca_bundle) else verify
        if client_cert:
            self.session.cert = (client_cert, client_key) if client_key else client_cert
        if not verify:
            log.warning("TLS certificate verification is OFF for %s", safe_url(url))
        self.timeout = (connect_timeout, timeout)
        self.response_deadline = float(response_deadline or 2 * timeout)
        self.max_response_bytes = max_response_bytes

    def infer_cap(self, n: int) -> int:
        """The most bytes an answer about n images may hold: n x classes x 32 bytes (a float in JSON) x 16 (other
        outputs, white space), plus 1 MiB; ``[limits] max_response_mb`` replaces it."""
        if self.max_response_bytes is not None:
            return self.max_response_bytes
        return METADATA_CAP + n * max(2, self.values_per_image) * 32 * 16

    def _request(self, method: str, url: str, cap: int = 0, **kw: Any) -> requests.Response:
        """Send one request; its answer is read in full, at most ``cap`` bytes (default: the metadata cap) and
        within the response deadline, else a ResponseError (too large) or an AdapterTimeout (too slow)."""
        where = safe_url(url)
        cap = cap or METADATA_CAP
        start = time.monotonic()
        try:
            r = self.session.request(method, url, timeout=self.timeout, allow_redirects=False, stream=True, **kw)
        except requests.exceptions.SSLError as exc:
            raise ConnectionFailed(
                f"TLS verification failed for {where}: {_first_line(exc)}. If the endpoint uses a private CA, set "
                "tls.ca_bundle in the profile.", retryable=False) from exc
        except requests.exceptions.ConnectTimeout as exc:
            raise ConnectionFailed(f"Could not connect to {where} within {self.timeout[0]:g}s.") from exc
        except requests.exceptions.ReadTimeout as exc:
            raise AdapterTimeout(f"{where} did not answer within {self.timeout[1]:g}s (read timeout).") from exc
        except requests.exceptions.ConnectionError as exc:
            reason = _first_line(exc)
            raise ConnectionFailed(f"Could not reach {where}: {reason}.", retryable=reason != "unknown host name") from exc
        except requests.exceptions.RequestException as exc:
            raise ConnectionFailed(f"Request to {where} failed: {_first_line(exc)}.", retryable=False) from exc
        try:
            self._read_body(r, where, ERROR_BODY_CAP if r.status_code >= 300 else cap, start)
        finally:
            r.close()  # the connection goes back to the pool only when it was read to its end
        if 300 <= r.status_code < 400:
            target = safe_url(r.headers.get("Location", "")) if r.headers.get("Location") else "(no Location)"
            raise ServerError(f"{where} answered HTTP {r.status_code}, a redirect to {target}. Redirects are not followed, "
                              "so pixels go only to the configured endpoint: put the final URL in --model or the profile.",
                              status=r.status_code, retryable=False)
        if r.status_code >= 400:
            raise server_error(where, r.status_code, r.reason or "", r.content,
                               parse_retry_after(r.headers.get("Retry-After")))
        return r

    def _read_body(self, r: requests.Response, where: str, cap: int, start: float) -> None:
        """Read the streamed body into ``r.content``: at most ``cap`` bytes (an error body is cut there; any
        other answer over it is refused), and only until the response deadline."""
        error = r.status_code >= 300
        declared = r.headers.get("Content-Length", "")
        if not error and declared.isdigit() and int(declared) > cap:
            raise ResponseError(f"{where} announced an answer of {int(declared):,} bytes, more than the {cap:,} this "
                                f"request can legitimately return; refused unread. {_RAISE_CAP}")
        body, ended = bytearray(), False
        try:
            while True:
                if time.monotonic() - start > self.response_deadline:
                    raise AdapterTimeout(f"{where} did not finish its answer within the response deadline of "
                                         f"{self.response_deadline:g} s ({len(body):,} bytes received); the server "
                                         "may be overloaded or misbehaving. Raise [limits] response_deadline_s if "
                                         "its answers are really this slow.")
                chunk = r.raw.read1(65536, decode_content=True)  # what one read of the socket brought
                if not chunk:
                    ended = True
                    break
                body += chunk
                if len(body) > cap:
                    if error:  # enough of an error body to quote
                        del body[cap:]
                        break
                    raise ResponseError(f"{where} sent an answer of more than {cap:,} bytes, more than this request "
                                        f"can legitimately return; the rest was not read. {_RAISE_CAP}")
        except urllib3.exceptions.ReadTimeoutError as exc:
            raise AdapterTimeout(f"{where} stopped sending its answer for {self.timeout[1]:g}s (read timeout).") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ConnectionFailed(f"{where} broke off its answer: {_first_line(exc)}.") from exc
        r._content = bytes(body)  # what requests' r.content returns from now on
        r._content_consumed = ended  # read to its end: close() puts the connection back; a cut body drops it

    def close(self) -> None:
        self.session.close()


METADATA_CAP = 1 << 20  # metadata, readiness and status answers
ERROR_BODY_CAP = 64 << 10  # an error body is quoted, never parsed: its first 64 KiB are plenty
_RAISE_CAP = "If this endpoint's answers are really that large, raise [limits] max_response_mb in the profile."

_REASONS = (("Connection refused", "connection refused (is the server running, and is the port right?)"),
            ("Name or service not known", "unknown host name"),
            ("nodename nor servname", "unknown host name"),
            ("Temporary failure in name resolution", "the host name could not be resolved"),
            ("Connection reset", "the connection was reset by the server"),
            ("RemoteDisconnected", "the server closed the connection without answering"),
            ("certificate verify failed", "the server's certificate could not be verified"))


def _first_line(exc: BaseException) -> str:
    """A short reason for a requests/urllib3 exception (their messages nest several repr()s)."""
    text = str(exc)
    for needle, reason in _REASONS:
        if needle in text:
            return reason
    text = text.splitlines()[0] if text else type(exc).__name__
    return text[:300]


def _json(r: requests.Response, what: str, content: bytes | None = None) -> Any:
    body = r.content if content is None else content
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ResponseError(f"{what} from {safe_url(r.url)} is not valid JSON ({exc}); the body starts with "
                            f"{body[:120]!r}.") from exc


class OipRestTransport(HttpTransport):
    """Open Inference Protocol (KServe v2) REST.

    Parameters
    ----------
    url : the server's base URL (``https://host:port``; a path prefix is allowed).
    model, version : the model name and optional version.
    binary : "auto", "always" or "never". "auto" sends binary tensors when the server lists
        ``binary_tensor_data`` in ``/v2``; when it does not (KServe accepts binary tensors without listing the
        extension), the first request is sent as binary and, if the server does not take it (400, 415, 422,
        501, an answer it cannot have meant, or a dropped connection), sent again as JSON, which every later
        request then uses.
    """

    protocol = "oip-rest"

    def __init__(self, url: str, model: str, version: str | None = None, *, binary: str = "auto",
                 **kw: Any) -> None:
        super().__init__(url, **kw)
        if not model:
            raise ConfigError("The Open Inference Protocol needs a model name (the URL path /v2/models/NAME or the "
                              "profile's 'model').")
        if binary not in ("auto", "always", "never"):
            raise ConfigError(f"The 'binary' setting must be 'auto', 'always' or 'never'. Got {binary!r} instead.")
        self.model, self.version = model, version
        self.base = f"{self.url}/v2/models/{model}" + (f"/versions/{version}" if version else "")
        self._binary_setting = binary
        self._binary: bool | None = {"always": True, "never": False}.get(binary)
        self._checked_extensions = False  # binary "auto": /v2 read; if _binary is still None, the next request tries

    def describe(self) -> dict[str, Any]:
        return {"protocol": self.protocol, "url": safe_url(self.url), "model": self.model,
                "version": self.version, "binary": self._binary_setting}

    @property
    def binary_in_use(self) -> bool | None:
        """Whether requests go as binary tensors (None until the first request decided it)."""
        return self._binary

    def _request(self, method: str, url: str, cap: int = 0, **kw: Any) -> requests.Response:
        try:
            return super()._request(method, url, cap, **kw)
        except ServerError as exc:
            if exc.status == 501 and self.version and "/versions/" in url:
                raise ConfigError(f"{safe_url(url)} answered HTTP 501 Not Implemented: this server does not serve "
                                  f"versioned routes (/versions/{self.version}; KServe's REST server does not). Drop the "
                                  "version: remove /versions/... from the URL, or 'version' from the profile.") from exc
            raise

    def metadata(self) -> EndpointMeta:
        r = self._request("GET", self.base)
        doc = _json(r, "The model metadata")
        if isinstance(doc, dict) and not doc.get("inputs"):  # empty metadata (KServe's default): the profile declares
            return EndpointMeta(name=str(doc.get("name") or self.model), input_name="", input_shape=(),
                                input_datatype="", versions=tuple(str(v) for v in doc.get("versions") or ()),
                                platform=str(doc.get("platform", "")), raw=doc)
        try:
            inp = doc["inputs"][0]
            outs = doc.get("outputs") or []
            return EndpointMeta(
                name=str(doc.get("name", self.model)), input_name=str(inp["name"]),
                input_shape=tuple(int(d) for d in inp["shape"]), input_datatype=str(inp["datatype"]),
                output_name=str(outs[0]["name"]) if outs else None,
                output_shape=tuple(int(d) for d in outs[0]["shape"]) if outs and "shape" in outs[0] else None,
                versions=tuple(str(v) for v in doc.get("versions") or ()), platform=str(doc.get("platform", "")),
                raw=doc)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"The model metadata from {safe_url(self.base)} lacks inputs[0].name/shape/datatype "
                                 f"({type(exc).__name__}: {exc}); declare the input in the profile.") from exc

    def ready(self) -> bool:
        try:
            self._request("GET", self.base + "/ready")
        except ResponseError as exc:
            if getattr(exc, "status", None) in (404, 503, 400):
                return False
            raise
        return True

    def server_extensions(self) -> list[str]:
        r = self._request("GET", f"{self.url}/v2")
        doc = _json(r, "The server metadata")
        ext = doc.get("extensions") if isinstance(doc, dict) else None
        return [str(e) for e in ext] if isinstance(ext, list) else []

    def _use_binary(self) -> bool:
        if self._binary is None and not self._checked_extensions:
            try:
                listed = "binary_tensor_data" in self.server_extensions()
            except ResponseError:
                listed = False
            self._checked_extensions = True
            if listed:
                self._binary = True
            log.info("%s: binary tensor extension %s", safe_url(self.url),
                     "listed: on" if listed else "not listed: the first request tries it")
        return self._binary is not False

    def infer(self, tensor: np.ndarray) -> np.ndarray:
        head: dict[str, Any] = {"name": self.input_name, "shape": list(tensor.shape), "datatype": self.input_datatype}
        out_req: dict[str, Any] = {"name": self.output_name} if self.output_name else {}
        if self._use_binary():
            head["parameters"] = {"binary_data_size": tensor.nbytes}
            if out_req:
                out_req["parameters"] = {"binary_data": True}
            doc = {"inputs": [head], **({"outputs": [out_req]} if out_req else {}),
                   "parameters": {"binary_data_output": True}}
            header = orjson.dumps(doc)
            try:
                r = self._request("POST", self.base + "/infer", cap=self.infer_cap(len(tensor)),
                                  data=_binary_body(header, tensor),
                                  headers={"Content-Type": "application/octet-stream", BINARY_HEADER: str(len(header))})
                out = decode_oip_response(r, self.output_name, self)
            except AdapterError as exc:
                status = getattr(exc, "status", None)
                if self._binary is None and status not in (401, 403, 404, 413, 429, 502, 503, 504):
                    # refused (400, 415, 422, 501), not understood, or the connection dropped: a server that does
                    # not list the extension may not take it. JSON from now on; this request goes again as JSON.
                    self._binary = False
                    log.info("%s: binary tensors not taken (%s); JSON from now on", safe_url(self.url), exc)
                    raise ServerError(f"{safe_url(self.base)} did not take binary tensor data ({exc}); sent again as "
                                      "JSON", status=status, retry_after=0.0, retryable=True) from exc
                raise
            if self._binary is None:  # the first binary request was understood: every request uses them
                self._binary = True
                log.info("%s: binary tensors accepted; every request uses them", safe_url(self.url))
            return out
        else:
            data = tensor.astype(np.float32) if tensor.dtype == np.float16 else tensor
            head["data"] = data.reshape(-1)
            doc = {"inputs": [head], **({"outputs": [out_req]} if out_req else {})}
            r = self._request("POST", self.base + "/infer", cap=self.infer_cap(len(tensor)),
                              data=orjson.dumps(doc, option=_NUMPY),
                              headers={"Content-Type": "application/json"})
        return decode_oip_response(r, self.output_name, self)


def _binary_body(header: bytes, tensor: np.ndarray) -> bytearray:
    """The JSON header followed by the tensor's little-endian bytes, written once into one buffer (a 32-image
    request is about 19 MB: tobytes() and a concatenation would copy it twice more on the client's cores)."""
    body = bytearray(len(header) + tensor.nbytes)
    body[:len(header)] = header
    dest = np.frombuffer(body, tensor.dtype.newbyteorder("<"), offset=len(header)).reshape(tensor.shape)
    np.copyto(dest, tensor)
    return body


def decode_oip_response(r: requests.Response, output_name: str | None, into: Transport | None = None) -> np.ndarray:
    """An OIP infer response (JSON, or JSON + binary tensors) -> the chosen output as an array (and its datatype
    into ``into.output_datatype``)."""
    content = r.content
    header_len = r.headers.get(BINARY_HEADER)
    binary = b""
    if header_len is not None:
        try:
            n = int(header_len)
        except ValueError as exc:
            raise ResponseError(f"The response header {BINARY_HEADER} is not an integer: {header_len[:40]!r}.") from exc
        if not 0 <= n <= len(content):
            raise ResponseError(f"The response header {BINARY_HEADER} ({n}) exceeds the body ({len(content)} bytes).")
        content, binary = content[:n], content[n:]
    doc = _json(r, "The inference response", content)
    outputs = doc.get("outputs") if isinstance(doc, dict) else None
    if not isinstance(outputs, list) or not outputs:
        raise ResponseError(f"The inference response has no 'outputs' list; got keys {sorted(doc)[:8] if isinstance(doc, dict) else type(doc).__name__}.")
    offset, chosen, index = 0, None, 0
    for i, out in enumerate(outputs):
        if not isinstance(out, dict):
            raise ResponseError(f"The inference response field outputs[{i}] is not an object.")
        size = (out.get("parameters") or {}).get("binary_data_size")
        if chosen is None and (output_name is None or out.get("name") == output_name):
            chosen, index, start = out, i, offset
        if size is not None:
            offset += int(size)
    if chosen is None:
        names = [o.get("name") for o in outputs]
        raise ResponseError(f"The inference response has no output named {output_name!r}; it has {names}.")
    field = f"outputs[{index}]"
    shape, dtype_name = chosen.get("shape"), chosen.get("datatype")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ResponseError(f"The inference response field {field}.shape is missing or not a list of sizes: {shape!r}.")
    if str(dtype_name) not in OUTPUT_DTYPES:
        raise ResponseError(f"The inference response field {field}.datatype is {dtype_name!r}; expected FP32, FP64, FP16 "
                            "or BF16.")
    size = (chosen.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        chunk = binary[start:start + int(size)]
        if len(chunk) != int(size):
            raise ResponseError(f"The inference response field {field} declares {size} binary bytes but the body "
                                f"holds {len(chunk)}.")
        try:
            arr = decode_raw_output(chunk, str(dtype_name))
        except ValueError as exc:
            raise ResponseError(f"The inference response field {field} is not valid {dtype_name} data ({exc}).") from exc
    else:
        if "data" not in chosen:
            raise ResponseError(f"The inference response field {field} has no 'data'.")
        try:
            arr = np.asarray(chosen["data"], dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise ResponseError(f"The inference response field {field}.data is not numeric ({exc}).") from exc
    want = int(np.prod(shape)) if shape else 1
    if arr.size != want:
        raise ResponseError(f"The inference response field {field}.data has {arr.size} values but {field}.shape "
                            f"{shape} needs {want}.")
    if into is not None:
        into.output_datatype = str(dtype_name)
    return arr.reshape(shape)


class TFServingTransport(HttpTransport):
    """TF-Serving REST / Vertex AI prediction: ``{"instances": [...]}`` -> ``{"predictions": [...]}``.

    Parameters
    ----------
    url : the full predict URL, e.g. ``https://host/v1/models/chest:predict`` or a Vertex endpoint's
        ``...:predict`` URL.
    instance_key : None sends each image as a nested list; a name sends ``{name: image}`` objects.
    """

    protocol = "tfserving"
    output_field = "predictions"

    def __init__(self, url: str, *, instance_key: str | None = None, **kw: Any) -> None:
        super().__init__(url, **kw)
        self.instance_key = instance_key

    def describe(self) -> dict[str, Any]:
        return {"protocol": self.protocol, "url": safe_url(self.url)}

    def ready(self) -> bool | None:
        if not self.url.endswith(":predict") or "/v1/models/" not in self.url:
            return None  # Vertex endpoints have no status route
        try:
            r = self._request("GET", self.url[: -len(":predict")])
        except ResponseError:
            return False
        doc = _json(r, "The model status")
        states = [v.get("state") for v in doc.get("model_version_status", []) if isinstance(v, dict)]
        return "AVAILABLE" in states

    def infer(self, tensor: np.ndarray) -> np.ndarray:
        data = tensor.astype(np.float32) if tensor.dtype == np.float16 else tensor
        instances: Any = data if self.instance_key is None else [{self.instance_key: x} for x in data]
        r = self._request("POST", self.url, cap=self.infer_cap(len(tensor)),
                          data=orjson.dumps({"instances": instances}, option=_NUMPY),
                          headers={"Content-Type": "application/json"})
        doc = _json(r, "The prediction response")
        if not isinstance(doc, dict) or "predictions" not in doc:
            keys = sorted(doc)[:8] if isinstance(doc, dict) else type(doc).__name__
            raise ResponseError(f"The prediction response has no 'predictions' field; got {keys}.")
        preds = doc["predictions"]
        if preds and isinstance(preds[0], dict):  # named outputs: take the declared one, or the only one
            key = self.output_name or (next(iter(preds[0])) if len(preds[0]) == 1 else None)
            if key is None or key not in preds[0]:
                raise ResponseError(f"The 'predictions' objects have fields {sorted(preds[0])}; declare output.name.")
            preds = [p[key] for p in preds]
        try:
            return np.asarray(preds, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ResponseError(f"The response field 'predictions' is not a numeric array ({exc}).") from exc


__all__ = ["HttpTransport", "OipRestTransport", "TFServingTransport", "decode_oip_response"]
