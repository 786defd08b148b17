"""Dead letters through the Pub/Sub emulator's own dead-letter policy (max_delivery_attempts 5, Pub/Sub's
minimum): a message whose push endpoint fails every time is forwarded to `{dep}-dead-letter` by the
emulator, and that topic's handler ends the run FAILED with the stage and the reason."""

from __future__ import annotations

import pytest
from google.cloud import pubsub_v1

from lbtrain import domain as d
from lbtrain.adapters.pubsub_bus import topology
from lbtrain.api.push import all_stages
from tests.integration.conftest import Stack

STAGES = ("etl", "train", "evaluate", "deploy")


class BrokenBackend:
    """A job backend whose every submit fails: the etl launcher answers 5xx to each delivery."""

    def __init__(self, backend):  # noqa: ANN001
        self.backend = backend
        self.submits = 0

    def submit(self, spec):  # noqa: ANN001, ANN201
        self.submits += 1
        raise RuntimeError("the backend refuses every job")

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self.backend, name)


def test_every_subscription_but_the_dead_letter_topics_own_dead_letters(stack_factory):
    stack = stack_factory(max_delivery_attempts=5)
    cfg = stack.dev.config
    subscriber = pubsub_v1.SubscriberClient()
    for spec in topology(cfg.deployment_name, all_stages()):
        sub = subscriber.get_subscription(subscription=subscriber.subscription_path(cfg.project, spec.subscription_id))
        if spec.topic == "dead-letter":
            assert not sub.dead_letter_policy.dead_letter_topic  # never into itself
        else:
            assert sub.dead_letter_policy.dead_letter_topic.endswith(f"/topics/{cfg.deployment_name}-dead-letter")
            assert sub.dead_letter_policy.max_delivery_attempts == 5


def _created_run(stack: Stack, mr: str) -> str:
    return stack.deps.store.create_run(run_id=d.new_run_id(), model_type="text_single_classification",
                                       model_run_id=mr, model_id="", params={}, trigger={"source": "test"},
                                       stages=STAGES, delivery_key=None).run_id


@pytest.mark.parametrize("poison", ["malformed", "backend_fails"])
def test_message_failing_every_delivery_is_dead_lettered_and_fails_its_run(stack_factory, poison: str):
    stack = stack_factory(max_delivery_attempts=5)
    mr = stack.model_run()
    if poison == "malformed":
        # Names its run and stage, but no launcher can ever read it: 400 on each of the 5 deliveries.
        run_id = _created_run(stack, mr)
        stack.deps.bus.publish("step-etl", {"run_id": run_id, "stage": "etl", "attempt": "first"},
                               {"run_id": run_id, "stage": "etl"})
    else:
        # A well-formed step message whose launch fails each time (500, then 503 while the lease holds).
        broken = BrokenBackend(stack.deps.backend)
        stack.deps.backend = broken
        run_id = stack.api.start_run("text_single_classification", mr)["run_id"]
    run = stack.wait(run_id, timeout=90)
    assert run["status"] == d.FAILED, run
    sub = f"{stack.dev.config.deployment_name}-step-etl-push"
    assert run["error"]["stage"] == "etl"
    assert sub in run["error"]["message"] and "after repeated attempts" in run["error"]["message"]
    etl = run["steps"][0]
    assert etl["state"] == d.FAILED and sub in etl["error"]
    assert all(s["state"] == d.PENDING for s in run["steps"][1:])
    if poison == "backend_fails":
        assert broken.submits >= 1
        stack.deps.backend = broken.backend
    # Labelbox heard why, and the model run is free again.
    last = stack.wait_for(lambda: (st := stack.deps.labelbox.statuses(mr)) and st[-1]["status"] == "FAILED" and st[-1],
                          what="FAILED reported to Labelbox")  # just after the run's status is committed
    assert "etl: message could not be delivered" in last["error_message"]
    assert stack.webhook(mr)[1]["created"] is True
