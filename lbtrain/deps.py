"""Wiring: builds the adapters a handler needs from a Config. The only place that picks
implementations; handlers receive a `Deps` and never construct clients themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from lbtrain.config import Config


@dataclass
class Deps:
    config: Config

    @cached_property
    def store(self) -> Any:
        from lbtrain.adapters.firestore_store import FirestoreStore, make_client

        return FirestoreStore(make_client(self.config.project))

    @cached_property
    def bus(self) -> Any:
        from lbtrain.adapters.pubsub_bus import PubSubBus

        return PubSubBus(self.config.project, self.config.deployment_name)

    @cached_property
    def answered(self) -> Any:
        """What this process answered lately (lbtrain/intake.py `Answered`): redeliveries skip Firestore."""
        from lbtrain.intake import Answered

        return Answered()

    @cached_property
    def backend(self) -> Any:
        from lbtrain.adapters.backend import from_config

        return from_config(self.config)

    @cached_property
    def triggers(self) -> Any:
        from lbtrain.adapters.trigger_store import TriggerStore

        return TriggerStore(self.store)

    @cached_property
    def labelbox(self) -> Any:
        from lbtrain.adapters.labelbox import from_config

        return from_config(self.config)
