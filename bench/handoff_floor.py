"""The hand-off's floor: two push hops with one Firestore transaction between, on the same emulators.

A stage hand-off is: the runner publishes the job event → Pub/Sub pushes it to job-events, which commits
the step and publishes the next step message → Pub/Sub pushes that to the launcher, which claims, launches
and records the job. The least any design could do is the same two push hops with one transaction and one
publish between them; this measures that, from the first publish to the second push's arrival, with a
plain HTTP server (no Flask, no lbtrain code) as both endpoints. bench/handoff.py runs it after its runs,
while the emulators are still up, and prints the ratio.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from base64 import b64decode
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from lbtrain.adapters import firestore_txn
from lbtrain.adapters.pubsub_bus import publisher_client
from lbtrain.emulators import free_port


def measure_floor(project: str, n: int = 100, concurrency: int = 4, timeout: float = 120.0) -> list[float]:
    """Latencies (ms) of `n` two-hop hand-offs, `concurrency` in flight. Needs PUBSUB_EMULATOR_HOST and
    FIRESTORE_EMULATOR_HOST in the environment (DevStack sets them)."""
    from google.cloud import firestore, pubsub_v1

    tag = uuid.uuid4().hex[:8]
    db = firestore.Client(project=project)
    publisher = publisher_client()  # the same settings as lbtrain's bus: no batching delay
    subscriber = pubsub_v1.SubscriberClient()
    topics = {hop: publisher.topic_path(project, f"floor-{tag}-{hop}") for hop in ("a", "b")}
    arrived: dict[str, float] = {}
    done = {key: threading.Event() for key in (f"h{i}" for i in range(n))}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            envelope = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            body = json.loads(b64decode(envelope["message"]["data"]))
            if self.path == "/a":  # hop 1: one transaction, one publish (waited), then the answer
                ref = db.collection(f"floor-{tag}").document(body["key"])

                def txn(t: firestore_txn.LazyTransaction) -> None:  # begun by its read, as lbtrain's are
                    (snap,) = t.get_all([ref])
                    if not snap.exists:
                        t.set(ref, {"at": firestore.SERVER_TIMESTAMP})

                firestore_txn.run(db, txn)
                publisher.publish(topics["b"], json.dumps(body).encode()).result(timeout=30)
            else:  # hop 2: arrived
                arrived.setdefault(body["key"], time.time())
                done[body["key"]].set()
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    subs = []
    try:
        for hop, topic in topics.items():
            publisher.create_topic(name=topic)
            sub = subscriber.subscription_path(project, f"floor-{tag}-{hop}-push")
            subscriber.create_subscription(name=sub, topic=topic, ack_deadline_seconds=60,
                                           push_config={"push_endpoint": f"http://127.0.0.1:{port}/{hop}"})
            subs.append(sub)

        def one(i: int) -> float:
            key = f"h{i}"
            sent = time.time()
            publisher.publish(topics["a"], json.dumps({"key": key}).encode()).result(timeout=30)
            if not done[key].wait(timeout):
                raise TimeoutError(f"floor hand-off {key} did not arrive in {timeout:.0f} s")
            return (arrived[key] - sent) * 1000.0

        for i in range(min(3, n)):  # channels and first pushes: not measured
            one(i)
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            return list(pool.map(one, range(min(3, n), n)))
    finally:
        server.shutdown()
        for sub in subs:
            try:
                subscriber.delete_subscription(subscription=sub)
            except Exception:  # noqa: BLE001, S110 - cleanup is best effort
                pass
        for topic in topics.values():
            try:
                publisher.delete_topic(topic=topic)
            except Exception:  # noqa: BLE001, S110
                pass
