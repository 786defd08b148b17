"""AutoML Image as the trainer of an image model type (`MODEL_OPTIONS` `training: automl`).

The train and evaluate stages still run as small jobs with the usual contract (docs/architecture.md §4); this
module lets them drive Vertex AI instead of training locally:
  train     write the Vertex import file (from the ETL snapshot: split → ml_use), create the image
            dataset, run an AutoML Image training pipeline with the configured budget, wait for it
            (progress lines, wall-clock limit) → `uris["vertex_model"]`;
  evaluate  batch-predict every data row with that model, read the output files from GCS, and turn
            them (jobs/automl_predictions.py) into a predictor-shaped answer, so the task's own
            `evaluate` computes the same metrics and Labelbox rows as for custom training. A batch job
            ending PARTIALLY_SUCCEEDED is scored from the rows it predicted (the others are left out and
            counted, as a row without a prediction always is) and its failure is recorded in the
            outputs (`batch_state`, `batch_failed_count`, `batch_partial_failures`); one that predicted
            no row at all is a JobError.
Re-running an attempt finds its pipeline / batch job by display name instead of starting another.
AutoML reads images from Cloud Storage only: ARTIFACT_ROOT must be gs://.

Params (optional): automl_poll_seconds (60), automl_max_hours (wall-clock wait for the pipeline,
default 24), threshold (multi-label decision threshold, 0.5), score_threshold (boxes kept, 0.3).
aiplatform is imported inside functions (through lbtrain.adapters.vertex_client).
"""

from __future__ import annotations

import mimetypes
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jobs import automl_predictions as ap
from jobs.context import StageContext, StageResult
from jobs.tasks.base import Dataset, JobError, ParamError, dumps_jsonl, read_dataset
from lbtrain import model_options, storage
from lbtrain.config import Config
from lbtrain.domain import job_name

IMPORT_FILE = "automl_import.jsonl"
INSTANCES_FILE = "automl_instances.jsonl"
PREDICTIONS_DIR = "automl_predictions"
TRAIN_METRICS_FILE = "train_metrics.json"
ML_USE_KEY = "aiplatform.googleapis.com/ml_use"
ML_USE = {"train": "training", "validation": "validation", "test": "test"}
RADIO_SEP = "/"  # jobs/tasks/multilabel.py: several radios → targets "question/answer"

# Vertex AI schema URIs (equal to aiplatform.schema.* constants; tests check that).
IMPORT_SCHEMA = {
    "image_single_classification": "gs://google-cloud-aiplatform/schema/dataset/ioformat/"
    "image_classification_single_label_io_format_1.0.0.yaml",
    "image_multi_classification": "gs://google-cloud-aiplatform/schema/dataset/ioformat/"
    "image_classification_multi_label_io_format_1.0.0.yaml",
    "bounding_box": "gs://google-cloud-aiplatform/schema/dataset/ioformat/image_bounding_box_io_format_1.0.0.yaml",
}
DATASET_METADATA_SCHEMA = "gs://google-cloud-aiplatform/schema/dataset/metadata/image_1.0.0.yaml"
TRAINING_SCHEMA = {
    "classification": "gs://google-cloud-aiplatform/schema/trainingjob/definition/"
    "automl_image_classification_1.0.0.yaml",
    "object_detection": "gs://google-cloud-aiplatform/schema/trainingjob/definition/"
    "automl_image_object_detection_1.0.0.yaml",
}
# trainingTaskInputs.modelType: the enums of AutoMlImageClassificationInputs and
# AutoMlImageObjectDetectionInputs differ (detection has no CLOUD; the SDK maps CLOUD to this too).
MODEL_TYPE = {"classification": "CLOUD", "object_detection": "CLOUD_HIGH_ACCURACY_1"}
PIPELINE_DONE = ("PIPELINE_STATE_SUCCEEDED", "PIPELINE_STATE_FAILED", "PIPELINE_STATE_CANCELLED")
# PARTIALLY_SUCCEEDED is terminal too: some instances failed (listed in the job's partialFailures and the
# errors_*.jsonl next to the predictions). Evaluation scores the rows that were predicted, like rows
# without a prediction in a SUCCEEDED job, and records the partial failure in its outputs.
JOB_DONE = ("JOB_STATE_SUCCEEDED", "JOB_STATE_PARTIALLY_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED",
            "JOB_STATE_EXPIRED")
JOB_USABLE = ("JOB_STATE_SUCCEEDED", "JOB_STATE_PARTIALLY_SUCCEEDED")
TIMEOUT = 60.0  # seconds per API call
HEARTBEAT = 1800.0  # seconds between progress lines while a state does not change


def enabled(ctx: StageContext) -> bool:
    return model_options.for_type(ctx.config.model_options, ctx.model_type).automl


# --- the import file --------------------------------------------------------------------------


def display_names(model_type: str, label_map: Mapping[str, Any]) -> dict[str, str]:
    """Dataset class (the snapshot's target) → AutoML label display name. Classification labels are
    `<question>_<answer>` so predictions name their question (jobs/automl_predictions.py)."""
    classes = [str(c) for c in label_map.get("classes", [])]
    if model_type == "bounding_box":
        return {c: c for c in classes}
    if label_map.get("mode") == "radios":
        return {c: "_".join(c.split(RADIO_SEP, 1)) for c in classes}
    return {c: f"{label_map['question']}_{c}" for c in classes}


def _unit(value: float) -> float:
    return round(min(max(value, 0.0), 1.0), 6)


def import_line(model_type: str, example: Mapping[str, Any], names: Mapping[str, str]) -> dict[str, Any]:
    """One example → a line of Vertex's image import format (ml_use from the ETL split)."""
    line: dict[str, Any] = {"imageGcsUri": example["image"]}
    if model_type == "image_single_classification":
        line["classificationAnnotation"] = {"displayName": names[example["target"]]}
    elif model_type == "image_multi_classification":
        line["classificationAnnotations"] = [{"displayName": names[t]} for t in sorted(example["targets"])]
    else:
        w, h = float(example["width"]), float(example["height"])
        boxes = [{"displayName": names[b["name"]], "xMin": _unit(b["left"] / w), "yMin": _unit(b["top"] / h),
                  "xMax": _unit((b["left"] + b["width"]) / w), "yMax": _unit((b["top"] + b["height"]) / h)}
                 for b in example.get("boxes") or []]
        if boxes:  # an image without boxes is imported unlabeled
            line["boundingBoxAnnotations"] = boxes
    line["dataItemResourceLabels"] = {ML_USE_KEY: ML_USE[example["split"]]}
    return line


def import_lines(model_type: str, dataset: Dataset) -> list[dict[str, Any]]:
    names = display_names(model_type, dataset.label_map)
    return [import_line(model_type, e, names) for e in dataset.examples if e["split"] in ML_USE]


def require_gcs(config: Config, rows: Sequence[Mapping[str, Any]], outputs_uri: str) -> None:
    """AutoML reads images, import and instance files from Cloud Storage only: the ETL must have
    copied the images under a gs:// root, and this stage must write under one."""
    if not config.artifact_root.startswith("gs://") or not outputs_uri.startswith("gs://"):
        where = config.artifact_root if not config.artifact_root.startswith("gs://") else outputs_uri
        raise JobError(
            f"AutoML training needs the images and its files on Cloud Storage: set ARTIFACT_ROOT=gs://… "
            f"(it is {where!r}) and re-run the etl stage"
        )
    local = [r["data_row_id"] for r in rows if not str(r.get("image", "")).startswith("gs://")]
    if local:
        raise JobError(
            f"AutoML needs gs:// image URIs, but {len(local)} data rows of the etl snapshot are not on "
            f"Cloud Storage (first: {local[0]}); re-run the etl stage with ARTIFACT_ROOT=gs://…"
        )


# --- params -----------------------------------------------------------------------------------


def _number(params: Mapping[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    value = params.get(name, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or not lo <= value <= hi:
        raise ParamError(f"param {name} must be a number from {lo:g} to {hi:g}, not {value!r}")
    return float(value)


@dataclass
class Waiting:
    """How often and how long to poll a Vertex resource; `clock`/`sleep` are injectable for tests."""

    poll_seconds: float
    max_seconds: float
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Waiting:
        return cls(_number(params, "automl_poll_seconds", 60.0, 0.0, 3600.0),
                   _number(params, "automl_max_hours", 24.0, 0.0001, 240.0) * 3600.0)


# --- Vertex calls -----------------------------------------------------------------------------


def _parent(config: Config) -> str:
    return f"projects/{config.project}/locations/{config.region}"


def _labels(ctx: StageContext) -> dict[str, str]:
    from lbtrain.adapters.vertex_backend import label_value

    return {k: label_value(v) for k, v in {
        "deployment": ctx.config.deployment_name, "run_id": ctx.run_id, "stage": ctx.stage,
        "attempt": str(ctx.attempt), "model_type": ctx.model_type}.items()}


def _pipeline_client(aip: Any) -> Any:
    from google.cloud.aiplatform import utils

    return aip.initializer.global_config.create_client(client_class=utils.PipelineClientWithOverride)


def _enum_name(value: Any) -> str:
    return getattr(value, "name", str(value))


def find_pipeline(aip: Any, config: Config, display_name: str) -> Any:
    """The training pipeline of this run/attempt, if an earlier execution created it (newest first)."""
    client = _pipeline_client(aip)
    found = list(client.list_training_pipelines(
        request={"parent": _parent(config), "filter": f'display_name="{display_name}"'}, timeout=TIMEOUT))
    found.sort(key=lambda p: p.create_time, reverse=True)
    return found[0] if found else None


def find_or_create_dataset(aip: Any, display_name: str, import_uri: str, model_type: str,
                           labels: dict[str, str], progress: Callable[..., None]) -> Any:
    """The image dataset of this attempt with the import file imported (re-importing the same
    items into an existing dataset is a no-op on Vertex's side)."""
    found = aip.ImageDataset.list(filter=f'display_name="{display_name}"')
    if found:
        dataset = found[0]
        progress(f"reusing AutoML dataset {dataset.resource_name}", dataset=dataset.resource_name)
        dataset.import_data(gcs_source=import_uri, import_schema_uri=IMPORT_SCHEMA[model_type],
                            sync=True, import_request_timeout=TIMEOUT)
        return dataset
    progress(f"creating AutoML dataset {display_name} from {import_uri}", import_file=import_uri)
    return aip.ImageDataset.create(display_name=display_name, gcs_source=import_uri,
                                   import_schema_uri=IMPORT_SCHEMA[model_type], labels=labels,
                                   sync=True, create_request_timeout=TIMEOUT)


def create_pipeline(aip: Any, config: Config, display_name: str, dataset_id: str, model_type: str,
                    budget: int, labels: dict[str, str], splits: Mapping[str, int]) -> Any:
    """The request `AutoMLImageTrainingJob(...).run(...)` builds, sent without the library's
    blocking wait so the stage can report progress and enforce its own limit."""
    from google.cloud.aiplatform.compat.types import model as gca_model
    from google.cloud.aiplatform.compat.types import training_pipeline as gca_pipeline
    from google.protobuf import json_format, struct_pb2

    detection = model_type == "bounding_box"
    task = "object_detection" if detection else "classification"
    inputs: dict[str, Any] = {"modelType": MODEL_TYPE[task], "budgetMilliNodeHours": budget,
                              "disableEarlyStopping": False}
    if not detection:
        inputs["multiLabel"] = model_type == "image_multi_classification"

    def ml_use_filter(split: str) -> str:  # "-" = matches nothing (Vertex's convention for an empty set)
        return f"labels.{ML_USE_KEY}={ML_USE[split]}" if splits.get(split) else "-"

    pipeline = gca_pipeline.TrainingPipeline(
        display_name=display_name,
        training_task_definition=TRAINING_SCHEMA[task],
        training_task_inputs=json_format.ParseDict(inputs, struct_pb2.Value()),
        input_data_config=gca_pipeline.InputDataConfig(
            dataset_id=dataset_id,
            filter_split=gca_pipeline.FilterSplit(
                training_filter=ml_use_filter("train"), validation_filter=ml_use_filter("validation"),
                test_filter=ml_use_filter("test"))),
        model_to_upload=gca_model.Model(display_name=display_name, labels=labels),
        labels=labels,
    )
    return _pipeline_client(aip).create_training_pipeline(
        parent=_parent(config), training_pipeline=pipeline, timeout=TIMEOUT)


def wait_for(what: str, read_state: Callable[[], str], done: Sequence[str], waiting: Waiting,
             progress: Callable[..., None]) -> str:
    """Poll until a terminal state: a progress line on every change and every HEARTBEAT seconds;
    past the wall-clock limit a JobError (the resource keeps running, a re-run waits for it again)."""
    started = last_line = waiting.clock()
    last = ""
    while True:
        state = read_state()
        now = waiting.clock()
        elapsed = now - started
        if state != last or now - last_line >= HEARTBEAT:
            progress(f"{what}: {state} after {elapsed / 60:.1f} min", state=state, waited_seconds=round(elapsed))
            last, last_line = state, now
        if state in done:
            return state
        if elapsed >= waiting.max_seconds:
            raise JobError(
                f"{what} is still {state} after {elapsed / 3600:.2f} h "
                f"(param automl_max_hours={waiting.max_seconds / 3600:g}); it keeps running on Vertex AI: "
                f"re-run this attempt to wait for it again, or cancel it"
            )
        waiting.sleep(waiting.poll_seconds)


def wait_pipeline(aip: Any, name: str, waiting: Waiting, progress: Callable[..., None]) -> Any:
    client = _pipeline_client(aip)
    latest: list[Any] = []

    def read() -> str:
        latest[:] = [client.get_training_pipeline(name=name, timeout=TIMEOUT)]
        return _enum_name(latest[0].state)

    wait_for(f"AutoML training pipeline {name}", read, PIPELINE_DONE, waiting, progress)
    return latest[0]


# --- train ------------------------------------------------------------------------------------


def train(ctx: StageContext) -> StageResult:
    options = model_options.for_type(ctx.config.model_options, ctx.model_type)
    dataset = read_dataset(ctx.upstream_uri("etl"))
    dataset.train_validation()  # a clear error when there is nothing to train on
    require_gcs(ctx.config, dataset.examples, ctx.outputs_uri)
    waiting = Waiting.from_params(ctx.params)
    name = job_name(ctx.config.deployment_name, ctx.run_id, "automl", ctx.attempt)
    aip = _aiplatform(ctx.config)
    labels = _labels(ctx)
    import_uri = ctx.out(IMPORT_FILE)
    lines = import_lines(ctx.model_type, dataset)
    splits = {s: sum(1 for line in lines if line["dataItemResourceLabels"][ML_USE_KEY] == ML_USE[s]) for s in ML_USE}
    pipeline = find_pipeline(aip, ctx.config, name)
    dataset_name = ""
    if pipeline is not None:
        ctx.progress(f"found AutoML training pipeline {pipeline.name} of this attempt: not starting another",
                     pipeline=pipeline.name)
    else:
        storage.write_text(import_uri, dumps_jsonl(lines))
        vertex_dataset = find_or_create_dataset(aip, name, import_uri, ctx.model_type, labels, ctx.progress)
        dataset_name = vertex_dataset.resource_name
        pipeline = create_pipeline(aip, ctx.config, name, vertex_dataset.name, ctx.model_type,
                                   options.budget_milli_node_hours, labels, splits)
        ctx.progress(f"started AutoML training pipeline {pipeline.name} with a budget of "
                     f"{options.budget_milli_node_hours} milli node hours", pipeline=pipeline.name,
                     budget_milli_node_hours=options.budget_milli_node_hours)
    final = wait_pipeline(aip, pipeline.name, waiting, ctx.progress)
    state = _enum_name(final.state)
    if state != "PIPELINE_STATE_SUCCEEDED":
        message = final.error.message if final.error and final.error.message else "no error message"
        raise JobError(f"AutoML training pipeline {final.name} ended {state}: {message}")
    model_name = final.model_to_upload.name
    if not model_name:
        raise JobError(f"AutoML training pipeline {final.name} succeeded but names no model")
    metrics = {
        "training": "automl",
        "pipeline": final.name,
        "dataset": dataset_name or final.input_data_config.dataset_id,
        "state": state,
        "budget_milli_node_hours": options.budget_milli_node_hours,
        "vertex_model": model_name,
        "train_size": splits["train"],
        "validation_size": splits["validation"],
        "test_size": splits["test"],
        "classes": len(dataset.label_map.get("classes", [])),
    }
    metrics_uri = ctx.out(TRAIN_METRICS_FILE)
    storage.write_json(metrics_uri, metrics)
    return StageResult(uris={"vertex_model": model_name, "train_metrics": metrics_uri, "automl_import": import_uri},
                       metrics=metrics)


def _aiplatform(config: Config) -> Any:
    from lbtrain.adapters import vertex_client

    return vertex_client.aiplatform(config)


# --- evaluate: batch prediction ---------------------------------------------------------------


def _mime(row: Mapping[str, Any]) -> str:
    return str(row.get("mime") or mimetypes.guess_type(str(row["image"]))[0] or "image/jpeg")


@dataclass
class BatchOutcome:
    """A finished batch prediction: its output lines, end state, and what it reported as failed."""

    lines: list[str]
    state: str = "JOB_STATE_SUCCEEDED"
    failed_count: int = 0
    partial_failures: list[str] | None = None


def batch_predict(ctx: StageContext, model_name: str, rows: Sequence[Mapping[str, Any]]) -> BatchOutcome:
    """Run (or find, on a re-run) this attempt's batch prediction job; its output lines and end state."""
    aip = _aiplatform(ctx.config)
    waiting = Waiting.from_params(ctx.params)
    name = job_name(ctx.config.deployment_name, ctx.run_id, "automl-predict", ctx.attempt)
    found = aip.BatchPredictionJob.list(filter=f'display_name="{name}"')
    if found:
        job = found[0]
        ctx.progress(f"found batch prediction job {job.resource_name} of this attempt", batch_job=job.resource_name)
    else:
        instances_uri = ctx.out(INSTANCES_FILE)
        storage.write_text(instances_uri, dumps_jsonl({"content": r["image"], "mimeType": _mime(r)} for r in rows))
        job = aip.BatchPredictionJob.submit(
            job_display_name=name, model_name=model_name, instances_format="jsonl", predictions_format="jsonl",
            gcs_source=instances_uri, gcs_destination_prefix=ctx.out(PREDICTIONS_DIR), labels=_labels(ctx),
            create_request_timeout=TIMEOUT)
        ctx.progress(f"started batch prediction job {job.resource_name} for {len(rows)} images",
                     batch_job=job.resource_name, rows=len(rows))
    state = wait_for(f"batch prediction job {job.resource_name}", lambda: _enum_name(job.state),  # re-fetches
                     JOB_DONE, waiting, ctx.progress)
    if state not in JOB_USABLE:
        error = (job.error.message if job.error else "") or "no error message"
        raise JobError(f"batch prediction job {job.resource_name} ended {state}: {error}")
    resource = job.gca_resource
    partial = [f.message or f"code {f.code}" for f in resource.partial_failures]
    failed = int(resource.completion_stats.failed_count or 0) if resource.completion_stats else 0
    directory = job.output_info.gcs_output_directory
    if state != "JOB_STATE_SUCCEEDED":
        ctx.progress(f"batch prediction job {job.resource_name} ended {state} ({failed} instances failed: "
                     f"{'; '.join(partial) or 'no message'}): scoring the rows it predicted", level=30,
                     state=state, failed_count=failed, partial_failures=partial[:20])
    ctx.progress(f"batch prediction {state}; reading {directory}", output=directory)
    return BatchOutcome(read_prediction_files(directory), state, failed, partial)


def read_prediction_files(directory: str) -> list[str]:
    """Lines of every `predictions*.jsonl` under the batch job's gs:// output directory."""
    files = [u for u in storage.list_prefix(directory)
             if u.rsplit("/", 1)[-1].startswith("prediction") and u.endswith(".jsonl")]
    if not files:
        raise JobError(f"batch prediction output {directory} holds no predictions*.jsonl file")
    return [line for uri in files for line in storage.read_text(uri).splitlines()]


# --- evaluate: predictions in the shape the tasks' evaluate expects ---------------------------


@dataclass
class BatchPredictions:
    """A Predictor for evaluate (predict / detect) from batch-prediction output keyed by data row. Not a
    ServingPredictor: an AutoML model is served by Vertex AI itself, never by jobs.serving."""

    by_row: dict[str, dict[str, Any]]
    meta: dict[str, Any]
    threshold: float = 0.5
    score_threshold: float = 0.3

    def predict(self, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        return [self.by_row[r["data_row_id"]] for r in rows]

    def detect(self, rows: Sequence[Mapping[str, Any]], min_score: float) -> list[list[dict[str, Any]]]:
        return [[d for d in self.by_row[r["data_row_id"]]["detections"] if d["score"] >= min_score] for r in rows]


def _questions(model_type: str, label_map: Mapping[str, Any]) -> list[str]:
    if label_map.get("mode") == "radios":
        return list(label_map.get("questions") or [])
    return [label_map["question"]] if model_type != "bounding_box" else []


def to_predictor(model_type: str, dataset: Dataset, records: Sequence[Mapping[str, Any]],
                 params: Mapping[str, Any], model_name: str) -> tuple[BatchPredictions, list[str]]:
    """Parsed output → BatchPredictions for the rows that got one; returns also the URIs of output
    records that match no data row."""
    from jobs.tasks import bounding_box

    label_map = dataset.label_map
    infos = {r["image"]: ap.RowInfo(r["data_row_id"], int(r.get("width") or 0), int(r.get("height") or 0))
             for r in dataset.all_rows()}
    threshold = _number(params, "threshold", 0.5, 0.0, 1.0)
    score_threshold = bounding_box.score_threshold(params.get("score_threshold", 0.3))
    by_row: dict[str, dict[str, Any]] = {}
    if model_type == "bounding_box":
        boxes, unknown = ap.box_rows(records, infos, min_confidence=bounding_box.EVAL_MIN_SCORE)
        for rec in records:  # an image with no box above the minimum is still answered (no detections)
            info = infos.get(rec["instance"]["content"])
            if info is not None:
                by_row.setdefault(info.data_row_id, {"detections": []})
        for b in boxes:
            bb = b["bbox"]
            by_row[b["dataRow"]["id"]]["detections"].append(
                {"name": b["name"], "score": b["confidence"],
                 "box": (bb["left"], bb["top"], bb["left"] + bb["width"], bb["top"] + bb["height"])})
    else:
        questions = _questions(model_type, label_map)
        rows, unknown = ap.classification_rows(records, infos, questions, multi_label=True, threshold=0.0)
        scores: dict[str, dict[str, dict[str, float]]] = {}
        for row in rows:
            answers = {a["name"]: a["confidence"] for a in row["answer"]}
            scores.setdefault(row["dataRow"]["id"], {})[row["name"]] = answers
        for data_row_id, per_question in scores.items():
            by_row[data_row_id] = _decide(model_type, label_map, per_question, threshold)
    meta = {"model_type": model_type, "training": "automl", "vertex_model": model_name}
    return BatchPredictions(by_row, meta, threshold, score_threshold), unknown


def _decide(model_type: str, label_map: Mapping[str, Any], per_question: Mapping[str, Mapping[str, float]],
            threshold: float) -> dict[str, Any]:
    """Question → answer confidences → the task's prediction shape (single: top answer; checklist:
    answers ≥ threshold, else the top one, as the custom model; radios: each question's top answer)."""
    if model_type == "image_single_classification":
        answers = per_question.get(label_map["question"]) or {}
        if not answers:
            return {"label": None, "confidence": 0.0, "scores": {}}
        best = max(answers, key=lambda a: answers[a])
        return {"label": best, "confidence": answers[best], "scores": dict(answers)}
    if label_map.get("mode") == "radios":
        flat = {f"{q}{RADIO_SEP}{a}": c for q, answers in per_question.items() for a, c in answers.items()}
        labels = sorted(f"{q}{RADIO_SEP}{max(answers, key=lambda a: answers[a])}"
                        for q, answers in per_question.items() if answers)
        return {"labels": labels, "scores": flat}
    answers = per_question.get(label_map["question"]) or {}
    labels = sorted(a for a, c in answers.items() if c >= threshold)
    if not labels and answers:
        labels = [max(answers, key=lambda a: answers[a])]
    return {"labels": labels, "scores": dict(answers)}


def _only_predicted(dataset: Dataset, predicted: set[str]) -> Dataset:
    return Dataset(examples=[e for e in dataset.examples if e["data_row_id"] in predicted],
                   label_map=dataset.label_map, stats=dataset.stats,
                   predict_only=[r for r in dataset.predict_only if r["data_row_id"] in predicted])


def predictor(ctx: StageContext, dataset: Dataset) -> tuple[BatchPredictions, Dataset, str]:
    """For jobs/evaluate.py: (predictor answering from the batch prediction, the rows it answered
    for, the Vertex model name)."""
    model_name = (ctx.upstream_outputs("train").get("uris") or {}).get("vertex_model")
    if not model_name:
        raise JobError("the train stage's outputs name no vertex_model: was it trained with AutoML?")
    rows = dataset.all_rows()
    require_gcs(ctx.config, rows, ctx.outputs_uri)
    outcome = batch_predict(ctx, model_name, rows)
    try:
        records = ap.read_jsonl(outcome.lines)
        answer, unknown = to_predictor(ctx.model_type, dataset, records, ctx.params, model_name)
    except ap.AutoMLOutputError as exc:
        raise JobError(f"AutoML batch prediction output: {exc}") from None
    missing = [r["data_row_id"] for r in rows if r["data_row_id"] not in answer.by_row]
    ctx.progress(f"parsed {len(records)} batch predictions: {len(answer.by_row)} data rows answered, "
                 f"{len(missing)} without a prediction, {len(unknown)} for unknown images",
                 predicted=len(answer.by_row), unpredicted=len(missing), unknown=len(unknown))
    if missing:
        ctx.progress(f"no batch prediction for {len(missing)} data rows (first: {missing[0]}): left out",
                     level=30, unpredicted_ids=missing[:20])
    if not answer.by_row and outcome.state != "JOB_STATE_SUCCEEDED":
        raise JobError(f"batch prediction ended {outcome.state} without a prediction for any data row: "
                       f"{'; '.join(outcome.partial_failures or []) or 'no message'}")
    answer.meta.update(unpredicted=len(missing), batch_state=outcome.state, batch_failed_count=outcome.failed_count,
                       batch_partial_failures=list(outcome.partial_failures or []))
    return answer, _only_predicted(dataset, set(answer.by_row)), model_name


def summary(answer: BatchPredictions) -> dict[str, Any]:
    """What evaluate's outputs.json adds for an AutoML model."""
    out = {"training": "automl", "vertex_model": answer.meta["vertex_model"],
           "unpredicted_rows": answer.meta.get("unpredicted", 0)}
    state = answer.meta.get("batch_state", "JOB_STATE_SUCCEEDED")
    if state != "JOB_STATE_SUCCEEDED":  # the partial failure, recorded with the scores it affected
        out.update(batch_state=state, batch_failed_count=answer.meta.get("batch_failed_count", 0),
                   batch_partial_failures=answer.meta.get("batch_partial_failures", []))
    return out

