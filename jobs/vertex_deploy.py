"""Deploy on Vertex AI: Model Registry upload with the project's serving image, one endpoint per
model type, deploy with all traffic, undeploy what it supersedes (docs/architecture.md §4, deploy).

Every step finds what an earlier execution already did (the model uploaded for this run, the
endpoint of this model type, the model already deployed), so a re-run repeats nothing. A
deployment that fails on an endpoint this call created deletes that endpoint again: no empty,
half-created endpoint is left behind. aiplatform comes from `lbtrain.adapters.vertex_client`.
"""

from __future__ import annotations

from typing import Any

from jobs import serving
from jobs.tasks.base import JobError
from lbtrain.adapters.vertex_backend import label_value
from lbtrain.adapters.vertex_client import aiplatform
from lbtrain.config import Config

REQUEST_TIMEOUT = 120.0  # each create/upload/deploy request; the operations themselves are awaited


def model_display_name(config: Config, model_type: str, run_id: str) -> str:
    return f"{config.deployment_name}-{model_type}-{run_id}"


def endpoint_display_name(config: Config, model_type: str) -> str:
    return f"{config.deployment_name}-{model_type}"


def model_labels(config: Config, model_type: str, run_id: str) -> dict[str, str]:
    return {"deployment": label_value(config.deployment_name), "run_id": label_value(run_id),
            "model_type": label_value(model_type)}


def endpoint_labels(config: Config, model_type: str) -> dict[str, str]:
    return {"deployment": label_value(config.deployment_name), "model_type": label_value(model_type)}


def _filter(labels: dict[str, str]) -> str:
    return " AND ".join(f'labels.{k}="{v}"' for k, v in sorted(labels.items()))


def unversioned(resource_name: str) -> str:
    """`…/models/123@2` → `…/models/123`."""
    return resource_name.split("@", 1)[0]


def find_model(config: Config, model_type: str, run_id: str) -> Any | None:
    """The model already uploaded for this run, if any (the oldest, should there be several)."""
    aip = aiplatform(config)
    found = aip.Model.list(filter=_filter(model_labels(config, model_type, run_id)))
    return sorted(found, key=lambda m: (str(m.create_time), m.resource_name))[0] if found else None


def upload_model(config: Config, model_dir_uri: str, run_id: str, model_type: str, sha256: str = "") -> Any:
    """This run's model in the Model Registry, served by the project's serving image (uploaded once);
    the container checks the model file against `sha256`, the digest its train step recorded."""
    if not config.serving_image:
        raise JobError("SERVING_IMAGE is not set: deploying on Vertex needs the serving image "
                       "(jobs/serving.Dockerfile) to upload the model with")
    if not model_dir_uri.startswith("gs://"):
        raise JobError(f"deploying on Vertex needs the model directory on gs:// (ARTIFACT_ROOT), not {model_dir_uri!r}")
    existing = find_model(config, model_type, run_id)
    if existing is not None:
        return existing
    aip = aiplatform(config)
    return aip.Model.upload(
        display_name=model_display_name(config, model_type, run_id),
        artifact_uri=model_dir_uri,  # Vertex copies it and hands it to the container as AIP_STORAGE_URI
        serving_container_image_uri=config.serving_image,
        serving_container_predict_route=serving.DEFAULT_PREDICT_ROUTE,
        serving_container_health_route=serving.DEFAULT_HEALTH_ROUTE,
        serving_container_environment_variables={serving.MODEL_SHA256_ENV: sha256} if sha256 else None,
        labels=model_labels(config, model_type, run_id),
        description=f"lbtrain {model_type} model of run {run_id}",
        upload_request_timeout=REQUEST_TIMEOUT,
    )


def get_model(config: Config, resource_name: str) -> Any:
    """An already registered model (AutoML trains its own), by resource name."""
    from google.api_core import exceptions as gexc

    try:
        return aiplatform(config).Model(model_name=resource_name)
    except gexc.NotFound:
        raise JobError(f"the Vertex model {resource_name} the train stage reported does not exist") from None


def find_endpoint(config: Config, model_type: str) -> Any | None:
    aip = aiplatform(config)
    found = aip.Endpoint.list(filter=_filter(endpoint_labels(config, model_type)))
    return sorted(found, key=lambda e: (str(e.create_time), e.resource_name))[0] if found else None


def ensure_endpoint(config: Config, model_type: str) -> tuple[Any, bool]:
    """(the endpoint of this model type, whether this call created it)."""
    existing = find_endpoint(config, model_type)
    if existing is not None:
        return existing, False
    aip = aiplatform(config)
    created = aip.Endpoint.create(
        display_name=endpoint_display_name(config, model_type),
        labels=endpoint_labels(config, model_type),
        create_request_timeout=REQUEST_TIMEOUT,
    )
    return created, True


def machine_for(config: Config, model: Any) -> str | None:
    """Our serving image gets the configured machine; a model without a container (AutoML) gets
    None, so the SDK asks for what it supports (automatic resources)."""
    spec = model.container_spec
    return config.serving_machine if spec is not None and spec.image_uri else None


def _deployed_id(endpoint: Any, model: Any) -> str:
    """The id of `model`'s deployment on `endpoint` (re-read from Vertex), or ''."""
    name = unversioned(model.resource_name)
    for deployed in endpoint.list_models():
        if unversioned(deployed.model) == name:
            return str(deployed.id)
    return ""


def deploy(endpoint: Any, model: Any, machine: str | None, *, created: bool = False) -> str:
    """Deploy `model` on `endpoint` with all traffic, then undeploy every other model there.

    `machine` (dedicated resources) for our custom-container models; None lets the SDK choose what
    the model supports (AutoML: automatic resources). Returns the deployed model id.
    """
    deployed_id = _deployed_id(endpoint, model)
    if not deployed_id:
        try:
            endpoint.deploy(model, traffic_percentage=100, machine_type=machine or None, min_replica_count=1,
                            max_replica_count=1, deploy_request_timeout=REQUEST_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - whatever failed, the message and the clean-up matter
            what = f"deploying model {model.resource_name} on endpoint {endpoint.resource_name} failed: {exc}"
            if created:
                try:
                    endpoint.delete(force=True)
                    what += "; deleted the endpoint created for it"
                except Exception as cleanup:  # noqa: BLE001
                    what += f"; deleting the endpoint created for it failed too: {cleanup}"
            raise JobError(what) from exc
        deployed_id = _deployed_id(endpoint, model)
        if not deployed_id:
            raise JobError(f"model {model.resource_name} is not on endpoint {endpoint.resource_name} after deploying")
    for deployed in endpoint.list_models():
        if str(deployed.id) != deployed_id:
            # Explicit split: the new model keeps all traffic whatever the superseded one had.
            endpoint.undeploy(str(deployed.id), traffic_split={deployed_id: 100})
    return deployed_id


def is_deployed(config: Config, endpoint_name: str, model_name: str) -> bool:
    """`model_name` is deployed on `endpoint_name` and receives traffic (read from Vertex)."""
    from google.api_core import exceptions as gexc

    if not endpoint_name or not model_name:
        return False
    try:
        endpoint = aiplatform(config).Endpoint(endpoint_name=endpoint_name)
    except gexc.NotFound:
        return False
    split = endpoint.traffic_split
    return any(unversioned(d.model) == unversioned(model_name) and split.get(str(d.id), 0) > 0
               for d in endpoint.list_models())


def predict_url(config: Config, endpoint_name: str) -> str:
    """The endpoint's online prediction URL."""
    base = config.vertex_api_endpoint or f"{config.region}-aiplatform.googleapis.com"
    if "://" not in base:
        base = "https://" + base
    return f"{base.rstrip('/')}/v1/{endpoint_name}:predict"
