"""The adapter exception tree.

Every failure to reach or understand a classifier is an :class:`AdapterError`, so callers catch one
type. Backend exceptions (onnxruntime, requests, grpc) are mapped onto it with ``raise ... from``::

    AdapterError
    ├── ModelLoadError        the model cannot be loaded or its declared shape is wrong
    ├── AdapterTimeout        a request took longer than its timeout (after retries)
    ├── ConnectionFailed      the endpoint cannot be reached (after retries)
    ├── ResponseError         the answer is not what the contract promises (bad JSON, shape, NaN, range)
    │   └── ServerError       the server answered with an error status (quotes its body)
    │       └── PayloadTooLarge   the request was refused for its size (413, RESOURCE_EXHAUSTED "larger than max")
    ├── BudgetExhausted       sending the next batch would exceed the hard query budget
    └── ConfigError           an endpoint profile or URL cannot be used as given (names the field)

``retryable`` says whether the remote adapters' retry policy may send the request again: timeouts,
unreachable endpoints and the statuses 429/502/503/504 (or their gRPC equivalents) are transient;
everything else is permanent and is raised at once, except :class:`PayloadTooLarge`, after which the
images go again in requests half the size.
"""

from __future__ import annotations


class AdapterError(Exception):
    """Base class for every error raised by an adapter."""

    retryable: bool = False


class ModelLoadError(AdapterError):
    """The model file or endpoint metadata cannot be used as a classifier."""


class AdapterTimeout(AdapterError):
    """A request to the classifier timed out."""

    retryable = True


class ConnectionFailed(AdapterError):
    """The classifier endpoint could not be reached (retryable unless ``retryable=False``, e.g. TLS)."""

    def __init__(self, message: str, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class ResponseError(AdapterError):
    """The classifier answered, but not with valid class probabilities."""


class ServerError(ResponseError):
    """The server answered with an error status."""

    RETRY_STATUSES = frozenset({429, 502, 503, 504})

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None,
                 retryable: bool | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after  # seconds the server asked us to wait, if it said
        self.retryable = status in self.RETRY_STATUSES if retryable is None else retryable


class PayloadTooLarge(ServerError):
    """The server (or a proxy before it) refused a request for its size. Sending it again cannot help;
    the remote adapters send the same images in smaller requests instead."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message, status=status, retryable=False)


class BudgetExhausted(AdapterError):
    """The hard query budget would be exceeded."""

    def __init__(self, message: str, used: int, budget: int) -> None:
        super().__init__(message)
        self.used = used
        self.budget = budget


class ConfigError(AdapterError):
    """An endpoint profile, URL or option cannot be used as given."""
