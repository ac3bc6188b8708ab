"""Adapters: the only way blackbox_lime reaches a classifier.

``ClassifierAdapter.predict(images) -> probs`` is the whole protocol; see :mod:`blackbox_lime.adapters.base`.
"""

from .base import ClassifierAdapter, ModelInfo
from .errors import (
    AdapterError,
    AdapterTimeout,
    BudgetExhausted,
    ConfigError,
    ConnectionFailed,
    ModelLoadError,
    PayloadTooLarge,
    ResponseError,
    ServerError,
)

__all__ = [
    "AdapterError", "AdapterTimeout", "BudgetExhausted", "ClassifierAdapter", "ConfigError", "ConnectionFailed", "ModelInfo",
    "ModelLoadError", "PayloadTooLarge", "ResponseError", "ServerError", "is_url", "load_adapter", "plan_limits",
]


def is_url(model: object) -> bool:
    """Whether a ``--model`` value names an endpoint (a URL such as https://host/v2/models/m) rather than a local file."""
    return model is not None and "://" in str(model)


def load_adapter(model: str | None = None, *, endpoint: str | None = None, allow_insecure_http: bool = False,
                 budget: int | None = None, max_batch: int | None = None, concurrency: int | None = None,
                 output_kind: str | None = None, **kwargs: object) -> ClassifierAdapter:
    """An adapter for a classifier.

    Parameters
    ----------
    model : a local ``.onnx`` file, or an endpoint URL: ``http(s)://host:port/v2/models/NAME[/versions/V]``
        (Open Inference Protocol REST), ``http(s)://.../v1/models/NAME:predict`` (TF-Serving / Vertex JSON)
        or ``grpc(s)://host:port/NAME[/V]`` (Open Inference Protocol gRPC).
    endpoint : an endpoint profile (TOML); see :mod:`blackbox_lime.adapters.profile`. Overrides ``model``.
    allow_insecure_http : permit plain http:// or grpc:// to a host that is not loopback.
    budget, max_batch, concurrency : override the profile's limits.
    output_kind : what the output means, overriding the model's metadata or the profile's ``[output] kind``:
        "probabilities", "logits", "multilabel" or "multilabel_logits".
    kwargs : options of the local ONNX adapter (device, threads, preprocessing).
    """
    from pathlib import Path

    if endpoint is not None or is_url(model):
        from .profile import EndpointProfile

        if endpoint is not None:
            prof = EndpointProfile.from_toml(endpoint, allow_insecure_http)
        else:
            prof = EndpointProfile.from_url(str(model), allow_insecure_http=allow_insecure_http)
        if output_kind is not None:
            prof.output = {**prof.output, "kind": output_kind}
        return prof.build(budget=budget, max_batch=max_batch, concurrency=concurrency,
                          allow_insecure_http=allow_insecure_http)
    if model is None:
        raise ValueError("Name a model: a local .onnx file, an endpoint URL, or an endpoint profile.")
    from .onnx import OnnxAdapter

    extra: dict[str, object] = {"budget": budget} if budget is not None else {}
    if output_kind is not None:
        extra["output"] = output_kind
    if max_batch is not None:
        extra["max_batch"] = max_batch
    return OnnxAdapter(Path(model), **extra, **kwargs)  # type: ignore[arg-type]


def plan_limits(model: str | None = None, *, endpoint: str | None = None, allow_insecure_http: bool = False,
                budget: int | None = None, max_batch: int | None = None) -> dict[str, object]:
    """What a query plan needs to know of the classifier, without sending anything to it: images per request
    (``max_batch``; 1 for a vendor file API), the ``budget`` and the ``price_per_1k_images`` (None where unset).
    An endpoint's come from its profile (or URL) and the command line; a local model's from its file."""
    if endpoint is not None or is_url(model):
        from .profile import EndpointProfile

        prof = (EndpointProfile.from_toml(endpoint, allow_insecure_http) if endpoint is not None
                else EndpointProfile.from_url(str(model), allow_insecure_http=allow_insecure_http))
        return prof.plan_limits(max_batch, budget)
    if model is None:
        raise ValueError("Name a model: a local .onnx file, an endpoint URL, or an endpoint profile.")
    from pathlib import Path
    from typing import Any

    from .onnx import OnnxAdapter

    kw: dict[str, Any] = {"max_batch": max_batch} if max_batch is not None else {}
    with OnnxAdapter(Path(model), **kw) as local:
        return {"max_batch": local.max_batch, "budget": budget, "price_per_1k_images": None}
