"""deploy: champion/challenger gate, then serve the model and undeploy the one it replaces (DESIGN §4).

The champion of a model type is `{ARTIFACT_ROOT}/models/{model_type}/champion.json`. A new model
is deployed when its headline metric is at least the champion's or there is no champion. A better
champion whose server is dead (the local stack restarted) is served again instead. The new server
must be healthy before champion.json names it; only then is the old server stopped. A file lock
serializes deploys of one model type.
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Iterator
from typing import Any

from jobs import serving
from jobs.context import StageContext, StageResult
from jobs.tasks.base import MODEL_DIR, JobError
from lbtrain import pipelines, storage


def champion_uri(artifact_root: str, model_type: str) -> str:
    return storage.join(artifact_root, "models", model_type, "champion.json")


@contextlib.contextmanager
def _locked(uri: str) -> Iterator[None]:
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


def run(ctx: StageContext) -> StageResult:
    metric = pipelines.get(ctx.model_type).headline_metric
    evaluated = ctx.upstream_outputs("evaluate").get("metrics") or {}
    value = evaluated.get(metric)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise JobError(f"the evaluate stage reported no {metric!r} metric to compare with the champion")
    model_dir = ctx.upstream_artifact("train", "model", MODEL_DIR)
    root = ctx.config.artifact_root
    champ_uri = champion_uri(root, ctx.model_type)

    with _locked(champ_uri + ".lock"):
        champion = storage.read_json(champ_uri) if storage.exists(champ_uri) else None
        alive = serving.is_alive(champion)
        deploy, reason = decide(float(value), metric, champion, alive, ctx.run_id)
        ctx.progress(f"gate: {'deploy' if deploy else 'keep champion'}: {reason}", deploy=deploy)
        endpoint = champion["endpoint"] if champion and champion.get("run_id") == ctx.run_id and alive else ""
        if deploy:
            record = serving.start(model_dir, root, ctx.model_type, ctx.run_id)
            endpoint = record["endpoint"]
            new = {
                "run_id": ctx.run_id,
                "model_type": ctx.model_type,
                "metric": metric,
                "value": float(value),
                "model_uri": model_dir,
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
            record = serving.start(champion["model_uri"], root, ctx.model_type, str(champion["run_id"]))
            champion = {**champion, "endpoint": record["endpoint"], "health_url": record["health_url"],
                        "pid": record["pid"]}
            storage.write_json(champ_uri, champion)
            reason += f"; champion run {champion['run_id']} was not running: restarted at {record['endpoint']}"
            ctx.progress(reason)

    result = {
        "deployed": deploy,
        "reason": reason,
        "endpoint": endpoint,
        "champion_run_id": (champion or {}).get("run_id", ""),
        "champion_endpoint": (champion or {}).get("endpoint", ""),
        "metric": metric,
        "value": float(value),
        "champion_value": (champion or {}).get("value"),
    }
    deployment_uri = ctx.out("deployment.json")
    storage.write_json(deployment_uri, result)
    return StageResult(
        uris={"deployment": deployment_uri, "champion": champ_uri, "model": model_dir}, metrics=result
    )
