"""The floor for bench/ingress.py: the least a signed-webhook handler on Firestore and Pub/Sub can do.

Served by gunicorn exactly as the ingress image serves `services.ingress.main:app` (1 worker, 8 threads):

- `POST /model_run`: one HMAC check (lbtrain.signature), one Firestore transaction (read the delivery's
  document, create it if absent) and, for a new delivery, one Pub/Sub publish waited for its ack.
- `POST /webhooks/labelbox`: one HMAC check and one transaction: read the label's marker, and if absent
  create it and increment one counter document.
- `POST /webhooks/labelbox-sharded`: the same with the count in 8 shards (one blind-incremented) and their
  exact sum read after the commit, which a count under a labeling team's burst needs on Firestore.

Environment: GOOGLE_CLOUD_PROJECT, DEPLOYMENT_NAME, LABELBOX_WEBHOOK_SECRET and the emulator hosts.
Collections and topic are prefixed `floor-` so nothing here meets the product's documents. The floor
publishes and transacts as lbtrain does (`publisher_client`, `firestore_txn.run`: no batching delay, a
transaction begun by its read), so a ratio measures lbtrain's own work, not a client setting.
"""

from __future__ import annotations

import hashlib
import json
import os
import random

from flask import Flask, jsonify, request
from google.cloud import firestore

from lbtrain import signature
from lbtrain.adapters import firestore_txn
from lbtrain.adapters.pubsub_bus import publisher_client

PROJECT = os.environ.get("GOOGLE_CLOUD_PROJECT", "demo")
DEPLOYMENT = os.environ.get("DEPLOYMENT_NAME", "dev")
SECRET = os.environ.get("LABELBOX_WEBHOOK_SECRET", "")
TOPIC = "floor"  # topic id: {DEPLOYMENT}-floor
DELIVERIES, LABELS, COUNTERS, SHARDED = "floor-deliveries", "floor-labels", "floor-counters", "floor-sharded"
SHARDS = 8  # as lbtrain's rule counters (lbtrain/adapters/trigger_store.py SHARD_COUNT)

db = firestore.Client(project=PROJECT)
publisher = publisher_client()  # the same settings as lbtrain's bus: no batching delay
topic_path = publisher.topic_path(PROJECT, f"{DEPLOYMENT}-{TOPIC}")
app = Flask("lbtrain-ingress-floor")


def _verified() -> tuple[bytes, dict] | tuple[None, None]:
    body = request.get_data(cache=True)
    if signature.verify(SECRET, body, request.headers):
        return None, None
    return body, json.loads(body)


@app.post("/model_run")
def model_run():  # noqa: ANN201
    body, data = _verified()
    if body is None:
        return jsonify({"error": "bad signature"}), 401
    delivery = request.headers.get("X-Labelbox-Id") or hashlib.sha256(body).hexdigest()
    ref = db.collection(DELIVERIES).document(hashlib.sha256(delivery.encode()).hexdigest())

    def txn(t: firestore_txn.LazyTransaction) -> bool:  # begun by its read, as lbtrain's transactions are
        (seen,) = t.get_all([ref])
        if seen.exists:
            return False
        t.create(ref, {"model_run_id": data["modelRunId"], "at": firestore.SERVER_TIMESTAMP})
        return True

    created = firestore_txn.run(db, txn)
    if created:
        publisher.publish(topic_path, body).result(timeout=30)
    return jsonify({"created": created}), 200


@app.post("/webhooks/labelbox")
def label():  # noqa: ANN201
    return _count_label(sharded=False)


@app.post("/webhooks/labelbox-sharded")
def label_sharded():  # noqa: ANN201
    return _count_label(sharded=True)


def _count_label(sharded: bool):  # noqa: ANN202
    """One counter document, or (`sharded`) one of SHARDS blind-incremented and their exact sum read back
    after the commit, as a count must be kept where Firestore sustains about one write a second per document."""
    body, data = _verified()
    if body is None:
        return jsonify({"error": "bad signature"}), 401
    project = data["project"]["id"]
    marker = db.collection(LABELS).document(hashlib.sha256(f"{project}/{data['id']}".encode()).hexdigest())
    counter = (db.collection(SHARDED).document(project).collection("shards").document(str(random.randrange(SHARDS)))
               if sharded else db.collection(COUNTERS).document(project))

    def txn(t: firestore_txn.LazyTransaction) -> bool:
        (seen,) = t.get_all([marker])
        if seen.exists:
            return False
        t.create(marker, {"project": project})
        t.set(counter, {"count": firestore.Increment(1)}, merge=True)
        return True

    counted = firestore_txn.run(db, txn)
    if not sharded:
        return jsonify({"counted": counted}), 200
    (row,) = db.collection(SHARDED).document(project).collection("shards").sum("count", alias="n").get()
    return jsonify({"counted": counted, "count": int(row[0].value or 0)}), 200
