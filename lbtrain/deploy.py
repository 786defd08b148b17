"""`make deploy` / `make teardown`: one deployment on Google Cloud, installed or removed in one command.

Deploy runs, in order and safely again after a failure or for an update:

1. `gcloud services enable` for the APIs `infra/terraform/apis.tf` lists (a no-op when enabled);
2. `terraform init`, and the workspace `<project>.<deployment>`, so one checkout never applies one
   project's state to another (local state, in `infra/terraform/terraform.tfstate.d/`);
3. a targeted `terraform apply` of the APIs, the Artifact Registry repository and the (empty) secrets:
   what the images and the secret values need before anything else exists;
4. each secret's value, only for a secret with no enabled version (`versions list` before `versions add`):
   from the environment (`LABELBOX_API_KEY`, `LABELBOX_WEBHOOK_SECRET`, `API_TOKEN`), else asked for
   without echo, else (webhook secret, API token) generated. Values go to gcloud on stdin only;
5. the images, with `cloudbuild.yaml` and `_ROLLOUT=false`: its rollout steps update services that do
   not exist on a first install, and step 6 rolls them anyway (skipped when every image of the tag is in
   the registry already);
6. `terraform apply` of everything with `image_tag` = the built tag: creates the services on a first
   install, gives them new revisions on an update (the Firestore database is adopted, not created, when
   the project already has one that this state does not hold);
7. the URLs to paste into Labelbox and the dashboard's.

Teardown destroys the deployment but, unless `--delete-data` (`KEEP_DATA=0`), keeps the artifact bucket,
the Firestore database with its indexes and TTL, and the API enablements: `terraform destroy` with a
`-target` for every other resource. The kept ones stay in the Terraform state, so a later deploy adopts
them as they are (no import, no "already exists"). With `--delete-data` the bucket is emptied and
destroyed too, and a Firestore database this state created is deleted (Terraform only abandons it:
`deletion_policy = "ABANDON"`, delete protection on).

`--dry-run` prints every gcloud / terraform command instead of running it (checks included, marked `?`;
a command that only runs when its check finds nothing is marked "if none"). A secret value is never
printed, logged or put on a command line.
"""

from __future__ import annotations

import argparse
import getpass
import os
import re
import secrets
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TF_DIR = ROOT / "infra" / "terraform"

# Secret env var → (Secret Manager id: variables.tf's defaults, may it be generated).
SECRETS: dict[str, tuple[str, bool]] = {
    "LABELBOX_API_KEY": ("lbtrain-labelbox-api-key", False),
    "LABELBOX_WEBHOOK_SECRET": ("lbtrain-labelbox-webhook-secret", True),
    "API_TOKEN": ("lbtrain-api-token", True),
}
# Created before the images and the secret values (step 3).
BOOTSTRAP_TARGETS = ("google_project_service.apis", "google_artifact_registry_repository.images",
                     "google_secret_manager_secret.secret")
# Kept by a teardown unless --delete-data: the data, and what only exists for it.
DATA_RESOURCES = ("google_storage_bucket.artifacts", "google_firestore_database.default",
                  "google_firestore_index.runs_list", "google_firestore_field.deliveries_ttl",
                  "google_firestore_field.runs_unindexed")
# Never targeted by a data-keeping teardown: everything above depends on them (destroying them is a
# no-op anyway, disable_on_destroy = false).
ALWAYS_KEPT = ("google_project_service.apis",)
# cloudbuild.yaml's image names (test_build_config checks each has a build step).
IMAGES = ("ingress", "dashboard", "launcher", "job-events", "reconciler", "jobs-cpu", "jobs-gpu", "serving")


class DeployError(RuntimeError):
    """A step failed; the message says which (never a secret value)."""


@dataclass(frozen=True)
class Settings:
    project: str
    region: str
    deployment: str = "prod"
    tag: str = ""
    dashboard: bool = True
    firestore_location: str = ""
    dry_run: bool = False
    auto_approve: bool = False

    @property
    def workspace(self) -> str:
        return f"{self.project}.{self.deployment}"

    @property
    def registry(self) -> str:
        """cloudbuild.yaml's default _REPO and Terraform's local.registry."""
        return f"{self.region}-docker.pkg.dev/{self.project}/lbtrain"

    @property
    def default_bucket(self) -> str:
        return f"{self.project}-lbtrain-artifacts"


def firestore_location_for(region: str) -> str:
    """The Firestore multi-region nearest the region (nam5 / eur3), else the region itself."""
    if region.startswith(("us-", "northamerica-")):
        return "nam5"
    if region.startswith("europe-"):
        return "eur3"
    return region


def apis() -> list[str]:
    """The services apis.tf enables (read from it, so the two lists cannot drift)."""
    text = (TF_DIR / "apis.tf").read_text()
    return sorted(set(re.findall(r'"([a-z0-9.-]+\.googleapis\.com)"', text)))


def resources() -> list[str]:
    """Every resource address declared under infra/terraform (`type.name`)."""
    found = []
    for path in sorted(TF_DIR.glob("*.tf")):
        found += [f"{t}.{n}" for t, n in re.findall(r'^resource\s+"(\w+)"\s+"(\w+)"', path.read_text(), re.M)]
    return found


def image_tag(explicit: str = "") -> str:
    """The tag to build and deploy: TAG, else the commit (plus a time stamp when the tree has changes, so
    a rebuild of edited files gets a new tag and Cloud Run a new revision)."""
    if explicit:
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", explicit):
            raise DeployError(f"TAG {explicit!r} is not a valid image tag")
        return explicit
    import time

    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"build-{stamp}"
    return f"{sha}-dirty-{stamp}" if dirty else sha


class Runner:
    """Runs commands, or only prints them (dry run). Commands are printed, never their stdin."""

    def __init__(self, dry_run: bool, out: object = None) -> None:
        self.dry_run = dry_run
        self.out = out or sys.stdout

    def say(self, line: str) -> None:
        print(line, file=self.out, flush=True)  # type: ignore[arg-type]

    def _show(self, mark: str, cmd: Sequence[str], note: str) -> None:
        self.say(f"{mark} {shlex.join(cmd)}" + (f"    # {note}" if note else ""))

    def run(self, cmd: Sequence[str], *, stdin: str | None = None, note: str = "", cwd: Path = ROOT,
            tolerate: bool = False) -> None:
        """A command that changes something; fails the deployment if it fails (unless `tolerate`)."""
        self._show("+", cmd, note)
        if self.dry_run:
            return
        try:
            result = subprocess.run(list(cmd), input=stdin, text=True, cwd=cwd)
        except FileNotFoundError as e:
            raise DeployError(f"{cmd[0]} is not installed (needed: gcloud, terraform >= 1.5)") from e
        if result.returncode != 0 and not tolerate:
            raise DeployError(f"failed (exit {result.returncode}): {shlex.join(cmd[:4])} …")

    def check(self, cmd: Sequence[str], *, note: str = "", cwd: Path = ROOT) -> str | None:
        """A read-only check: its stdout when it succeeds, None when it fails. A dry run assumes None (a
        first install), so the plan shows what would be created."""
        self._show("?", cmd, note)
        if self.dry_run:
            return None
        try:
            result = subprocess.run(list(cmd), capture_output=True, text=True, cwd=cwd)
        except FileNotFoundError as e:
            raise DeployError(f"{cmd[0]} is not installed (needed: gcloud, terraform >= 1.5)") from e
        return result.stdout.strip() if result.returncode == 0 else None


def tf(*args: str) -> list[str]:
    return ["terraform", f"-chdir={TF_DIR.relative_to(ROOT)}", *args]


def tf_vars(s: Settings, tag: str, *, create_firestore: bool | None = None) -> list[str]:
    """The -var flags; the Firestore ones only where the database is applied (decided by _firestore_create)."""
    values = {"project": s.project, "region": s.region, "deployment_name": s.deployment, "image_tag": tag,
              "deploy_dashboard": str(s.dashboard).lower(),
              "firestore_location": s.firestore_location or firestore_location_for(s.region)}
    if create_firestore is not None:
        values["create_firestore_database"] = str(create_firestore).lower()
    return [f"-var={k}={v}" for k, v in values.items()]


def gcloud(*args: str, project: str) -> list[str]:
    return ["gcloud", *args, f"--project={project}"]


def _select_workspace(r: Runner, s: Settings, *, create: bool) -> None:
    r.run(tf("init", "-input=false"))
    if create:
        r.run(tf("workspace", "select", "-or-create=true", s.workspace))
    else:
        r.run(tf("workspace", "select", s.workspace), note="fails when nothing was deployed from here")


def _secret_value(env_name: str, secret_id: str, generatable: bool) -> tuple[str, str]:
    """(value, where it came from). The value is returned to be piped to gcloud, nothing else."""
    value = os.environ.get(env_name, "")
    if value:
        return value, f"${env_name}"
    if sys.stdin.isatty():
        hint = " (empty: generate one)" if generatable else ""
        value = getpass.getpass(f"{env_name} for secret {secret_id}{hint}: ")
        if value:
            return value, "typed"
    if generatable:
        return secrets.token_urlsafe(32), "generated"
    raise DeployError(f"{env_name} is needed for secret {secret_id}: set it in the environment or run "
                      "from a terminal to type it")


def _add_secret_values(r: Runner, s: Settings) -> None:
    for env_name, (secret_id, generatable) in SECRETS.items():
        found = r.check(gcloud("secrets", "versions", "list", secret_id, "--filter=state:ENABLED", "--limit=1",
                               "--format=value(name)", project=s.project))
        if found:
            r.say(f"  {secret_id} has a version: left alone")
            continue
        if found is None and not r.dry_run:
            # The secret exists (step 3): a failed listing is access or network, not "no version".
            raise DeployError(f"could not list the versions of secret {secret_id}")
        add = gcloud("secrets", "versions", "add", secret_id, "--data-file=-", project=s.project)
        if r.dry_run:
            source = f"${env_name}" if os.environ.get(env_name) else (
                "typed (no echo), else generated" if generatable else "typed (no echo)")
            r.run(add, note=f"if none; value on stdin from {source}")
            continue
        value, source = _secret_value(env_name, secret_id, generatable)
        r.run(add, stdin=value, note=f"value on stdin from {source}")
        if source == "generated":
            r.say(f"  read it with: gcloud secrets versions access latest --secret={secret_id} "
                  f"--project={s.project}")


def _images_present(r: Runner, s: Settings, tag: str) -> bool:
    for image in IMAGES:
        if image == "dashboard" and not s.dashboard:
            continue
        if r.check(gcloud("artifacts", "docker", "images", "describe", f"{s.registry}/{image}:{tag}",
                          "--format=value(image_summary.digest)", project=s.project)) is None:
            return False
    return True


def _firestore_create(r: Runner, s: Settings) -> bool:
    """Create the (default) database unless the project has one this state does not hold."""
    if r.check(tf("state", "list", "google_firestore_database.default")):
        return True  # Terraform's own: keep managing it
    exists = r.check(gcloud("firestore", "databases", "describe", "--database=(default)", "--format=value(name)",
                            project=s.project), note="an existing database is used, not created")
    return exists is None


def deploy(s: Settings, r: Runner) -> dict[str, str]:
    tag = image_tag(s.tag)
    r.say(f"# lbtrain deploy: project {s.project}, region {s.region}, deployment {s.deployment}, tag {tag}")
    r.say("# 1. APIs")
    r.run(gcloud("services", "enable", *apis(), project=s.project))
    r.say("# 2. Terraform state (workspace per project and deployment)")
    _select_workspace(r, s, create=True)
    r.say("# 3. Artifact Registry repository and (empty) secrets")
    r.run(tf("apply", "-input=false", "-auto-approve", *[f"-target={t}" for t in BOOTSTRAP_TARGETS],
             *tf_vars(s, tag)))
    r.say("# 4. Secret values (only where a secret has none)")
    _add_secret_values(r, s)
    r.say("# 5. Images (cloudbuild.yaml; services are rolled by step 6)")
    if _images_present(r, s, tag):
        r.say(f"  every image of {tag} is in {s.registry}: not rebuilt")
    else:
        subs = {"_REGION": s.region, "_DEPLOYMENT": s.deployment, "_DEPLOY_DASHBOARD": str(s.dashboard).lower(),
                "_ROLLOUT": "false", "COMMIT_SHA": tag}
        r.run(gcloud("builds", "submit", "--config=cloudbuild.yaml",
                     "--substitutions=" + ",".join(f"{k}={v}" for k, v in subs.items()), ".", project=s.project),
              note="if any image is missing")
    r.say("# 6. Everything else, on these images")
    create_db = _firestore_create(r, s)
    r.run(tf("apply", "-input=false", "-auto-approve", *tf_vars(s, tag, create_firestore=create_db)))
    r.say("# 7. URLs")
    urls = {}
    for name in ("labelbox_url", "webhook_url", "ingress_url", "dashboard_url"):
        urls[name] = r.check(tf("output", "-raw", name)) or f"<{name}>"
    r.say("")
    r.say(f"Labelbox model-training integration URL (paste it in Labelbox): {urls['labelbox_url']}")
    r.say(f"Webhook endpoint: {urls['webhook_url']}")
    r.say(f"REST API (LBTRAIN_API_URL): {urls['ingress_url']}")
    if s.dashboard:
        r.say(f"Dashboard (IAM-protected, or: gcloud run services proxy {s.deployment}-dashboard "
              f"--region={s.region} --project={s.project}): {urls['dashboard_url']}")
    r.say(f"Webhook secret for Labelbox: gcloud secrets versions access latest "
          f"--secret={SECRETS['LABELBOX_WEBHOOK_SECRET'][0]} --project={s.project}")
    return urls


def teardown(s: Settings, r: Runner, *, keep_data: bool = True) -> None:
    kept = "keeping the artifact bucket and Firestore data" if keep_data else "DELETING the bucket and Firestore data"
    r.say(f"# lbtrain teardown: project {s.project}, deployment {s.deployment}, {kept}")
    if not (r.dry_run or s.auto_approve):
        if not sys.stdin.isatty():
            raise DeployError("teardown asks for confirmation: run it from a terminal or pass AUTO_APPROVE=1")
        answer = input(f"Type the project id ({s.project}) to tear down {s.deployment}: ")
        if answer.strip() != s.project:
            raise DeployError("not confirmed: nothing was changed")
    r.say("# 1. Terraform state")
    _select_workspace(r, s, create=False)
    # Destroy only needs the variables to evaluate the configuration; the tag is irrelevant.
    tfv = tf_vars(s, "teardown")
    if keep_data:
        r.say("# 2. Everything but the data (kept resources stay in the state for the next deploy)")
        keep = set(DATA_RESOURCES) | set(ALWAYS_KEPT)
        targets = [f"-target={a}" for a in resources() if a not in keep]
        r.run(tf("destroy", "-input=false", "-auto-approve", *targets, *tfv))
        r.say(f"Kept: gs://… artifact bucket ({s.default_bucket} unless overridden), the Firestore database "
              "and its indexes. `make teardown KEEP_DATA=0` deletes them.")
        return
    r.say("# 2. Data: empty the bucket, note whether this state created the Firestore database")
    bucket = r.check(tf("output", "-raw", "artifact_bucket")) or s.default_bucket
    if r.check(gcloud("storage", "buckets", "describe", f"gs://{bucket}", "--format=value(name)",
                      project=s.project)) is not None or r.dry_run:
        r.run(gcloud("storage", "rm", "--recursive", "--all-versions", f"gs://{bucket}/**", project=s.project),
              note="if the bucket exists; an empty one fails harmlessly", tolerate=True)
    ours = r.check(tf("state", "list", "google_firestore_database.default"))
    r.say("# 3. Everything")
    r.run(tf("destroy", "-input=false", "-auto-approve", *tfv))
    if ours or r.dry_run:
        r.say("# 4. The Firestore database Terraform created (it only abandons it)")
        db = ["firestore", "databases"]
        r.run(gcloud(*db, "update", "--database=(default)", "--no-delete-protection", project=s.project),
              note="if this state created it")
        r.run(gcloud(*db, "delete", "--database=(default)", "--quiet", project=s.project),
              note="if this state created it")


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lbtrain.deploy", description=__doc__.split("\n")[0])
    p.add_argument("action", choices=["deploy", "teardown"])
    p.add_argument("--project", default=os.environ.get("PROJECT", ""))
    p.add_argument("--region", default=os.environ.get("REGION", ""))
    p.add_argument("--deployment", default=os.environ.get("DEPLOYMENT") or "prod")
    p.add_argument("--tag", default=os.environ.get("TAG", ""), help="image tag (default: the commit)")
    p.add_argument("--no-dashboard", action="store_true", default=os.environ.get("DASHBOARD", "1") == "0")
    p.add_argument("--firestore-location", default=os.environ.get("FIRESTORE_LOCATION", ""))
    p.add_argument("--dry-run", action="store_true", default=_flag(os.environ.get("DRY_RUN")))
    p.add_argument("--auto-approve", action="store_true", default=_flag(os.environ.get("AUTO_APPROVE")))
    p.add_argument("--delete-data", action="store_true", default=os.environ.get("KEEP_DATA", "1") == "0",
                   help="teardown: delete the artifact bucket and the Firestore database too")
    args = p.parse_args(argv)
    if not args.project or not args.region:
        p.error("PROJECT and REGION are required (make deploy PROJECT=my-project REGION=us-central1)")
    if not re.fullmatch(r"[a-z][a-z0-9-]{0,19}", args.deployment):
        p.error("DEPLOYMENT: lowercase letters, digits and '-', starting with a letter, at most 20 characters")
    s = Settings(project=args.project, region=args.region, deployment=args.deployment, tag=args.tag,
                 dashboard=not args.no_dashboard, firestore_location=args.firestore_location,
                 dry_run=args.dry_run, auto_approve=args.auto_approve)
    r = Runner(args.dry_run)
    if args.dry_run:
        r.say("# DRY_RUN: printing the commands, running none ('?' = a check, whose result decides the next)")
    try:
        if args.action == "deploy":
            deploy(s, r)
        else:
            teardown(s, r, keep_data=not args.delete_data)
    except DeployError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
