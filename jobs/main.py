"""Job entry point: `python -m jobs.main --run-id R --stage S --attempt N --inputs URI --outputs URI`.

Exit 0 after writing `outputs.json` (last) under the outputs dir; exit 1 after writing
`error.json` {"message", "type"} when the stage fails; exit 2 for bad arguments or inputs.
The traceback goes to stderr, never into error.json. Stale outputs.json/error.json of an
earlier execution of the same attempt are removed first, so a re-run is unambiguous.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

from jobs.context import ERROR_FILE, OUTPUTS_FILE, StageContext
from jobs.tasks.base import JobError
from lbtrain import log, storage

STAGES = {"etl": "jobs.etl", "train": "jobs.train", "evaluate": "jobs.evaluate", "deploy": "jobs.deploy"}
MAX_MESSAGE = 1000


class UsageError(Exception):
    """Bad command line or inputs.json: the launcher's fault, retrying cannot help (exit 2)."""


class Cancelled(JobError):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = _Parser(prog="python -m jobs.main", description="Run one lbtrain pipeline stage.")
    p.add_argument("--run-id", required=True)
    p.add_argument("--stage", required=True, choices=sorted(STAGES))
    p.add_argument("--attempt", required=True, type=int)
    p.add_argument("--inputs", required=True, help="URI of the inputs.json the launcher wrote")
    p.add_argument("--outputs", required=True, help="URI of the directory this job writes")
    args = p.parse_args(list(argv))
    if args.attempt < 1:
        raise UsageError("--attempt must be >= 1")
    if not args.run_id.strip():
        raise UsageError("--run-id must not be empty")
    return args


def _outputs_from_argv(argv: Sequence[str]) -> str:
    for i, arg in enumerate(argv):
        if arg == "--outputs" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--outputs="):
            return arg.split("=", 1)[1]
    return ""


def human_message(exc: BaseException) -> str:
    """One line for error.json: our own errors speak for themselves, others get their type."""
    from lbtrain.adapters.labelbox import ModelRunNotFound
    from lbtrain.pipelines import UnknownModelType

    if isinstance(exc, JobError | ModelRunNotFound | UnknownModelType | UsageError):
        text = str(exc)
    elif isinstance(exc, MemoryError):
        text = "out of memory"
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else f"unexpected {type(exc).__name__}"
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def _write_error(outputs: str, exc: BaseException) -> None:
    try:
        storage.write_json(
            storage.join(outputs, ERROR_FILE), {"message": human_message(exc), "type": type(exc).__name__}
        )
    except Exception:  # noqa: BLE001 - nowhere left to report it but stderr
        traceback.print_exc(file=sys.stderr)


def _read_inputs(args: argparse.Namespace) -> dict[str, Any]:
    try:
        inputs = storage.read_json(args.inputs)
    except FileNotFoundError:
        raise UsageError(f"inputs file {args.inputs} does not exist") from None
    except ValueError as exc:
        raise UsageError(f"inputs file {args.inputs} is not valid JSON: {exc}") from None
    if not isinstance(inputs, dict):
        raise UsageError(f"inputs file {args.inputs} must hold a JSON object")
    for key in ("model_type", "model_run_id"):
        if not isinstance(inputs.get(key), str) or not inputs[key]:
            raise UsageError(f"inputs file {args.inputs} has no {key!r}")
    for key, expected in (("run_id", args.run_id), ("stage", args.stage), ("attempt", args.attempt)):
        if inputs.get(key) not in (None, expected):
            raise UsageError(
                f"inputs {key}={inputs[key]!r} does not match --{key.replace('_', '-')} {expected!r}"
            )
    for key in ("params", "upstream"):
        if not isinstance(inputs.get(key) or {}, dict):
            raise UsageError(f"inputs {key!r} must be an object")
    return inputs


def _load_task(model_type: str) -> Any:
    from jobs import tasks
    from lbtrain.pipelines import UnknownModelType

    try:
        return tasks.load(model_type)
    except UnknownModelType as exc:
        raise UsageError(str(exc)) from None


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Cancelled("job cancelled (SIGTERM)")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse_args(argv)
    except UsageError as exc:
        print(f"jobs.main: {exc}", file=sys.stderr)
        if _outputs_from_argv(argv):
            _write_error(_outputs_from_argv(argv), exc)
        return 2

    from lbtrain.config import from_env

    try:
        config = from_env()
    except ValueError as exc:
        print(f"jobs.main: {exc}", file=sys.stderr)
        _write_error(args.outputs, UsageError(str(exc)))
        return 2
    log.setup(secrets=config.secrets(), project=config.project)
    logger = log.get("jobs")
    with log.bind(run_id=args.run_id, stage=args.stage, attempt=args.attempt):
        storage.makedirs(args.outputs)
        for stale in (OUTPUTS_FILE, ERROR_FILE):
            storage.delete(storage.join(args.outputs, stale))
        try:
            inputs = _read_inputs(args)
            task = _load_task(inputs["model_type"])
        except UsageError as exc:
            log.event(logger, f"bad inputs: {exc}", level=40)
            _write_error(args.outputs, exc)
            return 2
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
        started = time.monotonic()
        try:
            ctx = StageContext(
                run_id=args.run_id,
                stage=args.stage,
                attempt=args.attempt,
                model_type=inputs["model_type"],
                model_run_id=inputs["model_run_id"],
                model_id=str(inputs.get("model_id") or ""),
                params=dict(inputs.get("params") or {}),
                upstream={k: str(v) for k, v in (inputs.get("upstream") or {}).items() if v},
                outputs_uri=args.outputs,
                config=config,
                task=task,
                logger=logger,
            )
            log.event(
                logger, f"{args.stage} started", model_type=ctx.model_type, model_run_id=ctx.model_run_id
            )
            result = importlib.import_module(STAGES[args.stage]).run(ctx)
            manifest = {
                "run_id": args.run_id,
                "stage": args.stage,
                "attempt": args.attempt,
                "model_type": ctx.model_type,
                "uris": result.uris,
                "metrics": result.metrics,
            }
            storage.write_json(storage.join(args.outputs, OUTPUTS_FILE), manifest)
        except BaseException as exc:  # noqa: BLE001 - every failure must leave error.json
            if isinstance(exc, SystemExit | KeyboardInterrupt):
                exc = Cancelled(f"job interrupted ({type(exc).__name__})")
            traceback.print_exc(file=sys.stderr)
            log.event(
                logger, f"{args.stage} failed: {human_message(exc)}", level=40, error_type=type(exc).__name__
            )
            _write_error(args.outputs, exc)
            return 1
        finally:
            signal.signal(signal.SIGTERM, previous)
        log.event(
            logger,
            f"{args.stage} succeeded in {time.monotonic() - started:.1f}s",
            seconds=round(time.monotonic() - started, 2),
            metrics=_short(result.metrics),
        )
        return 0


def _short(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if not isinstance(v, dict | list)}


if __name__ == "__main__":
    sys.exit(main())
