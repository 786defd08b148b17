"""Job entry point: `python -m jobs.main --run-id R --stage S --attempt N --inputs URI --outputs URI`.

Exit 0 after writing `outputs.json` (last) under the outputs dir; exit 1 after writing
`error.json` {"message", "type"} when the stage fails; exit 2 for bad arguments, inputs or
configuration. Everything from argument parsing on is covered, not only the stage's own work: a
failure reading the config or a secret, importing a task module or setting up storage also leaves
error.json (Vertex only says "exited with a non-zero status"; the pipeline reads the reason there).
When the outputs location itself is unreachable the reason goes to stderr as one JSON line.
The traceback goes to stderr, never into error.json. Stale outputs.json/error.json of an
earlier execution of the same attempt are removed first, so a re-run is unambiguous.

Only the standard library is imported at module level, so that even a broken image (a missing
dependency of lbtrain itself) ends with a reason rather than a bare traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

STAGES = {"etl": "jobs.etl", "train": "jobs.train", "evaluate": "jobs.evaluate", "deploy": "jobs.deploy",
          "prelabel": "jobs.prelabel"}
MAX_MESSAGE = 1000
# As jobs.context names them (not imported from there: see the module docstring).
OUTPUTS_FILE = "outputs.json"
ERROR_FILE = "error.json"
PROGRESS_FILE = "progress.json"  # as lbtrain.progress names it


class UsageError(Exception):
    """Bad command line, inputs.json or configuration: the launcher's fault, retrying cannot help (exit 2)."""


class Cancelled(Exception):
    """SIGTERM (Vertex cancels a job this way) or an interrupt."""


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
    p.add_argument("--model-sha256", default="",
                   help="SHA-256 of the trained model file, as the train step recorded it (later stages)")
    args = p.parse_args(list(argv))
    if args.model_sha256 and not re.fullmatch(r"[0-9a-f]{64}", args.model_sha256):
        raise UsageError("--model-sha256 must be 64 lower-case hex digits")
    if args.attempt < 1:
        raise UsageError("--attempt must be >= 1")
    if not args.run_id.strip():
        raise UsageError("--run-id must not be empty")
    return args


def _from_argv(argv: Sequence[str], option: str) -> str:
    """An option's value from a command line that may not parse (to report where and what failed)."""
    for i, arg in enumerate(argv):
        if arg == option and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(f"{option}="):
            return arg.split("=", 1)[1]
    return ""


def _own_errors() -> tuple[type[BaseException], ...]:
    """Errors whose text is already one sentence for people (importable: this may run in a broken image)."""
    own: list[type[BaseException]] = [UsageError, Cancelled]
    for module, name in (("jobs.tasks.base", "JobError"), ("lbtrain.adapters.labelbox", "ModelRunNotFound"),
                         ("lbtrain.pipelines", "UnknownModelType"), ("lbtrain.secrets", "SecretError")):
        try:
            own.append(getattr(importlib.import_module(module), name))
        except Exception:  # noqa: BLE001, S112 - then it is shown with its type, like any other error
            continue
    return tuple(own)


def _scrub(text: str) -> str:
    """Known secret values (once lbtrain.log knows them) never reach error.json or stderr."""
    log = sys.modules.get("lbtrain.log")
    return log.scrub(text) if log is not None else text


def human_message(exc: BaseException) -> str:
    """One line for error.json: our own errors speak for themselves, others get their type."""
    if isinstance(exc, _own_errors()):
        text = str(exc)
    elif isinstance(exc, MemoryError):
        text = "out of memory"
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else f"unexpected {type(exc).__name__}"
    text = _scrub(" ".join(text.split()))
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def _stderr_json(message: str, **fields: Any) -> None:
    """One JSON line on stderr (Cloud Logging parses it), for when nothing better is left."""
    entry = {"severity": "ERROR", "message": _scrub(message), "logger": "jobs.main", **fields}
    print(_scrub(json.dumps(entry, default=str, ensure_ascii=False)), file=sys.stderr, flush=True)


def _print_traceback() -> None:
    print(_scrub(traceback.format_exc()), end="", file=sys.stderr, flush=True)


def _write_error(outputs: str, exc: BaseException) -> bool:
    """error.json under `outputs` (best effort); False, with the reason on stderr, when it cannot be written."""
    message = human_message(exc)
    try:
        if not outputs:
            raise UsageError("no --outputs given")
        from lbtrain import storage

        storage.write_json(storage.join(outputs, ERROR_FILE), {"message": message, "type": type(exc).__name__})
        return True
    except Exception as write_exc:  # noqa: BLE001 - nowhere left to report it but stderr
        _stderr_json(f"job failed: {message}; and error.json could not be written: {human_message(write_exc)}",
                     error_type=type(exc).__name__, outputs=outputs)
        return False


def _remove_stale_outputs(outputs: str) -> None:
    """An outputs.json of an earlier execution must not outlive this failed one (best effort)."""
    try:
        from lbtrain import storage

        storage.delete(storage.join(outputs, OUTPUTS_FILE))
    except Exception:  # noqa: BLE001, S110 - error.json is written, which is what the pipeline reads
        pass


def _read_inputs(args: argparse.Namespace) -> dict[str, Any]:
    from lbtrain import storage

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
    """Run one stage; whatever fails, from argument parsing on, ends in error.json and exit 1 or 2."""
    return guarded(list(sys.argv[1:] if argv is None else argv), _main)


def guarded(argv: list[str], body: Callable[[list[str]], int]) -> int:
    """`body(argv)`, with any failure outside its own handler reported in error.json (jobs.modelrun too)."""
    try:
        return body(argv)
    except BaseException as exc:  # noqa: BLE001 - a failure outside the stage's own handler
        if isinstance(exc, SystemExit | KeyboardInterrupt):
            exc = Cancelled(f"job interrupted ({type(exc).__name__})")
        if not isinstance(exc, UsageError):
            _print_traceback()
        where = {k: _from_argv(argv, f"--{k.replace('_', '-')}") for k in ("run_id", "stage", "attempt")}
        _stderr_json(f"job failed outside its stage: {human_message(exc)}", error_type=type(exc).__name__,
                     **{k: v for k, v in where.items() if v})
        outputs = _from_argv(argv, "--outputs")
        if _write_error(outputs, exc):
            _remove_stale_outputs(outputs)
        return 2 if isinstance(exc, UsageError) else 1


def prepare(outputs: str) -> tuple[Any, Any]:
    """The job's config and logger: environment read, stale results removed, secret values read in
    (Secret Manager, by resource name) before anything can log them."""
    from lbtrain import log, secrets, storage
    from lbtrain.config import from_env

    try:
        config = from_env()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    log.setup(secrets=config.secrets(), project=config.project)
    storage.makedirs(outputs)
    for stale in (OUTPUTS_FILE, ERROR_FILE, PROGRESS_FILE):
        storage.delete(storage.join(outputs, stale))
    config = secrets.resolve(config)
    log.setup(secrets=config.secrets(), project=config.project)
    configure_untrusted_data(config)
    return config, log.get("jobs")


def configure_untrusted_data(config: Any) -> None:
    """Row data is untrusted: what it may make the job fetch (lbtrain.fetch) and the largest image
    it may make any stage decode (jobs.tasks.images), from the job's config."""
    from jobs.tasks import images
    from lbtrain import fetch

    fetch.configure(fetch.policy_from_config(config))
    images.set_max_pixels(config.max_image_pixels)


def _main(argv: list[str]) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as exc:  # --help
        if exc.code in (0, None):
            return 0
        raise
    from lbtrain import log, storage

    with log.bind(run_id=args.run_id, stage=args.stage, attempt=args.attempt):
        config, logger = prepare(args.outputs)
        try:
            inputs = _read_inputs(args)
            task = _load_task(inputs["model_type"])
        except UsageError as exc:
            log.event(logger, f"bad inputs: {exc}", level=40)
            _write_error(args.outputs, exc)
            return 2
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
        started = time.monotonic()
        from lbtrain.progress import Writer

        tracker = Writer(args.outputs, args.stage)
        try:
            from jobs.context import StageContext

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
                tracker=tracker,
                model_sha256=args.model_sha256,
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
            if result.model_sha256:
                manifest["model_sha256"] = result.model_sha256
            storage.write_json(storage.join(args.outputs, OUTPUTS_FILE), manifest)
        except BaseException as exc:  # noqa: BLE001 - every failure must leave error.json
            if isinstance(exc, SystemExit | KeyboardInterrupt):
                exc = Cancelled(f"job interrupted ({type(exc).__name__})")
            _print_traceback()
            log.event(
                logger, f"{args.stage} failed: {human_message(exc)}", level=40, error_type=type(exc).__name__
            )
            _write_error(args.outputs, exc)
            return 1
        finally:
            signal.signal(signal.SIGTERM, previous)
            tracker.flush()
        try:
            log.event(
                logger,
                f"{args.stage} succeeded in {time.monotonic() - started:.1f}s",
                seconds=round(time.monotonic() - started, 2),
                metrics=_short(result.metrics),
            )
        except Exception:  # noqa: BLE001, S110 - outputs.json is written: a log line cannot fail the job now
            pass
        return 0


def _short(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if not isinstance(v, dict | list)}


if __name__ == "__main__":
    sys.exit(main())
