"""One module per model type; `load(model_type)` returns its `Task` (see jobs/tasks/base.py).

The module is named by `lbtrain.pipelines` so a new type needs no change here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jobs.tasks.base import Task


def load(model_type: str) -> Task:
    """Import the task module of `model_type` (heavy ML imports stay inside its functions)."""
    from lbtrain import pipelines

    module = importlib.import_module(pipelines.get(model_type).task_module)
    task = getattr(module, "TASK", None)
    if task is None:
        raise ImportError(f"{module.__name__} does not define TASK")
    return task
