"""lbtrain/adapters/firestore_txn.py on the Firestore emulator: a transaction begun by its first read is
still a transaction (concurrent increments all count, a failing function writes nothing), and the
fallback through the client's own `@transactional` behaves the same."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from google.cloud import firestore

from lbtrain.adapters import firestore_txn
from lbtrain.errors import Busy
from tests.conftest import fresh_id


@pytest.fixture(params=["begun-by-read", "classic"])
def db(request, emulator_hosts, monkeypatch):
    if request.param == "classic":
        monkeypatch.setattr(firestore_txn, "_parse_batch_get", None)
    return firestore.Client(project=fresh_id("txn"))


def increment(db: firestore.Client, ref) -> int:  # noqa: ANN001
    def fn(t) -> int:  # noqa: ANN001
        (snap,) = t.get_all([ref])
        n = (snap.get("n") if snap.exists else 0) + 1
        t.set(ref, {"n": n})
        return n

    return firestore_txn.run(db, fn)


def test_concurrent_increments_all_count(db):
    ref = db.collection("counters").document(fresh_id("c"))
    results: list[int] = []
    busy = 0
    with ThreadPoolExecutor(max_workers=8) as pool:
        for future in [pool.submit(increment, db, ref) for _ in range(40)]:
            try:
                results.append(future.result())
            except Busy:
                busy += 1  # contention that outlasted the attempts: the caller answers 503, nothing counted
    assert ref.get().get("n") == len(results) == 40 - busy
    assert sorted(results) == list(range(1, len(results) + 1))  # each increment saw the one before


def test_a_failing_function_writes_nothing(db):
    ref = db.collection("docs").document(fresh_id("d"))

    def fn(t) -> None:  # noqa: ANN001
        t.get_all([ref])
        t.set(ref, {"x": 1})
        raise RuntimeError("refused")

    with pytest.raises(RuntimeError, match="refused"):
        firestore_txn.run(db, fn)
    assert not ref.get().exists


def test_writes_without_a_read_commit_together(db):
    a, b = (db.collection("docs").document(fresh_id("d")) for _ in range(2))
    assert firestore_txn.run(db, lambda t: (t.set(a, {"x": 1}), t.create(b, {"y": 2}), "done")[-1]) == "done"
    assert a.get().get("x") == 1 and b.get().get("y") == 2
