"""AutoML Image through the train and evaluate stages: the real google-cloud-aiplatform client (REST)
against the local Vertex fake (tests/fakes/vertex_automl.py), artifacts and images on the GCS emulator.
What crosses the wire is asserted; the fake's predictions are deliberately imperfect so the metrics
are exact, hand-computed values."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from google.api_core import exceptions as gexc

from jobs import automl, evaluate, train
from jobs import automl_predictions as ap
from jobs.context import OUTPUTS_FILE, StageContext
from jobs.tasks import load as load_task
from jobs.tasks.base import Dataset, JobError, write_dataset
from lbtrain import storage
from lbtrain.config import Config
from tests.fakes import vertex_automl
from tests.fakes.vertex import JOB_INTERNAL, PARTIAL, QUOTA, STOCKOUT, FakeVertex

SINGLE, MULTI, BOX = "image_single_classification", "image_multi_classification", "bounding_box"
RUN = "run0123456789"
MODEL_RUN = "mr-automl"
BUDGET = {SINGLE: 8000, MULTI: 9000, BOX: 20000}


def png(width: int, height: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), color=(200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


def snapshot(model_type: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """(examples, predict-only rows, label_map) of a tiny ETL snapshot; images are set later."""
    splits = ["train", "train", "validation", "validation", "test", "test", "test", "test"]
    if model_type == SINGLE:
        targets = ["cat", "dog", "cat", "dog", "cat", "cat", "dog", "dog"]
        examples = [{"data_row_id": f"dr{i}", "split": s, "target": t}
                    for i, (s, t) in enumerate(zip(splits, targets, strict=True))]
        return examples, [{"data_row_id": "dr-unlabeled", "split": "unassigned", "target": None,
                           "reason": "no_label"}], {"question": "animal", "classes": ["cat", "dog"]}
    if model_type == MULTI:
        targets = [["a"], ["b", "c"], ["a"], ["b", "c"], ["a", "b"], ["c"], ["a"]]
        examples = [{"data_row_id": f"dr{i}", "split": s, "targets": t}
                    for i, (s, t) in enumerate(zip(splits[:4] + splits[5:], targets, strict=True))]
        label_map = {"mode": "checklist", "questions": ["tags"], "question": "tags", "classes": ["a", "b", "c"]}
        return examples, [], label_map
    boxes = [[("cat", 10, 20, 30, 40)], [("dog", 0, 0, 50, 25)], [("cat", 5, 5, 20, 20)], [],
             [("cat", 20, 10, 40, 30)], [("dog", 10, 40, 30, 20)]]
    examples = [{"data_row_id": f"dr{i}", "split": s, "width": 100, "height": 80,
                 "boxes": [{"name": n, "left": x, "top": y, "width": w, "height": h} for n, x, y, w, h in b]}
                for i, (s, b) in enumerate(zip(splits[:6], boxes, strict=True))]
    return examples, [], {"classes": ["cat", "dog"], "kind": "bounding_box"}


class Stage:
    """One AutoML run on the fakes: a written ETL snapshot and StageContexts for its stages."""

    def __init__(self, fake: FakeVertex, endpoint: str, bucket: str, tmp_path: Any, model_type: str,
                 artifact_root: str = "", params: dict[str, Any] | None = None):
        self.fake, self.model_type = fake, model_type
        (tmp_path / "lb" / "model_runs" / MODEL_RUN).mkdir(parents=True)
        self.root = artifact_root or f"gs://{bucket}/lbtrain"
        self.config = Config(
            deployment_name="prod", project="proj-1", region="europe-west4", artifact_root=self.root,
            vertex_api_endpoint=endpoint, labelbox_dir=str(tmp_path / "lb"),
            model_options=json.dumps({model_type: {"training": "automl", **(
                {"budget_milli_node_hours": BUDGET[model_type]} if model_type == MULTI else {})}}))
        self.params = {"automl_poll_seconds": 0.01, **(params or {})}
        self.etl = storage.run_dir(self.root, RUN, "etl", 1)
        examples, predict_only, label_map = snapshot(model_type)
        for row in examples + predict_only:
            row["image"] = storage.join(self.etl, "media", f"{row['data_row_id']}.png")
            row.setdefault("width", 100)
            row.setdefault("height", 80)
            row["mime"] = "image/png"
            if self.root.startswith("gs://"):
                storage.write_bytes(row["image"], png(100, 80))
        self.dataset = Dataset(examples=examples, label_map=label_map, predict_only=predict_only)
        write_dataset(self.etl, self.dataset)

    def ctx(self, stage: str, attempt: int = 1) -> StageContext:
        upstream = {"etl": self.etl}
        if stage == "evaluate":
            upstream["train"] = storage.run_dir(self.root, RUN, "train", 1)
        return StageContext(run_id=RUN, stage=stage, attempt=attempt, model_type=self.model_type,
                            model_run_id=MODEL_RUN, model_id="m1", params=dict(self.params), upstream=upstream,
                            outputs_uri=storage.run_dir(self.root, RUN, stage, attempt), config=self.config,
                            task=load_task(self.model_type))

    def run(self, stage: str, attempt: int = 1) -> Any:
        """The stage module, and its outputs.json as jobs.main writes it."""
        ctx = self.ctx(stage, attempt)
        result = (train if stage == "train" else evaluate).run(ctx)
        manifest = {"uris": result.uris, "metrics": result.metrics}
        storage.write_json(storage.join(ctx.outputs_uri, OUTPUTS_FILE), manifest)
        return result

    def bodies(self, suffix: str) -> list[Any]:
        return [b for m, p, b in self.fake.requests if m == "POST" and p.endswith(suffix)]

    def uploaded(self) -> list[dict[str, Any]]:
        path = self.config.labelbox_dir + f"/model_runs/{MODEL_RUN}/predictions/lbtrain-{RUN}-a1.ndjson"
        return [json.loads(line) for line in open(path)]


def _lines(uri: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in storage.read_text(uri).splitlines() if line.strip()]


def test_schema_uris_are_the_librarys():
    from google.cloud.aiplatform import schema

    image = schema.dataset.ioformat.image
    assert automl.IMPORT_SCHEMA == {SINGLE: image.single_label_classification,
                                    MULTI: image.multi_label_classification, BOX: image.bounding_box}
    assert automl.TRAINING_SCHEMA == {
        "classification": schema.training_job.definition.automl_image_classification,
        "object_detection": schema.training_job.definition.automl_image_object_detection}
    assert automl.DATASET_METADATA_SCHEMA == schema.dataset.metadata.image


@pytest.mark.parametrize("model_type", [SINGLE, MULTI, BOX])
def test_train_imports_the_snapshot_and_runs_the_pipeline(vertex, gcs_bucket, tmp_path, model_type):
    fake, endpoint = vertex
    stage = Stage(fake, endpoint, gcs_bucket, tmp_path, model_type)
    result = stage.run("train")

    # The import file: one line per example, ml_use from the ETL split, display names per task.
    lines = _lines(result.uris["automl_import"])
    ml_use = [line["dataItemResourceLabels"] for line in lines]
    assert [m["aiplatform.googleapis.com/ml_use"] for m in ml_use] == [
        {"train": "training", "validation": "validation", "test": "test"}[e["split"]] for e in stage.dataset.examples]
    assert [line["imageGcsUri"] for line in lines] == [e["image"] for e in stage.dataset.examples]
    assert all(line["imageGcsUri"].startswith(f"gs://{gcs_bucket}/lbtrain/runs/{RUN}/etl/a1/media/") for line in lines)
    if model_type == SINGLE:
        assert lines[1]["classificationAnnotation"] == {"displayName": "animal_dog"}
    elif model_type == MULTI:
        assert lines[1]["classificationAnnotations"] == [{"displayName": "tags_b"}, {"displayName": "tags_c"}]
    else:  # pixels → normalized; an image without boxes is imported unlabeled
        assert lines[0]["boundingBoxAnnotations"] == [
            {"displayName": "cat", "xMin": 0.1, "yMin": 0.25, "xMax": 0.4, "yMax": 0.75}]
        assert lines[1]["boundingBoxAnnotations"] == [
            {"displayName": "dog", "xMin": 0.0, "yMin": 0.0, "xMax": 0.5, "yMax": 0.3125}]
        assert "boundingBoxAnnotations" not in lines[3]

    # Dataset create + import, as ImageDataset.create sends them.
    (created,) = stage.bodies("/datasets")
    assert created["displayName"] == f"prod-{RUN}-automl-a1".lower()
    assert created["metadataSchemaUri"] == automl.DATASET_METADATA_SCHEMA
    assert created["labels"]["run_id"] == RUN.lower() and created["labels"]["deployment"] == "prod"
    (imported,) = stage.bodies(":import")
    assert imported["importConfigs"] == [{"gcsSource": {"uris": [result.uris["automl_import"]]},
                                          "importSchemaUri": automl.IMPORT_SCHEMA[model_type]}]

    # The training pipeline.
    (pipeline,) = stage.bodies("/trainingPipelines")
    dataset_id = next(iter(fake.table("automl_datasets")))
    detection = model_type == BOX
    assert pipeline["trainingTaskDefinition"] == automl.TRAINING_SCHEMA[
        "object_detection" if detection else "classification"]
    inputs = pipeline["trainingTaskInputs"]
    # detection has no CLOUD model type (AutoMlImageObjectDetectionInputs): the SDK's mapping
    assert inputs["modelType"] == ("CLOUD_HIGH_ACCURACY_1" if detection else "CLOUD")
    assert inputs["budgetMilliNodeHours"] == BUDGET[model_type]
    assert inputs.get("multiLabel") == (None if detection else model_type == MULTI)
    assert pipeline["inputDataConfig"] == {"datasetId": dataset_id, "filterSplit": {
        "trainingFilter": "labels.aiplatform.googleapis.com/ml_use=training",
        "validationFilter": "labels.aiplatform.googleapis.com/ml_use=validation",
        "testFilter": "labels.aiplatform.googleapis.com/ml_use=test"}}
    assert pipeline["modelToUpload"]["displayName"] == pipeline["displayName"] == created["displayName"]

    model = next(iter(fake.table("models").values()))
    assert result.uris["vertex_model"] == model["name"]
    assert result.metrics["state"] == "PIPELINE_STATE_SUCCEEDED"
    assert result.metrics["budget_milli_node_hours"] == BUDGET[model_type]
    assert storage.read_json(result.uris["train_metrics"])["pipeline"] == fake.table("automl_pipelines")[
        next(iter(fake.table("automl_pipelines")))]["name"]


def _evaluate(fake, endpoint, gcs_bucket, tmp_path, model_type, wrong: list[str]) -> tuple[Stage, Any]:
    stage = Stage(fake, endpoint, gcs_bucket, tmp_path, model_type)
    vertex_automl.configure(fake, wrong=wrong)
    stage.run("train")
    return stage, stage.run("evaluate")


def test_single_label_evaluation(vertex, gcs_bucket, tmp_path):
    fake, endpoint = vertex
    stage, result = _evaluate(fake, endpoint, gcs_bucket, tmp_path, SINGLE, wrong=["/dr5.png"])

    (job,) = stage.bodies("/batchPredictionJobs")
    assert job["model"] == result.uris["model"] == next(iter(fake.table("models").values()))["name"]
    assert job["inputConfig"]["instancesFormat"] == "jsonl"
    out = storage.run_dir(stage.root, RUN, "evaluate", 1)
    assert job["inputConfig"]["gcsSource"] == {"uris": [f"{out}/automl_instances.jsonl"]}
    assert job["outputConfig"] == {"predictionsFormat": "jsonl",
                                   "gcsDestination": {"outputUriPrefix": f"{out}/automl_predictions"}}
    instances = _lines(f"{out}/automl_instances.jsonl")
    assert instances[0] == {"content": stage.dataset.examples[0]["image"], "mimeType": "image/png"}
    assert len(instances) == 9  # every data row, the unlabeled one too
    assert job["displayName"] == f"prod-{RUN}-automl-predict-a1".lower() and job["labels"]["stage"] == "evaluate"
    # The fake answers in the shape of tests/data/vertex/automl-batch-prediction-image-single.txt.
    (directory,) = [j["outputInfo"]["gcsOutputDirectory"] for j in fake.table("automl_batch_jobs").values()]
    first = _lines(f"{directory}/predictions_00001.jsonl")[0]
    assert first["instance"] == instances[0]
    assert sorted(first["prediction"]) == ["confidences", "displayNames", "ids"]
    assert first["prediction"]["displayNames"] == ["animal_cat", "animal_dog"]

    # test: cat cat dog dog, predicted cat DOG dog dog
    m = result.metrics
    assert (m["accuracy"], m["macro_f1"], m["test_size"], m["predicted_rows"]) == (0.75, 0.7333, 4, 9)
    assert m["per_class"]["cat"] == {"precision": 1.0, "recall": 0.5, "f1": 0.6667, "support": 2}
    assert m["per_class"]["dog"] == {"precision": 0.6667, "recall": 1.0, "f1": 0.8, "support": 2}
    rows = stage.uploaded()
    radios = {r["dataRow"]["id"]: r["answer"] for r in rows if "answer" in r}
    assert len(radios) == 9 and radios["dr5"] == {"name": "dog", "confidence": 0.9}
    assert radios["dr-unlabeled"]["name"] == "cat"
    assert sum(1 for r in rows if r.get("metricName") == "confusion_matrix") == 4 * 2
    assert (m["training"], m["vertex_model"], m["unpredicted_rows"]) == ("automl", job["model"], 0)

    again = stage.run("evaluate")  # a re-run of the attempt finds its batch job
    assert len(stage.bodies("/batchPredictionJobs")) == 1 and again.metrics["accuracy"] == 0.75


def test_rows_without_a_prediction_are_left_out_and_counted(vertex, gcs_bucket, tmp_path):
    fake, endpoint = vertex
    vertex_automl.configure(fake, missing=["/dr6.png"])
    stage, result = _evaluate(fake, endpoint, gcs_bucket, tmp_path, SINGLE, wrong=["/dr5.png"])
    m = result.metrics  # test: cat cat dog (dr6 missing), predicted cat DOG dog
    assert (m["accuracy"], m["test_size"], m["predicted_rows"], m["unpredicted_rows"]) == (0.6667, 3, 8, 1)
    assert "dr6" not in {r["dataRow"]["id"] for r in stage.uploaded()}


def test_failed_batch_prediction_is_a_job_error(vertex, gcs_bucket, tmp_path):
    fake, endpoint = vertex
    stage = Stage(fake, endpoint, gcs_bucket, tmp_path, BOX)
    stage.run("train")
    vertex_automl.configure(fake, batch_outcome="FAILED", error="Model is not ready")
    with pytest.raises(JobError, match=r"batch prediction job .*/batchPredictionJobs/\d+ ended JOB_STATE_FAILED: "
                                       r"Model is not ready"):
        stage.run("evaluate")


def test_partially_succeeded_batch_prediction_is_scored_from_what_it_predicted(vertex, gcs_bucket, tmp_path):
    """PARTIALLY_SUCCEEDED is terminal: the rows it predicted are scored, the failure is recorded. The
    dataset's create/import operations stay pending for a poll, so the client's polling runs too."""
    fake, endpoint = vertex
    fake.lro_polls = 1
    vertex_automl.configure(fake, missing=["/dr6.png"], batch_outcome="PARTIALLY_SUCCEEDED")
    stage = Stage(fake, endpoint, gcs_bucket, tmp_path, SINGLE, params={"automl_max_hours": 0.002})
    vertex_automl.configure(fake, wrong=["/dr5.png"])
    stage.run("train")
    result = stage.run("evaluate")  # would wait until automl_max_hours and fail if not terminal
    m = result.metrics  # test: cat cat dog (dr6 failed), predicted cat DOG dog
    assert (m["accuracy"], m["test_size"], m["predicted_rows"], m["unpredicted_rows"]) == (0.6667, 3, 8, 1)
    assert (m["batch_state"], m["batch_failed_count"]) == ("JOB_STATE_PARTIALLY_SUCCEEDED", 1)
    assert m["batch_partial_failures"] == [m["batch_partial_failures"][0]] and \
        "1 instances failed" in m["batch_partial_failures"][0]
    (job,) = fake.table("automl_batch_jobs").values()
    assert [s for n, s in fake.history if n == job["name"]] == [
        "JOB_STATE_PENDING", "JOB_STATE_RUNNING", "JOB_STATE_PARTIALLY_SUCCEEDED"]
    (error,) = _lines(job["outputInfo"]["gcsOutputDirectory"] + "/errors_00001.jsonl")
    assert error["instance"]["content"].endswith("/dr6.png")
    assert any(p.startswith("/ui/") and "/datasets/" in p for _, p, _ in fake.requests)  # polled, as the client does
    assert "dr6" not in {r["dataRow"]["id"] for r in stage.uploaded()}


def test_partially_succeeded_without_any_prediction_is_a_job_error(vertex, gcs_bucket, tmp_path):
    fake, endpoint = vertex
    stage = Stage(fake, endpoint, gcs_bucket, tmp_path, BOX, params={"automl_max_hours": 0.002})
    stage.run("train")
    fake.inject("batchPredictionJobs", PARTIAL)
    vertex_automl.configure(fake, missing=[".png"])
    with pytest.raises(JobError, match=r"ended JOB_STATE_PARTIALLY_SUCCEEDED without a prediction for any data row: "
                                       r"Some instances could not be predicted"):
        stage.run("evaluate")


def test_injected_failures_reach_the_train_stage_as_vertex_reports_them(vertex, gcs_bucket, tmp_path):
    fake, endpoint = vertex
    stage = Stage(fake, endpoint, gcs_bucket, tmp_path, BOX)
    fake.inject("trainingPipelines", QUOTA)
    with pytest.raises(gexc.TooManyRequests, match="quota metrics exceed quota limits"):
        stage.run("train")
    assert not fake.table("automl_pipelines")
    fake.inject("trainingPipelines", STOCKOUT)
    with pytest.raises(JobError, match=r"ended PIPELINE_STATE_FAILED: Resources are insufficient in region"):
        stage.run("train", attempt=2)
    (pipeline,) = fake.table("automl_pipelines").values()
    assert pipeline["error"]["code"] == 8
    assert [s for n, s in fake.history if n == pipeline["name"]] == [
        "PIPELINE_STATE_PENDING", "PIPELINE_STATE_RUNNING", "PIPELINE_STATE_FAILED"]
    fake.inject("trainingPipelines", JOB_INTERNAL)
    with pytest.raises(JobError, match=r"ended PIPELINE_STATE_FAILED: Internal error occurred"):
        stage.run("train", attempt=3)
    assert stage.run("train", attempt=4).metrics["state"] == "PIPELINE_STATE_SUCCEEDED"


def test_multi_label_evaluation(vertex, gcs_bucket, tmp_path):
    fake, endpoint = vertex
    stage, result = _evaluate(fake, endpoint, gcs_bucket, tmp_path, MULTI, wrong=["/dr4.png"])
    # test: {a,b} {c} {a}, predicted {B,C} {c} {a} ("a" replaced by the next label not true)
    m = result.metrics
    assert (m["micro_f1"], m["micro_precision"], m["micro_recall"]) == (0.75, 0.75, 0.75)
    assert (m["macro_f1"], m["subset_accuracy"], m["test_size"]) == (0.7778, 0.6667, 3)
    assert m["per_class"]["c"] == {"precision": 0.5, "recall": 1.0, "f1": 0.6667, "support": 1}
    checklists = {r["dataRow"]["id"]: r["answer"] for r in stage.uploaded() if "answer" in r}
    assert checklists["dr4"] == [{"name": "b", "confidence": 0.89}, {"name": "c", "confidence": 0.9}]


def test_box_evaluation(vertex, gcs_bucket, tmp_path):
    fake, endpoint = vertex
    stage, result = _evaluate(fake, endpoint, gcs_bucket, tmp_path, BOX, wrong=["/dr5.png"])
    # test: dr4 cat found; dr5's dog box moved off the dog (an FP and an FN); stray 0.02 boxes stay out
    m = result.metrics
    assert (m["map50"], m["precision"], m["recall"], m["test_size"], m["test_boxes"]) == (0.5, 0.5, 0.5, 2, 2)
    assert result.metrics["per_class_ap50"] == {"cat": 1.0, "dog": 0.0}
    boxes = [r for r in stage.uploaded() if "bbox" in r]
    assert len(boxes) == 5 and {r["dataRow"]["id"] for r in boxes} == {"dr0", "dr1", "dr2", "dr4", "dr5"}
    dr0 = next(r for r in boxes if r["dataRow"]["id"] == "dr0")
    assert dr0["name"] == "cat" and dr0["bbox"] == {"top": 20.0, "left": 10.0, "height": 40.0, "width": 30.0}


def test_failed_pipeline_is_a_job_error_naming_state_and_error(vertex, gcs_bucket, tmp_path):
    fake, endpoint = vertex
    stage = Stage(fake, endpoint, gcs_bucket, tmp_path, SINGLE)
    vertex_automl.configure(fake, pipeline_outcome="FAILED", error="Dataset has too few images per label")
    with pytest.raises(JobError) as caught:
        stage.run("train")
    name = next(iter(fake.table("automl_pipelines").values()))["name"]
    assert str(caught.value) == (f"AutoML training pipeline {name} ended PIPELINE_STATE_FAILED: "
                                 "Dataset has too few images per label")


def test_rerun_waits_for_the_existing_pipeline(vertex, gcs_bucket, tmp_path):
    fake, endpoint = vertex
    stage = Stage(fake, endpoint, gcs_bucket, tmp_path, BOX,
                  params={"automl_max_hours": 0.0001, "automl_poll_seconds": 0.05})
    vertex_automl.configure(fake, pipeline_outcome="RUNNING")
    with pytest.raises(JobError, match=r"still PIPELINE_STATE_RUNNING after .* re-run this attempt"):
        stage.run("train")
    (pipeline_id,) = fake.table("automl_pipelines")
    vertex_automl.set_pipeline_state(fake, pipeline_id, "SUCCEEDED")
    result = stage.run("train")  # the same attempt again: finds its pipeline by display name
    assert len(stage.bodies("/trainingPipelines")) == 1 and len(stage.bodies("/datasets")) == 1
    assert result.uris["vertex_model"] == fake.table("automl_pipelines")[pipeline_id]["modelToUpload"]["name"]
    lists = [p for m, p, _ in fake.requests if m == "GET" and p.endswith("/trainingPipelines")]
    assert len(lists) == 2
    vertex_automl.configure(fake, pipeline_outcome="SUCCEEDED")
    stage.run("train", attempt=2)  # a retry is a new attempt: a new pipeline
    assert len(stage.bodies("/trainingPipelines")) == 2


def test_rerun_reuses_the_dataset_of_the_attempt(vertex, gcs_bucket, tmp_path):
    """A crash between dataset and pipeline creation: the re-run imports into the existing dataset."""
    fake, endpoint = vertex
    stage = Stage(fake, endpoint, gcs_bucket, tmp_path, SINGLE)
    from lbtrain.adapters import vertex_client

    aip = vertex_client.aiplatform(stage.config)
    aip.ImageDataset.create(display_name=f"prod-{RUN}-automl-a1".lower())
    stage.run("train")
    assert len(stage.bodies("/datasets")) == 1  # the one made above
    (dataset_id,) = fake.table("automl_datasets")
    assert [p for p in (p for m, p, _ in fake.requests if m == "POST") if p.endswith(":import")] == [
        f"/v1/projects/proj-1/locations/europe-west4/datasets/{dataset_id}:import"]
    assert stage.bodies("/trainingPipelines")[0]["inputDataConfig"]["datasetId"] == dataset_id


def test_local_artifact_root_is_a_clear_error(vertex, tmp_path):
    fake, endpoint = vertex
    stage = Stage(fake, endpoint, "unused", tmp_path, SINGLE, artifact_root=str(tmp_path / "artifacts"))
    with pytest.raises(JobError, match=r"AutoML training needs the images and its files on Cloud Storage: set ARTIFACT_ROOT=gs://"):
        stage.run("train")
    assert fake.requests == []


def test_snapshot_images_off_gcs_are_a_clear_error(vertex, gcs_bucket, tmp_path):
    fake, endpoint = vertex
    stage = Stage(fake, endpoint, gcs_bucket, tmp_path, SINGLE)
    stage.dataset.examples[3]["image"] = f"file://{tmp_path}/dr3.png"
    write_dataset(stage.etl, stage.dataset)
    with pytest.raises(JobError, match=r"AutoML needs gs:// image URIs, but 1 data rows .* \(first: dr3\)"):
        stage.run("train")
    assert fake.requests == []


def test_several_radios_become_question_answer_labels_and_back():
    """image_multi_classification in radios mode: targets `question/answer` ↔ AutoML `question_answer`."""
    label_map = {"mode": "radios", "questions": ["color", "shape"],
                 "classes": ["color/red", "color/blue", "shape/round_ish"]}
    assert automl.display_names(MULTI, label_map) == {
        "color/red": "color_red", "color/blue": "color_blue", "shape/round_ish": "shape_round_ish"}
    row = {"data_row_id": "d1", "image": "gs://b/d1.png", "split": "test", "targets": ["color/red"]}
    dataset = Dataset(examples=[row], label_map=label_map)
    record = {"instance": {"content": "gs://b/d1.png", "mimeType": "image/png"},
              "prediction": {"ids": ["1", "2", "3"], "displayNames": ["color_blue", "shape_round_ish", "color_red"],
                             "confidences": [0.7, 0.2, 0.1]}}
    answer, unknown = automl.to_predictor(MULTI, dataset, [record], {}, "projects/p/locations/l/models/9")
    assert unknown == []
    assert answer.predict([row]) == [{"labels": ["color/blue", "shape/round_ish"],
                                      "scores": {"color/blue": 0.7, "shape/round_ish": 0.2, "color/red": 0.1}}]


def test_waiting_reports_changes_and_heartbeats_and_stops_at_the_limit():
    now = [0.0]
    states = iter(["PENDING", "RUNNING"] + ["RUNNING"] * 100)
    lines: list[str] = []
    waiting = automl.Waiting(poll_seconds=600, max_seconds=3 * 3600, clock=lambda: now[0],
                             sleep=lambda s: now.__setitem__(0, now[0] + s))
    with pytest.raises(JobError, match=r"^pipeline p is still RUNNING after 3.00 h \(param automl_max_hours=3\)"):
        automl.wait_for("pipeline p", lambda: next(states), ("SUCCEEDED",), waiting, lambda m, **f: lines.append(m))
    # PENDING at 0, RUNNING at 10 min, then every 30 min while nothing changes
    assert lines == ["pipeline p: PENDING after 0.0 min", "pipeline p: RUNNING after 10.0 min",
                     "pipeline p: RUNNING after 40.0 min", "pipeline p: RUNNING after 70.0 min",
                     "pipeline p: RUNNING after 100.0 min", "pipeline p: RUNNING after 130.0 min",
                     "pipeline p: RUNNING after 160.0 min"]


FIXTURES = Path(__file__).resolve().parents[1] / "data" / "vertex"  # real AutoML batch-prediction outputs


@pytest.mark.parametrize(("model_type", "name"), [(SINGLE, "image-single"), (MULTI, "image-multi"),
                                                   (BOX, "bbox-test")])
def test_real_batch_prediction_output_becomes_task_predictions(model_type, name):
    """The real AutoML output files: every image answered, in the shape the task's evaluate expects."""
    records = ap.read_jsonl((FIXTURES / f"automl-batch-prediction-{name}.txt").read_text().splitlines())
    label_map = {SINGLE: {"question": "Type of fruit", "classes": []},
                 MULTI: {"mode": "checklist", "question": "description", "classes": []},
                 BOX: {"classes": []}}[model_type]
    rows = [{"data_row_id": f"d{i}", "image": r["instance"]["content"], "split": "test", "width": 2048,
             "height": 1365} for i, r in enumerate(records)]
    answer, unknown = automl.to_predictor(model_type, Dataset(examples=rows, label_map=label_map), records,
                                          {}, "m")
    assert unknown == [] and len(answer.by_row) == len({r["instance"]["content"] for r in records})
    first = records[0]["prediction"]
    if model_type == SINGLE:
        (pred,) = answer.predict(rows[:1])
        assert (pred["label"], pred["confidence"], len(pred["scores"])) == ("grapes", 0.882227, 6)
        assert first["displayNames"][0] == "Type of fruit_grapes"
    elif model_type == MULTI:
        assert answer.predict(rows[:1])[0]["labels"] == ["desert"]
    else:
        dets = answer.detect(rows[:1], 0.3)[0]
        assert dets and all(d["name"] == "Grapes" and d["score"] >= 0.3 for d in dets)
        x0, x1, y0, y1 = first["bboxes"][0]
        assert dets[0]["box"] == pytest.approx((x0 * 2048, y0 * 1365, x1 * 2048, y1 * 1365), abs=0.01)
