"""Deploy on Cloud Run: the champion behind one Cloud Run service per model type, a revision per run.

Why: a Vertex endpoint keeps at least one node up around the clock; a Cloud Run service with min instances
0 costs nothing while nobody asks for predictions, and the serving contract (jobs/serving.py) is the same:
`AIP_STORAGE_URI` names the model directory on gs://, `AIP_HTTP_PORT`/`AIP_HEALTH_ROUTE`/`AIP_PREDICT_ROUTE`
the server's port and routes, `LBTRAIN_MODEL_SHA256` the model file's recorded digest.

Steps (each finds what an earlier execution already did, so a re-run repeats nothing):
1. the revision `{service}-{run id}` is created with no traffic (tag `run-…`); on an existing service the
   current traffic is kept as it is;
2. it must become Ready (Cloud Run's startup probe on the health route) before anything moves;
3. only then does all traffic go to it, the superseded revision kept under the tag `previous`, so
   `rollback` can move traffic back at once. Nothing is deleted.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from jobs import serving
from jobs.tasks.base import JobError
from lbtrain.adapters import cloudrun_client as crc
from lbtrain.adapters.cloudrun_backend import cloud_run_name
from lbtrain.adapters.dispatch_backend import most_specific
from lbtrain.adapters.vertex_backend import label_value
from lbtrain.config import Config

PORT = 8080
READY_TIMEOUT_S = 600.0
READY_POLL_S = 2.0
PREVIOUS_TAG = "previous"


@dataclass(frozen=True)
class Profile:
    """A model type's serving resources: what one instance needs and how many requests it takes at once."""

    cpu: str
    memory: str
    concurrency: int
    max_instances: int = 3


# Text models are small and answer in milliseconds; image models hold a CNN and decode images.
PROFILES: dict[str, Profile] = {
    "text_single_classification": Profile("1", "1Gi", 40),
    "text_multi_classification": Profile("1", "1Gi", 40),
    "ner": Profile("1", "1Gi", 20),
    "image_single_classification": Profile("2", "4Gi", 8),
    "image_multi_classification": Profile("2", "4Gi", 8),
    "bounding_box": Profile("2", "4Gi", 4),
}
DEFAULT_PROFILE = Profile("1", "2Gi", 10)


def serving_backend(config: Config, model_type: str) -> str:
    """Where `model_type`'s champion is served: SERVING_BACKENDS (model type glob → vertex|cloudrun|local),
    else the job backend's own (vertex → Vertex endpoints, cloudrun → Cloud Run, local → local servers)."""
    import json

    table = json.loads(config.serving_backends) if config.serving_backends else {}
    chosen = most_specific(table, f"{model_type}/deploy")
    return str(chosen) if chosen else config.job_backend


def service_id(config: Config, model_type: str) -> str:
    return cloud_run_name(f"{config.deployment_name}-serve-{model_type}")


def revision_id(config: Config, model_type: str, run_id: str) -> str:
    """`{service}-{run id}`: Cloud Run wants revision names prefixed by their service's."""
    suffix = re.sub(r"[^a-z0-9-]+", "-", run_id.lower()).strip("-")
    return f"{service_id(config, model_type)}-{suffix}"[:63].rstrip("-")


def run_tag(run_id: str) -> str:
    return ("run-" + re.sub(r"[^a-z0-9-]+", "-", run_id.lower()).strip("-"))[:46].rstrip("-")


def _service_name(config: Config, model_type: str) -> str:
    return f"{crc.location(config)}/services/{service_id(config, model_type)}"


def template(config: Config, model_type: str, run_id: str, model_uri: str, sha256: str) -> dict[str, Any]:
    """The revision template (pure, so tests can check it without the API)."""
    if not config.serving_image:
        raise JobError("SERVING_IMAGE is not set: serving on Cloud Run needs the serving image "
                       "(jobs/serving.Dockerfile)")
    if not model_uri.startswith("gs://"):
        raise JobError(f"serving on Cloud Run needs the model directory on gs:// (ARTIFACT_ROOT), not {model_uri!r}")
    profile = PROFILES.get(model_type, DEFAULT_PROFILE)
    env = {"AIP_STORAGE_URI": model_uri, "AIP_HTTP_PORT": str(PORT), "AIP_HEALTH_ROUTE": serving.DEFAULT_HEALTH_ROUTE,
           "AIP_PREDICT_ROUTE": serving.DEFAULT_PREDICT_ROUTE, "GOOGLE_CLOUD_PROJECT": config.project}
    if sha256:
        env[serving.MODEL_SHA256_ENV] = sha256
    if config.storage_emulator_host:
        env["STORAGE_EMULATOR_HOST"] = config.storage_emulator_host
    container = {
        "image": config.serving_image,
        "ports": [{"container_port": PORT}],
        "env": [{"name": k, "value": v} for k, v in env.items()],
        "resources": {"limits": {"cpu": profile.cpu, "memory": profile.memory}, "cpu_idle": True},
        "startup_probe": {"http_get": {"path": serving.DEFAULT_HEALTH_ROUTE, "port": PORT},
                          "period_seconds": 5, "failure_threshold": 60, "timeout_seconds": 3},
    }
    body: dict[str, Any] = {
        "revision": revision_id(config, model_type, run_id),
        "labels": {"deployment": label_value(config.deployment_name), "model_type": label_value(model_type),
                   "run_id": label_value(run_id)},
        "scaling": {"min_instance_count": 0, "max_instance_count": profile.max_instances},
        "max_instance_request_concurrency": profile.concurrency,
        "containers": [container],
    }
    if config.job_service_account:
        body["service_account"] = config.job_service_account
    return body


def _get_service(config: Config, model_type: str) -> Any | None:
    from google.api_core import exceptions as gexc

    try:
        return crc.services(config).get_service(name=_service_name(config, model_type), retry=crc.retry(),
                                                timeout=crc.CALL_TIMEOUT_S)
    except gexc.NotFound:
        return None


def _revision_exists(config: Config, model_type: str, revision: str) -> Any | None:
    from google.api_core import exceptions as gexc

    try:
        return crc.revisions(config).get_revision(name=f"{_service_name(config, model_type)}/revisions/{revision}",
                                                  retry=crc.retry(), timeout=crc.CALL_TIMEOUT_S)
    except gexc.NotFound:
        return None


def _serving_revisions(service: Any) -> list[tuple[str, int]]:
    return [(t.revision, t.percent) for t in service.traffic_statuses if t.percent > 0]


def _update(config: Config, service: Any) -> Any:
    op = crc.services(config).update_service(service=service, retry=crc.retry(), timeout=crc.CALL_TIMEOUT_S)
    return op.result(timeout=READY_TIMEOUT_S)


def _wait_ready(config: Config, model_type: str, revision: str) -> None:
    """The revision passed its startup probe (the health route), or JobError with Cloud Run's reason."""
    from google.cloud import run_v2

    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        found = _revision_exists(config, model_type, revision)
        ready = next((c for c in (found.conditions if found else []) if c.type_ == "Ready"), None)
        if ready is not None and ready.state == run_v2.Condition.State.CONDITION_SUCCEEDED:
            return
        if ready is not None and ready.state == run_v2.Condition.State.CONDITION_FAILED:
            raise JobError(f"Cloud Run revision {revision} did not become ready: {ready.message}")
        if time.monotonic() > deadline:
            raise JobError(f"Cloud Run revision {revision} not ready after {READY_TIMEOUT_S:.0f}s")
        time.sleep(READY_POLL_S)


def _create(config: Config, model_type: str, body: dict[str, Any], tag: str) -> Any | None:
    """Create the model type's service with this revision taking all traffic, which it gets only once Ready
    (the create fails if not). None when created; the service when another deploy (or a retried request)
    created it first, to be updated like any existing one."""
    from google.api_core import exceptions as gexc
    from google.cloud import run_v2

    revision = body["revision"]
    try:
        op = crc.services(config).create_service(
            parent=crc.location(config), service_id=service_id(config, model_type),
            service=run_v2.Service(template=run_v2.RevisionTemplate(**body),
                                   labels={"deployment": label_value(config.deployment_name),
                                           "model_type": label_value(model_type), "lbtrain": "serving"},
                                   traffic=[run_v2.TrafficTarget(
                                       type_=run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION,
                                       revision=revision, percent=100, tag=tag)]),
            retry=crc.retry(), timeout=crc.CALL_TIMEOUT_S)
        op.result(timeout=READY_TIMEOUT_S)
    except gexc.AlreadyExists:
        return _get_service(config, model_type)
    return None


def deploy(config: Config, model_type: str, run_id: str, model_uri: str, sha256: str = "") -> dict[str, str]:
    """Serve this run's model on its model type's service: new revision, ready, then all traffic to it."""
    from google.cloud import run_v2

    body = template(config, model_type, run_id, model_uri, sha256)
    revision = body["revision"]
    tag = run_tag(run_id)
    service = _get_service(config, model_type)
    if service is None:
        service = _create(config, model_type, body, tag)
    if service is None:
        _wait_ready(config, model_type, revision)
    else:
        serving_now = _serving_revisions(service)
        if _revision_exists(config, model_type, revision) is None:
            # 1. the new revision, no traffic: what serves now keeps serving.
            service.template = run_v2.RevisionTemplate(**body)
            service.traffic = [run_v2.TrafficTarget(
                type_=run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION,
                revision=r, percent=p) for r, p in serving_now] + [run_v2.TrafficTarget(
                    type_=run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION,
                    revision=revision, percent=0, tag=tag)]
            service = _update(config, service)
        # 2. healthy before anything moves.
        _wait_ready(config, model_type, revision)
        # 3. all traffic to it; the superseded revision kept, tagged for rollback.
        service = _get_service(config, model_type)
        tagged = next((t.revision for t in service.traffic_statuses if t.tag == PREVIOUS_TAG), "")
        # What served until now; on a re-run that already serves this revision, the rollback target stays.
        previous = next((r for r, _ in serving_now if r != revision), "") or (tagged if tagged != revision else "")
        targets = [run_v2.TrafficTarget(
            type_=run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION,
            revision=revision, percent=100, tag=tag)]
        if previous:
            targets.append(run_v2.TrafficTarget(
                type_=run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION,
                revision=previous, percent=0, tag=PREVIOUS_TAG))
        service.traffic = targets
        _update(config, service)
    service = _get_service(config, model_type)
    previous = next((t.revision for t in service.traffic_statuses if t.tag == PREVIOUS_TAG), "")
    return {"cloud_run_service": service.name, "cloud_run_revision": revision, "cloud_run_previous": previous,
            "service_url": service.uri, "endpoint": service.uri.rstrip("/") + serving.DEFAULT_PREDICT_ROUTE}


def is_serving(config: Config, model_type: str, revision: str) -> bool:
    """`revision` receives traffic on its model type's service (read from Cloud Run)."""
    if not revision:
        return False
    service = _get_service(config, model_type)
    return service is not None and any(r == revision for r, _ in _serving_revisions(service))


def rollback(config: Config, model_type: str) -> str:
    """All traffic back to the revision tagged `previous` (the superseded champion); returns its name.
    champion.json is not rewritten: the next deploy's gate decides again."""
    from google.cloud import run_v2

    service = _get_service(config, model_type)
    if service is None:
        raise JobError(f"no Cloud Run service for {model_type}")
    previous = next((t.revision for t in service.traffic_statuses if t.tag == PREVIOUS_TAG), "")
    current = next((r for r, p in _serving_revisions(service) if p == 100), "")
    if not previous:
        raise JobError(f"{service.name} has no revision tagged {PREVIOUS_TAG!r} to roll back to")
    kind = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION
    service.traffic = [run_v2.TrafficTarget(type_=kind, revision=previous, percent=100)] + (
        [run_v2.TrafficTarget(type_=kind, revision=current, percent=0, tag="rolled-back")] if current else [])
    _update(config, service)
    return previous
