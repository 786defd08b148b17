"""modelrun job: create a retraining rule run's Labelbox model run.

`python -m jobs.modelrun --run-id R --stage modelrun --attempt N --inputs URI --outputs URI` (the job
args of docs/architecture.md §4; on Vertex the jobs image with this module as its command). Upserting the project's
labels, exporting and assigning splits takes minutes for a big project: far too long for a push
request, so it is a job like the stages, launched through the same backend and claim.

Idempotent: `create_model_run` finds the model run by its name (`{deployment}-{run_id}`, the same on
every attempt) before creating anything and completes one left half-done. Writes `outputs.json` with
`model_run_id` (exit 0); `error.json` {"message", "type"} and exit 1 when Labelbox fails; exit 2 for
bad arguments or inputs. The job-events handler then gives the run its model run and starts etl.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

from jobs.context import OUTPUTS_FILE
from jobs.main import UsageError, _write_error, guarded, human_message, prepare
from lbtrain import log, storage

STAGE = "modelrun"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = _Parser(prog="python -m jobs.modelrun", description="Create a retraining rule run's Labelbox model run.")
    p.add_argument("--run-id", required=True)
    p.add_argument("--stage", required=True, choices=[STAGE])
    p.add_argument("--attempt", required=True, type=int)
    p.add_argument("--inputs", required=True)
    p.add_argument("--outputs", required=True)
    return p.parse_args(list(argv))


def read_inputs(uri: str, run_id: str) -> dict[str, Any]:
    try:
        inputs = storage.read_json(uri)
    except (OSError, ValueError) as exc:
        raise UsageError(f"inputs file {uri} is unreadable: {exc}") from None
    if not isinstance(inputs, dict):
        raise UsageError(f"inputs file {uri} must hold a JSON object")
    for key in ("model_id", "project_id", "model_run_name"):
        if not isinstance(inputs.get(key), str) or not inputs[key]:
            raise UsageError(f"inputs file {uri} has no {key!r}")
    if inputs.get("run_id") not in (None, run_id):
        raise UsageError(f"inputs run_id={inputs['run_id']!r} does not match --run-id {run_id!r}")
    return inputs


def main(argv: Sequence[str] | None = None) -> int:
    """Whatever fails, from argument parsing on, ends in error.json and exit 1 or 2 (as jobs.main)."""
    return guarded(list(sys.argv[1:] if argv is None else argv), _main)


def _main(argv: list[str]) -> int:
    args = parse_args(argv)
    with log.bind(run_id=args.run_id, stage=args.stage, attempt=args.attempt):
        config, logger = prepare(args.outputs)
        try:
            inputs = read_inputs(args.inputs, args.run_id)
        except UsageError as exc:
            log.event(logger, f"bad inputs: {exc}", level=40)
            _write_error(args.outputs, exc)
            return 2
        name = inputs["model_run_name"]
        try:
            from lbtrain.adapters import labelbox

            log.event(logger, f"creating model run {name}", model_id=inputs["model_id"],
                      project_id=inputs["project_id"])
            model_run_id = labelbox.from_config(config).create_model_run(
                inputs["model_id"], inputs["project_id"], name)
            storage.write_json(storage.join(args.outputs, OUTPUTS_FILE), {
                "run_id": args.run_id, "stage": args.stage, "attempt": args.attempt,
                "model_type": inputs.get("model_type", ""), "model_run_id": model_run_id,
                "model_run_name": name, "uris": {}, "metrics": {}})
        except BaseException as exc:  # noqa: BLE001 - every failure must leave error.json
            traceback.print_exc(file=sys.stderr)
            log.event(logger, f"creating model run {name} failed: {human_message(exc)}", level=40,
                      error_type=type(exc).__name__)
            _write_error(args.outputs, exc)
            return 1
        log.event(logger, f"model run {name} is {model_run_id}", model_run_id=model_run_id)
        return 0


if __name__ == "__main__":
    sys.exit(main())
