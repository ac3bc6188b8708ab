"""The audit's store: one SQLite file per audit (``DIR/audit.sqlite``), written by one process only.

It holds what a resumed run needs to go on exactly where the last one stopped:

- ``meta``: the configuration the audit was started with (resuming with another one is refused),
  the salt of the case ids, the source, and the running totals (images sent, requests, retries);
- ``cases``: every case of the study in order, with its state (``pending``, ``done``, ``failed``),
  the reason of a failure and, once done, its record (target, P(target), R^2, flags, outputs);
- ``answers``: every answered image, keyed by the SHA-256 of exactly what was sent (the float32
  pixels after every transform, and their shape), with the model's probabilities as float64 bytes.
  A resumed run looks each image up before it sends anything, so an answer that was stored is never
  paid for twice. An answer and the totals it adds to are committed in one transaction.

The database runs in WAL mode, so ``audit summary`` can read it while ``audit run`` writes.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from blackbox_lime.audit.records import CaseRecord

STORE_NAME = "audit.sqlite"
SCHEMA_VERSION = 1
STATES = ("pending", "done", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cases (
    ord INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    image TEXT NOT NULL,
    mask TEXT,
    label TEXT,
    state TEXT NOT NULL DEFAULT 'pending',
    reason TEXT,
    record TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    updated REAL
);
CREATE TABLE IF NOT EXISTS answers (key BLOB PRIMARY KEY, probs BLOB NOT NULL, case_id TEXT) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS answers_case ON answers (case_id);
"""

_TOTALS = ("sent", "requests", "retries", "reused")


class StoreError(ValueError):
    """The audit folder holds no usable store, or one started with another configuration."""


@dataclass(frozen=True)
class Case:
    """One case of the study: ``image`` (and ``mask``) are paths as the source gave them."""

    ord: int
    id: str
    image: str
    mask: str | None = None
    label: str | None = None
    state: str = "pending"
    reason: str | None = None
    record: CaseRecord | None = None
    attempts: int = 0


def image_key(image: np.ndarray) -> bytes:
    """SHA-256 of what is sent: the float32 pixels (H, W, C) and their shape."""
    x = np.ascontiguousarray(image, dtype=np.float32)
    h = hashlib.sha256(repr(x.shape).encode())
    h.update(x.tobytes())
    return h.digest()


class AuditStore:
    """The SQLite store of one audit. ``create`` a new one, or ``open`` an existing one.

    Only the coordinator (the process running the audit) writes; readers open it with
    ``readonly=True``. Every write is its own committed transaction."""

    def __init__(self, path: str | Path, readonly: bool = False) -> None:
        self.path = Path(path)
        if readonly:
            uri = f"{self.path.resolve().as_uri()}?mode=ro"
            self.db = sqlite3.connect(uri, uri=True, timeout=30.0, isolation_level=None)
        else:
            self.db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")  # a committed answer survives a power cut too
            self.db.executescript(_SCHEMA)

    # -- life cycle -------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | Path, config: dict[str, Any], cases: Sequence[Case], extra: dict[str, Any]) -> AuditStore:
        """A new store holding the configuration, the cases (all pending) and ``extra`` meta values."""
        store = cls(path)
        with store.transaction():
            store._put("schema", SCHEMA_VERSION)
            store._put("config", config)
            store._put("created", time.time())
            for k, v in extra.items():
                store._put(k, v)
            for k in _TOTALS:
                store._put(k, 0)
            store.db.executemany("INSERT INTO cases (ord, id, image, mask, label) VALUES (?, ?, ?, ?, ?)",
                                 [(c.ord, c.id, c.image, c.mask, c.label) for c in cases])
        return store

    @classmethod
    def open(cls, path: str | Path, readonly: bool = False) -> AuditStore:
        p = Path(path)
        if not p.is_file():
            raise StoreError(f"{p.parent} holds no audit ({p.name} is missing). Start one with blackbox-lime audit run.")
        try:
            store = cls(p, readonly=readonly)
            version = store.get("schema")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{p} is not a readable audit store ({exc}).") from None
        if version != SCHEMA_VERSION:
            store.close()
            raise StoreError(f"{p} was written by another version of blackbox-lime (store schema {version}, this "
                             f"version reads {SCHEMA_VERSION}).")
        return store

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> AuditStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def transaction(self) -> sqlite3.Connection:
        """``with store.transaction():`` one committed transaction (rolled back on an exception)."""
        return _Transaction(self.db)  # type: ignore[return-value]

    # -- meta -------------------------------------------------------------------------------

    def _put(self, key: str, value: Any) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def put(self, key: str, value: Any) -> None:
        with self.transaction():
            self._put(key, value)

    def get(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    @property
    def config(self) -> dict[str, Any]:
        return self.get("config", {})

    def totals(self) -> dict[str, int]:
        return {k: int(self.get(k, 0)) for k in _TOTALS}

    # -- answers ----------------------------------------------------------------------------

    def lookup(self, keys: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        """The stored answers among ``keys``: key -> float64 (K,)."""
        found: dict[bytes, np.ndarray] = {}
        for i in range(0, len(keys), 500):  # SQLite's parameter limit
            part = list(keys[i:i + 500])
            marks = ",".join("?" * len(part))
            for key, blob in self.db.execute(f"SELECT key, probs FROM answers WHERE key IN ({marks})", part):
                found[bytes(key)] = np.frombuffer(blob, np.float64)
        return found

    def save_answers(self, keys: Sequence[bytes], probs: np.ndarray, sent: int, requests: int, retries: int,
                     case_id: str | None = None) -> None:
        """Store answers (probs float64 (n, K)) of a case and add to the totals, in one transaction."""
        probs = np.ascontiguousarray(probs, dtype=np.float64)
        with self.transaction():
            self.db.executemany("INSERT OR IGNORE INTO answers (key, probs, case_id) VALUES (?, ?, ?)",
                                [(k, p.tobytes(), case_id) for k, p in zip(keys, probs)])
            self._add(sent=sent, requests=requests, retries=retries)

    def answers_of(self, case_id: str) -> dict[bytes, np.ndarray]:
        """Every stored answer a case's queries received: what a worker resuming the case is given."""
        return {bytes(k): np.frombuffer(v, np.float64) for k, v in
                self.db.execute("SELECT key, probs FROM answers WHERE case_id = ?", (case_id,))}

    def count_reused(self, n: int) -> None:
        if n:
            with self.transaction():
                self._add(reused=n)

    def _add(self, **amounts: int) -> None:
        for k, v in amounts.items():
            self.db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + ? WHERE key = ?", (int(v), k))

    def n_answers(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM answers").fetchone()[0])

    # -- cases ------------------------------------------------------------------------------

    def cases(self, states: Iterable[str] | None = None) -> list[Case]:
        rows = self.db.execute("SELECT ord, id, image, mask, label, state, reason, record, attempts FROM cases "
                               "ORDER BY ord").fetchall()
        wanted = None if states is None else set(states)
        return [Case(o, i, im, m, lab, s, r, None if rec is None else CaseRecord.from_json(json.loads(rec)), a)
                for o, i, im, m, lab, s, r, rec, a in rows if wanted is None or s in wanted]

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in STATES}
        for state, n in self.db.execute("SELECT state, COUNT(*) FROM cases GROUP BY state"):
            out[state] = int(n)
        return out

    def start_case(self, case_id: str) -> None:
        with self.transaction():
            self.db.execute("UPDATE cases SET attempts = attempts + 1, updated = ? WHERE id = ?", (time.time(), case_id))

    def finish_case(self, case_id: str, record: CaseRecord) -> None:
        with self.transaction():
            self.db.execute("UPDATE cases SET state = 'done', reason = NULL, record = ?, updated = ? WHERE id = ?",
                            (json.dumps(record.to_json()), time.time(), case_id))

    def set_stow(self, case_id: str, outcome: dict[str, Any]) -> None:
        """Keep the outcome of storing a done case's maps to PACS in its record."""
        with self.transaction():
            row = self.db.execute("SELECT record FROM cases WHERE id = ?", (case_id,)).fetchone()
            if row is None or row[0] is None:
                raise StoreError(f"case {case_id} has no record to update")
            record = CaseRecord.from_json(json.loads(row[0]))
            record.stow = outcome
            self.db.execute("UPDATE cases SET record = ? WHERE id = ?", (json.dumps(record.to_json()), case_id))

    def fail_case(self, case_id: str, reason: str) -> None:
        with self.transaction():
            self.db.execute("UPDATE cases SET state = 'failed', reason = ?, record = NULL, updated = ? WHERE id = ?",
                            (reason, time.time(), case_id))


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")


def config_difference(stored: dict[str, Any], given: dict[str, Any]) -> str | None:
    """The first option whose value differs, as "--samples 500 (this command: 300)", or None."""
    for k in sorted(set(stored) | set(given)):
        if stored.get(k) != given.get(k):
            return f"{k} {_show(stored.get(k))} (this command: {_show(given.get(k))})"
    return None


def _show(v: Any) -> str:
    return "unset" if v is None else json.dumps(v) if not isinstance(v, str) else v
