"""Tiny synthetic image datasets for the image task tests (shapes on noise, PNGs in a temp dir):
fast to train on, yet only learnable from the pixels."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from jobs.tasks.base import Dataset
from tests.launcher_args import recorded_args

SHAPES = ("hbar", "vbar", "box")


def draw(rng: random.Random, shapes: list[str], side: int) -> Any:
    """A side×side uint8 image with each named shape at a random spot (3×3 cells, no overlap)."""
    import numpy as np

    img = np.array([[rng.randint(0, 40) for _ in range(side)] for _ in range(side)], dtype=np.uint8)
    cell = side // 3
    spots = rng.sample([(r, c) for r in range(3) for c in range(3)], len(shapes))
    for shape, (r, c) in zip(shapes, spots, strict=True):
        y, x = r * cell, c * cell
        if shape == "hbar":
            img[y + cell // 2 - 1 : y + cell // 2 + 1, x + 1 : x + cell - 1] = 255
        elif shape == "vbar":
            img[y + 1 : y + cell - 1, x + cell // 2 - 1 : x + cell // 2 + 1] = 255
        else:
            img[y + 1 : y + cell - 1, x + 1 : x + cell - 1] = 255
            img[y + 3 : y + cell - 3, x + 3 : x + cell - 3] = 0
    return img


def _split(i: int) -> str:
    return "train" if i % 10 < 6 else "validation" if i % 10 < 8 else "test"


def single_dataset(root: Path, n_per_class: int = 30, side: int = 18, seed: int = 0) -> Dataset:
    """One shape per image; target = the shape. 60/20/20 split by index; one predict-only row."""
    from PIL import Image

    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    examples = []
    for cls in SHAPES:
        for i in range(n_per_class):
            path = root / f"{cls}-{i}.png"
            Image.fromarray(draw(rng, [cls], side)).save(path)
            examples.append(
                {"data_row_id": f"{cls}-{i}", "split": _split(i), "image": str(path), "width": side,
                 "height": side, "target": cls}
            )
    extra = root / "extra.png"
    Image.fromarray(draw(rng, ["box"], side)).save(extra)
    predict_only = [{"data_row_id": "u-1", "split": "unassigned", "image": str(extra), "width": side,
                     "height": side, "target": None, "reason": "no_split"}]
    return Dataset(examples, {"question": "shape", "classes": sorted(SHAPES)}, {"model_run_id": "mr"}, predict_only)


def multi_dataset(root: Path, n: int = 120, side: int = 24, seed: int = 0) -> Dataset:
    """1–2 shapes per image; targets = the set of shapes present."""
    from PIL import Image

    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    examples = []
    for i in range(n):
        shapes = sorted(rng.sample(SHAPES, rng.randint(1, 2)))
        path = root / f"m{i}.png"
        Image.fromarray(draw(rng, shapes, side)).save(path)
        examples.append(
            {"data_row_id": f"m{i}", "split": _split(i), "image": str(path), "width": side, "height": side,
             "targets": shapes}
        )
    extra = root / "extra.png"
    Image.fromarray(draw(rng, ["hbar", "vbar"], side)).save(extra)
    predict_only = [{"data_row_id": "u-1", "split": "train", "image": str(extra), "width": side, "height": side,
                     "targets": None, "reason": "no_answer"}]
    label_map = {"mode": "checklist", "questions": ["shapes"], "classes": sorted(SHAPES), "question": "shapes"}
    return Dataset(examples, label_map, {"model_run_id": "mr"}, predict_only)


class JobEnv:
    """A file-backed Labelbox + artifact root; `run` starts `python -m jobs.main` like the local
    launcher does (pattern of tests/unit/test_jobs_main.py)."""

    def __init__(self, root: Path, model_type: str, model_run_id: str = "mr-img"):
        self.root = root
        self.model_type = model_type
        self.model_run_id = model_run_id
        self.artifacts = root / "artifacts"
        self.labelbox = root / "labelbox"

    def out(self, run_id: str, stage: str, attempt: int = 1) -> Path:
        from lbtrain import storage

        return Path(storage.run_dir(str(self.artifacts), run_id, stage, attempt))

    def command(self, run_id: str, stage: str, params: dict[str, Any] | None = None,
                env: dict[str, str] | None = None, attempt: int = 1,
                upstream_attempts: dict[str, int] | None = None) -> tuple[list[str], dict[str, str]]:
        """The argv and environment the local launcher would start attempt `attempt` of `stage` with."""
        import json
        import os
        import sys

        before = {"etl": [], "train": ["etl"], "evaluate": ["etl", "train"], "deploy": ["etl", "train", "evaluate"],
                  "prelabel": ["etl", "train", "evaluate", "deploy"]}
        upstream = {s: str(self.out(run_id, s, (upstream_attempts or {}).get(s, 1))) for s in before[stage]}
        inputs = self.root / "inputs" / f"{run_id}-{stage}-a{attempt}.json"
        inputs.parent.mkdir(parents=True, exist_ok=True)
        inputs.write_text(json.dumps({
            "run_id": run_id, "model_type": self.model_type, "model_run_id": self.model_run_id, "model_id": "m",
            "params": params or {}, "stage": stage, "attempt": attempt, "upstream": upstream,
        }))
        child_env = {**os.environ, "ARTIFACT_ROOT": str(self.artifacts), "LABELBOX_BACKEND": "file",
                     "LABELBOX_DIR": str(self.labelbox), "JOB_BACKEND": "local", **(env or {})}
        args = [sys.executable, "-m", "jobs.main", "--run-id", run_id, "--stage", stage, "--attempt", str(attempt),
                "--inputs", str(inputs), "--outputs", str(self.out(run_id, stage, attempt)),
                *recorded_args(stage, upstream)]
        return args, child_env

    def run(self, run_id: str, stage: str, params: dict[str, Any] | None = None,
            env: dict[str, str] | None = None, attempt: int = 1,
            upstream_attempts: dict[str, int] | None = None) -> Any:
        import subprocess

        args, child_env = self.command(run_id, stage, params, env, attempt, upstream_attempts)
        return subprocess.run(args, env=child_env, capture_output=True, text=True, timeout=180)

    def outputs(self, run_id: str, stage: str, attempt: int = 1) -> dict[str, Any]:
        import json

        return json.loads((self.out(run_id, stage, attempt) / "outputs.json").read_text())


def has_nested_array(value: Any, in_array: bool = False) -> bool:
    """Firestore rejects arrays directly inside arrays; outputs.json metrics go there."""
    if isinstance(value, list):
        return in_array or any(has_nested_array(v, True) for v in value)
    if isinstance(value, dict):
        return any(has_nested_array(v) for v in value.values())
    return False
