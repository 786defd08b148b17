"""deploy: champion/challenger gate, then serve the model and undeploy the one it replaces (docs/architecture.md §4).

The champion of a model type is `{ARTIFACT_ROOT}/models/{model_type}/champion.json`. A new model
is deployed when its headline metric is at least the champion's or there is no champion. A better
champion whose server is dead (the local stack restarted) is served again instead. The new server
must be healthy before champion.json names it; only then is the old server stopped. A file lock
serializes deploys of one model type.

With JOB_BACKEND=vertex the model goes to the Model Registry and a Vertex endpoint instead
(jobs/vertex_deploy.py); "alive" is then "the champion's model is deployed on its endpoint", read
from Vertex. Under a gs:// ARTIFACT_ROOT no file lock is possible: a lease object
(`champion.json.lock`) taken and released by compare-and-swap on its GCS generation serializes the
deploys, and champion.json itself is written only if still at the generation that was read.
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Iterator
from typing import Any

from jobs import cloudrun_deploy, serving, vertex_deploy
from jobs.context import StageContext, StageResult
from jobs.tasks.base import MODEL_DIR, JobError
from lbtrain import pipelines, storage


def champion_uri(artifact_root: str, model_type: str) -> str:
    return storage.join(artifact_root, "models", model_type, "champion.json")


LEASE_SECONDS = 3600.0  # a deploy holding the lease longer is presumed dead (Vertex deploys take ~20 min)
LEASE_WAIT_SECONDS = 3600.0
LEASE_POLL_SECONDS = 10.0


@contextlib.contextmanager
def _gcs_lease(uri: str, holder: str, wait: float = LEASE_WAIT_SECONDS,
               poll: float = LEASE_POLL_SECONDS) -> Iterator[None]:
    """Hold the lease object `uri`: created/taken over only by compare-and-swap on its generation."""
    deadline = time.monotonic() + wait
    while True:
        current, generation = storage.read_json_generation(uri)
        now = time.time()
        free = current is None or current.get("holder") == holder or float(current.get("expires_at", 0)) < now
        if free:
            try:
                generation = storage.write_json_if_generation(
                    uri, {"holder": holder, "expires_at": now + LEASE_SECONDS}, generation)
                break
            except storage.GenerationMismatch:
                continue  # another deploy took it between our read and write: look again
        if time.monotonic() >= deadline:
            raise JobError(f"another deploy ({current.get('holder')}) holds {uri} until "
                           f"{time.strftime('%H:%M:%SZ', time.gmtime(float(current.get('expires_at', 0))))}; "
                           f"gave up after waiting {wait:.0f}s")
        time.sleep(poll)
    try:
        yield
    finally:
        with contextlib.suppress(storage.GenerationMismatch):
            storage.delete_if_generation(uri, generation)


@contextlib.contextmanager
def _locked(uri: str, holder: str = "") -> Iterator[None]:
    if storage.is_gcs(uri):
        with _gcs_lease(uri, holder):
            yield
        return
    path = storage.local_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def decide(
    value: float, metric: str, champion: dict[str, Any] | None, champion_alive: bool, run_id: str
) -> tuple[bool, str]:
    """(deploy?, reason). Pure, so the gate is testable without processes."""
    if champion is None:
        return True, "no champion yet"
    if champion.get("run_id") == run_id:
        return (
            (False, "already the champion")
            if champion_alive
            else (True, "champion (this run) is not running")
        )
    if champion.get("metric") != metric or not isinstance(champion.get("value"), int | float):
        return True, f"champion has no comparable {metric}"
    if value >= champion["value"]:
        return (
            True,
            f"{metric} {value:.4f} >= champion {champion['value']:.4f} (run {champion.get('run_id')})",
        )
    return False, f"{metric} {value:.4f} < champion {champion['value']:.4f} (run {champion.get('run_id')})"


def _result(ctx: StageContext, deploy: bool, reason: str, endpoint: str, champion: dict[str, Any] | None,
            metric: str, value: float, champ_uri: str, model_uri: str) -> StageResult:
    result = {
        "deployed": deploy,
        "reason": reason,
        "endpoint": endpoint,
        "champion_run_id": (champion or {}).get("run_id", ""),
        "champion_endpoint": (champion or {}).get("endpoint", ""),
        "metric": metric,
        "value": value,
        "champion_value": (champion or {}).get("value"),
    }
    deployment_uri = ctx.out("deployment.json")
    storage.write_json(deployment_uri, result)
    return StageResult(
        uris={"deployment": deployment_uri, "champion": champ_uri, "model": model_uri}, metrics=result
    )


def _record_champion(ctx: StageContext, champ_uri: str, new: dict[str, Any], generation: Any) -> None:
    """Write the champion record unless someone else wrote it since it was read (the lease expired)."""
    try:
        storage.write_json_if_generation(champ_uri, new, generation)
    except storage.GenerationMismatch:
        raise JobError(f"{champ_uri} changed while this deploy held its lease (the lease expired?): "
                       f"run {ctx.run_id} is deployed but not recorded as champion; retry the deploy") from None


def _vertex_alive(ctx: StageContext, champion: dict[str, Any] | None) -> bool:
    return bool(champion) and vertex_deploy.is_deployed(
        ctx.config, str(champion.get("vertex_endpoint", "")), str(champion.get("vertex_model", "")))


def _vertex_serve(ctx: StageContext, model_uri: str, vertex_model: str, run_id: str) -> dict[str, str]:
    """Deploy this run's model (uploaded once; an AutoML model as registered) on the model type's endpoint."""
    config = ctx.config
    if vertex_model:  # AutoML's own model, or a champion to deploy again
        model = vertex_deploy.get_model(config, vertex_model)
    else:
        model = vertex_deploy.upload_model(config, model_uri, run_id, ctx.model_type, ctx.model_sha256)
        ctx.progress(f"model of run {run_id} in the Model Registry: {model.resource_name}")
    machine = vertex_deploy.machine_for(config, model)
    endpoint, created = vertex_deploy.ensure_endpoint(config, ctx.model_type)
    deployed_id = vertex_deploy.deploy(endpoint, model, machine, created=created)
    return {
        "vertex_model": vertex_deploy.unversioned(model.resource_name),
        "vertex_endpoint": endpoint.resource_name,
        "deployed_model_id": deployed_id,
        "endpoint": vertex_deploy.predict_url(config, endpoint.resource_name),
    }


def _run_vertex(ctx: StageContext, metric: str, value: float, model_dir: str) -> StageResult:
    """The same gate and champion record, served by a Vertex endpoint (jobs/vertex_deploy.py)."""
    train_uris = ctx.upstream_outputs("train").get("uris") or {}
    vertex_model = str(train_uris.get("vertex_model") or "")
    model_uri = vertex_model or model_dir
    champ_uri = champion_uri(ctx.config.artifact_root, ctx.model_type)
    with _locked(champ_uri + ".lock", holder=f"{ctx.run_id}/a{ctx.attempt}"):
        champion, generation = storage.read_json_generation(champ_uri)
        alive = _vertex_alive(ctx, champion)
        deploy, reason = decide(value, metric, champion, alive, ctx.run_id)
        ctx.progress(f"gate: {'deploy' if deploy else 'keep champion'}: {reason}", deploy=deploy)
        endpoint = champion["endpoint"] if champion and champion.get("run_id") == ctx.run_id and alive else ""
        new: dict[str, Any] | None = None
        if deploy:
            served = _vertex_serve(ctx, model_uri, vertex_model, ctx.run_id)
            endpoint = served["endpoint"]
            new = {"run_id": ctx.run_id, "model_type": ctx.model_type, "metric": metric, "value": value,
                   "model_uri": model_uri, "model_sha256": ctx.model_sha256, **served,
                   "model_run_id": ctx.model_run_id, "attempt": ctx.attempt,
                   "deployed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            ctx.progress(f"deployed run {ctx.run_id} on {served['vertex_endpoint']}", endpoint=endpoint)
            if champion and champion.get("run_id") != ctx.run_id:
                ctx.progress(f"undeployed run {champion.get('run_id')} ({champion.get('vertex_model')})")
        elif champion and champion.get("run_id") == ctx.run_id:
            deploy = True  # idempotent re-run: this run is the live champion
        elif champion and not alive:
            # The better champion is no longer deployed (someone undeployed it): deploy it again rather
            # than let a worse model take its place.
            served = _vertex_serve(ctx, str(champion.get("model_uri", "")), str(champion.get("vertex_model", "")),
                                   str(champion["run_id"]))
            new = {**champion, **served}
            reason += (f"; champion run {champion['run_id']} was not deployed: "
                       f"deployed again on {served['vertex_endpoint']}")
            ctx.progress(reason)
        if new is not None:
            _record_champion(ctx, champ_uri, new, generation)
            champion = new
    return _result(ctx, deploy, reason, endpoint, champion, metric, value, champ_uri, model_uri)


def _run_cloudrun(ctx: StageContext, metric: str, value: float, model_dir: str) -> StageResult:
    """The same gate and champion record, served by a Cloud Run service (jobs/cloudrun_deploy.py): a
    revision per run, traffic moved only once it is ready, the superseded revision kept for rollback."""
    champ_uri = champion_uri(ctx.config.artifact_root, ctx.model_type)
    with _locked(champ_uri + ".lock", holder=f"{ctx.run_id}/a{ctx.attempt}"):
        champion, generation = storage.read_json_generation(champ_uri)
        alive = bool(champion) and cloudrun_deploy.is_serving(ctx.config, ctx.model_type,
                                                              str(champion.get("cloud_run_revision", "")))
        deploy, reason = decide(value, metric, champion, alive, ctx.run_id)
        ctx.progress(f"gate: {'deploy' if deploy else 'keep champion'}: {reason}", deploy=deploy)
        endpoint = champion["endpoint"] if champion and champion.get("run_id") == ctx.run_id and alive else ""
        new: dict[str, Any] | None = None
        if deploy:
            served = cloudrun_deploy.deploy(ctx.config, ctx.model_type, ctx.run_id, model_dir, ctx.model_sha256)
            endpoint = served["endpoint"]
            new = {"run_id": ctx.run_id, "model_type": ctx.model_type, "metric": metric, "value": value,
                   "model_uri": model_dir, "model_sha256": ctx.model_sha256, **served,
                   "model_run_id": ctx.model_run_id, "attempt": ctx.attempt,
                   "deployed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            ctx.progress(f"deployed run {ctx.run_id} as revision {served['cloud_run_revision']}", endpoint=endpoint)
        elif champion and champion.get("run_id") == ctx.run_id:
            deploy = True  # idempotent re-run: this run is the live champion
        elif champion and not alive:
            served = cloudrun_deploy.deploy(ctx.config, ctx.model_type, str(champion["run_id"]),
                                            str(champion.get("model_uri", "")), str(champion.get("model_sha256") or ""))
            new = {**champion, **served}
            reason += f"; champion run {champion['run_id']} was not serving: revision {served['cloud_run_revision']}"
            ctx.progress(reason)
        if new is not None:
            _record_champion(ctx, champ_uri, new, generation)
            champion = new
    return _result(ctx, deploy, reason, endpoint, champion, metric, value, champ_uri, model_dir)


def run(ctx: StageContext) -> StageResult:
    metric = pipelines.get(ctx.model_type).headline_metric
    evaluated = ctx.upstream_outputs("evaluate").get("metrics") or {}
    value = evaluated.get(metric)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise JobError(f"the evaluate stage reported no {metric!r} metric to compare with the champion")
    model_dir = ctx.upstream_artifact("train", "model", MODEL_DIR)
    where = cloudrun_deploy.serving_backend(ctx.config, ctx.model_type)  # SERVING_BACKENDS, else JOB_BACKEND
    if where == "cloudrun":
        return _run_cloudrun(ctx, metric, float(value), model_dir)
    if where == "vertex":
        return _run_vertex(ctx, metric, float(value), model_dir)
    root = ctx.config.artifact_root
    champ_uri = champion_uri(root, ctx.model_type)

    with _locked(champ_uri + ".lock", holder=f"{ctx.run_id}/a{ctx.attempt}"):
        champion = storage.read_json(champ_uri) if storage.exists(champ_uri) else None
        alive = serving.is_alive(champion)
        deploy, reason = decide(float(value), metric, champion, alive, ctx.run_id)
        ctx.progress(f"gate: {'deploy' if deploy else 'keep champion'}: {reason}", deploy=deploy)
        endpoint = champion["endpoint"] if champion and champion.get("run_id") == ctx.run_id and alive else ""
        if deploy:
            record = serving.start(model_dir, root, ctx.model_type, ctx.run_id, sha256=ctx.model_sha256)
            endpoint = record["endpoint"]
            new = {
                "run_id": ctx.run_id,
                "model_type": ctx.model_type,
                "metric": metric,
                "value": float(value),
                "model_uri": model_dir,
                "model_sha256": ctx.model_sha256,
                "endpoint": endpoint,
                "health_url": record["health_url"],
                "pid": record["pid"],
                "model_run_id": ctx.model_run_id,
                "attempt": ctx.attempt,
                "deployed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            storage.write_json(champ_uri, new)
            ctx.progress(f"deployed run {ctx.run_id} at {endpoint}", endpoint=endpoint)
            if champion and champion.get("run_id") != ctx.run_id:
                old = serving.record_path(root, ctx.model_type, str(champion.get("run_id")))
                stopped = serving.stop_record(serving.read_record(old) or champion, old)
                ctx.progress(
                    f"undeployed run {champion.get('run_id')}" + ("" if stopped else " (was not running)")
                )
            champion = new
        elif champion and champion.get("run_id") == ctx.run_id:
            deploy = True  # idempotent re-run: this run is the live champion
        elif champion and not alive:
            # The better champion's server is gone (e.g. the local stack restarted): serve it again
            # rather than let a worse model take its place.
            record = serving.start(champion["model_uri"], root, ctx.model_type, str(champion["run_id"]),
                                   sha256=str(champion.get("model_sha256") or ""))
            champion = {**champion, "endpoint": record["endpoint"], "health_url": record["health_url"],
                        "pid": record["pid"]}
            storage.write_json(champ_uri, champion)
            reason += f"; champion run {champion['run_id']} was not running: restarted at {record['endpoint']}"
            ctx.progress(reason)

    return _result(ctx, deploy, reason, endpoint, champion, metric, float(value), champ_uri, model_dir)
