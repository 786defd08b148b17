"""Publishing to the Pub/Sub emulator over its REST API, with the standard library only.

The local runner (lbtrain/adapters/local_runner.py) publishes one JobEvent per job. Importing
google-cloud-pubsub and gRPC for that one message costs ~0.4 s of CPU in every runner process, which on a
laptop competes with the jobs and services it runs beside; the emulator answers the same publish over
HTTP/1.1 on the same port."""

from __future__ import annotations

import base64
import json
import urllib.request
from typing import Any

TIMEOUT_SECONDS = 10.0


class EmulatorRestBus:
    """The `publish` of PubSubBus, for the emulator at `host` (host:port)."""

    def __init__(self, host: str, project: str, deployment: str):
        self.host, self.project, self.deployment = host, project, deployment
        self.published = 0

    def topic_path(self, name: str) -> str:
        return f"projects/{self.project}/topics/{self.deployment}-{name}"

    def publish(self, name: str, data: dict[str, Any], attributes: dict[str, str] | None = None) -> str:
        """Publish and wait for the emulator's answer; an HTTP or connection error raises."""
        message = {"data": base64.b64encode(json.dumps(data).encode()).decode(), "attributes": attributes or {}}
        request = urllib.request.Request(
            f"http://{self.host}/v1/{self.topic_path(name)}:publish", method="POST",
            data=json.dumps({"messages": [message]}).encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:  # noqa: S310 - http to the emulator
            (message_id,) = json.loads(response.read())["messageIds"]
        self.published += 1
        return str(message_id)
