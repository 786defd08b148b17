"""The task interface every model type implements, and the dataset snapshot the stages pass on.

The stage modules (`jobs/etl.py` … `jobs/deploy.py`) know nothing about text, images or
sklearn: they call a `Task` and move its artifacts around. A new model type is one module
under `jobs/tasks/` exposing `TASK`, named by `lbtrain.pipelines` (docs/architecture.md §3).
Only the standard library is imported here so `jobs.serving` and `jobs.main` start fast.
"""

from __future__ import annotations

import hashlib
import json
import json.encoder
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from lbtrain import storage

SPLITS: tuple[str, ...] = ("train", "validation", "test")

# Snapshot file names (docs/architecture.md §4). `predict_only.jsonl` holds the data rows that are not
# training/evaluation examples (no split, no usable label) but still get a prediction.
DATASET_FILE = "dataset.jsonl"
PREDICT_ONLY_FILE = "predict_only.jsonl"
LABEL_MAP_FILE = "label_map.json"
STATS_FILE = "stats.json"
MODEL_DIR = "model"
MODEL_META_FILE = "model.json"

Progress = Callable[..., None]


class JobError(Exception):
    """An expected failure whose message is one human sentence (goes to error.json as is)."""


class DatasetError(JobError):
    """The model run's data cannot be trained on (too few examples, no classes, bad labels)."""


class ParamError(JobError):
    """A run parameter (`params` of the run request) has a bad value."""


class ModelError(JobError):
    """A model directory is missing or not loadable."""


@dataclass
class Dataset:
    """One ETL snapshot: examples with a split and target, plus rows to predict only."""

    examples: list[dict[str, Any]]
    label_map: dict[str, Any]
    stats: dict[str, Any] = field(default_factory=dict)
    predict_only: list[dict[str, Any]] = field(default_factory=list)
    # Examples per split, when a streaming convert counted them as it wrote the snapshot (its
    # `examples` are then a SnapshotRows read back from the file on demand).
    split_sizes: dict[str, int] | None = None

    def split(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.examples if e["split"] == name]

    def split_size(self, name: str) -> int:
        if self.split_sizes is not None:
            return self.split_sizes.get(name, 0)
        return sum(1 for e in self.examples if e["split"] == name)

    def train_validation(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The training and validation examples; every trainer needs at least one training example."""
        train = self.split("train")
        if not train:
            raise DatasetError('no examples in split "train"')
        return train, self.split("validation")

    def all_rows(self) -> list[dict[str, Any]]:
        """Every data row of the model run that has content: what evaluate predicts."""
        return self.examples + self.predict_only


@dataclass
class Evaluation:
    """What evaluate produces: full metrics, the small summary for outputs.json, Labelbox rows."""

    metrics: dict[str, Any]
    summary: dict[str, Any]
    prediction_rows: list[dict[str, Any]]


class Predictor(Protocol):
    """Predictions for dataset rows: what evaluate needs (a loaded model, or AutoML's batch output)."""

    meta: dict[str, Any]

    def predict(self, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Predict dataset-shaped rows (e.g. {"text": ...}); one JSON-able dict per row."""


class ServingPredictor(Predictor, Protocol):
    """A loaded model the serving process answers Vertex prediction requests with."""

    def parse_instances(self, instances: Sequence[Any]) -> list[dict[str, Any]]:
        """Vertex `instances` → dataset-shaped rows; raises ValueError on a bad instance."""


class Task(ABC):
    """One model type's ML code. Stage modules call these methods in order."""

    model_type: ClassVar[str]

    @abstractmethod
    def convert(
        self,
        rows: Iterable[Mapping[str, Any]],
        model_run_id: str,
        params: Mapping[str, Any],
        out_uri: str,
        progress: Progress,
    ) -> Dataset:
        """Export v2 rows → snapshot. `out_uri` is where media may be copied. Never drops silently:
        every row that is not an example is counted (and named) in `stats`."""

    @abstractmethod
    def validate(self, dataset: Dataset, min_examples: Mapping[str, int]) -> None:
        """Raise DatasetError naming the class and split when the snapshot cannot be trained on."""

    @abstractmethod
    def train(
        self, dataset: Dataset, model_dir: str, params: Mapping[str, Any], progress: Progress
    ) -> dict[str, Any]:
        """Fit, write a self-contained model under `model_dir` (ending with model.json), return
        train metrics (validation scores, sizes, seconds)."""

    @abstractmethod
    def load_predictor(self, model_dir: str, sha256: str = "") -> ServingPredictor:
        """Load what `train` wrote, offline; `sha256` is the model file's digest the train step
        recorded (`model_digest`): required for pickled models, checked when given for others."""

    @abstractmethod
    def evaluate(self, dataset: Dataset, predictor: Predictor, progress: Progress) -> Evaluation:
        """Predict every data row, score the test split, build Labelbox prediction + metric rows."""

    def etl_summary(self, dataset: Dataset) -> dict[str, Any]:
        """Small numbers for the etl step's outputs.json."""
        per_split = {s: dataset.split_size(s) for s in SPLITS}
        return {
            "examples": len(dataset.examples),
            **per_split,
            "predict_only": len(dataset.predict_only),
            "skipped": sum(v["count"] for v in dataset.stats.get("skipped", {}).values()),
            "rows": dataset.stats.get("rows", 0),
        }


# --- snapshot I/O (through lbtrain.storage so gs:// can be added in one place) ---


# json.dumps(r, ensure_ascii=False, sort_keys=True), without building an encoder per call
_ROW_ENCODER = json.JSONEncoder(ensure_ascii=False, sort_keys=True)
# ... nor the C encoder JSONEncoder.encode makes on every call (half of its time): the same one, made
# once, without the circular-reference check (a row is plain data, never circular). None without _json.
_C_ROW_ENCODER = (
    json.encoder.c_make_encoder(  # type: ignore[attr-defined]
        None, _ROW_ENCODER.default, json.encoder.encode_basestring, None, ": ", ", ", True, False, True
    )
    if getattr(json.encoder, "c_make_encoder", None) is not None
    else None
)


def dumps_jsonl(rows: Iterable[Mapping[str, Any]]) -> str:
    return "".join(dumps_row(r) for r in rows)


def loads_jsonl(text: str) -> list[dict[str, Any]]:
    # split on "\n" only: str.splitlines() also splits on U+2028/U+0085, which JSON leaves raw.
    return [json.loads(line) for line in text.split("\n") if line.strip()]


def dumps_row(row: Mapping[str, Any]) -> str:
    """One snapshot line (what dumps_jsonl writes per row)."""
    if _C_ROW_ENCODER is not None and type(row) is dict:
        return "".join(_C_ROW_ENCODER(row, 0)) + "\n"
    return _ROW_ENCODER.encode(row) + "\n"


def dataset_uris(out_uri: str) -> dict[str, str]:
    """The snapshot files' URIs by name."""
    return {
        "dataset": storage.join(out_uri, DATASET_FILE),
        "predict_only": storage.join(out_uri, PREDICT_ONLY_FILE),
        "label_map": storage.join(out_uri, LABEL_MAP_FILE),
        "stats": storage.join(out_uri, STATS_FILE),
    }


def write_dataset(out_uri: str, dataset: Dataset) -> dict[str, str]:
    """Write the snapshot files; return their URIs by name. The row files of a dataset a streaming
    convert already wrote there (SnapshotRows) are left as they are."""
    uris = dataset_uris(out_uri)
    for name, rows in (("dataset", dataset.examples), ("predict_only", dataset.predict_only)):
        if not (isinstance(rows, SnapshotRows) and rows.uri == uris[name]):
            storage.write_text(uris[name], dumps_jsonl(rows))
    storage.write_json(uris["label_map"], dataset.label_map)
    storage.write_json(uris["stats"], dataset.stats)
    return uris


class SnapshotRows(Sequence[dict[str, Any]]):
    """The rows of a snapshot .jsonl file already written, counted as they were written and read
    back only when iterated (each iteration reads the file again, a line at a time)."""

    def __init__(self, uri: str, count: int):
        self.uri = uri
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.count == 0:
            return
        with storage.localized(self.uri) as local, open(local, encoding="utf-8", newline="\n") as fh:
            for line in fh:
                if line.strip():
                    yield json.loads(line)

    def __getitem__(self, index: Any) -> Any:
        return list(self)[index]

    def __add__(self, other: Any) -> list[dict[str, Any]]:
        return list(self) + list(other)


def read_dataset(etl_uri: str) -> Dataset:
    """Read the snapshot an etl step wrote (its outputs dir)."""
    path = storage.join(etl_uri, DATASET_FILE)
    if not storage.exists(path):
        raise JobError(f"the etl outputs at {etl_uri} have no {DATASET_FILE}")
    predict_only = storage.join(etl_uri, PREDICT_ONLY_FILE)
    stats = storage.join(etl_uri, STATS_FILE)
    return Dataset(
        examples=loads_jsonl(storage.read_text(path)),
        label_map=storage.read_json(storage.join(etl_uri, LABEL_MAP_FILE)),
        stats=storage.read_json(stats) if storage.exists(stats) else {},
        predict_only=loads_jsonl(storage.read_text(predict_only)) if storage.exists(predict_only) else [],
    )


def save_joblib(model_dir: str, obj: Any, file: str) -> None:
    """The fitted model as one joblib file in the model dir (local or gs://)."""
    import joblib

    with storage.staged(storage.join(model_dir, file)) as tmp:
        joblib.dump(obj, tmp, compress=3)


def model_file(model_dir: str, model_type: str, default_file: str) -> tuple[dict[str, Any], str]:
    """(model.json, URI of the weights file) of a model dir written for `model_type`; ModelError otherwise."""
    meta = read_model_meta(model_dir)
    if meta["model_type"] != model_type:
        raise ModelError(f"the model at {model_dir} is a {meta['model_type']} model, not {model_type}")
    path = storage.join(model_dir, meta.get("file", default_file))
    if not storage.exists(path):
        raise ModelError(f"no trained model file at {path}")
    return meta, path


# --- the model file's digest ---------------------------------------------------------------------
# A joblib file is a pickle: loading it runs whatever code it names. The artifact bucket is written by
# every job, including those parsing untrusted media, so a model file is loaded only when its SHA-256
# equals the one the train step recorded (train outputs.json → job-events → the run in Firestore →
# the launcher's `--model-sha256` job argument / the serving container's LBTRAIN_MODEL_SHA256).

SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")


def file_sha256(path: str | Any) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_digest(model_dir: str) -> str:
    """SHA-256 of the weights file model.json names (what the train step records)."""
    meta = read_model_meta(model_dir)
    if not meta.get("file"):
        raise ModelError(f"the model.json at {model_dir} names no model file")
    with storage.localized(storage.join(model_dir, str(meta["file"]))) as local:
        return file_sha256(local)


def verify_digest(local: Any, uri: str, sha256: str, *, required: bool) -> None:
    """ModelError unless the local copy of `uri` has the recorded digest (or none is required and none given)."""
    if not sha256:
        if required:
            raise ModelError(
                f"refusing to load {uri}: it is a pickle and no SHA-256 recorded by its train step was given"
            )
        return
    if not SHA256_PATTERN.fullmatch(sha256):
        raise ModelError(f"refusing to load {uri}: the recorded SHA-256 {sha256[:80]!r} is not 64 hex digits")
    actual = file_sha256(local)
    if actual != sha256:
        raise ModelError(
            f"refusing to load {uri}: its SHA-256 {actual} differs from the {sha256} its train step "
            "recorded (the file was changed after training)"
        )


def load_joblib(model_dir: str, model_type: str, default_file: str, sha256: str) -> tuple[Any, dict[str, Any]]:
    """(fitted model, model.json) of a joblib model dir written for `model_type`, loaded only when the
    file's SHA-256 is the recorded `sha256`; ModelError otherwise."""
    import joblib

    meta, path = model_file(model_dir, model_type, default_file)
    with storage.localized(path) as local:
        verify_digest(local, path, sha256, required=True)
        return joblib.load(local), meta


def read_model_meta(model_dir: str) -> dict[str, Any]:
    path = storage.join(model_dir, MODEL_META_FILE)
    if not storage.exists(path):
        raise ModelError(f"no trained model at {model_dir} ({MODEL_META_FILE} missing)")
    meta = storage.read_json(path)
    if not isinstance(meta, dict) or not meta.get("model_type"):
        raise ModelError(f"{path} does not name a model_type")
    return meta
