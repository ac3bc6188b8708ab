"""Audits on a Dask cluster: cases run on workers, one coordinator writes the store.

    audit run STUDY --model URL --out DIR --workers 4                  # a LocalCluster on this machine
    audit run STUDY --model URL --out DIR --scheduler tcp://host:8786  # an existing cluster

Who does what:

- The **coordinator** (the ``audit run`` process) is the only writer. It submits pending cases to the
  cluster (a few more than there are workers), and as each returns it stores the case's answers, writes
  its files atomically and marks it done, exactly as the serial runner does.
- A **worker** runs :func:`~blackbox_lime.audit.runner.explain_case` (a pure function of the image, the
  configuration and the seed, plus the adapter) with an adapter it builds once per process from the
  settings. Its queries go through a :class:`~blackbox_lime.audit.answers.StoredAdapter` over the answers
  the coordinator gave it (a resumed case's stored answers) and the answers it receives, which it returns
  as they come, on a ``distributed.Queue`` that the coordinator drains into the store every 50 ms.
- The endpoint's limits are shared by every worker: requests in flight through a
  ``distributed.Semaphore`` (``--concurrency`` leases, one per request), and the audit-wide budget
  through a counter on the scheduler (a ``distributed.Variable`` under a ``distributed.Lock``), set from
  the store when the run starts, so the total never exceeds ``--budget``.

Maps are identical to the serial run's. When the coordinator dies, what was in flight and what the
queue held but the store had not yet taken (about the last 50 ms of answers) is sent again on resume;
every answer that reached the store is never sent again.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from blackbox_lime.adapters.errors import AdapterError, BudgetExhausted
from blackbox_lime.audit.answers import StoredAdapter, budget_spent
from blackbox_lime.audit.runner import RunResult, _without_names, explain_case
from blackbox_lime.audit.store import AuditStore, Case
from blackbox_lime.config import ExplainConfig
from blackbox_lime.image_io import ImageError
from blackbox_lime.outputs import write_all

log = logging.getLogger(__name__)


class ClusterError(ValueError):
    """A Dask scheduler address or its TLS settings cannot be used as given (the message says how to fix it)."""


_TLS_HOWTO = ("Start the scheduler and workers with TLS (dask scheduler --protocol tls --tls-ca-file CA --tls-cert "
              "CERT --tls-key KEY, and the same options for dask worker) and pass tls://HOST:PORT with --dask-tls-ca, "
              "--dask-tls-cert and --dask-tls-key (or Dask's distributed.comm.tls configuration); see docs/audit.md.")


def cluster_security(address: str | None, ca: str | None = None, cert: str | None = None,
                     key: str | None = None) -> Any:
    """The Dask ``Security`` of an audit's cluster.

    A LocalCluster (``address`` None) always speaks TLS with a temporary certificate made for this run, so no other
    process on this machine can join it or run code on its workers. An existing scheduler must be ``tls://`` with a
    CA, a client certificate and its key (these options, or Dask's own configuration); plain ``tcp://`` is accepted
    only on loopback. Workers receive pixels and return Parametric Maps that carry patient fields, and whoever can
    reach a plain scheduler can run code on them (``Client.run``).
    """
    from distributed.comm import parse_address, parse_host_port
    from distributed.security import Security

    given = [ca, cert, key]
    if any(given) and not all(given):
        raise ClusterError("--dask-tls-ca, --dask-tls-cert and --dask-tls-key go together: the CA that signed the "
                           "cluster's certificates, and this client's certificate and key.")
    if address is None:
        return Security.temporary()
    try:
        scheme, loc = parse_address(address)
        host, _ = parse_host_port(loc)
    except (ValueError, TypeError):
        raise ClusterError(f"--scheduler {address!r} is not a Dask address; use tls://HOST:PORT (or tcp://127.0.0.1:"
                           "PORT on this machine).") from None
    if scheme == "tls":
        sec = Security(tls_ca_file=ca, tls_client_cert=cert, tls_client_key=key, require_encryption=True) \
            if all(given) else Security()  # Security() reads distributed.comm.tls.* from Dask's configuration
        if not (getattr(sec, "tls_ca_file", None) and getattr(sec, "tls_client_cert", None)):
            raise ClusterError(f"--scheduler {address} speaks TLS but no certificates are set. {_TLS_HOWTO}")
        return sec
    from blackbox_lime.adapters.remote import is_loopback

    if scheme == "tcp" and is_loopback(host):
        return None
    raise ClusterError(f"Refusing the Dask scheduler {address}: over plain {scheme}:// to another host, the workers "
                       "would receive patient pixels and send back Parametric Maps with patient fields in clear, and "
                       f"anyone who can reach the scheduler could run code on them. {_TLS_HOWTO}")


def connect(address: str | None, security: Any, workers: int | None, quiet: int) -> tuple[Any, Any]:
    """(client, cluster or None): a TLS LocalCluster of ``workers`` processes, or the scheduler at ``address``.
    Anything that is not a Dask scheduler answering there (a web server, a closed port) is a ClusterError."""
    from distributed import Client, LocalCluster

    cluster = None
    try:
        if address is None:
            # the scheduler's HTTP server on a free loopback port: never 8787 taken by another cluster (Dask warns
            # then, --quiet or not), never on every interface
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                                   dashboard_address="127.0.0.1:0", silence_logs=quiet, security=security)
            return Client(cluster, security=security), cluster
        return Client(address, timeout=20, security=security), None
    except Exception as exc:  # a peer that does not speak Dask ends in any error (a MemoryError from its bytes)
        if cluster is not None:
            cluster.close()
        what = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
        raise ClusterError(f"Cannot reach the Dask scheduler {address or 'LocalCluster'}: {what}. Start it (dask "
                           "scheduler / dask worker), check the address and its TLS settings; nothing was written.") \
            from None


@dataclass(frozen=True)
class WorkerSettings:
    """Everything a worker needs to rebuild the adapter and the explainer (plain values: it is pickled)."""

    model: str | None
    endpoint: str | None
    max_batch: int | None
    output_kind: str | None
    allow_insecure_http: bool
    device: str
    config: ExplainConfig
    mae: str | None
    bank: str | None
    seed: int
    target: int | list[int] | str | None  # as for Explainer.explain
    threshold: float
    frame: int | None
    salt: str
    root: str
    budget: int | None
    concurrency: int
    max_pixels: int = 100_000_000
    burned_in: str = "warn"
    prefix: str = field(default_factory=lambda: f"blackbox-lime-{uuid.uuid4().hex[:12]}")


_STATE: dict[str, tuple[Any, Any]] = {}  # per worker process and run (prefix): the adapter and the explainer


def _worker_state(s: WorkerSettings) -> tuple[Any, Any]:
    if s.prefix not in _STATE:
        from blackbox_lime.adapters import is_url, load_adapter
        from blackbox_lime.explainer import Explainer
        from blackbox_lime.image_io import silence_dicom_libraries

        silence_dicom_libraries()  # a worker's stderr is the coordinator's (LocalCluster) or a log: no patient name

        kw: dict[str, Any] = {}
        if s.endpoint is None and not is_url(s.model):
            kw["device"] = s.device
        adapter = load_adapter(None if s.endpoint else s.model, endpoint=s.endpoint, max_batch=s.max_batch,
                               concurrency=1, output_kind=s.output_kind, allow_insecure_http=s.allow_insecure_http, **kw)
        explainer = Explainer(adapter, s.config, mae_path=s.mae, device=s.device, bank=s.bank)
        _STATE[s.prefix] = (adapter, explainer)
    return _STATE[s.prefix]


class WorkerAnswers:
    """The answer source of a worker: the answers it was given, those it receives (each slice's are put on a
    queue the coordinator drains into the store as they come), and the shared budget."""

    def __init__(self, known: dict[bytes, np.ndarray], prefix: str, case_id: str) -> None:
        self.known = dict(known)
        self.prefix, self.case_id = prefix, case_id
        self._queue: Any = None

    def lookup(self, keys: list[bytes]) -> dict[bytes, np.ndarray]:
        return {k: self.known[k] for k in keys if k in self.known}

    def save_answers(self, keys: list[bytes], probs: np.ndarray, sent: int, requests: int, retries: int,
                     case_id: str | None = None) -> None:
        from distributed import Queue

        probs = np.ascontiguousarray(probs, dtype=np.float64)
        for k, p in zip(keys, probs):
            self.known[k] = p
        if self._queue is None:
            self._queue = Queue(f"{self.prefix}-answers")
        self._queue.put({"case": self.case_id, "keys": list(keys), "probs": [p.tobytes() for p in probs],
                         "sent": sent, "requests": requests, "retries": retries})

    def count_reused(self, n: int) -> None:
        pass

    def used(self) -> int:
        """Images sent so far by the whole audit (every worker, every run)."""
        from distributed import Variable

        return int(Variable(f"{self.prefix}-sent").get())

    def reserve(self, n: int, budget: int) -> None:
        """Count n images against the audit's budget, atomically across the cluster; raise when it is spent."""
        from distributed import Lock, Variable

        with Lock(f"{self.prefix}-budget"):
            used = int(Variable(f"{self.prefix}-sent").get())
            if used + n > budget:
                raise budget_spent(used, budget, n)
            Variable(f"{self.prefix}-sent").set(used + n)


_GATES: dict[str, Any] = {}


def _gate(prefix: str, leases: int) -> Callable[[], Any]:
    def gate() -> Any:
        if prefix not in _GATES:
            from distributed import Semaphore

            _GATES[prefix] = Semaphore(max_leases=leases, name=f"{prefix}-inflight")
        return _GATES[prefix]
    return gate


def work_case(case: Case, s: WorkerSettings, known: dict[bytes, bytes]) -> dict[str, Any]:
    """Run one case on a worker. Returns its status ("done", "failed", "budget"), its files and record when
    done, the reason otherwise. Its answers went to the coordinator's queue as they came."""
    adapter, explainer = _worker_state(s)
    answers = WorkerAnswers({k: np.frombuffer(v, np.float64) for k, v in known.items()}, s.prefix, case.id)
    stored = StoredAdapter(adapter, answers, s.budget, gate=_gate(s.prefix, s.concurrency))
    stored.in_flight = adapter.max_batch  # one request per slice: one lease of the shared limit each
    explainer.adapter = stored
    out: dict[str, Any] = {"id": case.id}
    try:
        outcome = explain_case(case, Path(s.root), explainer, stored, seed=s.seed, target=s.target, frame=s.frame,
                               salt=s.salt, threshold=s.threshold, max_pixels=s.max_pixels, burned_in=s.burned_in)
        out.update(status="done", files=outcome.files, record=outcome.record)
    except BudgetExhausted as exc:
        out.update(status="budget", reason=str(exc))
    except (ImageError, ValueError, AdapterError) as exc:
        reason = f"{type(exc).__name__}: {exc}" if isinstance(exc, AdapterError) else str(exc)
        out.update(status="failed", reason=_without_names(reason, case, Path(s.root)))
    finally:
        explainer.adapter = adapter
    out.update(reused=stored.reused)
    return out


def run_on_cluster(client: Any, out_dir: Path, store: AuditStore, s: WorkerSettings,
                   progress: Callable[[Case, str], None] | None = None, poll_s: float = 0.05) -> RunResult:
    """The coordinator: submit the pending and failed cases, store the answers the workers put on the queue
    as they come (every ``poll_s``), and write each case as it returns."""
    from distributed import Queue, Variable

    (out_dir / "cases").mkdir(exist_ok=True)
    Variable(f"{s.prefix}-sent", client=client).set(store.totals()["sent"])
    answers = Queue(f"{s.prefix}-answers", client=client)
    todo = iter(store.cases(states=("pending", "failed")))
    window = 2 * max(1, len(client.scheduler_info().get("workers", {})))
    running: set[Any] = set()
    cases: dict[str, Case] = {}
    stopped, explained, failures = None, 0, []

    def submit_next() -> None:
        case = next(todo, None)
        if case is None:
            return
        store.start_case(case.id)
        cases[case.id] = case
        known = {k: v.tobytes() for k, v in store.answers_of(case.id).items()} if case.attempts else {}
        running.add(client.submit(work_case, case, s, known, pure=False, key=f"{s.prefix}-{case.id}"))

    def drain() -> None:
        for item in answers.get(batch=True):
            probs = [np.frombuffer(v, np.float64) for v in item["probs"]]  # none where a slice failed
            store.save_answers(item["keys"], np.stack(probs) if probs else np.zeros((0, 0)),
                               item["sent"], item["requests"], item["retries"], item["case"])

    for _ in range(window):
        submit_next()
    while running:
        done = [f for f in running if f.done()]
        if not done:
            time.sleep(poll_s)
        drain()  # before a case is written: its answers are all on the queue once its future is done
        running -= set(done)
        for future in done:
            res = future.result()
            case = cases[res["id"]]
            store.count_reused(res["reused"])
            if res["status"] == "done":
                write_all({out_dir / name: data for name, data in res["files"].items()})
                store.finish_case(case.id, res["record"])
                explained += 1
            elif res["status"] == "failed":
                store.fail_case(case.id, res["reason"])
                failures.append((case.id, res["reason"]))
            else:
                stopped = res["reason"]
            if progress:
                progress(case, res["status"])
            if stopped is None:
                submit_next()
    drain()
    counts = store.counts()
    return RunResult(counts["done"], counts["failed"], counts["pending"], stopped, explained, failures)
