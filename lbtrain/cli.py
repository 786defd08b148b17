"""`lbtrain`: the local stack, the demo, datasets, runs over the REST API, webhook signing."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from typing import Any

from lbtrain import config as configmod


def _config() -> configmod.Config:
    try:
        return configmod.from_env()
    except ValueError as exc:
        sys.exit(f"lbtrain: configuration error: {exc}")


def _client(args: argparse.Namespace):  # noqa: ANN202
    from lbtrain.client import Client
    from lbtrain.devstack import read_local_secrets

    cfg = _config()
    local = read_local_secrets(cfg.state_dir)
    default_url = configmod.Config.api_url
    url = args.api_url or (cfg.api_url if cfg.api_url != default_url else local.get("api_url", default_url))
    token = cfg.api_token or local.get("api_token", "")
    return Client(url, token=token)


def _print(obj: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj, indent=2, sort_keys=True))


def _fmt_metrics(metrics: dict[str, Any]) -> str:
    from lbtrain.domain import headline

    return ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in headline(metrics).items())


def describe_run(run: dict[str, Any]) -> str:
    lines = [f"run {run['run_id']}  {run['status']}  {run['model_type']}  model run {run['model_run_id']}"]
    if run.get("waiting") and run.get("status") in ("QUEUED", "RUNNING"):
        lines.append(f"  {run['waiting']}")
    for step in run.get("steps", []):
        job = (step.get("job") or {}).get("id", "")
        lines.append(f"  {step['stage']:<9} {step['state']:<10} a{step['attempt']}  {job}")
    if run.get("error"):
        lines.append(f"  error in {run['error'].get('stage')}: {run['error'].get('message')}")
    metrics = run.get("metrics") or {}
    if metrics:
        scores = {k: v for k, v in metrics.items() if isinstance(v, float)}
        lines.append(f"  metrics (test split, n={metrics.get('test_size', '?')}): {_fmt_metrics(scores)}")
        per_class = metrics.get("per_class") or {}
        if per_class:
            lines.append(f"    {'class':<20} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8}")
            for name, row in per_class.items():
                lines.append(f"    {name[:20]:<20} {row.get('precision', 0):>9.3f} {row.get('recall', 0):>7.3f} "
                             f"{row.get('f1', 0):>7.3f} {row.get('support', 0):>8}")
    if run.get("deployment"):
        dep = run["deployment"]
        lines.append(f"  deployed: {dep.get('deployed')}  {dep.get('endpoint', '')}  {dep.get('reason', '')}".rstrip())
    return "\n".join(lines)


# -- commands --------------------------------------------------------------------------------

def cmd_dev(args: argparse.Namespace) -> int:
    from lbtrain import log as logmod
    from lbtrain.devstack import DevStack

    cfg = _config()
    logmod.setup(secrets=cfg.secrets(), project=cfg.project)
    stack = DevStack(cfg, port=args.port, reconcile_interval=args.reconcile_interval)
    # The handler only appends to a list: an Event set from a signal handler can deadlock on the Event's
    # own lock when the signal lands while the main thread holds it (inside wait()).
    stop: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: stop.append(signum))
    try:
        stack.start()
        c = stack.config
        token_source = "API_TOKEN" if cfg.api_token else f"generated, in {c.state_dir}/dev.json"
        print(f"lbtrain dev ready at {stack.url} (healthz 200)\n"
              f"  webhooks:  {stack.url}/models, {stack.url}/model_run\n"
              f"  REST API:  {stack.url}/runs (token: {token_source})\n"
              f"  dashboard: {stack.dashboard_url}\n"
              f"  Pub/Sub emulator {c.pubsub_emulator_host}, Firestore emulator {c.firestore_emulator_host}, "
              f"project {c.project}, topics {c.deployment_name}-*\n"
              f"  Labelbox dir {c.labelbox_dir}, artifacts {c.artifact_root}\n"
              f"  publish a run request:\n"
              f"    CLOUDSDK_API_ENDPOINT_OVERRIDES_PUBSUB=http://{c.pubsub_emulator_host}/ "
              f"CLOUDSDK_AUTH_DISABLE_CREDENTIALS=true CLOUDSDK_CORE_PROJECT={c.project} \\\n"
              f"    gcloud pubsub topics publish {c.topic('runs')} "
              f"--message='{{\"model_type\": \"text_single_classification\", \"model_run_id\": \"ID\"}}'\n"
              f"Ctrl-C stops everything.", flush=True)
        while not stop:
            time.sleep(0.2)
    finally:
        print("lbtrain dev: stopping", flush=True)
        stack.stop()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from lbtrain.demo import run_demo

    model_types = [m.strip() for m in args.model_types.split(",") if m.strip()] if args.model_types else None
    return run_demo(port=args.port, limit=args.limit, timeout=args.timeout, model_types=model_types,
                    parallel=args.parallel, exit_at_end=args.exit, loop=not args.no_loop)


def cmd_datasets_build(args: argparse.Namespace) -> int:
    from lbtrain import datasets

    try:
        extra = {"limit": args.limit, "seed": args.seed, **({"dataset": args.dataset} if args.dataset else {})}
        if args.project_id:
            summary = datasets.build_project(args.model_type, args.out, args.project_id, **extra)
        else:
            summary = datasets.build(args.model_type, args.out, args.model_run_id, **extra)
    except (ValueError, KeyError, FileNotFoundError) as exc:
        print(f"lbtrain datasets build: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2, sort_keys=True, default=str))
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from lbtrain.client import ApiError

    c = _client(args)
    try:
        if args.runs_cmd == "start":
            params = json.loads(args.params) if args.params else {}
            out = c.start_run(args.model_type, args.model_run_id, args.model_id or "", params)
            if args.json and not args.wait:
                _print(out, True)
            else:
                print(f"run {out['run_id']} ({'created' if out.get('created') else out.get('reason', 'existing')})")
            if args.wait:
                return _wait(c, out["run_id"], args.timeout, args.json)
        elif args.runs_cmd == "list":
            out = c.list_runs(status=args.status, model_type=args.model_type, limit=args.limit)
            if args.json:
                _print(out, True)
            else:
                for run in out["runs"]:
                    print(f"{run['run_id']}  {run['status']:<10} {run['model_type']:<28} {run.get('stage', ''):<9}"
                          f" {run['created_at']}  {_fmt_metrics(run.get('metrics') or {})}")
        elif args.runs_cmd == "show":
            run = c.get_run(args.run_id)
            print(json.dumps(run, indent=2, sort_keys=True) if args.json else describe_run(run))
        elif args.runs_cmd == "wait":
            return _wait(c, args.run_id, args.timeout, args.json)
        elif args.runs_cmd == "cancel":
            run = c.cancel(args.run_id)
            print(json.dumps(run, indent=2) if args.json else describe_run(run))
        elif args.runs_cmd == "retry":
            run = c.retry(args.run_id)
            print(json.dumps(run, indent=2) if args.json else describe_run(run))
    except ApiError as exc:
        print(f"lbtrain runs {args.runs_cmd}: {exc}", file=sys.stderr)
        return 1
    return 0


def _wait(c, run_id: str, timeout: float, as_json: bool) -> int:  # noqa: ANN001
    from lbtrain.progress import describe

    shown: dict[str, str] = {}

    def show(run: dict[str, Any]) -> None:
        """A line when the status or stage changes, and one when the running step's progress does."""
        if as_json:
            return
        waiting = f"  ({run['waiting']})" if run.get("waiting") and run["status"] == "QUEUED" else ""
        lines = {"status": f"{run['status']:<10} stage {run.get('stage')}{waiting}",
                 "progress": describe(run["progress"]) if run.get("progress") else ""}
        for kind, line in lines.items():
            if line and shown.get(kind) != line:
                print(line if kind == "status" else f"  {line}", flush=True)
            shown[kind] = line or shown.get(kind, "")

    try:
        run = c.wait(run_id, timeout=timeout, on_change=show)
    except TimeoutError as exc:
        print(f"lbtrain runs wait: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(run, indent=2, sort_keys=True) if as_json else describe_run(run))
    return 0 if run["status"] == "SUCCEEDED" else 1


def cmd_triggers(args: argparse.Namespace) -> int:
    from lbtrain.client import ApiError

    c = _client(args)
    try:
        if args.triggers_cmd == "set":
            rule: dict[str, Any] = {"model_type": args.model_type, "model_id": args.model_id,
                                    "min_labels": args.min_labels, "min_interval_seconds": args.min_interval,
                                    "enabled": not args.disabled}
            if args.params:
                try:
                    rule["params"] = json.loads(args.params)
                except json.JSONDecodeError as exc:
                    print(f"lbtrain triggers set: --params is not JSON: {exc}", file=sys.stderr)
                    return 2
            saved = c.set_trigger(args.project_id, rule)
            _print(saved, True) if args.json else print(_describe_rule(saved))
        elif args.triggers_cmd == "list":
            rules = c.list_triggers()
            if args.json:
                _print(rules, True)
            else:
                for rule in rules:
                    print(_describe_rule(rule))
                if not rules:
                    print("no retraining rules")
        elif args.triggers_cmd == "get":
            rule = c.get_trigger(args.project_id)
            _print(rule, True) if args.json else print(_describe_rule(rule))
        elif args.triggers_cmd == "delete":
            c.delete_trigger(args.project_id)
            print(f"deleted the retraining rule of project {args.project_id}")
    except ApiError as exc:
        print(f"lbtrain triggers {args.triggers_cmd}: {exc}", file=sys.stderr)
        return 1
    return 0


def _describe_rule(rule: dict[str, Any]) -> str:
    state = "enabled" if rule.get("enabled", True) else "disabled"
    extra = []
    if rule.get("active_run_id"):
        extra.append(f"active run {rule['active_run_id']}")
    if rule.get("queued_run_id"):
        extra.append(f"queued run {rule['queued_run_id']}")
    return (f"{rule['project_id']}: {rule['model_type']} (model {rule['model_id']}), every {rule['min_labels']} "
            f"new or changed labels, at most every {rule.get('min_interval_seconds', 0):g}s, {state}; "
            f"{rule.get('pending', 0)} pending" + (f"; {', '.join(extra)}" if extra else ""))


def cmd_labelbox_register(args: argparse.Namespace) -> int:
    """Register the label webhook and print what to paste into Labelbox's model training settings."""
    from lbtrain.adapters import labelbox
    from lbtrain.devstack import read_local_secrets
    from lbtrain.triggers import LABEL_TOPICS

    cfg = _config()
    secret = cfg.labelbox_webhook_secret or read_local_secrets(cfg.state_dir).get("labelbox_webhook_secret", "")
    if not secret:
        print("lbtrain labelbox register: no webhook secret (set LABELBOX_WEBHOOK_SECRET or run `lbtrain dev` once)",
              file=sys.stderr)
        return 2
    base = args.url.rstrip("/")
    if not base.startswith(("https://", "http://")):
        print(f"lbtrain labelbox register: --url must be the ingress base URL (https://…), not {args.url!r}",
              file=sys.stderr)
        return 2
    topics = [t.strip().upper() for t in args.topics.split(",") if t.strip()]
    unknown = sorted(set(topics) - set(LABEL_TOPICS))
    if unknown:
        print(f"lbtrain labelbox register: unknown topic(s) {', '.join(unknown)}; known: {', '.join(LABEL_TOPICS)}",
              file=sys.stderr)
        return 2
    try:
        hook_id = labelbox.from_config(cfg).register_webhook(args.project_id, f"{base}/webhooks/labelbox", secret,
                                                              topics)
    except Exception as exc:  # noqa: BLE001 - say what failed, exit non-zero
        print(f"lbtrain labelbox register: {exc}", file=sys.stderr)
        return 1
    print(f"label webhook {hook_id} registered for project {args.project_id}")
    print(f"  url:    {base}/webhooks/labelbox")
    print(f"  topics: {', '.join(topics)}")
    print("Labelbox → Model → Settings → Model training (paste these):")
    print(f"  URL:    {base}")
    print("  secret: the value of LABELBOX_WEBHOOK_SECRET (the same secret signs both; not printed here)")
    print(f"Then set a retraining rule: lbtrain triggers set {args.project_id} --model-type … --model-id …")
    return 0


def cmd_webhook_sign(args: argparse.Namespace) -> int:
    from lbtrain import signature
    from lbtrain.devstack import read_local_secrets

    cfg = _config()
    secret = cfg.labelbox_webhook_secret or read_local_secrets(cfg.state_dir).get("labelbox_webhook_secret", "")
    if not secret:
        print("lbtrain webhook sign: no secret (set LABELBOX_WEBHOOK_SECRET or run `lbtrain dev` once)",
              file=sys.stderr)
        return 2
    body = args.body
    if body.startswith("@"):
        with open(body[1:], "rb") as fh:
            raw = fh.read()
    else:
        raw = body.encode()
    for name, value in signature.headers(secret, raw).items():
        print(f"{name}: {value}")
    if args.post:
        from lbtrain.client import ApiError, Client

        try:
            status, out = Client(args.post.rsplit("/", 1)[0]).request(
                "POST", "/" + args.post.rsplit("/", 1)[1], raw=raw,
                headers={**signature.headers(secret, raw), **({"X-Labelbox-Id": args.delivery_id}
                                                               if args.delivery_id else {})})
        except ApiError as exc:
            print(f"-> {exc}", file=sys.stderr)
            return 1
        print(f"-> {status} {json.dumps(out)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lbtrain", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    dev = sub.add_parser("dev", help="run the local stack until interrupted")
    dev.add_argument("--port", type=int, default=8080)
    dev.add_argument("--reconcile-interval", type=float, default=5.0, help="seconds between reconciler sweeps")
    dev.set_defaults(func=cmd_dev)

    demo = sub.add_parser("demo", help="train every model type end to end on the local stack")
    demo.add_argument("--model-types", default="", help="comma-separated subset (default: all with a dataset)")
    demo.add_argument("--port", type=int, default=0, help="port for the stack (default: a free one)")
    demo.add_argument("--limit", type=int, default=None, help="use a stratified subset of N examples")
    demo.add_argument("--timeout", type=float, default=3600.0)
    demo.add_argument("--parallel", action="store_true",
                      help="trigger every run at once (they share the CPU; time-boxed trainers stop earlier)")
    demo.add_argument("--exit", action="store_true",
                      help="stop the stack when the runs end (default: keep it up, with the dashboard, until Ctrl-C)")
    demo.add_argument("--no-loop", action="store_true",
                      help="skip the labeling loop (a retraining rule whose run pre-labels a project's unlabeled rows)")
    demo.set_defaults(func=cmd_demo)

    ds = sub.add_parser("datasets", help="build file-backed Labelbox model runs from public data")
    ds_sub = ds.add_subparsers(dest="datasets_cmd", required=True)
    build = ds_sub.add_parser("build", help="write {out}/model_runs/{id}/export.ndjson")
    build.add_argument("model_type")
    build.add_argument("--out", required=True, help="the LABELBOX_DIR to write into")
    target = build.add_mutually_exclusive_group(required=True)
    target.add_argument("--model-run-id", help="write a model run export (with splits)")
    target.add_argument("--project-id", help="write a project export (labels, no splits) for retraining rules")
    build.add_argument("--limit", type=int, default=None)
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--dataset", default=None, help="which public dataset (default: the reference one)")
    build.set_defaults(func=cmd_datasets_build)

    trg = sub.add_parser("triggers", help="retraining rules: train again after N new or changed labels")
    trg.add_argument("--api-url", default=None, help="default: LBTRAIN_API_URL or the running `lbtrain dev`")
    trg.add_argument("--json", action="store_true")
    ts = trg.add_subparsers(dest="triggers_cmd", required=True)
    tset = ts.add_parser("set", help="create or change the rule of a Labelbox project")
    tset.add_argument("project_id")
    tset.add_argument("--model-type", required=True)
    tset.add_argument("--model-id", required=True, help="the Labelbox model new model runs are created under")
    tset.add_argument("--min-labels", type=int, default=100, help="new or changed labels that start a run")
    tset.add_argument("--min-interval", type=float, default=0.0, help="minimum seconds between two runs")
    tset.add_argument("--params", default="", help="JSON object of pipeline parameters")
    tset.add_argument("--disabled", action="store_true", help="keep the rule but do not count labels")
    ts.add_parser("list")
    tget = ts.add_parser("get")
    tget.add_argument("project_id")
    tdel = ts.add_parser("delete")
    tdel.add_argument("project_id")
    trg.set_defaults(func=cmd_triggers)

    lbx = sub.add_parser("labelbox", help="set up Labelbox for this deployment")
    lbx_sub = lbx.add_subparsers(dest="labelbox_cmd", required=True)
    reg = lbx_sub.add_parser("register", help="register the label webhook of a project; print the model training "
                                              "integration settings")
    reg.add_argument("--project-id", required=True)
    reg.add_argument("--url", required=True, help="the ingress base URL (Cloud Run service URL)")
    reg.add_argument("--topics", default="LABEL_CREATED,LABEL_UPDATED,LABEL_DELETED,WORKFLOW_ACTION")
    reg.set_defaults(func=cmd_labelbox_register)

    runs = sub.add_parser("runs", help="runs over the REST API")
    runs.add_argument("--api-url", default=None, help="default: LBTRAIN_API_URL or the running `lbtrain dev`")
    runs.add_argument("--json", action="store_true")
    rs = runs.add_subparsers(dest="runs_cmd", required=True)
    start = rs.add_parser("start")
    start.add_argument("--model-type", required=True)
    start.add_argument("--model-run-id", required=True)
    start.add_argument("--model-id", default="")
    start.add_argument("--params", default="", help="JSON object of pipeline parameters")
    start.add_argument("--wait", action="store_true")
    start.add_argument("--timeout", type=float, default=1800.0)
    lst = rs.add_parser("list")
    lst.add_argument("--status")
    lst.add_argument("--model-type")
    lst.add_argument("--limit", type=int, default=20)
    for name in ("show", "cancel", "retry"):
        rs.add_parser(name).add_argument("run_id")
    wait = rs.add_parser("wait")
    wait.add_argument("run_id")
    wait.add_argument("--timeout", type=float, default=1800.0)
    runs.set_defaults(func=cmd_runs)

    wh = sub.add_parser("webhook", help="Labelbox webhook helpers")
    wh_sub = wh.add_subparsers(dest="webhook_cmd", required=True)
    sign = wh_sub.add_parser("sign", help="print X-Hub-Signature headers for a body (and optionally POST it)")
    sign.add_argument("--body", required=True, help="the JSON body, or @file")
    sign.add_argument("--post", default="", help="POST the signed body to this URL, e.g. http://127.0.0.1:8080/model_run")
    sign.add_argument("--delivery-id", default="", help="X-Labelbox-Id to send with --post")
    sign.set_defaults(func=cmd_webhook_sign)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
