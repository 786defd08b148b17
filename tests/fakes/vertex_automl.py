"""Fake Vertex AI routes for AutoML Image: datasets (create → LRO, get, list, import → LRO),
trainingPipelines (create, get, list) and batchPredictionJobs (create, get, list). See tests/fakes/vertex.py.

Behaviour a test steers with `configure(fake, ...)`:
  - a training pipeline is PENDING when created, RUNNING on its first GET and reaches `pipeline_outcome`
    (default SUCCEEDED) on the next; SUCCEEDED puts a model into `fake.table("models")` (name, displayName,
    labels) and sets the pipeline's `modelToUpload`; RUNNING keeps it running (`set_pipeline_state`
    moves it on command); a failure injected with `fake.inject("trainingPipelines", Failure(...))` is
    its outcome instead;
  - a batch prediction job is PENDING when created, RUNNING on its first GET and ends on the next
    (`batch_outcome`, or an injected `fake.inject("batchPredictionJobs", ...)`): SUCCEEDED, when the fake writes
    `predictions_00001.jsonl` under `outputInfo.gcsOutputDirectory` (GCS emulator) in the format of
    tests/data/vertex/automl-batch-prediction-*.txt: the ground truth of the imported dataset,
    except for the images whose URI contains one of `wrong` (single: the next label; multi: the first true
    label replaced by the next one not true; boxes: the first box moved off its object). Every box image
    also gets one low-confidence (0.02) stray box, as real detectors do. PARTIALLY_SUCCEEDED writes the
    same for the rows not `missing`, an `errors_00001.jsonl` for those, and reports `partialFailures`.
Dataset create and import are long-running operations (pending for `fake.lro_polls` polls).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.fakes.vertex import FakeVertex

V1 = "type.googleapis.com/google.cloud.aiplatform.v1."
PATH = re.compile(
    r"^/v1/projects/([^/]+)/locations/([^/]+)/(datasets|trainingPipelines|batchPredictionJobs|models)"
    r"(?:/([^/:]+))?(?::(\w+))?$"
)
OD_SCHEMA = "gs://google-cloud-aiplatform/schema/trainingjob/definition/automl_image_object_detection_1.0.0.yaml"
FAMILY = {"datasets": "automl_datasets", "trainingPipelines": "automl_pipelines",
          "batchPredictionJobs": "automl_batch_jobs"}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())


def settings(fake: FakeVertex) -> dict[str, Any]:
    return fake.table("automl").setdefault("settings", {"pipeline_outcome": "SUCCEEDED", "error": "", "wrong": [],
                                                         "missing": [], "batch_outcome": "SUCCEEDED",
                                                         "progress": True})


def configure(fake: FakeVertex, **values: Any) -> None:
    """pipeline_outcome (SUCCEEDED|FAILED|CANCELLED|RUNNING), error (message of a failed pipeline or
    batch job), wrong (URI substrings predicted wrongly), missing (URI substrings left without a
    prediction, counted as failed and listed in the errors file), batch_outcome
    (SUCCEEDED|FAILED|PARTIALLY_SUCCEEDED), progress (True: one state per read, PENDING → RUNNING →
    end; False: the end on the first read, for a stack whose jobs poll every automl_poll_seconds=60)."""
    settings(fake).update(values)


def _gcs() -> Any:
    from google.cloud import storage

    return storage.Client(project="fake-vertex")


def _read_gcs(uri: str) -> str:
    bucket, _, name = uri[5:].partition("/")
    return _gcs().bucket(bucket).blob(name).download_as_text(timeout=30)


def _write_gcs(uri: str, text: str) -> None:
    bucket, _, name = uri[5:].partition("/")
    _gcs().bucket(bucket).blob(name).upload_from_string(text, timeout=30)


def route(fake: FakeVertex, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any] | None:
    m = PATH.match(path)
    if not m:
        return None
    project, location, family, rid, verb = m.groups()
    parent = f"projects/{project}/locations/{location}"
    if family == "models":
        # Answered only when the models route (tried first) did not: a model our pipelines created.
        model = fake.table("models").get(rid or "")
        if method == "GET" and model is not None:
            return 200, model
        return None
    table = fake.table(FAMILY[family])
    if method == "POST" and rid is None:
        return _create(fake, parent, family, body)
    if method == "GET" and rid is None:
        from tests.fakes.vertex import _matches

        expression = query.get("filter", [""])[0]
        found = [r for r in table.values() if r["name"].startswith(parent) and _matches(r, expression)]
        return 200, {family: found}
    if rid not in table:
        from tests.fakes.vertex import not_found

        return not_found(f"{family} {rid}")
    record = table[rid]
    if method == "POST" and family == "datasets" and verb == "import":
        def imported() -> tuple[dict[str, Any], None]:
            record.setdefault("imports", []).extend(body.get("importConfigs", []))
            return {"@type": V1 + "ImportDataResponse"}, None

        return 200, fake.operation(record["name"], effect=imported, metadata="ImportDataOperationMetadata",
                                   fate=fake.fate("datasets:import"))
    if method == "GET" and verb is None:
        if family == "trainingPipelines":
            _advance_pipeline(fake, record)
        elif family == "batchPredictionJobs":
            _advance_batch(fake, record)
        return 200, {k: v for k, v in record.items() if k != "imports"}
    return 405, {"error": {"code": 405, "message": f"{method} {path} not supported by the fake"}}


def _create(fake: FakeVertex, parent: str, family: str, body: dict[str, Any]) -> tuple[int, Any]:
    from tests.fakes.vertex import not_found

    new_id = fake.new_id()
    record = {**body, "name": f"{parent}/{family}/{new_id}", "createTime": _now(), "updateTime": _now()}
    table = fake.table(FAMILY[family])
    if family == "datasets":
        def create() -> tuple[dict[str, Any], None]:
            record["etag"] = "e1"
            table[new_id] = record
            return {"@type": V1 + "Dataset", **record}, None

        return 200, fake.operation(record["name"], effect=create, metadata="CreateDatasetOperationMetadata",
                                   fate=fake.fate("datasets"))
    if family == "trainingPipelines":
        dataset_id = body.get("inputDataConfig", {}).get("datasetId", "")
        if dataset_id not in fake.table("automl_datasets"):
            return not_found(f"Dataset {parent}/datasets/{dataset_id}")
    elif _model_id(body.get("model", "")) not in fake.table("models"):
        return not_found(f"Model {body.get('model')}")
    table[new_id] = record
    record["state"] = "PIPELINE_STATE_PENDING" if family == "trainingPipelines" else "JOB_STATE_PENDING"
    fake.history.append((record["name"], record["state"]))
    fate = fake.fate(family)
    if fate is not None:
        fake.fated[record["name"]] = fate
    return 200, record


def _model_id(name: str) -> str:
    return name.rsplit("/", 1)[-1].split("@")[0]


def set_pipeline_state(fake: FakeVertex, pipeline_id: str, state: str, error: str = "", code: int = 9) -> None:
    """Move a pipeline (PENDING/RUNNING/SUCCEEDED/FAILED/CANCELLED); SUCCEEDED creates its model."""
    with fake.lock:
        record = fake.table("automl_pipelines")[pipeline_id]
        record["state"] = f"PIPELINE_STATE_{state}"
        record["updateTime"] = _now()
        fake.history.append((record["name"], record["state"]))
        if state == "RUNNING":
            record.setdefault("startTime", _now())
        if state in ("SUCCEEDED", "FAILED", "CANCELLED"):
            record.setdefault("endTime", _now())
        if error:
            record["error"] = {"code": code, "message": error}
        if state == "SUCCEEDED" and "name" not in record.get("modelToUpload", {}):
            parent = record["name"].split("/trainingPipelines/")[0]
            from tests.fakes.vertex_models import add_model

            wanted = record.get("modelToUpload") or {}
            model = add_model(fake, parent, {
                "displayName": wanted.get("displayName", ""), "labels": wanted.get("labels", {}),
                "trainingPipeline": record["name"], "metadataSchemaUri": record.get("trainingTaskDefinition", "")})
            record["modelToUpload"] = {**wanted, "name": model["name"], "versionId": "1"}


def _advance_pipeline(fake: FakeVertex, record: dict[str, Any]) -> None:
    """One state per read: PENDING → RUNNING → the configured (or injected) outcome."""
    pipeline_id = record["name"].rsplit("/", 1)[-1]
    if record["state"] == "PIPELINE_STATE_PENDING":
        set_pipeline_state(fake, pipeline_id, "RUNNING")
        if settings(fake)["progress"]:
            return
    if record["state"] != "PIPELINE_STATE_RUNNING" or record.get("endTime"):
        return
    fate = fake.fated.get(record["name"])
    if fate is not None:
        set_pipeline_state(fake, pipeline_id, fate.state, fate.message, fate.code)
        return
    s = settings(fake)
    if s["pipeline_outcome"] != "RUNNING":
        set_pipeline_state(fake, pipeline_id, s["pipeline_outcome"],
                           s["error"] if s["pipeline_outcome"] == "FAILED" else "")


# --- batch prediction ---------------------------------------------------------------------------


def _spec_id(name: str) -> str:
    return str(int(hashlib.sha1(name.encode()).hexdigest()[:15], 16))


def _truth(fake: FakeVertex, model_name: str) -> tuple[dict[str, dict[str, Any]], bool]:
    """imageGcsUri → import line of the dataset the model was trained on; and whether it is detection."""
    model = fake.table("models")[model_name.rsplit("/", 1)[-1].split("@")[0]]
    pipeline = fake.table("automl_pipelines")[model["trainingPipeline"].rsplit("/", 1)[-1]]
    dataset = fake.table("automl_datasets")[pipeline["inputDataConfig"]["datasetId"]]
    truth: dict[str, dict[str, Any]] = {}
    for config in dataset.get("imports", []):
        for uri in config["gcsSource"]["uris"]:
            for line in _read_gcs(uri).splitlines():
                if line.strip():
                    item = json.loads(line)
                    truth[item["imageGcsUri"]] = item
    return truth, pipeline["trainingTaskDefinition"] == OD_SCHEMA


def _classification(item: dict[str, Any] | None, labels: list[str], wrong: bool) -> dict[str, Any]:
    if item is None:
        true: list[str] = labels[:1]
    elif "classificationAnnotation" in item:
        true = [item["classificationAnnotation"]["displayName"]]
    else:
        true = [a["displayName"] for a in item.get("classificationAnnotations", [])]
    if wrong and true:
        first = true[0]
        start = labels.index(first)
        replacement = next(labels[(start + k) % len(labels)] for k in range(1, len(labels) + 1)
                           if labels[(start + k) % len(labels)] not in true or len(labels) == 1)
        true = [replacement] + true[1:]
    scored = [(0.9 - 0.01 * i, n) for i, n in enumerate(true)]
    scored += [(0.05 - 0.001 * i, n) for i, n in enumerate(n for n in labels if n not in true)]
    scored.sort(key=lambda t: -t[0])
    return {"ids": [_spec_id(n) for _, n in scored], "displayNames": [n for _, n in scored],
            "confidences": [round(c, 6) for c, _ in scored]}


def _detection(item: dict[str, Any] | None, labels: list[str], wrong: bool) -> dict[str, Any]:
    found: list[tuple[float, str, list[float]]] = []
    for i, a in enumerate((item or {}).get("boundingBoxAnnotations", [])):
        x0, x1, y0, y1 = a["xMin"], a["xMax"], a["yMin"], a["yMax"]
        if wrong and i == 0:  # moved by its own width: IoU with the object is 0
            w = x1 - x0
            x0, x1 = (x0 + w, x1 + w) if x1 + w <= 1.0 else (x0 - w, x1 - w)
        found.append((0.95 - 0.01 * i, a["displayName"], [x0, x1, y0, y1]))
    if labels:
        found.append((0.02, labels[0], [0.0, 0.05, 0.0, 0.05]))
    found.sort(key=lambda t: -t[0])
    return {"ids": [_spec_id(n) for _, n, _ in found], "displayNames": [n for _, n, _ in found],
            "confidences": [c for c, _, _ in found], "bboxes": [[round(v, 6) for v in b] for _, _, b in found]}


def _advance_batch(fake: FakeVertex, record: dict[str, Any]) -> None:
    """One state per read: PENDING → RUNNING → the configured (or injected) outcome."""
    if record["state"] == "JOB_STATE_PENDING":
        record.update(state="JOB_STATE_RUNNING", updateTime=_now(), startTime=_now())
        fake.history.append((record["name"], record["state"]))
        if settings(fake)["progress"]:
            return
    if record["state"] != "JOB_STATE_RUNNING":
        return
    s = settings(fake)
    fate = fake.fated.get(record["name"])
    outcome = fate.state if fate is not None else s["batch_outcome"]
    if outcome not in ("SUCCEEDED", "PARTIALLY_SUCCEEDED"):
        error = fate.error() if fate is not None else {"code": 3, "message": s["error"]}
        record.update(state=f"JOB_STATE_{outcome}", updateTime=_now(), endTime=_now(), error=error)
        fake.history.append((record["name"], record["state"]))
        return
    truth, detection = _truth(fake, record["model"])
    labels = sorted({a["displayName"] for item in truth.values()
                     for a in ([item["classificationAnnotation"]] if "classificationAnnotation" in item else
                               item.get("classificationAnnotations", []) + item.get("boundingBoxAnnotations", []))})
    wrong, missing = s["wrong"], s["missing"]
    out = []
    errors = []
    for uri in record["inputConfig"]["gcsSource"]["uris"]:
        for line in _read_gcs(uri).splitlines():
            if not line.strip():
                continue
            instance = json.loads(line)
            from tests.fakes import vertex_schema

            try:  # what AutoML image models take: {"content", "mimeType"}
                vertex_schema.parse_instance(instance, detection)
            except vertex_schema.Invalid as exc:
                errors.append(json.dumps({"instance": instance, "error": {"code": 3, "message": str(exc)}}))
                continue
            if any(m in instance["content"] for m in missing):
                errors.append(json.dumps({"instance": instance, "error": {
                    "code": 3, "message": f"Unable to read image {instance['content']}."}}))
                continue
            item = truth.get(instance["content"])
            is_wrong = any(w in instance["content"] for w in wrong)
            pred = (_detection if detection else _classification)(item, labels, is_wrong)
            out.append(json.dumps({"instance": instance, "prediction": pred}, separators=(",", ":")))
    stamp = time.strftime("%Y_%m_%dT%H_%M_%S_000Z", time.gmtime())
    model = fake.table("models")[record["model"].rsplit("/", 1)[-1].split("@")[0]]
    prefix = record["outputConfig"]["gcsDestination"]["outputUriPrefix"].rstrip("/")
    directory = f"{prefix}/prediction-{model.get('displayName') or 'model'}-{stamp}"
    _write_gcs(f"{directory}/predictions_00001.jsonl", "\n".join(out) + "\n")
    record.update(state=f"JOB_STATE_{outcome}", updateTime=_now(), endTime=_now(),
                  outputInfo={"gcsOutputDirectory": directory},
                  completionStats={"successfulCount": str(len(out)), "failedCount": str(len(errors))})
    fake.history.append((record["name"], record["state"]))
    if errors:
        _write_gcs(f"{directory}/errors_00001.jsonl", "\n".join(errors) + "\n")
    if outcome == "PARTIALLY_SUCCEEDED":
        failure = fate.error() if fate is not None else {
            "code": 3, "message": s["error"] or f"{len(errors)} instances failed; see {directory}/errors_00001.jsonl"}
        record["partialFailures"] = [failure]
