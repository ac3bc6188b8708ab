"""Exactly-once queries: an adapter that answers from the audit's store first and sends only the rest.

    stored = StoredAdapter(adapter, store, budget=10_000)
    explainer = Explainer(stored, config)      # the explainer cannot tell the difference

Each image is keyed by the SHA-256 of what is sent (:func:`~blackbox_lime.audit.store.image_key`).
Images whose answer is stored are answered from the store; the others are sent through the wrapped
adapter in slices of ``max_batch x concurrency`` images (what is in flight at once), and each slice's
answers are committed before the next is sent. A ``kill -9`` therefore loses at most the slice in
flight. Identical images within one call are sent once.

The audit's budget counts images actually sent over the whole audit, across resumes; answers from
the store cost nothing. ``queries`` counts the images the explainer asked about (sent or stored), so
an explanation's record is the same whether or not it was resumed; ``sent`` and ``reused`` say how
many were paid for in this process and how many came from the store.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable, ContextManager

import numpy as np

from blackbox_lime.adapters.base import ClassifierAdapter, ModelInfo
from blackbox_lime.adapters.errors import BudgetExhausted
from blackbox_lime.audit.store import AuditStore, image_key


class StoredAdapter(ClassifierAdapter):
    """Wraps ``adapter``; answers from ``store`` where it can. ``budget``: images sent over the whole audit."""

    def __init__(self, adapter: ClassifierAdapter, store: "AuditStore | Any", budget: int | None = None,
                 gate: Callable[[], ContextManager[Any]] | None = None) -> None:
        super().__init__(max_batch=adapter.max_batch, budget=None)
        self.inner = adapter
        self.store = store  # an AuditStore, or on a worker the answers it was given (audit/cluster.py)
        self.audit_budget = budget
        self.gate = gate  # around each slice sent: a cluster-wide limit on requests in flight
        policy = getattr(adapter, "policy", None)
        self.in_flight = adapter.max_batch * int(getattr(policy, "concurrency", 1) or 1)
        self.case_id: str | None = None  # the case being explained: its answers are stored under it
        self.sent = 0  # images sent by this process
        self.reused = 0  # images answered from the store by this process
        self._used: int | None = None  # the audit's images sent, as the coordinator's budget check counts them

    @property
    def info(self) -> ModelInfo:
        return self.inner.info

    @property
    def computes_locally(self) -> bool:  # type: ignore[override]
        return self.inner.computes_locally

    def _predict_batch(self, images: np.ndarray) -> np.ndarray:  # pragma: no cover - predict is overridden
        raise NotImplementedError

    def predict(self, images: np.ndarray) -> np.ndarray:
        images = self._check_images(images)
        n = images.shape[0]
        out = np.zeros((n, len(self.info.class_names)))
        if n == 0:
            return out
        keys = [image_key(x) for x in images]
        found = self.store.lookup(list(dict.fromkeys(keys)))
        first: dict[bytes, int] = {}  # one row per distinct unanswered image
        for i, k in enumerate(keys):
            if k not in found and k not in first:
                first[k] = i
        missing = list(first.items())
        for s in range(0, len(missing), self.in_flight):
            part = missing[s:s + self.in_flight]
            self._check_audit_budget(len(part))
            q0, r0, t0 = self.inner.queries, self.inner.requests, self.inner.retries
            shared = self.audit_budget is None or hasattr(self.store, "reserve")
            self._used = None if shared else self.store.totals()["sent"]  # read here: SQLite stays on this thread
            self.inner.charge = self._charge  # every image put on the wire counts, retries and failures included
            try:
                with (self.gate() if self.gate is not None else nullcontext()):
                    probs = self.inner.predict(images[[i for _, i in part]])
            except BaseException:
                self._settle([], np.zeros((0, 0)), q0, r0, t0)
                raise
            finally:
                self.inner.charge = None
            self._settle([k for k, _ in part], probs, q0, r0, t0)
            found.update({k: p for (k, _), p in zip(part, probs)})
        reused = n - len(missing)
        self.store.count_reused(reused)
        self.reused += reused
        self.queries += n
        self.images_asked += n
        for i, k in enumerate(keys):
            out[i] = found[k]
        return out

    def counters(self) -> dict[str, int]:
        """This wrapper's counts, with the endpoint's refusals for size and request size."""
        own, inner = super().counters(), self.inner.counters()
        return {**own, "refused_for_size": inner["refused_for_size"], "request_size": inner["request_size"]}

    def _settle(self, keys: list[bytes], probs: np.ndarray, q0: int, r0: int, t0: int) -> None:
        """Store a slice's answers (none where it failed) with what it really put on the wire."""
        sent, requests, retries = self.inner.queries - q0, self.inner.requests - r0, self.inner.retries - t0
        self.store.save_answers(keys, probs, sent, requests, retries, self.case_id)
        self.sent += sent
        self.requests += requests
        self.retries += retries

    def _charge(self, n: int) -> None:
        """Before every send of n images (the inner adapter's retries included): refuse it past the audit's budget.
        Shared stores (Dask workers) count it at once across processes; the coordinator's own store takes it
        with the slice's answers, or without them when the slice fails."""
        if self.audit_budget is None:
            return
        reserve = getattr(self.store, "reserve", None)
        if reserve is not None:
            reserve(n, self.audit_budget)
            return
        assert self._used is not None  # set on the caller's thread before the slice is sent
        if self._used + n > self.audit_budget:
            raise budget_spent(self._used, self.audit_budget, n)
        self._used += n

    def _check_audit_budget(self, n: int) -> None:
        """Refuse a slice at once where the budget cannot take it (nothing is sent)."""
        if self.audit_budget is None:
            return
        used = self.store.used() if hasattr(self.store, "used") else self.store.totals()["sent"]
        if used + n > self.audit_budget:
            raise budget_spent(used, self.audit_budget, n)

    def ready(self) -> bool | None:
        ready = getattr(self.inner, "ready", None)
        return None if ready is None else ready()

    def close(self) -> None:
        self.inner.close()


def budget_spent(used: int, budget: int, n: int) -> BudgetExhausted:
    return BudgetExhausted(
        f"The audit's budget is spent: {used} of {budget} images sent, and the next request needs {n}. Run the same "
        "command with a larger --budget to go on; nothing answered is sent again.", used=used, budget=budget)
