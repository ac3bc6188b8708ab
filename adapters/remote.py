"""What every remote adapter shares, written once: retries, budget, rate limit, concurrency, redaction.

A remote protocol is a :class:`Transport` with one method that matters, ``infer(tensor) -> output``
for one batch (as httpx's ``BaseTransport.handle_request``). The policy lives in
:class:`RemoteAdapter`:

- batches are sent on a bounded thread pool (``concurrency``); results come back in input order;
- transient failures (connection errors, timeouts, 429/502/503/504 and the gRPC equivalents) are
  retried by tenacity with jittered exponential backoff; a server's Retry-After is honoured, capped
  at ``retry_after_cap``; other errors are raised at once and quote the server;
- an optional client-side rate limit (requests per second) spaces request starts;
- the hard query budget is checked before every send, retries included, so the endpoint is never
  asked for more images than the user allowed;
- every secret (tokens) is removed from every error message and log line.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import random
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import numpy as np
import tenacity

from .base import ClassifierAdapter, ModelInfo
from .errors import AdapterError, ConfigError, ModelLoadError, PayloadTooLarge, ServerError
from .preprocess import OIP_DTYPES, TensorSpec

log = logging.getLogger(__name__)

REDACTED = "[REDACTED]"


class Redactor:
    """Replaces every known secret in a text with ``[REDACTED]``, also as it appears escaped: repr() and JSON
    (``\\r\\n``), percent-encoded, and each of its lines alone."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        forms: set[str] = set()
        for s in secrets:
            if not s:
                continue
            forms.update({s, repr(s)[1:-1], json.dumps(s)[1:-1], quote(s, safe=""),
                          s.encode("unicode_escape").decode("ascii")})
            forms.update(line.strip() for line in s.splitlines())
        self.secrets = sorted((f for f in forms if len(f) >= 4), key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for s in self.secrets:
            text = text.replace(s, REDACTED)
        return text


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_endpoint_url(url: str, allow_insecure: bool = False) -> Any:
    """Parse an endpoint URL and apply the safety rules; returns the urlsplit result.

    Credentials in the URL are refused (they would end up in logs and reports), and plain
    ``http://`` / ``grpc://`` to a host that is not loopback is refused unless ``allow_insecure``,
    because patient pixels would cross the network in clear.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https", "grpc", "grpcs"):
        shown = f"{parts.scheme}://" if parts.scheme else repr(url[:60])
        raise ConfigError(f"Unsupported endpoint scheme {shown}; "
                          "use http(s):// for REST or grpc(s):// for gRPC.")
    if not parts.hostname:
        raise ConfigError(f"The endpoint URL {safe_url(url)} names no host.")
    try:
        parts.port
    except ValueError:
        port = parts.netloc.rsplit(":", 1)[-1]
        raise ConfigError(f"The endpoint URL's port {port!r} is not a port number (1-65535). Check the URL.") from None
    if parts.username or parts.password:
        raise ConfigError("The endpoint URL carries credentials; remove them and put the token in the profile's "
                          "[auth] section (token_env or token_file).")
    if parts.scheme in ("http", "grpc") and not allow_insecure and not is_loopback(parts.hostname):
        secure = "https" if parts.scheme == "http" else "grpcs"
        raise ConfigError(
            f"Refusing plain {parts.scheme}:// to {parts.hostname}: patient pixels would cross the network "
            f"unencrypted. Use {secure}://, or pass --allow-insecure-http (allow_insecure_http = true in the "
            "profile) if this network is trusted.")
    return parts


def safe_url(url: str) -> str:
    """The URL without credentials, query or fragment: what may appear in logs and reports."""
    p = urlsplit(url)
    host = p.hostname or ""
    if p.port:
        host = f"{host}:{p.port}"
    return f"{p.scheme}://{host}{p.path}"


@dataclass(frozen=True)
class RemotePolicy:
    """Timeouts, retries and throughput limits of a remote adapter (seconds unless named otherwise).

    Parameters
    ----------
    timeout : read timeout of one request.
    connect_timeout : time allowed to open a connection.
    retry_deadline : how long one request may keep being retried, waits included, from its first attempt. A
        server that restarts within it is waited for; the answers are the same as without the restart.
    max_attempts : at most this many tries per request, the first included (None: as many as the deadline
        allows; 1 disables retries).
    backoff, backoff_max : exponential backoff with full jitter: wait ~ U(0, min(backoff_max, backoff * 2**k)).
    retry_after_cap : the longest wait a server's Retry-After may impose.
    concurrency : requests in flight at once.
    rate : client-side limit in requests per second (None: no limit).
    """

    timeout: float = 60.0
    connect_timeout: float = 10.0
    retry_deadline: float = 60.0
    max_attempts: int | None = None
    backoff: float = 0.5
    backoff_max: float = 20.0
    retry_after_cap: float = 60.0
    concurrency: int = 1
    rate: float | None = None

    def __post_init__(self) -> None:
        for name in ("timeout", "connect_timeout", "backoff_max", "retry_after_cap", "retry_deadline"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
                raise ConfigError(f"The '{name}' setting must be a number of seconds > 0. Got {v!r} instead.")
        if not isinstance(self.backoff, (int, float)) or self.backoff < 0:
            raise ConfigError(f"The 'backoff' setting must be a number of seconds >= 0. Got {self.backoff!r} instead.")
        for name in ("max_attempts", "concurrency"):
            v = getattr(self, name)
            if name == "max_attempts" and v is None:
                continue
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"The '{name}' setting must be an integer >= 1. Got {v!r} instead.")
        if self.rate is not None and (not isinstance(self.rate, (int, float)) or not self.rate > 0):
            raise ConfigError(f"The 'rate' setting must be None or requests per second > 0. Got {self.rate!r} instead.")


@dataclass(frozen=True)
class EndpointMeta:
    """Tensor metadata an endpoint reports (Open Inference Protocol model metadata)."""

    name: str
    input_name: str
    input_shape: tuple[int, ...]  # -1 for dynamic dimensions
    input_datatype: str
    output_name: str | None = None
    output_shape: tuple[int, ...] | None = None
    versions: tuple[str, ...] = ()
    platform: str = ""
    raw: dict[str, Any] = field(default_factory=dict)


class Transport(ABC):
    """One remote protocol. ``infer`` sends one batch; it raises :class:`AdapterError` subclasses
    with ``retryable`` set right, and never retries by itself."""

    protocol: str = ""
    input_name: str = "input"
    input_datatype: str = "FP32"
    output_name: str | None = None
    output_datatype: str = "FP32"  # of the last answer: FP16 and BF16 round the probabilities
    values_per_image: int = 2  # the classes or findings per image: an answer's legitimate size

    @property
    def output_field(self) -> str:
        """The response field that holds the probabilities, for error messages (OIP naming)."""
        return f"outputs[{self.output_name!r}]" if self.output_name else "outputs[0]"

    def configure(self, input_name: str | None, input_datatype: str, output_name: str | None) -> None:
        """Called once by the adapter with the tensor names and datatype it settled on."""
        self.input_name, self.input_datatype, self.output_name = input_name or "input", input_datatype, output_name

    def metadata(self) -> EndpointMeta | None:
        """The endpoint's tensor metadata, or None where the protocol has none."""
        return None

    def ready(self) -> bool | None:
        """Whether the model is ready to serve, or None where the protocol cannot tell."""
        return None

    @abstractmethod
    def infer(self, tensor: np.ndarray) -> np.ndarray:
        """tensor: the encoded batch (n, ...) -> the raw output (n, K), (n, 1) or (n,)."""

    def describe(self) -> dict[str, Any]:
        """Non-secret facts for reports (protocol, URL without credentials, model)."""
        return {"protocol": self.protocol}

    def close(self) -> None:
        pass


class RateLimiter:
    """Spaces request starts at least 1/rate seconds apart, across threads."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.interval = 1.0 / rate
        self.clock, self.sleep = clock, sleep
        self._next = -float("inf")
        self._lock = threading.Lock()

    def acquire(self) -> None:
        with self._lock:
            now = self.clock()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            self.sleep(start - now)


class RemoteAdapter(ClassifierAdapter):
    """A classifier behind an endpoint, reached through a :class:`Transport`.

    Input size, channels, layout, dtype and tensor names are read from the endpoint's metadata where the
    protocol has it; each one declared here (the profile) wins, field by field, and the metadata fills in
    the rest. Where the two differ, ``info.extra["metadata_overridden"]`` says so. Empty metadata (KServe's
    default) with a profile that declares the input works.

    Parameters
    ----------
    transport : the protocol (OIP REST, TF-Serving JSON, OIP gRPC).
    input_size, channels, layout, dtype, mean, std, output : the model's preprocessing and output
        semantics (see :class:`~blackbox_lime.adapters.preprocess.TensorSpec`).
    input_name, output_name : tensor names, where the endpoint's metadata does not give them.
    class_names, abnormal_index : default ("normal", "abnormal") and the last class.
    max_batch : images per request.
    budget : hard limit on images sent over the adapter's life, retries included.
    policy : :class:`RemotePolicy` (timeouts, retries, concurrency, rate).
    secrets : strings to redact from every message (the adapter's tokens).
    sleep, clock, seed : injectable for tests; ``seed`` seeds the backoff jitter. The default (None) seeds it from
        the operating system, so processes that retry together (audit workers after a server restart) spread out
        instead of retrying in step. Jitter changes only when a retry is sent, never an answer.
    """

    computes_locally = False

    def __init__(self, transport: Transport, *, input_size: Sequence[int] | None = None, channels: int | None = None,
                 layout: str | None = None, dtype: str | None = None, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, output: str = "probabilities",
                 class_names: Sequence[str] | None = None, abnormal_index: int | None = None,
                 max_batch: int = 32, budget: int | None = None, policy: RemotePolicy | None = None,
                 input_name: str | None = None, output_name: str | None = None,
                 secrets: Iterable[str] = (), name: str | None = None,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
                 seed: int | None = None, discover: bool = True) -> None:
        super().__init__(max_batch=max_batch, budget=budget)
        self.transport = transport
        self.policy = policy or RemotePolicy()
        self.redact = Redactor(secrets)
        self._sleep = sleep
        self._jitter = random.Random(seed)
        self._jitter_lock = threading.Lock()
        self._limiter = RateLimiter(self.policy.rate, clock, sleep) if self.policy.rate else None
        self._pool: ThreadPoolExecutor | None = None
        meta = self._guard(lambda: self._retrying()(transport.metadata)) if discover else None
        self.meta = meta
        if meta is not None and not meta.input_name and input_name is None:
            raise ConfigError("The endpoint's model metadata lists no inputs (KServe serves empty metadata by default). "
                              "Declare the input in the profile: [input] name, size = [height, width], and channels, "
                              "layout and dtype where they are not 3, NCHW and float32.")
        overridden: dict[str, list[Any]] = {}
        size, ch, lay, dt = self._resolve_input(meta, input_size, channels, layout, dtype, overridden)
        if meta is not None and input_name is not None and meta.input_name and meta.input_name != input_name:
            overridden["input_name"] = [meta.input_name, input_name]
        if meta is not None and output_name is not None and meta.output_name and meta.output_name != output_name:
            overridden["output_name"] = [meta.output_name, output_name]
        if overridden:
            log.info("The profile overrides the endpoint's metadata: %s", ", ".join(
                f"{k} {v[0]!r} -> {v[1]!r}" for k, v in overridden.items()))
        self.spec = TensorSpec(layout=lay, dtype=dt, mean=None if mean is None else tuple(mean),
                               std=None if std is None else tuple(std), output=output)
        names = tuple(class_names or ("normal", "abnormal"))
        ab = len(names) - 1 if abnormal_index is None else abnormal_index
        transport.configure(input_name or (meta.input_name if meta else None), self.spec.oip_datatype,
                            output_name or (meta.output_name if meta else None))
        transport.values_per_image = len(names)  # what an answer can legitimately hold (HTTP response caps)
        label = name or (meta.name if meta else None) or transport.describe().get("model") or transport.protocol
        self._info = ModelInfo(size, ch, names, ab, str(label),
                               {**transport.describe(), "layout": lay, "dtype": dt, "output": output,
                                "max_batch": max_batch, "concurrency": self.policy.concurrency,
                                **({"metadata_overridden": overridden} if overridden else {})})

    # -- metadata ------------------------------------------------------------------------------

    @staticmethod
    def _resolve_input(meta: EndpointMeta | None, input_size: Sequence[int] | None, channels: int | None,
                       layout: str | None, dtype: str | None, overridden: dict[str, list[Any]]
                       ) -> tuple[tuple[int, int], int, str, str]:
        """Size, channels, layout, dtype: each declared value wins; the metadata fills in the rest (and
        ``overridden`` records where a declared value differs from it)."""
        shape = list(meta.input_shape) if meta and meta.input_shape else None
        if shape is not None and len(shape) == 3:  # some servers omit the batch dimension
            shape = [-1] + shape
        if shape is not None and len(shape) != 4:
            if input_size is None:
                raise ModelLoadError(f"The endpoint's input {meta.input_name!r} has shape {meta.input_shape}; "  # type: ignore[union-attr]
                                     "expected 4 dimensions (N, C, H, W) or (N, H, W, C). Declare the input in the "
                                     "profile ([input] size, channels, layout).")
            overridden["input_shape"] = [list(meta.input_shape), None]  # type: ignore[union-attr]
            shape = None
        if layout is None:
            if shape is not None and shape[3] in (1, 3) and shape[1] not in (1, 3):
                layout = "NHWC"
            else:
                layout = "NCHW"
        if shape is not None:
            c_dim, h_dim, w_dim = (shape[1], shape[2], shape[3]) if layout == "NCHW" else (shape[3], shape[1], shape[2])
        else:
            c_dim = h_dim = w_dim = -1
        if input_size is None:
            if h_dim > 0 and w_dim > 0:
                input_size = (h_dim, w_dim)
            else:
                raise ConfigError("The endpoint does not report its input size; declare it (input.size = [height, width] "
                                  "in the profile).")
        if len(input_size) != 2:
            raise ConfigError(f"input size must be [height, width]. Got {list(input_size)!r} instead.")
        size = (int(input_size[0]), int(input_size[1]))
        if h_dim > 0 and w_dim > 0 and (h_dim, w_dim) != size:
            overridden["input_size"] = [[h_dim, w_dim], list(size)]
        if channels is None:
            channels = c_dim if c_dim > 0 else 3
        elif c_dim > 0 and c_dim != channels:
            overridden["channels"] = [c_dim, channels]
        known = meta is not None and bool(meta.input_datatype)
        if dtype is None:
            if known and meta.input_datatype not in OIP_DTYPES:  # type: ignore[union-attr]
                raise ModelLoadError(f"The endpoint's input datatype {meta.input_datatype!r} is not an image tensor type; "  # type: ignore[union-attr]
                                     f"supported: {', '.join(OIP_DTYPES)}. Declare input.dtype in the profile.")
            dtype = OIP_DTYPES[meta.input_datatype] if known else "float32"  # type: ignore[union-attr]
        elif known and OIP_DTYPES.get(meta.input_datatype) not in (None, dtype):  # type: ignore[union-attr]
            overridden["dtype"] = [OIP_DTYPES[meta.input_datatype], dtype]  # type: ignore[union-attr]
        return size, int(channels), layout, dtype

    @property
    def info(self) -> ModelInfo:
        return self._info

    def ready(self) -> bool | None:
        return self._guard(lambda: self._retrying()(self.transport.ready))

    # -- the policy ------------------------------------------------------------------------------

    def _guard(self, fn: Callable[[], Any]) -> Any:
        """Call the transport; redact secrets from any adapter error on the way out."""
        try:
            return fn()
        except AdapterError as exc:
            exc.args = tuple(self.redact(a) if isinstance(a, str) else a for a in exc.args)
            raise

    def _wait(self, state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        after = getattr(exc, "retry_after", None)
        if after is not None:
            return float(min(max(after, 0.0), self.policy.retry_after_cap))
        ceiling = min(self.policy.backoff_max, self.policy.backoff * 2 ** (state.attempt_number - 1))
        with self._jitter_lock:
            return self._jitter.uniform(0.0, ceiling)

    def _before_sleep(self, state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.info("%s Retry %d in %.2fs (retry deadline %gs).", self.redact(str(exc)), state.attempt_number,
                 state.next_action.sleep if state.next_action else 0.0, self.policy.retry_deadline)

    def _predict_batch(self, images: np.ndarray) -> np.ndarray:
        """One attempt, without the policy (retries, budget and counters are in ``_send``)."""
        return self.spec.decode(self.transport.infer(self.spec.encode(images)), images.shape[0], self._output_where())

    def _stop(self, state: tenacity.RetryCallState) -> bool:
        """Stop when the next try would start past the retry deadline (the waits so far, or the time since the
        first try if longer, plus the coming wait), or after max_attempts."""
        if self.policy.max_attempts is not None and state.attempt_number >= self.policy.max_attempts:
            return True
        spent = max(state.seconds_since_start or 0.0, state.idle_for)
        return spent + (state.upcoming_sleep or 0.0) > self.policy.retry_deadline

    def _retrying(self) -> tenacity.Retrying:
        return tenacity.Retrying(
            stop=self._stop,
            wait=self._wait,
            retry=tenacity.retry_if_exception(lambda e: isinstance(e, AdapterError) and e.retryable),
            sleep=self._sleep, before_sleep=self._before_sleep, reraise=True)

    def _send(self, batch: np.ndarray) -> np.ndarray:
        attempts, t0 = 0, time.monotonic()

        def attempt() -> np.ndarray:
            nonlocal attempts
            attempts += 1
            if attempts > 1:
                with self._count_lock:
                    self.retries += 1
            self._count(batch.shape[0])  # the budget is checked before every send, retries included
            if self._limiter is not None:
                self._limiter.acquire()
            return self._predict_batch(batch)

        try:
            return self._guard(lambda: self._retrying()(attempt))
        except AdapterError as exc:
            if exc.retryable and attempts > 1:
                at_max = attempts == self.policy.max_attempts
                limit = (f"max_attempts {self.policy.max_attempts}" if at_max
                         else f"the retry deadline of {self.policy.retry_deadline:g} s")
                exc.args = (f"{exc.args[0]} (gave up after {attempts} attempts in {time.monotonic() - t0:.1f} s, at "
                            f"{limit}; the endpoint may be down or overloaded: try again later, or raise "
                            f"{'limits.max_attempts' if at_max else 'limits.retry_deadline_s'})",) + exc.args[1:]
            elif exc.retryable and self.policy.max_attempts == 1:
                exc.args = (f"{exc.args[0]} (retries are off: max_attempts 1)",) + exc.args[1:]
            raise

    def _run_one(self, batch: np.ndarray) -> np.ndarray:
        """One request; when the server refuses it for its size, the same images in requests of half the size
        (down to one image), and every later request at most that size. The answers are unchanged."""
        size = self.request_size
        if len(batch) > size:  # another request learnt a smaller size while this one waited
            return np.concatenate([self._run_one(batch[i:i + size]) for i in range(0, len(batch), size)])
        try:
            return super()._run_one(batch)
        except PayloadTooLarge as exc:
            n = len(batch)
            if n == 1:
                raise PayloadTooLarge(f"{exc.args[0]}. Even one image per request is too large: raise the server's or "
                                      "the proxy's body limit (gRPC: or this client's limits.max_message_mb), or send "
                                      "a smaller input dtype (the profile's input.dtype).", status=exc.status) from None
            half = (n + 1) // 2
            with self._count_lock:
                self.refused_for_size += 1
                shrunk = half < self.request_size
                self.request_size = min(self.request_size, half)
            if shrunk:
                log.info("The endpoint refused %d images per request for their size; sending %d per request "
                         "from now on.", n, half)
            return self._run_one(batch)

    def _output_where(self) -> str:
        return f"The endpoint (response field {self.transport.output_field})"

    def _sum_tolerance(self) -> float:
        # K values each rounded to half a unit in the last place: 2^-9 relative for BF16, 2^-12 for FP16
        k = len(self.info.class_names)
        eps = {"BF16": 2.0 ** -9, "FP16": 2.0 ** -12}.get(self.transport.output_datatype, 0.0)
        return max(1e-3, k * eps)

    def _run_batches(self, chunks: list[np.ndarray]) -> list[np.ndarray]:
        if self.policy.concurrency == 1 or len(chunks) == 1:
            return [self._run_one(c) for c in chunks]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.policy.concurrency, thread_name_prefix="blackbox-lime-remote")
        futures: list[Future[np.ndarray]] = [self._pool.submit(self._run_one, c) for c in chunks]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            for f in futures:  # let requests in flight finish, so the counters are final
                if not f.cancelled():
                    f.exception()
            raise

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self.transport.close()


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delay-seconds or an HTTP-date (RFC 9110)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def quote_body(body: bytes | str, limit: int = 300) -> str:
    """A server's error body, decoded, on one line, truncated: safe to put in an error message."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "... (truncated)"


def server_error(where: str, status: int, reason: str, body: bytes | str, retry_after: float | None = None) -> ServerError:
    hint = {400: "the request was refused as malformed: check the profile's input section (size, layout, dtype, names)",
            401: "the endpoint wants credentials: set the profile's [auth] token_env or token_file",
            403: "the token is not allowed to use this model",
            404: "no such model or version at this URL: check the model name, version and path",
            422: "the server could not process the tensor: check the profile's input section"}.get(status)
    if status in ServerError.RETRY_STATUSES:
        hint = "a transient server condition"
    msg = f"{where} answered HTTP {status}{' ' + reason if reason else ''}: {quote_body(body) or '(empty body)'}"
    if status == 413 or (status == 400 and _TOO_LARGE.search(quote_body(body))):
        return PayloadTooLarge(msg + " (the request is too large for the server or a proxy before it)", status=status)
    if status == 501:
        hint = "the server does not implement this route"
    if hint:
        msg += f" ({hint})"
    return ServerError(msg, status=status, retry_after=retry_after)


# A 400 that is about the request's size (some proxies and servers answer 400, not 413).
_TOO_LARGE = re.compile(r"too large|too big|body limit|size limit|exceeds? (the )?(max|limit)|larger than max", re.I)
