"""The adapter exception tree.

Every failure to reach or understand a classifier is an :class:`AdapterError`, so callers catch one
type. Backend exceptions (onnxruntime, requests, grpc) are mapped onto it with ``raise ... from``::

    AdapterError
    ├── ModelLoadError        the model cannot be loaded or its declared shape is wrong
    ├── AdapterTimeout        a request took longer than its timeout (after retries)
    ├── ConnectionFailed      the endpoint cannot be reached (after retries)
    ├── ResponseError         the answer is not what the contract promises (bad JSON, shape, NaN, range)
    │   └── ServerError       the server answered with an error status (quotes its body)
    └── BudgetExhausted       sending the next batch would exceed the hard query budget
"""

from __future__ import annotations


class AdapterError(Exception):
    """Base class for every error raised by an adapter."""


class ModelLoadError(AdapterError):
    """The model file or endpoint metadata cannot be used as a classifier."""


class AdapterTimeout(AdapterError):
    """A request to the classifier timed out."""


class ConnectionFailed(AdapterError):
    """The classifier endpoint could not be reached."""


class ResponseError(AdapterError):
    """The classifier answered, but not with valid class probabilities."""


class ServerError(ResponseError):
    """The server answered with an error status."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class BudgetExhausted(AdapterError):
    """The hard query budget would be exceeded."""

    def __init__(self, message: str, used: int, budget: int) -> None:
        super().__init__(message)
        self.used = used
        self.budget = budget
