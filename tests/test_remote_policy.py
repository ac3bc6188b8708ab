"""The shared remote policy (retries, Retry-After, budget, concurrency, rate, redaction) on a fake transport."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from blackbox_lime.adapters import (
    AdapterTimeout,
    BudgetExhausted,
    ConfigError,
    ConnectionFailed,
    PayloadTooLarge,
    ResponseError,
    ServerError,
)
from blackbox_lime.adapters.remote import (
    EndpointMeta,
    RateLimiter,
    RemoteAdapter,
    RemotePolicy,
    Transport,
    check_endpoint_url,
    parse_retry_after,
    safe_url,
)


class ScriptedTransport(Transport):
    """Answers P(abnormal) = the first pixel of each image, after failing as scripted."""

    protocol = "fake"

    def __init__(self, script: list[BaseException | None] | None = None, delay: float = 0.0) -> None:
        self.script = list(script or [])
        self.sent: list[int] = []
        self.delay = delay
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0

    def metadata(self) -> EndpointMeta:
        return EndpointMeta("fake", "image", (-1, 3, 4, 4), "FP32", "probs", (-1, 2))

    def infer(self, tensor: np.ndarray) -> np.ndarray:
        with self.lock:
            self.sent.append(tensor.shape[0])
            step = self.script.pop(0) if self.script else None
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                time.sleep(self.delay)
            if step is not None:
                raise step
            p = tensor[:, 0, 0, 0].astype(np.float64)
            return np.stack([1 - p, p], axis=1)
        finally:
            with self.lock:
                self.in_flight -= 1


def make(transport: Transport, sleeps: list[float] | None = None, **kw: object) -> RemoteAdapter:
    rec = sleeps if sleeps is not None else []
    return RemoteAdapter(transport, sleep=rec.append, **kw)  # type: ignore[arg-type]


def images(n: int) -> np.ndarray:
    x = np.zeros((n, 4, 4, 3), np.float32)
    x[:, 0, 0, 0] = np.linspace(0.05, 0.95, n)
    return x


def test_metadata_fills_size_channels_and_layout() -> None:
    a = make(ScriptedTransport())
    assert a.info.input_size == (4, 4) and a.info.channels == 3
    assert a.spec.layout == "NCHW" and a.spec.dtype == "float32"


def test_the_profile_wins_over_metadata_field_by_field_and_says_where() -> None:
    a = make(ScriptedTransport(), input_size=(8, 8), channels=1, dtype="float16", input_name="pixels")
    assert a.info.input_size == (8, 8) and a.info.channels == 1 and a.spec.dtype == "float16"
    assert a.info.extra["metadata_overridden"] == {"input_size": [[4, 4], [8, 8]], "channels": [3, 1],
                                                   "dtype": ["float32", "float16"], "input_name": ["image", "pixels"]}
    assert a.transport.input_name == "pixels" and a.spec.layout == "NCHW"  # the layout still from the metadata
    assert "metadata_overridden" not in make(ScriptedTransport()).info.extra


class EmptyMetadata(ScriptedTransport):
    """KServe's default: a model metadata document with no inputs or outputs."""

    def metadata(self) -> EndpointMeta:
        return EndpointMeta("fake", "", (), "")


def test_empty_metadata_needs_the_input_declared_and_then_works() -> None:
    with pytest.raises(ConfigError, match=r"The endpoint's model metadata lists no inputs \(KServe serves empty "
                                          r"metadata by default\)\. Declare the input in the profile: \[input\] name, "
                                          r"size = \[height, width\]"):
        make(EmptyMetadata())
    a = make(EmptyMetadata(), input_name="image", input_size=(4, 4))
    assert a.info.input_size == (4, 4) and a.info.channels == 3 and a.spec.dtype == "float32"
    assert np.allclose(a.predict(images(3))[:, 1], images(3)[:, 0, 0, 0], atol=1e-7)


class SizeLimited(ScriptedTransport):
    """Refuses requests of more than ``limit`` images for their size (as a proxy's body limit would)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def infer(self, tensor: np.ndarray) -> np.ndarray:
        if tensor.shape[0] > self.limit:
            with self.lock:
                self.sent.append(-tensor.shape[0])
            raise PayloadTooLarge("HTTP 413 Request Entity Too Large", status=413)
        return super().infer(tensor)


def test_a_size_refusal_halves_the_request_keeps_the_answers_and_the_smaller_size() -> None:
    t = SizeLimited(limit=5)
    a = make(t, max_batch=16)
    x = images(16)
    p = a.predict(x)
    assert np.allclose(p[:, 1], x[:, 0, 0, 0], atol=1e-7)  # the same answers, in order
    assert t.sent == [-16, -8, 4, 4, 4, 4]  # 16 refused, 8 refused, then four requests of 4
    assert a.request_size == 4
    t.sent.clear()
    a.predict(images(9))  # later requests start at the size that worked
    assert t.sent == [4, 4, 1]
    c = a.counters()
    assert c["refused_for_size"] == 2 and c["request_size"] == 4 and c["max_batch"] == 16
    assert c["images_asked"] == 25 and c["queries"] == 16 + 8 + 16 + 9  # refused images were sent: they count


def test_one_image_too_large_is_an_error_that_names_the_fix() -> None:
    with pytest.raises(PayloadTooLarge, match=r"Even one image per request is too large: raise the server's or the "
                                              r"proxy's body limit \(gRPC: or this client's limits\.max_message_mb\), or "
                                              r"send a smaller input dtype"):
        make(SizeLimited(limit=0), max_batch=4).predict(images(4))


def test_retries_run_until_the_deadline_not_a_fixed_count() -> None:
    """A server down for a while: with waits of the full-jitter backoff summing past the deadline, the adapter
    stops; within the deadline it keeps trying (more than the old 5 attempts)."""
    t = ScriptedTransport([ConnectionFailed("refused")] * 9)
    sleeps: list[float] = []
    a = make(t, sleeps, policy=RemotePolicy(backoff=0.5, backoff_max=4.0, retry_deadline=60.0), seed=1)
    assert np.allclose(a.predict(images(2))[:, 1], images(2)[:, 0, 0, 0], atol=1e-7)
    assert len(sleeps) == 9 and a.retries == 9 and sum(sleeps) <= 60.0
    t = ScriptedTransport([ConnectionFailed("refused")] * 1000)
    sleeps = []
    with pytest.raises(ConnectionFailed, match=r"refused \(gave up after \d+ attempts in [\d.]+ s, at the retry deadline "
                                               r"of 10 s; the endpoint may be down"):
        make(t, sleeps, policy=RemotePolicy(backoff=0.5, backoff_max=4.0, retry_deadline=10.0), seed=1).predict(images(1))
    assert sum(sleeps) <= 10.0 and len(sleeps) >= 4
    assert all(0.0 <= w <= min(4.0, 0.5 * 2 ** k) for k, w in enumerate(sleeps))  # full jitter, capped


def test_transient_failures_are_retried_then_succeed() -> None:
    t = ScriptedTransport([ServerError("503", status=503), ConnectionFailed("reset"), AdapterTimeout("slow")])
    sleeps: list[float] = []
    a = make(t, sleeps, max_batch=8)
    p = a.predict(images(8))
    assert np.allclose(p[:, 1], images(8)[:, 0, 0, 0], atol=1e-7)
    assert t.sent == [8, 8, 8, 8] and len(sleeps) == 3
    assert a.counters() == {"queries": 32, "images_asked": 8, "requests": 4, "retries": 3, "refused_for_size": 0,
                            "request_size": a.max_batch, "max_batch": a.max_batch}


def test_backoff_is_jittered_exponential_and_seeded() -> None:
    def run(seed: int | None) -> list[float]:
        sleeps: list[float] = []
        t = ScriptedTransport([ServerError("503", status=503)] * 4)
        make(t, sleeps, policy=RemotePolicy(backoff=1.0, backoff_max=3.0, max_attempts=5), seed=seed).predict(images(1))
        return sleeps

    s = run(7)
    assert len(s) == 4 and s == run(7)  # same seed, same waits
    for k, w in enumerate(s):
        assert 0.0 <= w <= min(3.0, 2.0 ** k)
    # unseeded (the default): two adapters, as two audit workers, do not retry in step
    assert run(None) != run(None)


def test_retry_after_is_honoured_and_capped() -> None:
    sleeps: list[float] = []
    t = ScriptedTransport([ServerError("429", status=429, retry_after=2.0), ServerError("429", status=429, retry_after=500.0)])
    make(t, sleeps, policy=RemotePolicy(retry_after_cap=30.0)).predict(images(1))
    assert sleeps == [2.0, 30.0]


def test_permanent_errors_are_not_retried() -> None:
    t = ScriptedTransport([ServerError("bad request", status=400)])
    a = make(t)
    with pytest.raises(ServerError, match="bad request"):
        a.predict(images(2))
    assert t.sent == [2] and a.retries == 0


def test_giving_up_says_how_many_attempts() -> None:
    t = ScriptedTransport([ServerError("HTTP 503", status=503)] * 10)
    with pytest.raises(ServerError, match=r"HTTP 503 \(gave up after 3 attempts in [\d.]+ s, at max_attempts 3; the endpoint "
                                          r"may be down or overloaded: try again later, or raise limits\.max_attempts\)"):
        make(t, policy=RemotePolicy(max_attempts=3)).predict(images(1))
    assert len(t.sent) == 3


def test_budget_is_checked_before_every_send_retries_included() -> None:
    t = ScriptedTransport([ServerError("503", status=503)] * 3)
    a = make(t, max_batch=4, budget=10)
    with pytest.raises(BudgetExhausted, match=r"Query budget exhausted: 8 of 10 queries used, and the next call needs 4\."):
        a.predict(images(4))
    assert t.sent == [4, 4]  # the third attempt would have exceeded the budget and was not sent
    assert a.queries == 8


def test_budget_refuses_a_call_that_cannot_fit_before_sending_anything() -> None:
    t = ScriptedTransport()
    a = make(t, max_batch=4, budget=10)
    a.predict(images(8))
    with pytest.raises(BudgetExhausted, match=r"8 of 10 queries used, and the next call needs 3"):
        a.predict(images(3))
    assert t.sent == [4, 4]


def test_concurrency_is_bounded_and_results_keep_their_order() -> None:
    t = ScriptedTransport(delay=0.02)
    a = make(t, max_batch=2, policy=RemotePolicy(concurrency=3))
    x = images(20)
    p = a.predict(x)
    a.close()
    assert np.allclose(p[:, 1], x[:, 0, 0, 0], atol=1e-7)
    assert t.max_in_flight == 3 and a.requests == 10


def test_a_permanent_failure_under_concurrency_raises_and_stops() -> None:
    t = ScriptedTransport([None, ServerError("nope", status=404)], delay=0.01)
    a = make(t, max_batch=1, policy=RemotePolicy(concurrency=2))
    with pytest.raises(ServerError, match="nope"):
        a.predict(images(40))
    a.close()
    assert len(t.sent) < 40  # the pending batches were cancelled


def test_rate_limiter_spaces_request_starts() -> None:
    now = [100.0]
    waits: list[float] = []

    def sleep(s: float) -> None:
        waits.append(round(s, 9))
        now[0] += s

    lim = RateLimiter(4.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(4):
        lim.acquire()
    assert waits == [0.25, 0.25, 0.25]


def test_secrets_are_redacted_from_errors() -> None:
    token = "tok-CANARY-0123456789"
    t = ScriptedTransport([ServerError(f"HTTP 401: bad token Bearer {token}", status=401)])
    with pytest.raises(ServerError) as e:
        make(t, secrets=[token]).predict(images(1))
    assert token not in str(e.value) and "[REDACTED]" in str(e.value)


def test_non_finite_probabilities_name_the_response_field() -> None:
    class NaNs(ScriptedTransport):
        output_field = "outputs[0]"

        def infer(self, tensor: np.ndarray) -> np.ndarray:
            return np.full((tensor.shape[0], 2), np.nan)

    with pytest.raises(ResponseError, match=r"The endpoint \(response field outputs\[0\]\) returned NaN"):
        make(NaNs()).predict(images(1))


@pytest.mark.parametrize("url, message", [
    ("http://10.0.0.7:8080/v2/models/m", "Refusing plain http:// to 10.0.0.7: patient pixels would cross the network unencrypted"),
    ("grpc://models.example:8001/m", "Refusing plain grpc:// to models.example"),
    ("https://user:secret@models.example/v2/models/m", "The endpoint URL carries credentials"),
    ("ftp://models.example/m", "Unsupported endpoint scheme ftp://"),
])
def test_unsafe_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_endpoint_url(url)


def test_loopback_and_explicit_opt_in_allow_plain_http() -> None:
    check_endpoint_url("http://127.0.0.1:8080/v2/models/m")
    check_endpoint_url("http://localhost:8080/v2/models/m")
    check_endpoint_url("http://[::1]:8080/v2/models/m")
    check_endpoint_url("http://10.0.0.7:8080/v2/models/m", allow_insecure=True)


def test_safe_url_drops_credentials_and_query() -> None:
    assert safe_url("https://u:p@host:8443/v2/models/m?key=abc#x") == "https://host:8443/v2/models/m"


def test_retry_after_parsing() -> None:
    from email.utils import formatdate

    assert parse_retry_after("7") == 7.0
    now = 1_800_000_000.0
    assert parse_retry_after(formatdate(now + 120, usegmt=True), now=now) == pytest.approx(120.0)
    assert parse_retry_after(formatdate(now - 5, usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


@pytest.mark.parametrize("kw, message", [
    ({"concurrency": 0}, "The 'concurrency' setting must be an integer >= 1. Got 0 instead."),
    ({"timeout": -1}, "The 'timeout' setting must be a number of seconds > 0. Got -1 instead."),
    ({"rate": 0}, "The 'rate' setting must be None or requests per second > 0. Got 0 instead."),
])
def test_policy_validation(kw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        RemotePolicy(**kw)
