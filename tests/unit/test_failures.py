"""The failure table (lbtrain/failures.py) on the texts Vertex AI and the local runner really produce,
and the retry rule built on it (domain.failed_attempt)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from google.api_core import exceptions as gexc

from lbtrain import domain as d
from lbtrain import failures as f

# Real error texts: Vertex AI CustomJob `error.message` / API errors, and the local runner's.
VERTEX_CASES = [
    # (message, google.rpc code, kind, reason)
    ("The replica workerpool0-0 exited with a non-zero status of 1. To find out more about why your job exited "
     "please check the logs: https://console.cloud.google.com/logs/viewer?project=1&resource=ml_job",
     3, f.PERMANENT, "the job failed"),
    ("The replica workerpool0-0 exited with a non-zero status of 2.", 3, f.PERMANENT, "the job failed"),
    ("The replica workerpool0-0 exited with a non-zero status of 137. Termination reason: OOMKilled.", 3,
     f.PERMANENT, "out of memory"),
    ("The following quota metrics exceed quota limits: aiplatform.googleapis.com/custom_model_training_nvidia_l4_gpus",
     8, f.CAPACITY, "quota"),
    ("The following quota metrics exceed quota limits: aiplatform.googleapis.com/custom_model_training_cpus", 8,
     f.CAPACITY, "quota"),
    ("Resources are insufficient in region: us-central1. Please try a different region. If you use K80, please "
     "consider using P100 or V100 instead.", 8, f.CAPACITY, "no capacity"),
    ("A e2-standard-2 VM instance is currently unavailable in the europe-west4-a zone. Alternatively, you can try "
     "your request again with a different VM hardware configuration or at a later time.", 0, f.CAPACITY,
     "no capacity"),
    ("Job was not scheduled within the max wait duration: no resources were available.", 0, f.CAPACITY,
     "not scheduled in time"),
    ("The replica workerpool0-0 was preempted.", 14, f.TRANSIENT, "preempted"),
    ("Internal error occurred for the current attempt.", 13, f.TRANSIENT, "Vertex internal error"),
    ("The service is currently unavailable.", 14, f.TRANSIENT, "Vertex unavailable"),
    ("", 13, f.TRANSIENT, "Vertex internal error"),
    ("Deadline exceeded.", 4, f.TRANSIENT, "deadline exceeded"),
    ("The operation was aborted.", 10, f.TRANSIENT, "aborted"),
    ("Something we never saw before.", 8, f.CAPACITY, "resource exhausted"),
    ("List of found errors: 1.Field: job_spec.worker_pool_specs[0].machine_spec.accelerator_type; Message: "
     "Accelerator \"NVIDIA_TESLA_K80\" is not supported for machine type \"g2-standard-8\".", 3, f.PERMANENT,
     "invalid argument"),
    ("Something we never saw before.", 0, f.PERMANENT, "failed"),
]


@pytest.mark.parametrize(("message", "code", "kind", "reason"), VERTEX_CASES)
def test_vertex_job_errors(message, code, kind, reason):
    failure = f.classify(message, code=code)
    assert (failure.kind, failure.reason) == (kind, reason)
    assert failure.retryable is (kind != f.PERMANENT)


def test_local_runner_outcomes():
    killed = f.classify("job killed by signal SIGKILL; log: /x/job.log", exit_code=-9)
    assert (killed.kind, killed.reason) == (f.TRANSIENT, "killed by SIGKILL")
    lost = f.classify("local job runner exited without recording a result")
    assert (lost.kind, lost.reason) == (f.TRANSIENT, "machine lost")
    assert f.classify("job exited with code 1; log: /x/job.log", exit_code=1).kind == f.PERMANENT
    assert f.classify("bad --inputs", exit_code=2).kind == f.PERMANENT
    assert f.classify("job exited 0 but wrote no outputs.json").kind == f.PERMANENT


def test_a_job_that_said_why_is_never_retried():
    # Even on a message that would be transient: error.json means the data or the code.
    failure = f.classify("Internal error occurred for the current attempt.", code=13, job_said=True)
    assert failure.kind == f.PERMANENT and failure.reason == "the job reported an error"


def test_creation_errors_from_the_api():
    quota = gexc.ResourceExhausted("The following quota metrics exceed quota limits: "
                                   "aiplatform.googleapis.com/custom_model_training_nvidia_l4_gpus")
    assert (f.classify_exception(quota).kind, f.classify_exception(quota).reason) == (f.CAPACITY, "quota")
    assert f.classify_exception(gexc.ServiceUnavailable("The service is currently unavailable.")).kind == f.TRANSIENT
    assert f.classify_exception(gexc.InternalServerError("Internal error encountered.")).kind == f.TRANSIENT
    assert f.classify_exception(gexc.TooManyRequests("Too many requests")).kind == f.CAPACITY
    bad = gexc.InvalidArgument("List of found errors: 1.Field: job_spec.worker_pool_specs[0].machine_spec")
    assert f.classify_exception(bad).kind == f.PERMANENT
    assert f.classify_exception(ConnectionError("connection reset")).kind == f.TRANSIENT
    assert f.classify_exception(ValueError("JOB_IMAGE is not configured")) is None


def test_failure_text_is_one_short_line():
    failure = f.Failure(f.TRANSIENT, "preempted", "The replica workerpool0-0\nwas preempted." + "x" * 500)
    assert "\n" not in failure.text() and len(failure.text()) <= 300
    assert f.Failure(f.TRANSIENT, "killed by SIGKILL", "").text() == "killed by SIGKILL"


AT = datetime(2026, 1, 1, tzinfo=UTC)


def step(attempt: int = 1, **extra) -> dict:
    return {**d.initial_step("train", 1, AT), "state": d.RUNNING, "attempt": attempt, "machine": "m", **extra}


def test_a_transient_failure_is_retried_after_a_back_off_with_jitter():
    policy = d.RetryPolicy(max_attempts=3, base_seconds=10, cap_seconds=15)
    failure = f.classify("The replica workerpool0-0 was preempted.").to_dict()
    out = d.failed_attempt(step(), "preempted", failure, policy, AT, rand=0.0)
    assert out.retry_at == AT + timedelta(seconds=5)  # 10 s, jitter down to half
    upd = out.step_update
    assert upd["state"] == d.PENDING and upd["attempt"] == 2 and upd["not_before"] == out.retry_at
    assert upd["machine_index"] == 0  # not a capacity failure: same machine
    assert upd["attempts"][-1]["failure"]["reason"] == "preempted" and upd["attempts"][-1]["machine"] == "m"
    second = d.failed_attempt({**step(2), "attempts": upd["attempts"]}, "x", failure, policy, AT, rand=1.0)
    assert second.retry_at == AT + timedelta(seconds=15)  # 20 s capped at 15
    assert [policy.delay(n, 1.0) for n in (1, 2, 3)] == [10, 15, 15]


def test_capacity_moves_to_the_next_machine_and_exhaustion_names_every_attempt():
    policy = d.RetryPolicy(max_attempts=2, base_seconds=1, cap_seconds=1)
    quota = f.classify("The following quota metrics exceed quota limits: x", code=8).to_dict()
    first = d.failed_attempt(step(machine="L4"), "quota", quota, policy, AT)
    assert first.step_update["machine_index"] == 1
    lost = f.classify("Internal error occurred for the current attempt.", code=13).to_dict()
    last = d.failed_attempt({**step(2, machine="T4"), "attempts": first.step_update["attempts"]},
                            "Internal error occurred for the current attempt.", lost, policy, AT)
    assert last.retry_at is None and last.step_update["state"] == d.FAILED
    assert last.message.startswith("2 attempts failed: attempt 1 on L4: quota")
    assert "attempt 2 on T4: Vertex internal error: Internal error occurred" in last.message


def test_a_permanent_failure_is_not_retried_and_a_manual_retry_starts_a_new_series():
    policy = d.RetryPolicy(max_attempts=3)
    data = f.classify("not enough examples", job_said=True).to_dict()
    out = d.failed_attempt(step(), "not enough examples", data, policy, AT)
    assert out.retry_at is None and out.message == "not enough examples"
    # After a manual retry (retry_from = 4), attempt 4 is the series' first: two retries are left.
    lost = f.classify("", exit_code=-9).to_dict()
    assert d.failed_attempt(step(4, retry_from=4), "killed", lost, policy, AT).retry_at is not None
    assert d.failed_attempt(step(6, retry_from=4), "killed", lost, policy, AT).retry_at is None


def test_retry_settings_are_lbtrain_variables():
    from lbtrain.config import Config, from_env, to_env

    assert Config().retry_policy() == d.RetryPolicy(max_attempts=3, base_seconds=30.0, cap_seconds=600.0)
    cfg = from_env({"LBTRAIN_MAX_ATTEMPTS": "5", "LBTRAIN_RETRY_BASE_SECONDS": "2.5",
                    "LBTRAIN_RETRY_CAP_SECONDS": "60"})
    assert cfg.retry_policy() == d.RetryPolicy(5, 2.5, 60.0)
    assert from_env(to_env(cfg)).retry_policy() == cfg.retry_policy()  # jobs and the dev stack get the same
    for var, value in (("LBTRAIN_MAX_ATTEMPTS", "0"), ("LBTRAIN_MAX_ATTEMPTS", "three"),
                       ("LBTRAIN_RETRY_BASE_SECONDS", "-1"), ("LBTRAIN_RETRY_CAP_SECONDS", "soon")):
        with pytest.raises(ValueError, match=var):
            from_env({var: value})
