"""The artifact storage layer on gs:// URIs, through the real google-cloud-storage client against a
local GCS emulator: the same calls the launcher and the job-events handler make locally."""

from __future__ import annotations

import pytest

from lbtrain import storage
from lbtrain.completion import read_outputs
from lbtrain.launch import inputs_uri, job_inputs


def test_json_text_and_bytes_round_trip(gcs_bucket):
    root = f"gs://{gcs_bucket}/lbtrain"
    out = storage.run_dir(root, "r1", "train", 2)
    assert out == f"gs://{gcs_bucket}/lbtrain/runs/r1/train/a2"
    assert storage.makedirs(out) is None  # no directories on GCS
    uri = storage.join(out, "outputs.json")
    assert not storage.exists(uri)
    storage.write_json(uri, {"metrics": {"macro_f1": 0.84}, "name": "é"})
    assert storage.exists(uri)
    assert storage.read_json(uri) == {"metrics": {"macro_f1": 0.84}, "name": "é"}
    storage.write_bytes(storage.join(out, "blob.bin"), b"\x00\x01")
    assert storage.read_bytes(storage.join(out, "blob.bin")) == b"\x00\x01"
    with pytest.raises(FileNotFoundError):
        storage.read_text(storage.join(out, "missing.txt"))
    with pytest.raises(ValueError, match="bad gs://"):
        storage.read_bytes("gs://only-bucket")


def test_launcher_manifest_and_completion_read_on_gcs(gcs_bucket):
    root = f"gs://{gcs_bucket}/art"
    run = {"run_id": "r9", "model_type": "text_single_classification", "model_run_id": "mr", "model_id": "",
           "params": {}, "outputs": {"etl": f"{root}/runs/r9/etl/a1"}}
    uri = inputs_uri(root, "r9", "train", 1)
    storage.write_json(uri, job_inputs(run, "train", 1))
    assert storage.read_json(uri)["upstream"] == {"etl": f"{root}/runs/r9/etl/a1"}
    out = storage.run_dir(root, "r9", "train", 1)
    assert read_outputs(out) is None  # not written yet
    storage.write_json(storage.join(out, "outputs.json"), {"metrics": {"train_size": 10}})
    assert read_outputs(out) == {"metrics": {"train_size": 10}}
