"""Per-model-type training options (`MODEL_OPTIONS`, JSON): custom training or AutoML Image.

`{"bounding_box": {"training": "automl", "budget_milli_node_hours": 20000}}`; `"prelabel"` (true or
settings, lbtrain/prelabel.py) turns the prelabel step on for the type's runs. AutoML is offered for
the image types only (AutoML Text is deprecated by Google); the budget defaults to the API minimum.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from lbtrain import pipelines

AUTOML_TYPES = ("image_single_classification", "image_multi_classification", "bounding_box")
# Vertex AI's minimum training budget for AutoML Image cloud models, in milli node hours.
AUTOML_MIN_BUDGET = {
    "image_single_classification": 8000,
    "image_multi_classification": 8000,
    "bounding_box": 20000,
}
TRAINING_KINDS = ("custom", "automl")


@dataclass(frozen=True)
class TrainingOptions:
    training: str = "custom"
    budget_milli_node_hours: int = 0
    prelabel: Any = None  # the prelabel step's settings for this type's runs (lbtrain/prelabel.py)

    @property
    def automl(self) -> bool:
        return self.training == "automl"


def parse(raw: str) -> dict[str, TrainingOptions]:
    """All configured model types' options; raises ValueError naming the bad entry."""
    if not raw.strip():
        return {}
    try:
        table = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"MODEL_OPTIONS is not JSON: {exc}") from None
    if not isinstance(table, dict):
        raise ValueError("MODEL_OPTIONS must be a JSON object of model type → options")
    out: dict[str, TrainingOptions] = {}
    for model_type, spec in table.items():
        pipelines.get(model_type)  # UnknownModelType names the valid ones
        if not isinstance(spec, dict):
            raise ValueError(f"MODEL_OPTIONS[{model_type!r}] must be an object")
        unknown = set(spec) - {"training", "budget_milli_node_hours", "prelabel"}
        if unknown:
            raise ValueError(f"MODEL_OPTIONS[{model_type!r}]: unknown keys {sorted(unknown)}")
        training = spec.get("training", "custom")
        if training not in TRAINING_KINDS:
            raise ValueError(f"MODEL_OPTIONS[{model_type!r}].training must be custom or automl, not {training!r}")
        budget = 0
        if training == "automl":
            if model_type not in AUTOML_TYPES:
                raise ValueError(
                    f"MODEL_OPTIONS[{model_type!r}]: AutoML is offered for {', '.join(AUTOML_TYPES)} only "
                    "(AutoML Text is deprecated by Google)"
                )
            minimum = AUTOML_MIN_BUDGET[model_type]
            budget = spec.get("budget_milli_node_hours", minimum)
            if not isinstance(budget, int) or isinstance(budget, bool) or budget < minimum:
                raise ValueError(
                    f"MODEL_OPTIONS[{model_type!r}].budget_milli_node_hours must be an integer >= {minimum} "
                    f"(the Vertex AI minimum), not {budget!r}"
                )
        if "prelabel" in spec:
            from lbtrain.prelabel import normalize

            normalize(spec["prelabel"], f"MODEL_OPTIONS[{model_type!r}].prelabel")  # PrelabelError is a ValueError
        out[model_type] = TrainingOptions(training=training, budget_milli_node_hours=budget,
                                          prelabel=spec.get("prelabel"))
    return out


def for_type(raw: str, model_type: str) -> TrainingOptions:
    return parse(raw).get(model_type, TrainingOptions())
