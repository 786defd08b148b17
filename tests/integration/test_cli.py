"""`lbtrain runs …` and `lbtrain webhook sign` as a user runs them: subprocesses against the stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

from tests.integration.conftest import SECRET, TOKEN


def lbtrain(stack, *args: str, token: str = TOKEN) -> subprocess.CompletedProcess:
    env = {**os.environ, "LBTRAIN_API_URL": stack.dev.url, "API_TOKEN": token, "LABELBOX_WEBHOOK_SECRET": SECRET,
           "LBTRAIN_STATE_DIR": str(stack.root / "cli-state")}
    return subprocess.run([sys.executable, "-m", "lbtrain.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_runs_start_wait_show_list(stack):
    mr = stack.model_run()
    out = lbtrain(stack, "runs", "start", "--model-type", "text_single_classification", "--model-run-id", mr, "--wait")
    assert out.returncode == 0, out.stderr
    assert "SUCCEEDED" in out.stdout and "deploy" in out.stdout
    run_id = out.stdout.split()[1]
    shown = json.loads(lbtrain(stack, "runs", "--json", "show", run_id).stdout)
    assert shown["run_id"] == run_id and shown["status"] == "SUCCEEDED"
    listed = lbtrain(stack, "runs", "list", "--status", "SUCCEEDED")
    assert run_id in listed.stdout
    bad = lbtrain(stack, "runs", "list", "--status", "NOPE")
    assert bad.returncode == 1 and "unknown status" in bad.stderr


def test_runs_cancel_and_retry(stack):
    mr = stack.model_run()
    params = json.dumps({"noop": {"sleep": {"etl": 60}}})
    out = lbtrain(stack, "runs", "start", "--model-type", "text_single_classification", "--model-run-id", mr,
                  "--params", params)
    run_id = out.stdout.split()[1]
    stack.wait_for(lambda: stack.api.get_run(run_id)["steps"][0]["state"] == "RUNNING", what="etl running")
    assert lbtrain(stack, "runs", "cancel", run_id).returncode == 0
    waited = lbtrain(stack, "runs", "wait", run_id)
    assert waited.returncode == 1 and "CANCELLED" in waited.stdout  # wait exits 0 only for SUCCEEDED
    retried = lbtrain(stack, "runs", "retry", run_id)
    assert retried.returncode == 0 and "etl" in retried.stdout
    assert stack.api.get_run(run_id)["steps"][0]["attempt"] == 2
    lbtrain(stack, "runs", "cancel", run_id)
    assert stack.wait(run_id, timeout=30)["status"] == "CANCELLED"


def test_wrong_token_is_reported(stack):
    out = lbtrain(stack, "runs", "list", token="wrong-token")
    assert out.returncode == 1 and "401" in out.stderr and "invalid API token" in out.stderr


def test_webhook_sign_and_post(stack):
    mr = stack.model_run()
    body = json.dumps({"modelId": "m1", "modelRunId": mr, "modelType": "text_single_classification"})
    out = lbtrain(stack, "webhook", "sign", "--body", body, "--post", stack.dev.url + "/model_run",
                  "--delivery-id", "cli-1")
    assert out.returncode == 0, out.stderr
    assert "X-Hub-Signature: sha1=" in out.stdout and "X-Hub-Signature-256: sha256=" in out.stdout
    answer = json.loads(out.stdout.split("-> 200 ", 1)[1])
    assert stack.wait(answer["run_id"])["status"] == "SUCCEEDED"
    assert SECRET not in out.stdout


def test_triggers_set_list_get_delete(stack):
    set_ = lbtrain(stack, "triggers", "set", "proj-cli", "--model-type", "ner", "--model-id", "model-9",
                   "--min-labels", "25", "--min-interval", "600")
    assert set_.returncode == 0, set_.stderr
    assert "proj-cli: ner (model model-9), every 25 new or changed labels, at most every 600s" in set_.stdout
    listed = json.loads(lbtrain(stack, "triggers", "--json", "list").stdout)
    assert [(r["project_id"], r["min_labels"], r["pending"]) for r in listed] == [("proj-cli", 25, 0)]
    assert "0 pending" in lbtrain(stack, "triggers", "get", "proj-cli").stdout
    bad = lbtrain(stack, "triggers", "set", "proj-cli", "--model-type", "nope", "--model-id", "m")
    assert bad.returncode == 1 and "nope" in bad.stderr
    assert lbtrain(stack, "triggers", "get", "proj-cli").stdout.count("ner") == 1  # unchanged by the bad call
    assert lbtrain(stack, "triggers", "delete", "proj-cli").returncode == 0
    gone = lbtrain(stack, "triggers", "get", "proj-cli")
    assert gone.returncode == 1 and "404" in gone.stderr


def test_labelbox_register_with_the_file_backend(stack):
    env_dir = stack.root / "lbx"
    out = subprocess.run([sys.executable, "-m", "lbtrain.cli", "labelbox", "register", "--project-id", "proj-7",
                          "--url", "https://lbtrain.example.run.app/"],
                         env={**os.environ, "LABELBOX_DIR": str(env_dir), "LABELBOX_WEBHOOK_SECRET": SECRET,
                              "LBTRAIN_STATE_DIR": str(stack.root / "cli-state")},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "url:    https://lbtrain.example.run.app/webhooks/labelbox" in out.stdout
    assert "URL:    https://lbtrain.example.run.app\n" in out.stdout and SECRET not in out.stdout
    hooks = json.loads((env_dir / "projects" / "proj-7" / "webhooks.json").read_text())
    assert [h["url"] for h in hooks] == ["https://lbtrain.example.run.app/webhooks/labelbox"]
    assert set(hooks[0]["topics"]) == {"LABEL_CREATED", "LABEL_UPDATED", "LABEL_DELETED", "WORKFLOW_ACTION"}
    assert SECRET not in json.dumps(hooks)
    bad = subprocess.run([sys.executable, "-m", "lbtrain.cli", "labelbox", "register", "--project-id", "proj-7",
                          "--url", "https://x", "--topics", "LABEL_CREATED,NOPE"],
                         env={**os.environ, "LABELBOX_DIR": str(env_dir), "LABELBOX_WEBHOOK_SECRET": SECRET},
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "NOPE" in bad.stderr


def test_runs_wait_prints_the_running_steps_progress(stack, tmp_path):
    """The train job (here the noop job, reporting 3 epochs) writes progress.json; the REST API, the
    dashboard and `lbtrain runs wait` show it while the step runs; the job ends when the test says."""
    mr = stack.model_run()
    gate = tmp_path / "let-train-end"
    params = json.dumps({"noop": {"progress": {"train": {"epochs": 3, "gate": str(gate)}}}})
    out = lbtrain(stack, "runs", "start", "--model-type", "text_single_classification", "--model-run-id", mr,
                  "--params", params)
    run_id = out.stdout.split()[1]
    env = {**os.environ, "LBTRAIN_API_URL": stack.dev.url, "API_TOKEN": TOKEN,
           "LBTRAIN_STATE_DIR": str(stack.root / "cli-state")}
    proc = subprocess.Popen([sys.executable, "-m", "lbtrain.cli", "runs", "wait", run_id, "--timeout", "240"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "train: epoch 3/3" in line:
                break
        assert lines and "train: epoch 3/3" in lines[-1], "".join(lines)
        assert lines[-1] == "  train: epoch 3/3 loss 0.25 val accuracy 0.8\n"
        running = stack.api.get_run(run_id)
        assert running["status"] == "RUNNING"
        assert (running["progress"]["stage"], running["progress"]["done"], running["progress"]["total"]) == (
            "train", 3, 3)
        with urllib.request.urlopen(f"{stack.dev.url}/dashboard/runs/{run_id}", timeout=30) as resp:
            html = resp.read().decode()
        assert "train: epoch 3/3 loss 0.25 val accuracy 0.8" in html and 'class="progress-chart"' in html
        gate.write_text("go")
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = "".join(lines) + rest
    assert proc.returncode == 0, output
    assert output.count("train: epoch 3/3") == 1  # printed when it changed, not on every poll
    assert "SUCCEEDED" in output and "progress" not in stack.api.get_run(run_id)  # ended: no progress
