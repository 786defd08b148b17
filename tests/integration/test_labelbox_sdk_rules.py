"""Retraining rules' Labelbox calls with LABELBOX_BACKEND=sdk, at the HTTP wire: the real
`labelbox.Client` (7.x) against the local fake (tests/fakes/labelbox_server.py).

`create_model_run`: a model run under the model, holding the project's labeled data rows, splits
from `split_for`; idempotent by name, and completing a model run left half-done.
`register_webhook`: created once per URL, updated afterwards; the secret stays out of logs.
The query texts are compared with tests/data/labelbox_sdk/*.graphql (values inlined by the SDK
are templated there as <project_id>, <url>, <secret>, <webhook_id>).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lbtrain.adapters.labelbox import split_for
from lbtrain.adapters.labelbox_sdk import LabelboxApiError, SdkLabelbox
from tests.fakes.labelbox_server import FakeLabelbox
from tests.labelbox_sdk_helpers import API_KEY, sdk_adapter, served, text_project_rows

DATA = Path(__file__).resolve().parent.parent / "data"
GOLDEN_QUERIES = DATA / "labelbox_sdk"
SECRET = "wh-secret-9a8b7c6d5e4f3a2b1c0d"
MODEL, PROJECT, MR = "model-rules", "proj-rules", "mr-golden"
URL = "https://lbtrain.example.run.app/webhooks/labelbox"
N_ROWS = 40  # every 5th row has no label


def project_rows(project_id: str = PROJECT, n: int = N_ROWS) -> list[dict[str, Any]]:
    return text_project_rows(project_id, n)


LABELED = [r["data_row"]["id"] for r in project_rows() if r["projects"][PROJECT]["labels"]]


@pytest.fixture()
def fake() -> Iterator[FakeLabelbox]:
    fake = FakeLabelbox()
    fake.add_model(MODEL)
    fake.add_project(PROJECT, project_rows())
    with served(fake):
        yield fake


def adapter(fake: FakeLabelbox, **kwargs: Any) -> SdkLabelbox:
    return sdk_adapter(fake, **{"split_batch_rows": 10, **kwargs})


def assigned(fake: FakeLabelbox, model_run_id: str) -> dict[str, str]:
    """data row id -> split, from the assignments that crossed the wire (later ones win)."""
    out: dict[str, str] = {}
    for a in fake.split_assignments:
        if a["model_run_id"] == model_run_id:
            out.update(dict.fromkeys(a["data_row_ids"], a["split"]))
    return out


# -- create_model_run ----------------------------------------------------------------------

def test_model_run_holds_the_projects_labels_with_hash_splits(fake: FakeLabelbox) -> None:
    lb = adapter(fake)
    mr = lb.create_model_run(MODEL, PROJECT, "dev-r1")
    assert fake.created_model_runs == [{"name": "dev-r1", "config": None, "modelId": MODEL}]
    assert fake.label_registrations == [{"model_run_id": mr, "project_id": PROJECT}]
    expected = {dr: split_for(dr) for dr in LABELED}
    assert assigned(fake, mr) == expected
    assert {s for s in expected.values()} == {"TRAINING", "VALIDATION", "TEST"}  # the hash spreads 32 rows
    for a in fake.split_assignments:  # one split per call, batches of at most 10
        assert 1 <= len(a["data_row_ids"]) <= 10 and {expected[d] for d in a["data_row_ids"]} == {a["split"]}
    assert sum(len(a["data_row_ids"]) for a in fake.split_assignments) == len(LABELED)  # each row once
    assert {r.path for r in fake.requests if r.operation.startswith("assign")} == {"/_gql"}

    # What the pipeline's ETL then reads: the labeled rows, their labels and the hash splits.
    rows = list(lb.export_rows(mr))
    assert [r["data_row"]["id"] for r in rows] == LABELED
    for row in rows:
        run = row["experiments"][MODEL]["runs"][mr]
        assert run["split"] == split_for(row["data_row"]["id"]).lower() and run["name"] == "dev-r1"
        assert run["labels"][0]["id"] == "lab-" + row["data_row"]["id"][3:]
        assert "projects" not in row


def test_the_same_name_returns_the_same_model_run_without_a_second_create(fake: FakeLabelbox) -> None:
    lb = adapter(fake)
    first = lb.create_model_run(MODEL, PROJECT, "dev-r1")
    assignments = len(fake.split_assignments)
    again = adapter(fake).create_model_run(MODEL, PROJECT, "dev-r1")
    assert again == first
    assert fake.operations().count("CreateModelRunPyApi") == 1
    assert len(fake.split_assignments) == assignments  # splits were complete: nothing reassigned
    other = lb.create_model_run(MODEL, PROJECT, "dev-r2")
    assert other != first and fake.operations().count("CreateModelRunPyApi") == 2
    # A data row keeps its split across model runs.
    assert assigned(fake, other) == assigned(fake, first)


def test_the_model_run_is_found_past_the_first_page(fake: FakeLabelbox) -> None:
    from tests.fakes.labelbox_server import ModelRun

    for i in range(130):  # the SDK pages model runs 100 at a time
        fake.model_runs[f"mr-old-{i:03d}"] = ModelRun(model_id=MODEL, name=f"dev-old-{i:03d}", created=True)
    assert adapter(fake).create_model_run(MODEL, PROJECT, "dev-old-117") == "mr-old-117"
    assert "CreateModelRunPyApi" not in fake.operations()
    assert fake.operations().count("GetModelModelRunsPyApi") == 2
    assert fake.label_registrations == [{"model_run_id": "mr-old-117", "project_id": PROJECT}]


def test_a_model_run_left_half_done_is_completed(fake: FakeLabelbox) -> None:
    lb = adapter(fake)
    fake.fail("assignDataSplitPyApi", 200, body={"errors": [
        {"message": "split service unavailable", "extensions": {"code": "OPERATION_NOT_ALLOWED"}}]})
    with pytest.raises(LabelboxApiError, match=r"assigning \d+ data rows to TEST in model run mr-\w+ \(model "
                                               rf"{MODEL}\) failed: .*split service unavailable"):
        lb.create_model_run(MODEL, PROJECT, "dev-r1")
    (mr,) = fake.model_runs_of(MODEL)
    assert assigned(fake, mr) == {}

    assert lb.create_model_run(MODEL, PROJECT, "dev-r1") == mr  # the retry finds it and completes it
    assert assigned(fake, mr) == {dr: split_for(dr) for dr in LABELED}
    assert fake.operations().count("CreateModelRunPyApi") == 1
    assert fake.operations().count("createMEAModelRunProjectLabelRegistrationTaskPyApi") == 2  # an upsert: safe

    # Assignments lost for three rows (and one row moved by hand): only those are sent again.
    run = fake.model_runs[mr]
    lost = LABELED[:3]
    for dr in lost:
        del run.splits[dr]
    moved = next(dr for dr in LABELED[3:] if split_for(dr) != "TEST")
    run.splits[moved] = "TEST"
    before = len(fake.split_assignments)
    lb.create_model_run(MODEL, PROJECT, "dev-r1")
    resent = [d for a in fake.split_assignments[before:] for d in a["data_row_ids"]]
    assert sorted(resent) == sorted([*lost, moved])
    assert run.splits == {dr: split_for(dr) for dr in LABELED}


def test_unknown_model_or_project_is_a_clear_error(fake: FakeLabelbox) -> None:
    lb = adapter(fake)
    with pytest.raises(LabelboxApiError, match="Labelbox model 'model-nope' not found .*retraining rule's model_id"):
        lb.create_model_run("model-nope", PROJECT, "dev-r1")
    with pytest.raises(LabelboxApiError, match="Labelbox project 'proj-nope' not found"):
        lb.create_model_run(MODEL, "proj-nope", "dev-r1")
    assert "CreateModelRunPyApi" not in fake.operations()


def test_a_failed_label_registration_names_project_and_model_run(fake: FakeLabelbox) -> None:
    fake.label_task_status = "FAILED"
    with pytest.raises(LabelboxApiError, match=rf"adding the labels of project {PROJECT} to model run mr-\w+ "
                                               rf"\(model {MODEL}\) failed"):
        adapter(fake).create_model_run(MODEL, PROJECT, "dev-r1")
    assert fake.split_assignments == []


def test_a_429_on_create_is_retried_and_creates_one_model_run(fake: FakeLabelbox) -> None:
    fake.fail("CreateModelRunPyApi", 429)
    mr = adapter(fake).create_model_run(MODEL, PROJECT, "dev-r1")
    assert list(fake.model_runs_of(MODEL)) == [mr]
    ops = [o for o in fake.operations() if o in ("GetModelModelRunsPyApi", "CreateModelRunPyApi")]
    assert ops == ["GetModelModelRunsPyApi", "CreateModelRunPyApi"] * 2  # listed again before the second try


def test_a_create_whose_answer_was_lost_is_not_repeated(fake: FakeLabelbox) -> None:
    fake.fail("CreateModelRunPyApi", 0, after=True)  # created, then the connection dropped
    mr = adapter(fake).create_model_run(MODEL, PROJECT, "dev-r1")
    assert list(fake.model_runs_of(MODEL)) == [mr]
    assert fake.operations().count("CreateModelRunPyApi") == 1
    assert fake.operations().count("GetModelModelRunsPyApi") == 2  # the retry listed, found it, did not create
    fake.fail("CreateWebhookPyApi", 0, after=True)
    hook_id = adapter(fake).register_webhook(PROJECT, URL, SECRET, ["LABEL_CREATED"])
    assert list(fake.webhooks) == [hook_id] and fake.operations().count("CreateWebhookPyApi") == 1


# -- register_webhook ----------------------------------------------------------------------

def test_webhook_is_created_then_updated_by_url(fake: FakeLabelbox) -> None:
    lb = adapter(fake)
    hook_id = lb.register_webhook(PROJECT, URL, SECRET, ["LABEL_CREATED", "LABEL_UPDATED"])
    assert fake.webhooks == {hook_id: {**fake.webhooks[hook_id], "project_id": PROJECT, "url": URL,
                                       "topics": ["LABEL_CREATED", "LABEL_UPDATED"], "secret": SECRET,
                                       "status": "ACTIVE"}}
    again = lb.register_webhook(PROJECT, URL, SECRET, ["LABEL_CREATED", "LABEL_UPDATED", "LABEL_DELETED"])
    assert again == hook_id and len(fake.webhooks) == 1
    assert fake.webhooks[hook_id]["topics"] == ["LABEL_CREATED", "LABEL_UPDATED", "LABEL_DELETED"]
    assert fake.operations().count("CreateWebhookPyApi") == 1 and fake.operations().count("UpdateWebhookPyApi") == 1

    fake.webhooks[hook_id]["status"] = "INACTIVE"  # deleted in the UI: registering again revives it
    assert lb.register_webhook(PROJECT, URL, SECRET, ["WORKFLOW_ACTION"]) == hook_id
    assert fake.webhooks[hook_id]["status"] == "ACTIVE" and fake.webhooks[hook_id]["topics"] == ["WORKFLOW_ACTION"]

    other = lb.register_webhook(PROJECT, URL.replace("lbtrain.", "staging."), SECRET, ["LABEL_CREATED"])
    assert other != hook_id and len(fake.webhooks) == 2


def test_webhook_inputs_are_checked_before_any_call(fake: FakeLabelbox) -> None:
    lb = adapter(fake)
    with pytest.raises(ValueError, match="topics must be some of LABEL_CREATED.*got REVIEW_CREATED"):
        lb.register_webhook(PROJECT, URL, SECRET, ["REVIEW_CREATED"])
    with pytest.raises(ValueError, match="topics must be some of"):
        lb.register_webhook(PROJECT, URL, SECRET, [])
    with pytest.raises(ValueError, match="webhook URL .* must not contain quotes"):
        lb.register_webhook(PROJECT, URL + '" secret:"x', SECRET, ["LABEL_CREATED"])
    with pytest.raises(ValueError, match="secret must not contain quotes") as bad:
        lb.register_webhook(PROJECT, URL, 'abc"def', ["LABEL_CREATED"])
    assert "abc" not in str(bad.value)
    with pytest.raises(LabelboxApiError, match="Labelbox project 'proj-nope' not found"):
        lb.register_webhook("proj-nope", URL, SECRET, ["LABEL_CREATED"])
    assert fake.operations() == ["GetProjectPyApi"] and fake.webhooks == {}


def test_the_secret_never_appears_in_logs(fake: FakeLabelbox, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    lb = adapter(fake)
    fake.fail("CreateWebhookPyApi", 429)
    hook_id = lb.register_webhook(PROJECT, URL, SECRET, ["LABEL_CREATED"])
    lb.register_webhook(PROJECT, URL, SECRET, ["LABEL_UPDATED"])
    fake.fail("GetProjectWebhooksPyApi", 200, body={"errors": [
        {"message": f"cannot read webhooks ({SECRET})", "extensions": {"code": "OPERATION_NOT_ALLOWED"}}]})
    with pytest.raises(LabelboxApiError) as failed:
        lb.register_webhook(PROJECT, URL, SECRET, ["LABEL_UPDATED"])
    assert SECRET not in str(failed.value) and "***" in str(failed.value)
    messages = [r.getMessage() for r in caplog.records]
    # The SDK logged the query that carries the secret (the test can fail), redacted.
    assert any("CreateWebhookPyApi" in m and 'secret:"***"' in m for m in messages)
    assert any("retrying" in m for m in messages) and any(hook_id in m for m in messages)
    assert all(SECRET not in m and API_KEY not in m for m in messages)
    assert fake.webhooks[hook_id]["secret"] == SECRET  # yet Labelbox got it
    logging.getLogger("lbox.request_client").debug("after: %s", SECRET)  # the redaction ends with the call
    assert SECRET in caplog.records[-1].getMessage()


def test_cli_register_against_the_fake(fake: FakeLabelbox, tmp_path: Path) -> None:
    env = {**os.environ, "LABELBOX_BACKEND": "sdk", "LABELBOX_ENDPOINT": f"{fake.base_url}/graphql",
           "LABELBOX_API_KEY": API_KEY, "LABELBOX_WEBHOOK_SECRET": SECRET, "LBTRAIN_STATE_DIR": str(tmp_path)}
    cmd = [sys.executable, "-m", "lbtrain.cli", "labelbox", "register", "--project-id", PROJECT,
           "--url", "https://x.example/"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    (hook_id, hook), = fake.webhooks.items()
    assert hook["url"] == "https://x.example/webhooks/labelbox" and hook["secret"] == SECRET
    assert hook["project_id"] == PROJECT
    assert hook["topics"] == ["LABEL_CREATED", "LABEL_UPDATED", "LABEL_DELETED", "WORKFLOW_ACTION"]
    assert f"label webhook {hook_id} registered for project {PROJECT}" in out.stdout
    assert "url:    https://x.example/webhooks/labelbox" in out.stdout and "URL:    https://x.example" in out.stdout
    assert SECRET not in out.stdout + out.stderr and API_KEY not in out.stdout + out.stderr

    again = subprocess.run([*cmd, "--topics", "LABEL_CREATED"], env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert list(fake.webhooks) == [hook_id] and fake.webhooks[hook_id]["topics"] == ["LABEL_CREATED"]

    unknown = subprocess.run([*cmd[:-4], "--project-id", "proj-nope", "--url", "https://x.example"], env=env,
                             capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 1 and "Labelbox project 'proj-nope' not found" in unknown.stderr


# -- goldens -------------------------------------------------------------------------------

def templated(query: str, **values: str) -> str:
    for name, value in values.items():
        query = query.replace(value, f"<{name}>")
    return query


def test_the_sdk_sends_the_recorded_queries(fake: FakeLabelbox) -> None:
    """Every golden file is sent by one of the adapter's operations, with that exact text."""
    from tests.integration.test_labelbox_sdk import golden_rows, prediction
    from tests.integration.test_labelbox_sdk_prelabels import PRELABEL_OPERATIONS

    fake.add_model_run(MR, golden_rows(), import_polls_running=1)
    lb = adapter(fake)
    list(lb.export_rows(MR))
    lb.update_status(MR, "COMPLETE")
    lb.upload_predictions(MR, "up", [prediction(1)])
    lb.create_model_run(MODEL, PROJECT, "dev-r1")
    hook_id = lb.register_webhook(PROJECT, URL, SECRET, ["LABEL_CREATED"])
    lb.register_webhook(PROJECT, URL, SECRET, ["LABEL_CREATED", "LABEL_UPDATED"])
    seen = {op: templated(q, project_id=PROJECT, url=URL, secret=SECRET, webhook_id=hook_id)
            for op, q in fake.queries().items()}
    golden = {p.stem: p.read_text(encoding="utf-8") for p in GOLDEN_QUERIES.glob("*.graphql")
              if p.stem not in PRELABEL_OPERATIONS}  # those: test_labelbox_sdk_prelabels.py
    assert sorted(seen) == sorted(golden)
    for operation, query in seen.items():
        assert query == golden[operation], f"{operation}: the SDK's query text changed"
    assert "secret:\"<secret>\"" in golden["CreateWebhookPyApi"]  # no real secret kept in the repo
    assert not any(SECRET in text for text in golden.values())
