"""Every model type's etl → train → evaluate through `jobs.main` with ARTIFACT_ROOT=gs://… (the real
google-cloud-storage client against the in-process GCS emulator), and the model server loading its
model from a gs:// AIP_STORAGE_URI. Asserts on the objects in the bucket, listed with a plain client,
and that nothing was written to the working directory or left in the temp directory."""

from __future__ import annotations

import base64
import json
import tempfile
from pathlib import Path
from typing import Any

import pytest

from jobs import main as jobs_main
from jobs import serving
from lbtrain import datasets, pipelines, storage
from lbtrain.launch import inputs_uri, job_inputs
from tests.launcher_args import recorded_args

BUCKET = "lbtrain-test"
ROOT = f"gs://{BUCKET}/lbtrain"
MR = "mr-gcs"

# Tiny data and short training: this checks where the artifacts go, not model quality.
CASES: dict[str, tuple[int, dict[str, Any]]] = {
    "text_single_classification": (120, {"C": [1.0]}),
    "text_multi_classification": (120, {"C": [10]}),
    "ner": (120, {"c1": [0.2], "c2": [0.1], "max_iterations": 20}),
    "image_single_classification": (100, {"epochs": 1, "threads": 1}),
    "image_multi_classification": (100, {"epochs": 1, "threads": 1}),
    "bounding_box": (40, {"epochs": 1, "width": 8, "input_size": 64, "threads": 1}),
}
SNAPSHOT = ("dataset.jsonl", "predict_only.jsonl", "label_map.json", "stats.json", "outputs.json")


def test_every_registered_type_is_covered() -> None:
    assert set(CASES) == set(pipelines.names())


class GcsJobs:
    """A file-backed Labelbox outside the working directory, artifacts on the emulator's bucket."""

    def __init__(self, root: Path, bucket: Any):
        self.labelbox = root / "labelbox"
        self.bucket = bucket
        self.outputs: dict[str, str] = {}

    def build(self, model_type: str, limit: int) -> None:
        datasets.build(model_type, str(self.labelbox), MR, limit=limit)
        if pipelines.get(model_type).media == "image":
            self._sources_to_gcs()

    def _sources_to_gcs(self) -> None:
        """Image rows point at gs:// copies of the media (as Labelbox rows on GCS do)."""
        export = self.labelbox / "model_runs" / MR / "export.ndjson"
        rows = [json.loads(line) for line in export.read_text().splitlines() if line.strip()]
        for row in rows:
            local = storage.local_path(row["data_row"]["row_data"])
            name = f"sources/{local.name}"
            self.bucket.blob(name).upload_from_filename(str(local), timeout=30)
            row["data_row"]["row_data"] = f"gs://{BUCKET}/{name}"
        export.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def run(self, model_type: str, stage: str, params: dict[str, Any], run_id: str = "r1") -> dict[str, Any]:
        """One job as the launcher starts it: inputs.json on GCS, then `python -m jobs.main` (in process)."""
        run = {"run_id": run_id, "model_type": model_type, "model_run_id": MR, "model_id": "m",
               "params": params, "outputs": self.outputs}
        in_uri = inputs_uri(ROOT, run_id, stage, 1)
        storage.write_json(in_uri, job_inputs(run, stage, 1))
        out = storage.run_dir(ROOT, run_id, stage, 1)
        storage.write_json(storage.join(out, "error.json"), {"message": "stale, from an earlier execution"})
        rc = jobs_main.main(["--run-id", run_id, "--stage", stage, "--attempt", "1",
                             "--inputs", in_uri, "--outputs", out, *recorded_args(stage, self.outputs)])
        error = storage.join(out, "error.json")
        assert rc == 0, storage.read_text(error) if storage.exists(error) else f"exit {rc}"
        assert not storage.exists(error)  # the stale error.json was removed
        self.outputs[stage] = out
        return storage.read_json(storage.join(out, "outputs.json"))

    def names(self, prefix: str) -> list[str]:
        return sorted(b.name for b in self.bucket.list_blobs(prefix=prefix, timeout=30))


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This process's (and its children's) temp dir, to check temporary copies are removed."""
    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    monkeypatch.setenv("TMPDIR", str(d))
    return d


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "cwd"
    d.mkdir()
    monkeypatch.chdir(d)
    return d


@pytest.fixture
def gcs_jobs(gcs_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cwd: Path,
             scratch: Path) -> GcsJobs:
    from google.cloud import storage as gcs

    jobs = GcsJobs(tmp_path, gcs.Client().bucket(gcs_bucket))
    for key, value in {"ARTIFACT_ROOT": ROOT, "LABELBOX_BACKEND": "file", "LABELBOX_DIR": str(jobs.labelbox),
                       "JOB_BACKEND": "local"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("LBTRAIN_MIN_EXAMPLES", "train=1,validation=0,test=0")  # tiny data
    return jobs


def _copies(tmp: Path) -> list[Path]:
    """lbtrain.storage's temporary copies (torch keeps its own cache dirs in the temp dir too)."""
    return [p for p in tmp.iterdir() if p.name.startswith(storage.TEMP_PREFIX)]


def _prefix(uri: str) -> str:
    assert uri.startswith(f"gs://{BUCKET}/"), uri
    return uri[len(f"gs://{BUCKET}/"):]


@pytest.mark.parametrize("model_type", sorted(CASES))
def test_pipeline_writes_every_artifact_to_gcs(gcs_jobs: GcsJobs, model_type: str, cwd: Path,
                                               scratch: Path) -> None:
    limit, params = CASES[model_type]
    gcs_jobs.build(model_type, limit)
    etl = gcs_jobs.run(model_type, "etl", params)
    train = gcs_jobs.run(model_type, "train", params)
    evaluate = gcs_jobs.run(model_type, "evaluate", params)

    etl_dir = _prefix(gcs_jobs.outputs["etl"])
    etl_objects = gcs_jobs.names(etl_dir + "/")
    assert {f"{etl_dir}/{n}" for n in SNAPSHOT} <= set(etl_objects)
    media = [n for n in etl_objects if n.startswith(f"{etl_dir}/media/")]
    if pipelines.get(model_type).media == "image":
        assert etl["metrics"]["fetch_failed"] == 0
        rows = etl["metrics"]["examples"] + etl["metrics"]["predict_only"]
        assert rows == limit and len(media) == rows  # every image copied into the run, on GCS
        first = json.loads(gcs_jobs.bucket.blob(f"{etl_dir}/dataset.jsonl").download_as_text(timeout=30)
                           .split("\n", 1)[0])
        assert first["image"].startswith(f"gs://{BUCKET}/{etl_dir}/media/")
    else:
        assert media == []

    model_dir = _prefix(train["uris"]["model"])
    meta = json.loads(gcs_jobs.bucket.blob(f"{model_dir}/model.json").download_as_text(timeout=30))
    assert meta["model_type"] == model_type
    assert gcs_jobs.names(model_dir + "/") == sorted([f"{model_dir}/model.json", f"{model_dir}/{meta['file']}"])
    train_dir = _prefix(gcs_jobs.outputs["train"])
    assert {f"{train_dir}/train_metrics.json", f"{train_dir}/outputs.json"} <= set(gcs_jobs.names(train_dir + "/"))

    eval_dir = _prefix(gcs_jobs.outputs["evaluate"])
    assert gcs_jobs.names(eval_dir + "/") == [f"{eval_dir}/{n}" for n in
                                              ("metrics.json", "outputs.json", "predictions.ndjson")]
    headline = pipelines.get(model_type).headline_metric
    assert 0.0 <= evaluate["metrics"][headline] <= 1.0
    metrics = json.loads(gcs_jobs.bucket.blob(f"{eval_dir}/metrics.json").download_as_text(timeout=30))
    assert metrics[headline] == evaluate["metrics"][headline]

    for manifest in (etl, train, evaluate):
        for uri in manifest["uris"].values():
            assert uri.startswith(f"gs://{BUCKET}/lbtrain/runs/r1/")
    assert gcs_jobs.names("lbtrain/runs/r1/inputs/") == [f"lbtrain/runs/r1/inputs/{s}-a1.json"
                                                         for s in ("etl", "evaluate", "train")]
    assert list(cwd.iterdir()) == []  # nothing written to the working directory
    assert _copies(scratch) == []  # no temporary model copies left behind


def _instances(gcs_jobs: GcsJobs, model_type: str) -> list[Any]:
    if model_type == "image_single_classification":
        etl_dir = _prefix(gcs_jobs.outputs["etl"])
        png = next(n for n in gcs_jobs.names(f"{etl_dir}/media/"))
        return [{"b64": base64.b64encode(gcs_jobs.bucket.blob(png).download_as_bytes(timeout=30)).decode()}]
    return ["a gripping, beautifully acted film", "dull and far too long"]


@pytest.mark.parametrize("model_type", ["text_single_classification", "image_single_classification"])
def test_model_server_loads_from_a_gs_aip_storage_uri(gcs_jobs: GcsJobs, model_type: str, tmp_path: Path,
                                                      cwd: Path, scratch: Path) -> None:
    limit, params = CASES[model_type]
    gcs_jobs.build(model_type, limit)
    gcs_jobs.run(model_type, "etl", params)
    train = gcs_jobs.run(model_type, "train", params)
    model_uri = train["uris"]["model"]
    assert model_uri.startswith("gs://")
    classes = json.loads(gcs_jobs.bucket.blob(_prefix(model_uri) + "/model.json").download_as_text(timeout=30))[
        "classes"]

    # `python -m jobs.serving` with AIP_STORAGE_URI=gs://… (the Vertex contract), in its own process.
    records = tmp_path / "serving-records"
    record = serving.start(model_uri, str(records), model_type, "r1", timeout=60, sha256=train["model_sha256"])
    try:
        assert serving.healthy(record["health_url"])
        instances = _instances(gcs_jobs, model_type)
        reply = serving.predict(record["endpoint"], instances)
        assert len(reply["predictions"]) == len(instances)
        assert all(p["label"] in classes for p in reply["predictions"])
    finally:
        assert serving.stop_record(record, serving.record_path(str(records), model_type, "r1")) is True
    assert list(cwd.iterdir()) == []
    assert _copies(scratch) == []  # the server removed its copy of the model on SIGTERM


def test_model_server_refuses_an_empty_gs_prefix(gcs_jobs: GcsJobs, tmp_path: Path) -> None:
    with pytest.raises(serving.ServingError, match="no loadable model at gs://"):
        serving.start(f"{ROOT}/runs/none/train/a1/model", str(tmp_path / "rec"), "ner", "rx", timeout=30)
