"""What the launcher adds to a job's command line beyond run/stage/attempt/inputs/outputs, for tests
that run `python -m jobs.main` stage by stage without the launcher (lbtrain/launch.py)."""

from __future__ import annotations

from collections.abc import Mapping

from lbtrain import storage
from lbtrain.launch import LOADS_MODEL


def recorded_args(stage: str, upstream: Mapping[str, str]) -> list[str]:
    """`--model-sha256` with the digest job-events records from the train step's outputs.json."""
    if stage not in LOADS_MODEL or "train" not in upstream:
        return []
    manifest = storage.join(upstream["train"], "outputs.json")
    if not storage.exists(manifest):
        return []
    sha256 = storage.read_json(manifest).get("model_sha256")
    return ["--model-sha256", sha256] if sha256 else []
