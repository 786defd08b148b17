"""The model types lbtrain trains, and the stages each goes through (docs/architecture.md §3–§4).

This module must stay import-light: the ingress imports it to answer `GET /models`.
ML code lives in the task module named here and is imported only inside jobs.
A new model type is one more `ModelType` entry (or a call to `register`); the
orchestration code never changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFAULT_STAGES: tuple[str, ...] = ("etl", "train", "evaluate", "deploy")

# Labelbox status reported when a stage's job is launched (docs/architecture.md §11).
STAGE_LABELBOX_STATUS = {"etl": "PREPARING_DATA", "train": "TRAINING_MODEL"}


@dataclass(frozen=True)
class ModelType:
    name: str
    media: str  # "text" or "image"
    task_module: str  # dotted module under jobs.tasks implementing the task
    headline_metric: str  # the metric the champion/challenger gate compares
    stages: tuple[str, ...] = DEFAULT_STAGES
    description: str = ""


_REGISTRY: dict[str, ModelType] = {}


def register(model_type: ModelType) -> None:
    _REGISTRY[model_type.name] = model_type


register(
    ModelType(
        name="text_single_classification",
        media="text",
        task_module="jobs.tasks.text_single_classification",
        headline_metric="macro_f1",
        description="Text, one radio answer per data row: TF-IDF + linear model.",
    )
)

register(
    ModelType(
        name="text_multi_classification",
        media="text",
        task_module="jobs.tasks.text_multi_classification",
        headline_metric="micro_f1",
        description="Text, a set of classes per data row (checklist or several radios): TF-IDF + one-vs-rest.",
    )
)

register(
    ModelType(
        name="ner",
        media="text",
        task_module="jobs.tasks.ner",
        headline_metric="entity_f1",
        description="Text, named entity spans (inclusive end): CRF over BIO token tags.",
    )
)

register(
    ModelType(
        name="bounding_box",
        media="image",
        task_module="jobs.tasks.bounding_box",
        headline_metric="map50",
        description="Images, rectangles: a small CenterNet-style detector in plain torch, scored with mAP@0.5.",
    )
)

register(
    ModelType(
        name="image_single_classification",
        media="image",
        task_module="jobs.tasks.image_single_classification",
        headline_metric="accuracy",
        description="Images, one radio answer per data row: a small BatchNorm CNN in plain torch.",
    )
)

register(
    ModelType(
        name="image_multi_classification",
        media="image",
        task_module="jobs.tasks.image_multi_classification",
        headline_metric="micro_f1",
        description="Images, a checklist (or several radios): a BatchNorm CNN with global max-pool, sigmoid per class.",
    )
)


class UnknownModelType(KeyError):
    def __str__(self) -> str:
        return f"unknown model type {self.args[0]!r}; known: {', '.join(sorted(_REGISTRY))}"


def get(name: str) -> ModelType:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownModelType(name) from None


def names() -> list[str]:
    return sorted(_REGISTRY)


def run_stages(run: dict[str, Any]) -> tuple[str, ...]:
    """A run's own stages: its document's list (with the prelabel step when it has one), else its type's."""
    stages = run.get("stages")
    return tuple(stages) if stages else get(run["model_type"]).stages


def next_stage(model_type: str, stage: str) -> str | None:
    stages = get(model_type).stages
    i = stages.index(stage)
    return stages[i + 1] if i + 1 < len(stages) else None
