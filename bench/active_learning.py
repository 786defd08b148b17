#!/usr/bin/env python
"""Labels saved by the labeling queue: simulated labelers, the project's own ETL, train and predict code.

For each reference dataset (MNIST-5k for image single-label, the Rotten Tomatoes reviews for text
single-label): the reference model run is built (lbtrain.datasets) and put through the real etl job; its
train split becomes the unlabeled pool (true labels hidden), its validation and test splits stay as they
are (validation cut to 100 rows, used to pick epochs and never trained on). Starting from the same
small labeled seed, each round trains the model type's task on the labeled rows (`Task.train`, as the
train job does), predicts the rest of the pool (`load_predictor().predict`), and the simulated labelers
label the B rows at the front of the queue:
- **active**: the queue the prelabel step writes (`jobs.active.queue_order`: most uncertain first, 10%
  random picks), re-prioritised after every round;
- **random**: the same budget in a random order with the same seed.
The test-split headline metric after each round gives the learning curves. Printed per dataset: the
curves, the labels each order needs to reach 95% of the metric of a model trained on the whole pool, the
saving in percent, and the share of pre-labels (`jobs.active.prelabel_annotations` at the default 0.5
confidence, made by the previous round's model) a labeler would have accepted unchanged. The last line is
one JSON object; `--svg PATH` also draws the curves.

    .venv/bin/python bench/active_learning.py [--datasets mnist,rotten_tomatoes] [--svg docs/active_learning.svg]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import run_stage  # noqa: E402 - bench/quality.py: one job exactly as the pipeline runs it

from jobs import active, tasks  # noqa: E402
from jobs.tasks.base import Dataset, model_digest, read_dataset  # noqa: E402
from jobs.tasks.classification import metrics as classification_metrics  # noqa: E402
from lbtrain import config as configmod  # noqa: E402
from lbtrain import datasets, pipelines, storage  # noqa: E402


@dataclass(frozen=True)
class Setup:
    model_type: str
    limit: int | None
    seed_size: int
    batch: int
    max_labels: int
    params: dict[str, Any]
    full_params: dict[str, Any]


VALIDATION_ROWS = 100

SETUPS = {
    # A fixed number of epochs, not a time budget: the curves must not depend on how busy the machine is.
    "mnist": Setup("image_single_classification", 5000, 20, 50, 1000,
                   {"epochs": 8, "patience": 8, "max_seconds": 3600}, {}),
    "rotten_tomatoes": Setup("text_single_classification", None, 20, 100, 4000,
                             {"C": [1.0], "refit_on_validation": False}, {}),
}


def etl(setup: Setup, root: Path, name: str) -> Dataset:
    model_run_id = f"al-{name}"
    datasets.build(setup.model_type, str(root / "labelbox"), model_run_id, limit=setup.limit)
    config = configmod.Config(artifact_root=str(root / "artifacts"), labelbox_dir=str(root / "labelbox"),
                              project="bench", deployment_name="bench")
    env = {**__import__("os").environ, **configmod.to_env(config), "PYTHONUNBUFFERED": "1"}
    run_stage(env, f"al{name}", "etl", model_run_id, setup.model_type, root, {}, {})
    return read_dataset(storage.run_dir(str(root / "artifacts"), f"al{name}", "etl", 1))


class Simulation:
    def __init__(self, setup: Setup, dataset: Dataset, root: Path):
        self.setup, self.root = setup, root
        self.task = tasks.load(setup.model_type)
        self.label_map = dataset.label_map
        self.pool = {e["data_row_id"]: e for e in dataset.split("train")}
        # A small fixed validation set, used only to pick the epoch / stop early, never trained on: the
        # labels counted are the training labels (both orders use the same one).
        self.validation = sorted(dataset.split("validation"), key=lambda e: e["data_row_id"])[:VALIDATION_ROWS]
        self.test = dataset.split("test")
        self.metric = pipelines.get(setup.model_type).headline_metric
        self.fits = 0

    def fit(self, labeled: list[str], params: dict[str, Any]) -> Any:
        model_dir = str(self.root / "models" / f"m{self.fits}")
        self.fits += 1
        train = [self.pool[r] for r in labeled]
        dataset = Dataset(examples=train + self.validation + self.test, label_map=self.label_map)
        self.task.train(dataset, model_dir, params, lambda *a, **k: None)
        predictor = self.task.load_predictor(model_dir, model_digest(model_dir))
        shutil.rmtree(model_dir, ignore_errors=True)
        return predictor

    def score(self, predictor: Any) -> float:
        predictions = predictor.predict(self.test)
        m = classification_metrics([e["target"] for e in self.test], [p["label"] for p in predictions],
                                   list(self.label_map["classes"]))
        return float(m[self.metric])

    def seed(self, rng: random.Random) -> list[str]:
        """The same small start for both orders: rows of every class, then random ones."""
        by_class: dict[str, list[str]] = {}
        for row_id in sorted(self.pool):
            by_class.setdefault(self.pool[row_id]["target"], []).append(row_id)
        seed = [rng.choice(rows) for _, rows in sorted(by_class.items())]
        rest = [r for r in sorted(self.pool) if r not in set(seed)]
        seed += rng.sample(rest, max(0, self.setup.seed_size - len(seed)))
        return seed

    def curve(self, order: str, seed: list[str], rng_seed: int) -> dict[str, Any]:
        rng = random.Random(rng_seed)
        labeled = list(seed)
        points: list[tuple[int, float]] = []
        accepted = offered = 0
        question = str(self.label_map.get("question", ""))
        while True:
            predictor = self.fit(labeled, self.setup.params)
            points.append((len(labeled), self.score(predictor)))
            print(f"    {order:>6} {len(labeled):>5} labels: {self.metric} {points[-1][1]:.4f}", file=sys.stderr,
                  flush=True)
            unlabeled = sorted(set(self.pool) - set(labeled))
            if len(labeled) >= self.setup.max_labels or not unlabeled:
                break
            batch = min(self.setup.batch, self.setup.max_labels - len(labeled), len(unlabeled))
            if order == "active":
                rows = [self.pool[r] for r in unlabeled]
                predictions = predictor.predict(rows)
                scores = {r["data_row_id"]: active.uncertainty(self.setup.model_type, p)
                          for r, p in zip(rows, predictions, strict=True)}
                picked = active.queue_order(scores, 0.1, seed=f"{rng_seed}-{len(labeled)}")[:batch]
                by_id = dict(zip(unlabeled, predictions, strict=True))
                for row_id in picked:  # what the labelers see: the previous model's pre-labels
                    pre = active.prelabel_annotations(self.setup.model_type, "bench", row_id, by_id[row_id],
                                                      question=question)
                    if pre:
                        offered += 1
                        accepted += int(pre[0]["answer"]["name"] == self.pool[row_id]["target"])
            else:
                picked = rng.sample(unlabeled, batch)
            labeled += picked
        return {"points": points, "prelabels_offered": offered, "prelabels_accepted": accepted}


def labels_to_reach(points: list[tuple[int, float]], target: float) -> int | None:
    return next((n for n, value in points if value >= target), None)


def run_dataset(name: str, setup: Setup, root: Path, rng_seed: int) -> dict[str, Any]:
    started = time.monotonic()
    dataset = etl(setup, root, name)
    sim = Simulation(setup, dataset, root)
    print(f"... {name}: pool {len(sim.pool)}, test {len(sim.test)}; training on the whole pool", file=sys.stderr,
          flush=True)
    full = sim.score(sim.fit(sorted(sim.pool), {**setup.params, **setup.full_params}))
    target = 0.95 * full
    seed = sim.seed(random.Random(rng_seed))
    curves = {order: sim.curve(order, seed, rng_seed) for order in ("random", "active")}
    need = {order: labels_to_reach(c["points"], target) for order, c in curves.items()}
    offered = curves["active"]["prelabels_offered"]
    result: dict[str, Any] = {
        "model_type": setup.model_type, "metric": sim.metric, "pool": len(sim.pool), "test": len(sim.test),
        "full_data_value": round(full, 4), "target_value": round(target, 4),
        "labels_random": need["random"], "labels_active": need["active"],
        "prelabel_acceptance": round(curves["active"]["prelabels_accepted"] / offered, 4) if offered else None,
        "curves": {order: [[n, round(v, 4)] for n, v in c["points"]] for order, c in curves.items()},
        "seconds": round(time.monotonic() - started, 1),
    }
    if need["random"] and need["active"]:
        result["saving_percent"] = round(100.0 * (1 - need["active"] / need["random"]), 1)
    else:
        result["saving_percent"] = None  # not reached within the label budget: see the curves
    return result


def svg(results: dict[str, dict[str, Any]]) -> str:
    """Learning curves, one panel per dataset: random (grey) and the queue (blue), the 95% target dashed."""
    width, height, pad = 420, 260, 40
    panels = []
    for i, (name, r) in enumerate(results.items()):
        xs = [n for c in r["curves"].values() for n, _ in c]
        ys = [v for c in r["curves"].values() for _, v in c] + [r["target_value"]]
        x0, x1, y0, y1 = 0, max(xs), min(ys) - 0.02, max(ys) + 0.02

        def px(n: float, v: float, x0: float = x0, x1: float = x1, y0: float = y0, y1: float = y1) -> str:
            return f"{pad + (n - x0) / (x1 - x0) * (width - 2 * pad):.1f},{height - pad - (v - y0) / (y1 - y0) * (height - 2 * pad):.1f}"  # noqa: E501

        lines = [f'<g transform="translate({i * width},0)">',
                 f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="13">{name}: {r["metric"]} vs labels</text>',  # noqa: E501
                 f'<rect x="{pad}" y="{pad}" width="{width - 2 * pad}" height="{height - 2 * pad}" fill="none" stroke="#999"/>',  # noqa: E501
                 f'<polyline points="{px(x0, r["target_value"])} {px(x1, r["target_value"])}" stroke="#c33" stroke-dasharray="4 3" fill="none"/>']  # noqa: E501
        for order, colour in (("random", "#888"), ("active", "#1f5fbf")):
            pts = " ".join(px(n, v) for n, v in r["curves"][order])
            lines.append(f'<polyline points="{pts}" stroke="{colour}" stroke-width="2" fill="none"/>')
        lines += [f'<text x="{pad}" y="{height - 12}" font-size="11">0</text>',
                  f'<text x="{width - pad}" y="{height - 12}" font-size="11" text-anchor="end">{x1} labels</text>',
                  f'<text x="{pad - 4}" y="{pad + 4}" font-size="11" text-anchor="end">{y1:.2f}</text>',
                  f'<text x="{pad - 4}" y="{height - pad}" font-size="11" text-anchor="end">{y0:.2f}</text>',
                  f'<text x="{width - pad - 6}" y="{height - pad - 36}" font-size="11" text-anchor="end" fill="#1f5fbf">queue (uncertainty)</text>',  # noqa: E501
                  f'<text x="{width - pad - 6}" y="{height - pad - 22}" font-size="11" text-anchor="end" fill="#888">random</text>',  # noqa: E501
                  f'<text x="{width - pad - 6}" y="{height - pad - 8}" font-size="11" text-anchor="end" fill="#c33">- - 95% of all-pool {r["full_data_value"]}</text>',  # noqa: E501
                  "</g>"]
        panels.append("\n".join(lines))
    total = width * len(results)
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{total}" height="{height}" font-family="sans-serif">\n'
            '<rect width="100%" height="100%" fill="white"/>\n')
    return head + "\n".join(panels) + "\n</svg>\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default=",".join(SETUPS))
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--svg", default="", help="write the learning curves as an SVG here")
    p.add_argument("--save", default="", help="merge each dataset's result (curves included) into this JSON file; "
                                             "--svg then draws every dataset in it")
    p.add_argument("--keep", action="store_true")
    args = p.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="lbtrain-al-"))
    results: dict[str, dict[str, Any]] = {}
    try:
        for name in [n for n in args.datasets.split(",") if n]:
            results[name] = run_dataset(name, SETUPS[name], root / name, args.seed)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"{'dataset':<16} {'metric':<9} {'all-pool':>8} {'95%':>7} {'random':>7} {'queue':>7} {'saving':>7} "
          f"{'pre-labels ok':>13}")
    for name, r in results.items():
        saving = f"{r['saving_percent']}%" if r["saving_percent"] is not None else "n/a"
        acceptance = f"{100 * r['prelabel_acceptance']:.1f}%" if r["prelabel_acceptance"] is not None else "n/a"
        print(f"{name:<16} {r['metric']:<9} {r['full_data_value']:>8.4f} {r['target_value']:>7.4f} "
              f"{r['labels_random'] or '>' + str(SETUPS[name].max_labels):>7} "
              f"{r['labels_active'] or '>' + str(SETUPS[name].max_labels):>7} {saving:>7} {acceptance:>13}")
        for order in ("random", "active"):
            print(f"  {order:>6}: " + ", ".join(f"{n}:{v:.3f}" for n, v in r["curves"][order]))
    drawn = results
    if args.save:
        saved = json.loads(Path(args.save).read_text()) if Path(args.save).is_file() else {}
        saved.update(results)
        Path(args.save).write_text(json.dumps(saved, indent=1) + "\n")
        drawn = saved
    if args.svg:
        Path(args.svg).write_text(svg(drawn))
    print(json.dumps({name: {k: r[k] for k in ("labels_random", "labels_active", "saving_percent",
                                              "prelabel_acceptance")} for name, r in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
