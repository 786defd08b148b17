"""`make deploy` / `make teardown` (lbtrain/deploy.py), run as a user runs them.

Two ways, no Google access needed: DRY_RUN=1, whose printed plan is checked (order, checks before creates,
substitutions, variables, what a teardown keeps); and a real run against fake `gcloud` / `terraform`
executables first on PATH that record every call with its stdin and answer the checks as a project in a
given state would, so first installs, updates and failures take the code paths they take for real.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import hcl2
import pytest
import yaml

from lbtrain import deploy

ROOT = Path(__file__).resolve().parents[2]
TF_DIR = ROOT / "infra" / "terraform"
BUILD = yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())
VALUES = {"LABELBOX_API_KEY": "lbkey-4f1c9e0d-SECRET", "LABELBOX_WEBHOOK_SECRET": "whsec-77aa31-SECRET",
          "API_TOKEN": "apitok-0b9e2c-SECRET"}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in VALUES and k not in
           ("PROJECT", "REGION", "DEPLOYMENT", "DRY_RUN", "TAG", "KEEP_DATA", "DASHBOARD", "AUTO_APPROVE")}
    env.update(extra)
    return env


def make(target: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["make", "-s", target, f"PYTHON={sys.executable}", *args], cwd=ROOT, text=True,
                          capture_output=True, env=env or _env(), stdin=subprocess.DEVNULL, timeout=60)


def commands(stdout: str) -> list[tuple[str, list[str]]]:
    """(mark, argv) of every printed command: '+' runs, '?' checks."""
    out = []
    for line in stdout.splitlines():
        if line[:2] in ("+ ", "? "):
            out.append((line[0], shlex.split(line[2:].split("    # ")[0])))
    return out


def index(cmds: list[tuple[str, list[str]]], *words: str, start: int = 0) -> int:
    for i, (_, argv) in enumerate(cmds[start:], start):
        if all(w in argv for w in words):
            return i
    raise AssertionError(f"no command with {words}")


def parse(name: str) -> dict:
    from hcl2.utils import SerializationOptions

    opts = SerializationOptions(with_comments=False, explicit_blocks=False, strip_string_quotes=True)
    return hcl2.loads((TF_DIR / name).read_text(), serialization_options=opts)


def tf_variables() -> set[str]:
    names = set()
    for entry in parse("variables.tf").get("variable", []):
        names |= set(entry)
    return names


def tf_variable_default(name: str) -> str:
    for entry in parse("variables.tf").get("variable", []):
        if name in entry:
            return entry[name]["default"]
    raise KeyError(name)


def resource_types_and_names() -> set[str]:
    found = set()
    for path in TF_DIR.glob("*.tf"):
        for entry in parse(path.name).get("resource", []):
            for rtype, named in entry.items():
                found |= {f"{rtype}.{name}" for name in named}
    return found


# -- DRY_RUN plans -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def plan() -> subprocess.CompletedProcess[str]:
    result = make("deploy", "PROJECT=proj-1", "REGION=europe-west4", "DRY_RUN=1", "TAG=abc123",
                  env=_env(**VALUES))
    assert result.returncode == 0, result.stderr
    return result


def test_deploy_plan_runs_the_steps_in_order(plan):
    cmds = commands(plan.stdout)
    steps = [index(cmds, "services", "enable"), index(cmds, "init"), index(cmds, "workspace", "select"),
             index(cmds, "apply", "-target=google_secret_manager_secret.secret"),
             index(cmds, "secrets", "versions", "add"), index(cmds, "builds", "submit")]
    full_apply = next(i for i, (_, a) in enumerate(cmds) if "apply" in a and not any(x.startswith("-target")
                                                                                        for x in a))
    steps += [full_apply, index(cmds, "output", "-raw", "labelbox_url")]
    assert steps == sorted(steps), steps
    assert "proj-1.prod" in cmds[index(cmds, "workspace", "select")][1]
    assert "-or-create=true" in cmds[index(cmds, "workspace", "select")][1]


def test_deploy_plan_checks_before_it_creates(plan):
    cmds = commands(plan.stdout)
    for secret_id, _ in deploy.SECRETS.values():
        add = index(cmds, "versions", "add", secret_id)
        check = index(cmds, "versions", "list", secret_id)
        assert check < add and cmds[check][0] == "?" and cmds[add][0] == "+"
        assert "--data-file=-" in cmds[add][1]  # the value on stdin, never an argument
    assert cmds[index(cmds, "artifacts", "docker", "images", "describe")][0] == "?"
    assert index(cmds, "artifacts", "docker", "images", "describe") < index(cmds, "builds", "submit")
    assert index(cmds, "firestore", "databases", "describe") < index(cmds, "-var=create_firestore_database=true")


def test_deploy_plan_prints_no_secret_value(plan):
    for value in VALUES.values():
        assert value not in plan.stdout and value not in plan.stderr
    assert "$LABELBOX_API_KEY" in plan.stdout  # says where the value comes from instead


def test_build_substitutions_are_cloudbuilds_and_skip_the_rollout(plan):
    cmds = commands(plan.stdout)
    argv = cmds[index(cmds, "builds", "submit")][1]
    assert "--config=cloudbuild.yaml" in argv and "--project=proj-1" in argv and "." in argv
    subs = dict(kv.split("=", 1) for kv in next(a for a in argv if a.startswith("--substitutions="))
                .removeprefix("--substitutions=").split(","))
    assert subs == {"_REGION": "europe-west4", "_DEPLOYMENT": "prod", "_DEPLOY_DASHBOARD": "true",
                    "_ROLLOUT": "false", "COMMIT_SHA": "abc123"}
    user = {k for k in subs if k.startswith("_")}
    assert user <= set(BUILD["substitutions"]), user - set(BUILD["substitutions"])


def test_terraform_gets_the_built_tag_and_only_declared_variables(plan):
    cmds = commands(plan.stdout)
    declared = tf_variables()
    for _mark, argv in cmds:
        if argv[0] == "terraform":
            for a in argv:
                if a.startswith("-var="):
                    assert a[5:].split("=", 1)[0] in declared, a
                if a.startswith("-target="):
                    assert a[8:] in resource_types_and_names(), a
    full = [a for m, a in cmds if "apply" in a and not any(x.startswith("-target") for x in a)]
    assert len(full) == 1
    assert {"-var=image_tag=abc123", "-var=project=proj-1", "-var=region=europe-west4",
            "-var=deployment_name=prod", "-var=deploy_dashboard=true"} <= set(full[0])
    assert "-auto-approve" in full[0] and "-input=false" in full[0]


def test_the_apis_enabled_are_the_ones_terraform_declares(plan):
    cmds = commands(plan.stdout)
    argv = cmds[index(cmds, "services", "enable")][1]
    enabled = {a for a in argv if a.endswith(".googleapis.com")}
    declared = parse("apis.tf")["resource"][0]["google_project_service"]["apis"]
    expr = declared["for_each"]
    assert enabled and enabled == set(re.findall(r"[a-z0-9.-]+\.googleapis\.com", str(expr)))


def test_secret_ids_are_terraforms_defaults():
    assert {sid for sid, _ in deploy.SECRETS.values()} == {
        tf_variable_default(v) for v in ("labelbox_api_key_secret_id", "labelbox_webhook_secret_secret_id",
                                         "api_token_secret_id")}
    local = (TF_DIR / "locals.tf").read_text()
    assert all(f"{env_name} " in local for env_name in deploy.SECRETS)


def test_without_dashboard_neither_cloud_build_nor_terraform_deploys_it():
    result = make("deploy", "PROJECT=p-2", "REGION=us-central1", "DRY_RUN=1", "TAG=t", "DASHBOARD=0")
    assert result.returncode == 0, result.stderr
    assert "_DEPLOY_DASHBOARD=false" in result.stdout and "-var=deploy_dashboard=false" in result.stdout
    assert "-var=firestore_location=nam5" in result.stdout
    assert "Dashboard" not in result.stdout.split("# 7.")[1]


def test_teardown_plan_keeps_the_data_by_default():
    result = make("teardown", "PROJECT=proj-1", "REGION=europe-west4", "DRY_RUN=1")
    assert result.returncode == 0, result.stderr
    cmds = commands(result.stdout)
    destroys = [a for _, a in cmds if "destroy" in a]
    assert len(destroys) == 1
    targets = {a[8:] for a in destroys[0] if a.startswith("-target=")}
    everything = resource_types_and_names()
    kept = set(deploy.DATA_RESOURCES) | set(deploy.ALWAYS_KEPT)
    assert kept <= everything
    assert targets == everything - kept  # every other resource is destroyed, none of the data
    assert "google_storage_bucket.artifacts" not in targets and "google_firestore_database.default" not in targets
    assert "google_cloud_run_v2_service.ingress" in targets and "google_secret_manager_secret.secret" in targets
    assert not any("rm" in a or "delete" in a for _, a in cmds if a[0] == "gcloud")
    assert "workspace" in cmds[1][1] and "-or-create=true" not in cmds[1][1]  # never creates an empty state


def test_teardown_without_data_empties_the_bucket_and_deletes_the_database_after_terraform():
    result = make("teardown", "PROJECT=proj-1", "REGION=europe-west4", "DRY_RUN=1", "KEEP_DATA=0")
    assert result.returncode == 0, result.stderr
    cmds = commands(result.stdout)
    destroy = index(cmds, "destroy")
    assert not any(a.startswith("-target=") for a in cmds[destroy][1])
    assert index(cmds, "storage", "rm") < destroy < index(cmds, "firestore", "databases", "delete")
    assert "gs://proj-1-lbtrain-artifacts/**" in cmds[index(cmds, "storage", "rm")][1]
    assert index(cmds, "state", "list", "google_firestore_database.default") < destroy


def test_project_and_region_are_required():
    result = make("deploy", "DRY_RUN=1")
    assert result.returncode != 0 and "PROJECT and REGION" in result.stderr


def test_every_rollout_step_of_cloudbuild_can_be_skipped():
    """_ROLLOUT=false must stop each deploy-* step before it calls gcloud (the services may not exist)."""
    assert BUILD["substitutions"]["_ROLLOUT"] == "true"
    for step in BUILD["steps"]:
        if step["id"].startswith("deploy-"):
            script = " ".join(step["args"])
            guard = script.find('if [ "${_ROLLOUT}" != "true" ]')
            assert 0 <= guard < script.find("gcloud"), step["id"]
            assert "exit 0" in script[guard:script.find("gcloud")], step["id"]


# -- real runs against fake gcloud / terraform ----------------------------------------------------

FAKE = r'''
import json, os, sys
state = json.load(open(os.environ["FAKE_STATE"]))
argv = sys.argv[1:]
tool = os.path.basename(sys.argv[0])
stdin = "" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read()
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps({"tool": tool, "argv": argv, "stdin": stdin}) + "\n")
def has(*words): return all(w in argv for w in words)
if tool in state.get("fail", []) and has(*state.get("fail_words", [])):
    sys.exit(1)
if tool == "gcloud":
    if has("secrets", "versions", "list"):
        print("projects/x/secrets/%s/versions/1" % argv[3] if argv[3] in state.get("secrets", []) else "")
    elif has("artifacts", "docker", "images", "describe"):
        sys.exit(0 if state.get("images") else 1)
    elif has("firestore", "databases", "describe"):
        sys.exit(0 if state.get("firestore") else 1)
    elif has("storage", "buckets", "describe"):
        sys.exit(0 if state.get("bucket") else 1)
elif tool == "terraform":
    if has("state", "list"):
        print("\n".join(a for a in argv[3:] if a in state.get("tf_state", [])))
    elif has("output", "-raw"):
        print({"artifact_bucket": "proj-1-lbtrain-artifacts"}.get(argv[-1], "https://%s.example" % argv[-1]),
              end="")
'''


@pytest.fixture
def fake(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("gcloud", "terraform"):
        path = bin_dir / tool
        path.write_text(f"#!{sys.executable}\n{FAKE}")
        path.chmod(0o755)
    log, state = tmp_path / "calls.jsonl", tmp_path / "state.json"

    def run(action: str, project_state: dict, *args: str, **env: str) -> tuple[subprocess.CompletedProcess[str],
                                                                            list[dict]]:
        state.write_text(json.dumps(project_state))
        log.write_text("")
        e = _env(FAKE_LOG=str(log), FAKE_STATE=str(state), PATH=f"{bin_dir}:{os.environ['PATH']}", **env)
        result = make(action, "PROJECT=proj-1", "REGION=us-central1", "TAG=t1", *args, env=e)
        calls = [json.loads(line) for line in log.read_text().splitlines()]
        return result, calls

    return run


def _find(calls: list[dict], *words: str) -> list[dict]:
    return [c for c in calls if all(w in c["argv"] for w in words)]


def test_first_install_adds_every_secret_on_stdin_and_generates_what_it_can(fake):
    result, calls = fake("deploy", {}, LABELBOX_API_KEY=VALUES["LABELBOX_API_KEY"])
    assert result.returncode == 0, result.stderr
    adds = {c["argv"][3]: c["stdin"] for c in _find(calls, "versions", "add")}
    assert adds["lbtrain-labelbox-api-key"] == VALUES["LABELBOX_API_KEY"]
    generated = [adds["lbtrain-labelbox-webhook-secret"], adds["lbtrain-api-token"]]
    assert all(len(v) >= 32 for v in generated) and generated[0] != generated[1]
    for value in [*adds.values()]:
        assert value not in result.stdout and value not in result.stderr
        assert not any(value in " ".join(c["argv"]) for c in calls)
    assert len(_find(calls, "builds", "submit")) == 1
    full = [c for c in calls if "apply" in c["argv"] and not any(a.startswith("-target") for a in c["argv"])]
    assert len(full) == 1 and "-var=create_firestore_database=true" in full[0]["argv"]
    assert calls.index(_find(calls, "builds", "submit")[0]) < calls.index(full[0])
    assert "https://labelbox_url.example" in result.stdout and "https://dashboard_url.example" in result.stdout


def test_an_update_leaves_secrets_and_built_images_alone(fake):
    everything = {"secrets": [sid for sid, _ in deploy.SECRETS.values()], "images": True, "firestore": True,
                  "tf_state": ["google_firestore_database.default"]}
    result, calls = fake("deploy", everything)  # no secret in the environment: none is needed
    assert result.returncode == 0, result.stderr
    assert not _find(calls, "versions", "add") and not _find(calls, "builds", "submit")
    assert len(_find(calls, "artifacts", "docker", "images", "describe")) == len(deploy.IMAGES)
    full = _find(calls, "apply", "-var=image_tag=t1", "-var=create_firestore_database=true")
    assert [c for c in full if not any(a.startswith("-target") for a in c["argv"])]
    assert "left alone" in result.stdout


def test_an_existing_firestore_database_is_adopted_not_created(fake):
    result, calls = fake("deploy", {"firestore": True, "secrets": [sid for sid, _ in deploy.SECRETS.values()]})
    assert result.returncode == 0, result.stderr
    full = [c for c in calls if "apply" in c["argv"] and not any(a.startswith("-target") for a in c["argv"])]
    assert "-var=create_firestore_database=false" in full[0]["argv"]


def test_a_missing_api_key_stops_before_any_build(fake):
    result, calls = fake("deploy", {})
    assert result.returncode != 0 and "LABELBOX_API_KEY" in result.stderr
    assert not _find(calls, "builds", "submit") and not _find(calls, "versions", "add")


def test_a_failed_step_stops_the_deploy(fake):
    result, calls = fake("deploy", {"fail": ["gcloud"], "fail_words": ["builds", "submit"]},
                         LABELBOX_API_KEY=VALUES["LABELBOX_API_KEY"])
    assert result.returncode != 0 and "failed" in result.stderr
    assert calls[-1]["argv"][:2] == ["builds", "submit"]  # nothing ran after it


def test_teardown_asks_first_and_keeps_the_data(fake):
    result, calls = fake("teardown", {})
    assert result.returncode != 0 and "AUTO_APPROVE" in result.stderr and calls == []
    result, calls = fake("teardown", {}, "AUTO_APPROVE=1")
    assert result.returncode == 0, result.stderr
    destroy = _find(calls, "destroy")
    assert len(destroy) == 1 and "-target=google_storage_bucket.artifacts" not in destroy[0]["argv"]
    assert not [c for c in calls if c["tool"] == "gcloud"]


def test_teardown_without_data_deletes_only_a_database_terraform_created(fake):
    result, calls = fake("teardown", {"bucket": True}, "AUTO_APPROVE=1", "KEEP_DATA=0")
    assert result.returncode == 0, result.stderr
    assert _find(calls, "storage", "rm", "gs://proj-1-lbtrain-artifacts/**")
    assert not _find(calls, "firestore", "databases", "delete")  # not in the state: not ours
    result, calls = fake("teardown", {"bucket": True, "tf_state": ["google_firestore_database.default"]},
                         "AUTO_APPROVE=1", "KEEP_DATA=0")
    assert result.returncode == 0, result.stderr
    delete = _find(calls, "firestore", "databases", "delete")
    assert delete and calls.index(_find(calls, "destroy")[0]) < calls.index(delete[0])


def test_a_secret_whose_versions_cannot_be_listed_is_not_overwritten(fake):
    result, calls = fake("deploy", {"fail": ["gcloud"], "fail_words": ["versions", "list"]},
                         LABELBOX_API_KEY=VALUES["LABELBOX_API_KEY"])
    assert result.returncode != 0 and "could not list the versions" in result.stderr
    assert not _find(calls, "versions", "add") and not _find(calls, "builds", "submit")
