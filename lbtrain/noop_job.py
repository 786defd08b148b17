"""A job that keeps the job contract (docs/architecture.md §4) and does no work.

For the hand-off benchmark and the orchestration tests, where what matters is the chaining,
not the model. Behaviour comes from the run's params:
`{"noop": {"fail": {"train": [1]}, "sleep": {"train": 30}}}` fails train's attempt 1 and
sleeps 30 s in train.
"""

from __future__ import annotations

import argparse
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
    behaviour = (inputs.get("params") or {}).get("noop") or {}
    time.sleep(float((behaviour.get("sleep") or {}).get(args.stage, 0)))
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


if __name__ == "__main__":
    sys.exit(main())
