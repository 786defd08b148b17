"""The local runner's REST publisher (lbtrain/adapters/pubsub_rest.py) against the Pub/Sub emulator: a
message it publishes arrives with its data and attributes as PubSubBus's would, and a failed publish
raises (the runner retries it, then leaves the job to the reconciler)."""

from __future__ import annotations

import json
import urllib.error

import pytest
from google.cloud import pubsub_v1

from lbtrain.adapters.pubsub_rest import EmulatorRestBus
from tests.conftest import fresh_id


def test_published_message_arrives_with_its_data_and_attributes(emulator_hosts):
    project, deployment = fresh_id("p"), fresh_id("d")
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic = publisher.create_topic(name=publisher.topic_path(project, f"{deployment}-job-events")).name
    sub = subscriber.create_subscription(name=subscriber.subscription_path(project, fresh_id("s")), topic=topic).name
    bus = EmulatorRestBus(emulator_hosts["PUBSUB_EMULATOR_HOST"], project, deployment)
    event = {"job_id": "j1", "state": "SUCCEEDED", "run_id": "r1", "stage": "etl", "attempt": 1}

    message_id = bus.publish("job-events", event, {"job_id": "j1", "run_id": "r1"})

    assert message_id and bus.published == 1
    (received,) = subscriber.pull(subscription=sub, max_messages=5, timeout=30).received_messages
    assert json.loads(received.message.data) == event
    assert dict(received.message.attributes) == {"job_id": "j1", "run_id": "r1"}
    assert received.message.message_id == message_id


def test_publishing_to_a_missing_topic_raises(emulator_hosts):
    bus = EmulatorRestBus(emulator_hosts["PUBSUB_EMULATOR_HOST"], fresh_id("p"), fresh_id("d"))
    with pytest.raises(urllib.error.HTTPError):
        bus.publish("job-events", {"job_id": "j"})
    assert bus.published == 0
