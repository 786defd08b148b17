"""Publishing pipeline messages to Pub/Sub, and creating the topics and push subscriptions."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

from google.api_core import exceptions as gexc
from google.api_core import retry as gretry
from google.cloud import pubsub_v1

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT = 30.0
_RETRY = gretry.Retry(initial=0.1, maximum=5.0, multiplier=2.0, timeout=PUBLISH_TIMEOUT)


class PubSubBus:
    def __init__(self, project: str, deployment: str, publisher: pubsub_v1.PublisherClient | None = None):
        self.project = project
        self.deployment = deployment
        self.publisher = publisher or pubsub_v1.PublisherClient()
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


def ensure_topology(project: str, deployment: str, push_base_url: str, stages: Iterable[str], *,
                    publisher: pubsub_v1.PublisherClient | None = None,
                    subscriber: pubsub_v1.SubscriberClient | None = None,
                    max_delivery_attempts: int = 50) -> dict[str, str]:
    """Create the deployment's topics and push subscriptions (idempotent; local stack and tests).

    In the cloud, Terraform owns these; the shapes are the same: every push subscription
    dead-letters to `{dep}-dead-letter`, whose own subscription marks the run FAILED.
    """
    publisher = publisher or pubsub_v1.PublisherClient()
    subscriber = subscriber or pubsub_v1.SubscriberClient()
    base = push_base_url.rstrip("/")
    routes = {"runs": "/push/runs", "job-events": "/push/job-events"}
    routes.update({f"step-{s}": f"/push/step/{s}" for s in stages})
    dead_letter_topic = publisher.topic_path(project, f"{deployment}-dead-letter")
    for topic in [*routes, "dead-letter"]:
        try:
            publisher.create_topic(name=publisher.topic_path(project, f"{deployment}-{topic}"))
        except gexc.AlreadyExists:
            pass
    subs = {}
    retry_policy = pubsub_v1.types.RetryPolicy(minimum_backoff={"seconds": 0, "nanos": 200_000_000},
                                               maximum_backoff={"seconds": 10})
    for topic, path in [*routes.items(), ("dead-letter", "/push/dead-letter")]:
        sub_path = subscriber.subscription_path(project, f"{deployment}-{topic}-push")
        request: dict[str, Any] = {
            "name": sub_path,
            "topic": publisher.topic_path(project, f"{deployment}-{topic}"),
            "push_config": {"push_endpoint": base + path},
            "ack_deadline_seconds": 60,
            "retry_policy": retry_policy,
        }
        if topic != "dead-letter":
            request["dead_letter_policy"] = {"dead_letter_topic": dead_letter_topic,
                                             "max_delivery_attempts": max_delivery_attempts}
        try:
            subscriber.create_subscription(request=request)
        except gexc.AlreadyExists:
            subscriber.modify_push_config(subscription=sub_path, push_config={"push_endpoint": base + path})
        subs[topic] = sub_path
    return subs


def delete_topology(project: str, deployment: str, stages: Iterable[str]) -> None:
    """Remove what `ensure_topology` made (tests and `lbtrain dev` on exit)."""
    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    names = ["runs", "job-events", "dead-letter", *[f"step-{s}" for s in stages]]
    for name in names:
        try:
            sub = subscriber.subscription_path(project, f"{deployment}-{name}-push")
            subscriber.delete_subscription(subscription=sub)
        except gexc.NotFound:
            pass
        try:
            publisher.delete_topic(topic=publisher.topic_path(project, f"{deployment}-{name}"))
        except gexc.NotFound:
            pass
