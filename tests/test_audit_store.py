"""The audit store and the exactly-once adapter: hash keys, resume, budgets across resumes, refusals."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from blackbox_lime.adapters.base import ClassifierAdapter, ModelInfo
from blackbox_lime.adapters.errors import BudgetExhausted, ServerError
from blackbox_lime.audit.answers import StoredAdapter
from blackbox_lime.audit.store import AuditStore, Case, StoreError, config_difference, image_key
from blackbox_lime.audit.records import CaseRecord, FindingRecord


class Counting(ClassifierAdapter):
    """P(abnormal) = mean pixel; records every image it is sent; can fail on a given call."""

    def __init__(self, max_batch: int = 4, fail_on_call: int | None = None) -> None:
        super().__init__(max_batch=max_batch)
        self.seen: list[bytes] = []
        self.calls = 0
        self.fail_on_call = fail_on_call

    @property
    def info(self) -> ModelInfo:
        return ModelInfo((8, 8), 1, ("normal", "abnormal"), 1, "counting")

    def _predict_batch(self, images: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.fail_on_call == self.calls:
            raise ServerError("HTTP 500 from the test", status=500)
        self.seen += [image_key(x) for x in images]
        p = images.reshape(len(images), -1).mean(axis=1)
        return np.stack([1 - p, p], axis=1)


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (n, 8, 8, 1)).astype(np.float32)


@pytest.fixture()
def store(tmp_path):
    s = AuditStore.create(tmp_path / "audit.sqlite", {"--samples": 500}, [Case(0, "a", "a.png")], {"salt": "x"})
    yield s
    s.close()


def test_image_key_depends_on_every_pixel_and_the_shape():
    x = _images(1)[0]
    y = x.copy()
    y[3, 4, 0] = np.nextafter(y[3, 4, 0], 2)  # one ulp of one pixel
    assert image_key(x) == image_key(x.copy())
    assert image_key(x) != image_key(y)
    assert image_key(x) != image_key(x.reshape(4, 16, 1))
    assert len(image_key(x)) == 32


def test_stored_answers_are_never_sent_again_and_match_the_model(store):
    inner = Counting()
    a = StoredAdapter(inner, store)
    x = _images(10)
    first = a.predict(x)
    assert len(inner.seen) == 10 and a.sent == 10 and a.reused == 0
    again = a.predict(np.concatenate([x[:6], _images(2, seed=1)]))
    assert len(inner.seen) == 12  # only the two new images were sent
    np.testing.assert_array_equal(again[:6], first[:6])
    np.testing.assert_allclose(first[:, 1], x.reshape(10, -1).mean(axis=1), rtol=1e-6)
    assert store.totals() == {"sent": 12, "requests": 4, "retries": 0, "reused": 6}
    assert a.queries == 18  # what the explainer asked about, whatever it cost


def test_identical_images_in_one_call_are_sent_once(store):
    inner = Counting()
    x = _images(3)
    out = StoredAdapter(inner, store).predict(np.concatenate([x, x, x[:1]]))
    assert len(inner.seen) == 3
    np.testing.assert_array_equal(out[:3], out[3:6])


def test_a_new_process_resumes_from_the_answers_the_last_one_stored(tmp_path):
    path = tmp_path / "audit.sqlite"
    AuditStore.create(path, {}, [], {}).close()
    x = _images(20)
    with AuditStore.open(path) as s:
        inner = Counting(max_batch=4, fail_on_call=4)  # the 4th request dies: 3 slices of 4 were answered
        a = StoredAdapter(inner, s)
        a.in_flight = 4
        with pytest.raises(ServerError):
            a.predict(x)
        assert s.n_answers() == 12
    with AuditStore.open(path) as s:  # "after the crash"
        inner = Counting()
        StoredAdapter(inner, s).predict(x)
        assert len(inner.seen) == 8  # only what was never answered
        assert s.totals()["sent"] == 24  # the failed request's 4 images went on the wire too: they count


def test_the_audit_budget_spans_resumes_and_stops_before_sending(tmp_path):
    path = tmp_path / "audit.sqlite"
    AuditStore.create(path, {}, [], {}).close()
    with AuditStore.open(path) as s:
        StoredAdapter(Counting(), s, budget=10).predict(_images(8))
    with AuditStore.open(path) as s:
        inner = Counting()
        a = StoredAdapter(inner, s, budget=10)
        with pytest.raises(BudgetExhausted, match=r"The audit's budget is spent: 8 of 10 images sent, and the next "
                                                  r"request needs 4\. Run the same command with a larger --budget"):
            a.predict(_images(4, seed=3))
        assert inner.seen == []
        a.predict(_images(8))  # answered from the store: costs nothing
        assert s.totals()["sent"] == 8
        StoredAdapter(inner, s, budget=12).predict(_images(4, seed=3))
        assert s.totals()["sent"] == 12


def test_config_difference_names_the_first_differing_option():
    assert config_difference({"--samples": 500, "--seed": 0}, {"--samples": 500, "--seed": 0}) is None
    assert config_difference({"--samples": 500, "--seed": 0}, {"--samples": 300, "--seed": 0}) == \
        "--samples 500 (this command: 300)"
    assert config_difference({"--fill": "auto"}, {"--fill": "mean"}) == "--fill auto (this command: mean)"
    assert config_difference({"--bank": None}, {"--bank": "ab12"}) == "--bank unset (this command: ab12)"


def test_cases_keep_their_order_state_and_record(store):
    store.start_case("a")
    store.fail_case("a", "unreadable")
    assert store.cases()[0].state == "failed" and store.cases()[0].reason == "unreadable"
    record = CaseRecord("a", "1", [FindingRecord("abnormal", 1, 0.9, 0.5, 0.4, 0.3, ["low_fidelity"], {"border": 0.1},
                                                 ["Low fidelity: ..."], ["low_fidelity"])], "mae", 500, 500, 0, 0)
    store.finish_case("a", record)
    c = store.cases()[0]
    assert (c.state, c.reason, c.record, c.attempts) == ("done", None, record, 1)
    assert store.counts() == {"pending": 0, "done": 1, "failed": 0}
    store.set_stow("a", {"state": "stored", "instances": 1})
    assert store.cases()[0].record.stow == {"state": "stored", "instances": 1}  # type: ignore[union-attr]


def test_records_of_older_stores_still_read():
    """A record written before coded warnings, reuse counts and stow (and with a key this version does not know)
    reads with defaults, and writes back every key it had."""
    old = {"id": "case-1", "label": "1", "fill": "mean", "queries": 500, "sent": 500, "outputs": ["cases/case-1.json"],
           "input_sha256": "ab", "findings": [{"finding": "abnormal", "target": 1, "target_prob": 0.8, "r2": 0.4,
                                                "r2_heldout": 0.2, "r2_evidence": 0.1, "flags": [], "shares": {},
                                                "warnings": [], "patch_weights": [[0.0]]}], "legacy": 7}
    rec = CaseRecord.from_json(old)
    assert rec.reused is None and rec.stow is None and rec.findings[0].warning_codes is None
    assert rec.findings[0].outputs == [] and rec.extra == {"legacy": 7}
    back = rec.to_json()
    assert {k: v for k, v in back.items() if k not in ("reused", "retries", "mask_sha256", "seconds")} == \
        {**old, "findings": [{**old["findings"][0], "outputs": []}]}


def test_opening_a_missing_or_foreign_store_says_so(tmp_path):
    with pytest.raises(StoreError, match=r"holds no audit \(audit\.sqlite is missing\)\. Start one with "
                                         r"blackbox-lime audit run"):
        AuditStore.open(tmp_path / "audit.sqlite")
    (tmp_path / "junk.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError, match="is not a readable audit store"):
        AuditStore.open(tmp_path / "junk.sqlite")
    db = sqlite3.connect(tmp_path / "other.sqlite")
    db.executescript("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT); INSERT INTO meta VALUES ('schema', '99');")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match=r"another version of blackbox-lime \(store schema 99"):
        AuditStore.open(tmp_path / "other.sqlite")


def test_a_reader_sees_a_writers_commits_while_it_writes(tmp_path):
    path = tmp_path / "audit.sqlite"
    with AuditStore.create(path, {}, [Case(0, "a", "a.png")], {}) as w, AuditStore.open(path, readonly=True) as r:
        StoredAdapter(Counting(), w).predict(_images(3))
        assert r.totals()["sent"] == 3
        with pytest.raises(sqlite3.OperationalError):
            r.put("x", 1)  # a reader cannot write
