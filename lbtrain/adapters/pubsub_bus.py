"""Publishing pipeline messages to Pub/Sub, and creating the topics and push subscriptions."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from google.api_core import exceptions as gexc
from google.api_core import retry as gretry
from google.cloud import pubsub_v1

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT = 30.0
_RETRY = gretry.Retry(initial=0.1, maximum=5.0, multiplier=2.0, timeout=PUBLISH_TIMEOUT)


def publisher_client() -> pubsub_v1.PublisherClient:
    """A publisher that sends each message at once. Every publish here is waited on alone (a handler
    answers only after its message is stored), and the client's default batching holds a message up to
    10 ms for company: 20 ms against 3 ms per publish on the emulator (bench/README.md)."""
    return pubsub_v1.PublisherClient(batch_settings=pubsub_v1.types.BatchSettings(max_messages=1))


class PubSubBus:
    def __init__(self, project: str, deployment: str, publisher: pubsub_v1.PublisherClient | None = None):
        self.project = project
        self.deployment = deployment
        self.publisher = publisher or publisher_client()
        self.published = 0  # messages published by this process (bench/handoff.py reports it)

    def topic_path(self, name: str) -> str:
        return self.publisher.topic_path(self.project, f"{self.deployment}-{name}")

    def publish(self, name: str, data: dict[str, Any], attributes: dict[str, str] | None = None) -> str:
        """Publish and wait for the server's ack (a handler must not answer 2xx before that)."""
        future = self.publisher.publish(self.topic_path(name), json.dumps(data).encode(), retry=_RETRY,
                                        timeout=PUBLISH_TIMEOUT, **(attributes or {}))
        message_id = future.result(timeout=PUBLISH_TIMEOUT)
        self.published += 1
        return message_id


ACK_DEADLINE_SECONDS = 60
MIN_BACKOFF_SECONDS = 0.2
MAX_BACKOFF_SECONDS = 10
MAX_DELIVERY_ATTEMPTS = 50


@dataclass(frozen=True)
class PushSubscription:
    """One push subscription of a deployment, as created locally and declared in Terraform."""

    topic: str  # short name: runs, step-<stage>, job-events, dead-letter
    topic_id: str  # {dep}-{topic}
    subscription_id: str  # {dep}-{topic}-push
    push_path: str  # path on the receiving service
    dead_letter_topic_id: str | None  # None only for the dead-letter topic's own subscription
    max_delivery_attempts: int
    ack_deadline_seconds: int = ACK_DEADLINE_SECONDS
    minimum_backoff_seconds: float = MIN_BACKOFF_SECONDS
    maximum_backoff_seconds: float = MAX_BACKOFF_SECONDS


def topology(deployment: str, stages: Iterable[str], *,
             max_delivery_attempts: int = MAX_DELIVERY_ATTEMPTS) -> list[PushSubscription]:
    """The deployment's topics and push subscriptions, pure: `ensure_topology` creates them,
    and tests check Terraform (infra/terraform) declares the same ones."""
    routes = {"runs": "/push/runs", "job-events": "/push/job-events"}
    routes.update({f"step-{s}": f"/push/step/{s}" for s in stages})
    routes["dead-letter"] = "/push/dead-letter"
    dead_letter = f"{deployment}-dead-letter"
    return [PushSubscription(topic=topic, topic_id=f"{deployment}-{topic}",
                             subscription_id=f"{deployment}-{topic}-push", push_path=path,
                             dead_letter_topic_id=None if topic == "dead-letter" else dead_letter,
                             max_delivery_attempts=max_delivery_attempts)
            for topic, path in routes.items()]


def ensure_topology(project: str, deployment: str, push_base_url: str, stages: Iterable[str], *,
                    publisher: pubsub_v1.PublisherClient | None = None,
                    subscriber: pubsub_v1.SubscriberClient | None = None,
                    max_delivery_attempts: int = MAX_DELIVERY_ATTEMPTS) -> dict[str, str]:
    """Create the deployment's topics and push subscriptions (idempotent; local stack and tests).

    In the cloud, Terraform owns these; the shapes are the same (`topology`): every push
    subscription dead-letters to `{dep}-dead-letter`, whose own subscription marks the run FAILED.
    """
    publisher = publisher or pubsub_v1.PublisherClient()
    subscriber = subscriber or pubsub_v1.SubscriberClient()
    base = push_base_url.rstrip("/")
    specs = topology(deployment, stages, max_delivery_attempts=max_delivery_attempts)
    for spec in specs:
        try:
            publisher.create_topic(name=publisher.topic_path(project, spec.topic_id))
        except gexc.AlreadyExists:
            pass
    subs = {}
    for spec in specs:
        sub_path = subscriber.subscription_path(project, spec.subscription_id)
        endpoint = base + spec.push_path
        request: dict[str, Any] = {
            "name": sub_path,
            "topic": publisher.topic_path(project, spec.topic_id),
            "push_config": {"push_endpoint": endpoint},
            "ack_deadline_seconds": spec.ack_deadline_seconds,
            "retry_policy": pubsub_v1.types.RetryPolicy(
                minimum_backoff=_duration(spec.minimum_backoff_seconds),
                maximum_backoff=_duration(spec.maximum_backoff_seconds)),
        }
        if spec.dead_letter_topic_id:
            request["dead_letter_policy"] = {
                "dead_letter_topic": publisher.topic_path(project, spec.dead_letter_topic_id),
                "max_delivery_attempts": spec.max_delivery_attempts}
        try:
            subscriber.create_subscription(request=request)
        except gexc.AlreadyExists:
            subscriber.modify_push_config(subscription=sub_path, push_config={"push_endpoint": endpoint})
        subs[spec.topic] = sub_path
    return subs


def _duration(seconds: float) -> dict[str, int]:
    whole = int(seconds)
    return {"seconds": whole, "nanos": round((seconds - whole) * 1e9)}


def delete_topology(project: str, deployment: str, stages: Iterable[str]) -> None:
    """Remove what `ensure_topology` made (tests and `lbtrain dev` on exit)."""
    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    for spec in topology(deployment, stages):
        try:
            subscriber.delete_subscription(subscription=subscriber.subscription_path(project, spec.subscription_id))
        except gexc.NotFound:
            pass
        try:
            publisher.delete_topic(topic=publisher.topic_path(project, spec.topic_id))
        except gexc.NotFound:
            pass
