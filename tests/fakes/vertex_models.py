"""Fake Vertex AI routes: the Model Registry and Endpoints (REST v1). See tests/fakes/vertex.py.

Models live in `fake.table("models")` keyed by id, endpoints in `fake.table("endpoints")`; another
route module (AutoML training) may put a trained model into the models table and it is served here.
Answered, as the aiplatform 2.7 REST transport sends them:

    POST   …/models:upload                        → done LRO, response UploadModelResponse
    GET    …/models/ID[@VERSION]  …/models?filter → Model / {"models": [...]}
    DELETE …/models/ID                            → done LRO (refused while deployed, like Vertex)
    POST   …/endpoints                            → done LRO, response Endpoint
    GET    …/endpoints/ID  …/endpoints?filter     → Endpoint / {"endpoints": [...]}
    POST   …/endpoints/ID:deployModel             → done LRO, response DeployModelResponse
    POST   …/endpoints/ID:undeployModel           → done LRO, response UndeployModelResponse
    DELETE …/endpoints/ID                         → done LRO (refused while models are deployed)

Long-running operations carry `@type` in their response and metadata: the client unpacks them by
type. Their effect happens when they complete (at once, or after `fake.lro_polls` polls).
`fail_next(fake, "deployModel", message)` (= `fake.inject("endpoints:deployModel", Failure(13, message))`)
makes the next such call's operation finish with an error, as a deployment whose container never
becomes healthy does on Vertex. A deployment asking for resources the model does not support
(dedicated for an AutoML model, automatic for a custom container) is refused, as Vertex does.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

if TYPE_CHECKING:
    from tests.fakes.vertex import FakeVertex

TYPE = "type.googleapis.com/google.cloud.aiplatform.v1."
EMPTY = {"@type": "type.googleapis.com/google.protobuf.Empty"}
PARENT = r"^/v1/(projects/[^/]+/locations/[^/]+)"
MODELS = re.compile(PARENT + r"/models(?::upload|/([^/:@]+)(?:@([^/:]+))?)?$")
ENDPOINTS = re.compile(PARENT + r"/endpoints(?:/([^/:]+)(?::(deployModel|undeployModel))?)?$")
DEDICATED = ["DEDICATED_RESOURCES", "SHARED_RESOURCES"]  # what Vertex reports for a custom-container model
AUTOMATIC = ["AUTOMATIC_RESOURCES"]  # … and for an AutoML image model (no container)


VERB_FAMILY = {"deployModel": "endpoints", "undeployModel": "endpoints", "upload": "models"}


def fail_next(fake: FakeVertex, method: str, message: str = "Model server never became ready.") -> None:
    """The next `method` call (e.g. "deployModel") ends in a failed operation with `message` (code 13)."""
    from tests.fakes.vertex import Failure

    fake.inject(f"{VERB_FAMILY.get(method, 'endpoints')}:{method}", Failure(13, message))


def _error(code: int, status: str, message: str) -> tuple[int, Any]:
    return code, {"error": {"code": code, "message": message, "status": status}}


def _now() -> str:
    from tests.fakes.vertex import _now as now

    return now()


def _filtered(items: list[dict[str, Any]], query: dict[str, list[str]]) -> list[dict[str, Any]]:
    from tests.fakes.vertex import _matches

    expression = unquote(query.get("filter", [""])[0])
    return [item for item in items if _matches(item, expression)]


def route(fake: FakeVertex, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any] | None:
    path = unquote(path)  # the client sends models/ID%40VERSION
    m = MODELS.match(path)
    if m:
        return _models(fake, method, path, m.group(1), m.group(2), query, body)
    m = ENDPOINTS.match(path)
    if m:
        return _endpoints(fake, method, m.group(1), m.group(2), m.group(3), query, body)
    return None


def add_model(fake: FakeVertex, parent: str, model: dict[str, Any], model_id: str = "") -> dict[str, Any]:
    """Register a model (upload, or a test/AutoML standing in for a trained model); returns it."""
    model_id = model_id or fake.new_id()
    stored = {
        "supportedDeploymentResourcesTypes": DEDICATED if model.get("containerSpec") else AUTOMATIC,
        **model,
        "name": f"{parent}/models/{model_id}",
        "versionId": "1",
        "versionAliases": ["default"],
        "createTime": _now(),
        "updateTime": _now(),
        "deployedModels": [],
    }
    fake.table("models")[model_id] = stored
    return stored


def _models(fake: FakeVertex, method: str, path: str, parent: str, model_id: str | None,
            query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
    models = fake.table("models")
    if path.endswith(":upload") and method == "POST":
        model_id = body.get("modelId") or fake.new_id()

        def upload() -> tuple[dict[str, Any], None]:
            model = add_model(fake, parent, body["model"], model_id)
            return {"@type": TYPE + "UploadModelResponse", "model": model["name"], "modelVersionId": "1"}, None

        return 200, fake.operation(f"{parent}/models/{model_id}", effect=upload,
                                   metadata="UploadModelOperationMetadata", fate=fake.fate("models:upload"))
    if model_id is None and method == "GET":
        return 200, {"models": _filtered([m for m in models.values() if m["name"].startswith(parent + "/")], query)}
    from tests.fakes.vertex import not_found

    if model_id not in models:
        return not_found(f"model {parent}/models/{model_id}")
    model = models[model_id]
    if method == "GET":
        return 200, model
    if method == "DELETE":
        if model["deployedModels"]:
            return _error(400, "FAILED_PRECONDITION", f"model {model['name']} is deployed: undeploy it first")
        def delete_model() -> tuple[dict[str, Any], None]:
            models.pop(model_id, None)
            return EMPTY, None

        return 200, fake.operation(model["name"], effect=delete_model, metadata="DeleteOperationMetadata")
    return _error(405, "UNIMPLEMENTED", f"{method} {path}")


def _endpoints(fake: FakeVertex, method: str, parent: str, endpoint_id: str | None, verb: str | None,
               query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
    from tests.fakes.vertex import not_found

    endpoints = fake.table("endpoints")
    if endpoint_id is None:
        if method == "POST":
            new_id = query.get("endpointId", [""])[0] or fake.new_id()

            def create() -> tuple[dict[str, Any], None]:
                endpoint = {**body, "name": f"{parent}/endpoints/{new_id}", "deployedModels": [],
                            "trafficSplit": {}, "createTime": _now(), "updateTime": _now()}
                endpoints[new_id] = endpoint
                return {"@type": TYPE + "Endpoint", **endpoint}, None

            return 200, fake.operation(f"{parent}/endpoints/{new_id}", effect=create,
                                       metadata="CreateEndpointOperationMetadata", fate=fake.fate("endpoints"))
        if method == "GET":
            mine = [e for e in endpoints.values() if e["name"].startswith(parent + "/")]
            return 200, {"endpoints": _filtered(mine, query)}
    if endpoint_id not in endpoints:
        return not_found(f"endpoint {parent}/endpoints/{endpoint_id}")
    endpoint = endpoints[endpoint_id]
    if method == "GET" and verb is None:
        return 200, endpoint
    if method == "DELETE" and verb is None:
        if endpoint["deployedModels"]:
            return _error(400, "FAILED_PRECONDITION", f"endpoint {endpoint['name']} has deployed models")
        def delete_endpoint() -> tuple[dict[str, Any], None]:
            endpoints.pop(endpoint_id, None)
            return EMPTY, None

        return 200, fake.operation(endpoint["name"], effect=delete_endpoint, metadata="DeleteOperationMetadata")
    if method == "POST" and verb == "deployModel":
        return _deploy(fake, endpoint, body)
    if method == "POST" and verb == "undeployModel":
        return _undeploy(fake, endpoint, body)
    return _error(405, "UNIMPLEMENTED", f"{method} endpoint {verb or ''}")


def _model_of(fake: FakeVertex, name: str) -> dict[str, Any] | None:
    return fake.table("models").get(name.split("@", 1)[0].rsplit("/", 1)[-1])


def _deploy(fake: FakeVertex, endpoint: dict[str, Any], body: dict[str, Any]) -> tuple[int, Any]:
    deployed = dict(body["deployedModel"])
    model = _model_of(fake, deployed.get("model", ""))
    if model is None:
        return _error(404, "NOT_FOUND", f"model {deployed.get('model')} not found")
    split = {k: int(v) for k, v in (body.get("trafficSplit") or {}).items()}
    if split and sum(split.values()) != 100:
        return _error(400, "INVALID_ARGUMENT", f"traffic split {split} does not add up to 100")
    supported = model.get("supportedDeploymentResourcesTypes") or []
    asked = ("DEDICATED_RESOURCES" if "dedicatedResources" in deployed else
             "AUTOMATIC_RESOURCES" if "automaticResources" in deployed else "")
    if not asked or asked not in supported:
        return _error(400, "INVALID_ARGUMENT", f"Model {model['name']} does not support {asked or 'no resources'}; "
                      f"it supports {', '.join(supported)}.")
    deployed_id = fake.new_id()
    return 200, fake.operation(endpoint["name"], effect=lambda: _deployed(fake, endpoint, model, deployed,
                                                                          split, deployed_id),
                               metadata="DeployModelOperationMetadata", fate=fake.fate("endpoints:deployModel"))


def _deployed(fake: FakeVertex, endpoint: dict[str, Any], model: dict[str, Any], deployed: dict[str, Any],
              split: dict[str, int], deployed_id: str) -> tuple[dict[str, Any], None]:
    deployed["id"] = deployed_id
    name, _, version = deployed["model"].partition("@")  # Vertex answers the model and its version apart
    deployed.update(model=name, modelVersionId=version or model["versionId"])
    deployed.setdefault("displayName", model.get("displayName", ""))
    deployed["createTime"] = _now()
    endpoint["deployedModels"].append(deployed)
    endpoint["trafficSplit"] = {(deployed["id"] if k == "0" else k): v for k, v in split.items() if v}
    endpoint["updateTime"] = _now()
    model["deployedModels"].append({"endpoint": endpoint["name"], "deployedModelId": deployed["id"]})
    return {"@type": TYPE + "DeployModelResponse", "deployedModel": deployed}, None


def _undeploy(fake: FakeVertex, endpoint: dict[str, Any], body: dict[str, Any]) -> tuple[int, Any]:
    deployed_id = body.get("deployedModelId", "")
    found = [d for d in endpoint["deployedModels"] if d["id"] == deployed_id]
    if not found:
        return _error(404, "NOT_FOUND", f"deployed model {deployed_id} not on {endpoint['name']}")
    # Vertex: a given trafficSplit replaces the endpoint's; an empty one keeps it, and the model
    # being undeployed must then have no traffic.
    split = {k: int(v) for k, v in (body.get("trafficSplit") or {}).items()}
    remaining = [d for d in endpoint["deployedModels"] if d["id"] != deployed_id]
    if split and (split.get(deployed_id) or sum(split.values()) != 100):
        return _error(400, "INVALID_ARGUMENT", f"traffic split {split} is not 100% on the remaining models")
    if not split and remaining and endpoint["trafficSplit"].get(deployed_id):
        return _error(400, "FAILED_PRECONDITION", f"deployed model {deployed_id} still has traffic")
    current = split or {k: v for k, v in endpoint["trafficSplit"].items() if k != deployed_id}

    def undeploy() -> tuple[dict[str, Any], None]:
        endpoint["deployedModels"] = [d for d in endpoint["deployedModels"] if d["id"] != deployed_id]
        endpoint["trafficSplit"] = current if endpoint["deployedModels"] else {}
        endpoint["updateTime"] = _now()
        model = _model_of(fake, found[0].get("model", ""))
        if model is not None:
            model["deployedModels"] = [r for r in model["deployedModels"] if r["deployedModelId"] != deployed_id]
        return {"@type": TYPE + "UndeployModelResponse"}, None

    return 200, fake.operation(endpoint["name"], effect=undeploy, metadata="UndeployModelOperationMetadata",
                               fate=fake.fate("endpoints:undeployModel"))
