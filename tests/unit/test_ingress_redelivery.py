"""A redelivered webhook that this process answered before: no transaction, and the run's first step is
offered again only when its message may have been lost (recording fakes, no emulators)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from lbtrain.adapters.firestore_store import CreateResult
from lbtrain.intake import Answered
from tests.unit.test_ingress_validation import DELIVERY, Recorder, _app

RUN_ID = "0123456789abcdef"
CREATED = datetime(2026, 11, 20, 10, 15, tzinfo=UTC)


def _run(**fields: Any) -> dict[str, Any]:
    return {"run_id": RUN_ID, "status": "QUEUED", "stage": "etl", "created_at": CREATED, "updated_at": CREATED,
            **fields}


def _fakes(run: dict[str, Any], step_state: str = "PENDING") -> dict[str, Recorder]:
    return {
        "store": Recorder("store", {"create_run": lambda **kw: CreateResult(RUN_ID, True),
                                    "get_run": lambda run_id: dict(run),
                                    "get_step": lambda run_id, stage: {"state": step_state, "attempt": 1}}),
        "bus": Recorder("bus", {"publish": "msg-1"}),
        "labelbox": Recorder("labelbox"),
        "backend": Recorder("backend"),
    }


def _deliver(client: Any) -> Any:
    return client.post(DELIVERY["path"], data=DELIVERY["body"].encode(), headers=DELIVERY["headers"])


def test_a_redelivery_answered_here_needs_only_the_run_document() -> None:
    fakes = _fakes(_run())
    client = _app(fakes)
    assert _deliver(client).get_json() == {"run_id": RUN_ID, "created": True}
    again = _deliver(client)
    assert again.status_code == 200
    assert again.get_json() == {"run_id": RUN_ID, "created": False, "reason": "duplicate delivery"}
    assert fakes["store"].names() == ["create_run", "get_run"]  # no second transaction, no step read
    assert [c[1][0] for c in fakes["bus"].calls] == ["step-etl"]  # published once, acknowledged


def test_a_redelivery_after_a_lost_publish_offers_the_step_again() -> None:
    fakes = _fakes(_run())
    calls = {"n": 0}

    def publish(*args: Any) -> str:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("publish failed")
        return "msg-2"

    fakes["bus"]._results["publish"] = publish
    client = _app(fakes)
    client.application.testing = False  # the failure is a 500 answer, not an exception in the test
    assert _deliver(client).status_code == 500
    again = _deliver(client)
    assert again.status_code == 200 and again.get_json()["created"] is False
    assert fakes["store"].names() == ["create_run", "get_run", "get_step"]
    assert [c[1][0] for c in fakes["bus"].calls] == ["step-etl", "step-etl"]


@pytest.mark.parametrize("run", [_run(updated_at=datetime(2026, 11, 20, 10, 16, tzinfo=UTC)),
                                 _run(status="RUNNING")])
def test_a_run_changed_since_creation_is_checked_at_its_step(run: dict[str, Any]) -> None:
    fakes = _fakes(run)
    client = _app(fakes)
    _deliver(client)
    _deliver(client)
    assert fakes["store"].names() == ["create_run", "get_run", "get_step"]
    assert len(fakes["bus"].calls) == 2  # the step is PENDING: offered again


def test_another_process_knows_nothing_and_asks_firestore() -> None:
    fakes = _fakes(_run(), step_state="LAUNCHING")
    _deliver(_app(fakes))
    fakes["store"]._results["create_run"] = lambda **kw: CreateResult(RUN_ID, False, "duplicate delivery")
    again = _deliver(_app(fakes))  # a new app and Deps: another instance
    assert again.get_json() == {"run_id": RUN_ID, "created": False, "reason": "duplicate delivery"}
    assert fakes["store"].names() == ["create_run", "create_run", "get_run", "get_step"]
    assert len(fakes["bus"].calls) == 1


def test_answered_is_bounded_and_forgets() -> None:
    answered = Answered(limit=2, ttl=60)
    for key in ("a", "b", "c"):
        answered.remember(key, f"run-{key}")
    assert [answered.run_for(k) for k in ("a", "b", "c")] == [None, "run-b", "run-c"]
    expired = Answered(ttl=-1)
    expired.remember("a", "run-a")
    expired.offered("run-a", "etl")
    assert expired.run_for("a") is None and expired.was_offered("run-a") is None
