"""A read-write transaction that begins with its first read, one round trip less than
google-cloud-firestore's `@transactional` (BeginTransaction, then the reads, then Commit).

Firestore lets `BatchGetDocuments` start the transaction itself (`new_transaction`); the transaction's id
comes back with the first document. Everything else is as with `@transactional`: reads lock what they
read, the writes go in one Commit, an aborted attempt is run again from the start (with `retry_transaction`,
keeping its place in line), and contention that outlasts the attempts is `Busy` (a 503 upstream).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from google.api_core import exceptions as gexc
from google.cloud import firestore

try:  # the client's own helpers for BatchGetDocuments; without them, its usual transaction (one round trip more)
    from google.cloud.firestore_v1.base_client import _parse_batch_get, _reference_info
except ImportError:  # pragma: no cover - a google-cloud-firestore release that renamed them
    _parse_batch_get = _reference_info = None

from lbtrain.errors import Busy

T = TypeVar("T")
MAX_ATTEMPTS = 10  # as FirestoreStore._run


class LazyTransaction:
    """What a transaction function needs: `get_all` (the first call begins the transaction) and the
    writes of a `WriteBatch` (`set`, `create`, `update`, `delete`), committed by `run`."""

    def __init__(self, client: firestore.Client, retry_id: bytes | None = None):
        self._client = client
        self._retry_id = retry_id
        self.id: bytes | None = None
        self._writes = client.batch()

    def get_all(self, references: Iterable[Any]) -> list[firestore.DocumentSnapshot]:
        paths, ref_map = _reference_info(list(references))
        request: dict[str, Any] = {"database": self._client._database_string, "documents": paths}
        if self.id is None:
            request["new_transaction"] = {"read_write": {"retry_transaction": self._retry_id}
                                          if self._retry_id else {}}
        else:
            request["transaction"] = self.id
        snaps = []
        for response in self._client._firestore_api.batch_get_documents(request=request,
                                                                         metadata=self._client._rpc_metadata):
            if response.transaction:
                self.id = response.transaction
            if response._pb.WhichOneof("result"):
                snaps.append(_parse_batch_get(response, ref_map, self._client))
        if self.id is None:
            raise RuntimeError("Firestore did not start the transaction with the read")
        return snaps

    def set(self, reference: Any, data: dict[str, Any], merge: bool = False) -> None:
        self._writes.set(reference, data, merge=merge)

    def create(self, reference: Any, data: dict[str, Any]) -> None:
        self._writes.create(reference, data)

    def update(self, reference: Any, data: dict[str, Any]) -> None:
        self._writes.update(reference, data)

    def delete(self, reference: Any) -> None:
        self._writes.delete(reference)

    def _commit(self) -> None:
        if self.id is None:  # nothing was read: the writes alone, in one atomic commit
            if self._writes._write_pbs:
                self._writes.commit()
            return
        self._client._firestore_api.commit(
            request={"database": self._client._database_string, "writes": self._writes._write_pbs,
                     "transaction": self.id},
            metadata=self._client._rpc_metadata)

    def _rollback(self) -> None:
        if self.id is None:
            return
        try:
            self._client._firestore_api.rollback(
                request={"database": self._client._database_string, "transaction": self.id},
                metadata=self._client._rpc_metadata)
        except gexc.GoogleAPICallError:
            pass  # the transaction expires on its own


def get_ordered(reader: Any, references: list[Any]) -> list[Any]:
    """The snapshots of `references`, in their order, read in one round trip by `reader`'s `get_all`
    (a transaction, begun by its read or not, or the client itself)."""
    snaps = {snap.reference.path: snap for snap in reader.get_all(references)}
    return [snaps[ref.path] for ref in references]


def run(client: firestore.Client, fn: Callable[[LazyTransaction], T], max_attempts: int = MAX_ATTEMPTS) -> T:
    """`fn(transaction)`, committed; run again on contention (Aborted), `Busy` when that outlasts the attempts.
    An exception from `fn` rolls the transaction back and propagates."""
    if _parse_batch_get is None or _reference_info is None:
        return _run_classic(client, fn, max_attempts)
    retry_id: bytes | None = None
    last: Exception | None = None
    for _ in range(max_attempts):
        txn = LazyTransaction(client, retry_id)
        try:
            result = fn(txn)
        except gexc.Aborted as exc:
            last, retry_id = exc, txn.id or retry_id
            txn._rollback()
            continue
        except BaseException:
            txn._rollback()
            raise
        try:
            txn._commit()
            return result
        except gexc.Aborted as exc:
            last, retry_id = exc, txn.id or retry_id
    raise Busy(f"Firestore contention: {max_attempts} attempts aborted: {last}")


def _run_classic(client: firestore.Client, fn: Callable[[Any], T], max_attempts: int) -> T:
    """The same through `@firestore.transactional` (BeginTransaction first): its Transaction has the
    same `get_all`, `set`, `create`, `update` and `delete`."""
    try:
        return firestore.transactional(fn)(client.transaction(max_attempts=max_attempts))
    except ValueError as exc:
        if "Failed to commit transaction" in str(exc):
            raise Busy(f"Firestore contention: {exc}") from exc
        raise
