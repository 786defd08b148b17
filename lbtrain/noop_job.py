"""A job that keeps the job contract (docs/architecture.md §4) and does no work.

For the hand-off benchmark and the orchestration tests, where what matters is the chaining,
not the model. Behaviour comes from the run's params:
`{"noop": {"fail": {"train": [1]}, "sleep": {"train": 30}}}` fails train's attempt 1 and
sleeps 30 s in train. `{"noop": {"progress": {"train": {"epochs": 3, "gate": PATH}}}}` reports 3
epochs of progress (lbtrain/progress.py, unthrottled), then waits (at most 5 minutes) for the file
PATH to exist: a test sees the progress of a running step, then lets it end. Each execution
appends a line to `executions.log` in its (local) outputs dir.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from lbtrain import storage


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    for name in ("--run-id", "--stage", "--inputs", "--outputs"):
        p.add_argument(name, required=True)
    p.add_argument("--attempt", type=int, required=True)
    args = p.parse_args(argv)
    inputs = storage.read_json(args.inputs)
    _count_execution(args.outputs)
    behaviour = (inputs.get("params") or {}).get("noop") or {}
    time.sleep(float((behaviour.get("sleep") or {}).get(args.stage, 0)))
    _fake_progress(args.outputs, args.stage, (behaviour.get("progress") or {}).get(args.stage))
    if args.attempt in (behaviour.get("fail") or {}).get(args.stage, []):
        storage.write_json(storage.join(args.outputs, "error.json"),
                           {"message": f"injected failure in {args.stage} attempt {args.attempt}", "type": "Injected"})
        return 1
    metrics = {"stage_index": ["etl", "train", "evaluate", "deploy"].index(args.stage)
               if args.stage in ("etl", "train", "evaluate", "deploy") else -1}
    if args.stage == "evaluate":
        metrics.update({"accuracy": 1.0, "macro_f1": 1.0})
    storage.write_json(storage.join(args.outputs, "outputs.json"), {
        "run_id": args.run_id, "stage": args.stage, "attempt": args.attempt, "model_type": inputs["model_type"],
        "uris": {}, "metrics": metrics, "upstream": inputs.get("upstream", {}),
    })
    return 0


def _count_execution(outputs: str) -> None:
    """One line per execution in `executions.log` of a local outputs dir: how bench/chaos.py finds a
    step attempt that ran twice (a duplicate launch)."""
    if storage.is_gcs(outputs):
        return
    path = storage.local_path(outputs)
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "executions.log", "a", encoding="utf-8") as fh:
        fh.write(f"{os.getpid()} {time.time():.3f}\n")


def _fake_progress(outputs: str, stage: str, spec: dict | None) -> None:
    if not spec:
        return
    from lbtrain import progress

    writer = progress.Writer(outputs, stage, interval=0)
    epochs = int(spec.get("epochs", 3))
    for epoch in range(epochs + 1):
        writer.update(unit="epoch", done=epoch, total=epochs, loss=round(1.0 / (epoch + 1), 4) if epoch else None,
                      metric="accuracy", value=round(0.5 + 0.1 * epoch, 4) if epoch else None)
    deadline = time.monotonic() + 300
    while spec.get("gate") and not storage.exists(spec["gate"]) and time.monotonic() < deadline:
        time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main())
