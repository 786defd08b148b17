"""Every environment variable lbtrain reads is read here, once (docs/architecture.md §8).

Everything else receives a `Config` (or plain values) as an argument, so tests can build
one directly and nothing depends on process-wide state.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lbtrain.domain import RetryPolicy

DEFAULT_MIN_EXAMPLES = {"train": 5, "validation": 1, "test": 1}
PUSH_AUTH_MODES = ("none", "oidc", "cloudrun-iam")
JOB_BACKENDS = ("local", "vertex", "cloudrun")
# A Secret Manager secret (version) resource name; without a version it means the latest one.
SECRET_NAME = re.compile(r"^projects/[^/\s]+/secrets/[\w-]+(?:/versions/(?:latest|\d+))?$")
BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
# Row-data fetches (lbtrain/fetch.py) and image decoding (jobs/tasks/images.py): row data is untrusted.
DEFAULT_FETCH_MAX_IMAGE_BYTES = 20 << 20
DEFAULT_FETCH_MAX_TEXT_BYTES = 1 << 20
DEFAULT_FETCH_DEADLINE_SECONDS = 60.0
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
# Read as LBTRAIN_<NAME>: (field, type).
_LBTRAIN_NUMBERS = (("max_body_bytes", int), ("stale_after_seconds", float), ("fetch_max_image_bytes", int),
                    ("fetch_max_text_bytes", int), ("fetch_deadline_seconds", float), ("max_image_pixels", int),
                    ("max_attempts", int), ("retry_base_seconds", float), ("retry_cap_seconds", float),
                    ("max_active_runs", int), ("monthly_node_hours", float), ("max_delivery_attempts", int))


@dataclass(frozen=True)
class Config:
    deployment_name: str = "dev"
    project: str = "demo"
    region: str = "us-central1"
    artifact_root: str = ".lbtrain/artifacts"
    job_backend: str = "local"
    labelbox_backend: str = "file"
    labelbox_dir: str = ".lbtrain/labelbox"
    labelbox_api_key: str = field(default="", repr=False)
    # Vertex jobs: the Secret Manager resource name (projects/P/secrets/S/versions/V) of the Labelbox
    # API key, read at run time by lbtrain/secrets.py; when set it wins over LABELBOX_API_KEY.
    labelbox_api_key_secret: str = ""
    # Secret Manager API endpoint override; `http://…` is a local fake (REST, anonymous credentials).
    secret_manager_api_endpoint: str = ""
    # LABELBOX_BACKEND=sdk: the GraphQL endpoint (LABELBOX_ENDPOINT); empty = the SDK's default (api.labelbox.com).
    labelbox_endpoint: str = ""
    labelbox_webhook_secret: str = field(default="", repr=False)
    api_token: str = field(default="", repr=False)
    # Who may deliver Pub/Sub push and Scheduler requests (lbtrain/pushauth.py): none (local stack: the
    # emulator sends no token), oidc (a public service verifies Google's signature itself) or cloudrun-iam
    # (a private service: Cloud Run IAM verified the token; the app checks its forwarded claims).
    push_auth: str = "none"
    # The audience the push tokens carry (the service's Cloud Run custom audience).
    push_audience: str = ""
    # The only identity allowed to push: the invoker service account Pub/Sub and Scheduler sign as.
    push_service_account: str = ""
    # Where PUSH_AUTH=oidc fetches the signing certificates; empty = Google's (tests serve their own).
    push_certs_url: str = ""
    pubsub_emulator_host: str = ""
    firestore_emulator_host: str = ""
    storage_emulator_host: str = ""
    vertex_api_endpoint: str = ""
    # Cloud Run Admin API v2 endpoint override; `http://…` is a local fake (REST, anonymous credentials).
    cloud_run_api_endpoint: str = ""
    # Per stage: which backend runs its job (JSON, glob `model_type/stage` → local|vertex|cloudrun; the
    # most specific pattern wins, lbtrain/adapters/dispatch_backend.py). Empty: JOB_BACKEND's own table.
    stage_backends: str = ""
    # Deploy: where the champion is served, per model type (JSON, `model_type` glob → vertex|cloudrun).
    serving_backends: str = ""
    # Vertex AI jobs: images, service account, machines per model type / stage (JSON, see machine_for).
    job_image: str = ""
    job_image_gpu: str = ""
    job_service_account: str = ""
    job_machines: str = ""
    # Per model type: custom training or AutoML Image, and its budget (JSON, see model_options.py).
    model_options: str = ""
    # Deploy on Vertex: the serving image uploaded to the Model Registry and the endpoint's machine.
    serving_image: str = ""
    serving_machine: str = "n1-standard-2"
    # Minimum examples per class per split before training is allowed.
    min_examples: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_MIN_EXAMPLES))
    # Largest webhook / API body accepted, in bytes.
    max_body_bytes: int = 1 << 20
    # A step left PENDING or LAUNCHING this long is re-driven by the reconciler.
    stale_after_seconds: float = 120.0
    # Python interpreter and module that run local jobs (LocalBackend).
    job_python: str = ""
    job_module: str = "jobs.main"
    # The one stage a launcher deployment serves (STAGE=etl …); empty serves all (local stack).
    stage: str = ""
    # Local state of the dev stack and the CLI (dev.json with the generated local secrets).
    state_dir: str = ".lbtrain"
    # Where the CLI finds the REST API.
    api_url: str = "http://127.0.0.1:8080"
    # Buckets (comma-separated names) whose gs:// data rows the jobs may read, besides the artifact bucket.
    media_buckets: str = ""
    # Row-data fetches: bytes per image / text row, seconds per fetch (all reads and redirects together).
    fetch_max_image_bytes: int = DEFAULT_FETCH_MAX_IMAGE_BYTES
    fetch_max_text_bytes: int = DEFAULT_FETCH_MAX_TEXT_BYTES
    fetch_deadline_seconds: float = DEFAULT_FETCH_DEADLINE_SECONDS
    # Tests and the local stack only: row data may be fetched over http from loopback. Never set in the cloud.
    fetch_allow_loopback: bool = False
    # Largest image (width × height) decoded in ETL, training and serving.
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    # Automatic retries of infrastructure failures (lbtrain/failures.py): attempts per stage, and the
    # back-off before the n-th retry, min(cap, base·2^(n-1)) seconds with jitter.
    max_attempts: int = 3
    retry_base_seconds: float = 30.0
    retry_cap_seconds: float = 600.0
    # Admission (lbtrain/admission.py): at most this many active runs in the deployment (0: no limit) …
    max_active_runs: int = 0
    # … and per model type: "" (no limit), a number for every type, or JSON {"bounding_box": 1, "*": 4}.
    max_active_runs_per_type: str = ""
    # Node-hours of finished jobs per calendar month (UTC) after which new runs wait (0: no budget).
    monthly_node_hours: float = 0.0
    # The local stack's dead-letter policy: deliveries before a message goes to the dead-letter topic (5–100).
    max_delivery_attempts: int = 50

    def topic(self, name: str) -> str:
        """Topic id for `runs`, `step-<stage>`, `job-events`, `dead-letter`."""
        return f"{self.deployment_name}-{name}"

    def with_overrides(self, **kwargs: object) -> Config:
        return replace(self, **kwargs)

    def retry_policy(self) -> RetryPolicy:
        from lbtrain.domain import RetryPolicy

        return RetryPolicy(self.max_attempts, self.retry_base_seconds, self.retry_cap_seconds)

    def secrets(self) -> list[str]:
        """Values that must never appear in logs, messages or documents."""
        return [s for s in (self.labelbox_api_key, self.labelbox_webhook_secret, self.api_token) if s]


def _min_examples(raw: str) -> dict[str, int]:
    """Parse `train=5,validation=1,test=1`; unknown splits are an error."""
    out = dict(DEFAULT_MIN_EXAMPLES)
    for part in filter(None, (p.strip() for p in raw.split(","))):
        split, _, num = (x.strip() for x in part.partition("="))
        if split not in out or not num.isdigit():
            raise ValueError(f"LBTRAIN_MIN_EXAMPLES: bad entry {part!r} (want e.g. train=5,validation=1,test=1)")
        out[split] = int(num)
    return out


def per_type_limits(raw: str) -> dict[str, int]:
    """LBTRAIN_MAX_ACTIVE_RUNS_PER_TYPE: "" → {} (no limit); "3" → {"*": 3}; JSON object of model type (or "*",
    every other type) → limit. A limit of 0 means none for that type."""
    raw = raw.strip()
    if not raw:
        return {}
    if raw.isdigit():
        return {"*": int(raw)}
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0 for k, v in data.items()):
        raise ValueError("LBTRAIN_MAX_ACTIVE_RUNS_PER_TYPE must be a number or a JSON object of model type (or \"*\") "
                         f"→ a whole number >= 0, not {raw!r}")
    return dict(data)


def secret_version(name: str, env_var: str) -> str:
    """`projects/P/secrets/S` → `…/versions/latest`. Anything else is refused without repeating it:
    it may be the secret's value pasted into the wrong variable."""
    name = name.strip()
    if not SECRET_NAME.match(name):
        raise ValueError(f"{env_var} must be a Secret Manager resource name projects/P/secrets/S[/versions/V] "
                         "(never the secret's value)")
    return name if "/versions/" in name else f"{name}/versions/latest"


def from_env(env: Mapping[str, str] | None = None) -> Config:
    env = os.environ if env is None else env
    names = {f.name for f in fields(Config)}
    values: dict[str, object] = {}
    for name in names:
        key = name.upper()
        if key in env and env[key] != "":
            values[name] = env[key]
    values.pop("min_examples", None)
    if env.get("LBTRAIN_MIN_EXAMPLES"):
        values["min_examples"] = _min_examples(env["LBTRAIN_MIN_EXAMPLES"])
    # GOOGLE_CLOUD_PROJECT is the conventional name for the project (never a bare PROJECT).
    values.pop("project", None)
    if env.get("GOOGLE_CLOUD_PROJECT"):
        values["project"] = env["GOOGLE_CLOUD_PROJECT"]
    for name, kind in _LBTRAIN_NUMBERS:
        values.pop(name, None)
        key = f"LBTRAIN_{name.upper()}"
        if env.get(key):
            try:
                values[name] = kind(env[key])
            except ValueError:
                raise ValueError(f"{key} must be a number, not {env[key]!r}") from None
            if name.startswith(("fetch_", "max_image", "max_attempts", "retry_")) and \
                    not values[name] > 0:  # type: ignore[operator]
                raise ValueError(f"{key} must be positive, not {env[key]!r}")
            if name in ("max_active_runs", "monthly_node_hours") and values[name] < 0:  # type: ignore[operator]
                raise ValueError(f"{key} must be 0 (no limit) or more, not {env[key]!r}")
            if name == "max_delivery_attempts" and not 5 <= values[name] <= 100:  # type: ignore[operator]
                raise ValueError(f"{key} must be from 5 to 100 (Pub/Sub's range), not {env[key]!r}")
    values.pop("fetch_allow_loopback", None)
    loopback = env.get("LBTRAIN_FETCH_ALLOW_LOOPBACK", "").strip().lower()
    if loopback not in ("", "0", "false", "1", "true"):
        raise ValueError(f"LBTRAIN_FETCH_ALLOW_LOOPBACK must be 1 or 0, not {loopback!r}")
    values["fetch_allow_loopback"] = loopback in ("1", "true")
    if values.get("media_buckets"):
        names = [b.strip() for b in str(values["media_buckets"]).split(",") if b.strip()]
        bad = [b for b in names if not BUCKET_NAME.match(b)]
        if bad:
            raise ValueError(f"MEDIA_BUCKETS: bucket names only, comma-separated (no gs://, no path): {bad[0]!r}")
        values["media_buckets"] = ",".join(names)
    values.pop("max_active_runs_per_type", None)
    if env.get("LBTRAIN_MAX_ACTIVE_RUNS_PER_TYPE"):
        values["max_active_runs_per_type"] = env["LBTRAIN_MAX_ACTIVE_RUNS_PER_TYPE"]
        per_type_limits(env["LBTRAIN_MAX_ACTIVE_RUNS_PER_TYPE"])  # fails at start-up when malformed
    for name in ("job_python", "job_module", "api_url", "state_dir"):
        values.pop(name, None)
        if env.get(f"LBTRAIN_{name.upper()}"):
            values[name] = env[f"LBTRAIN_{name.upper()}"]
    if values.get("job_backend", "local") not in JOB_BACKENDS:
        raise ValueError(f"JOB_BACKEND must be local, vertex or cloudrun, not {values['job_backend']!r}")
    for name in ("stage_backends", "serving_backends"):
        if values.get(name):
            _backend_table(str(values[name]), name.upper())
    if values.get("labelbox_backend", "file") not in ("file", "sdk"):
        raise ValueError(f"LABELBOX_BACKEND must be file or sdk, not {values['labelbox_backend']!r}")
    if values.get("model_options"):
        from lbtrain import model_options

        model_options.parse(str(values["model_options"]))
    if values.get("labelbox_api_key_secret"):
        values["labelbox_api_key_secret"] = secret_version(str(values["labelbox_api_key_secret"]),
                                                           "LABELBOX_API_KEY_SECRET")
    _check_push_auth(values)
    return Config(**values)  # type: ignore[arg-type]


def _backend_table(raw: str, env_var: str) -> dict[str, str]:
    """STAGE_BACKENDS / SERVING_BACKENDS: a JSON object of glob pattern → backend name. Checked at
    start-up so a typo fails the service, not the third stage of a run."""
    import json

    try:
        table = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{env_var} is not JSON: {exc}") from None
    allowed = JOB_BACKENDS if env_var == "STAGE_BACKENDS" else ("local", "vertex", "cloudrun")
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        raise ValueError(f"{env_var} must be a JSON object of pattern → backend name")
    bad = {k: v for k, v in table.items() if v not in allowed}
    if bad:
        raise ValueError(f"{env_var}: unknown backend in {bad} (use {', '.join(allowed)})")
    return table


def _check_push_auth(values: Mapping[str, object]) -> None:
    """A service that checks push identities refuses to start without the identity to check:
    an empty PUSH_SERVICE_ACCOUNT (or, under oidc, PUSH_AUDIENCE) would accept anyone's token."""
    mode = values.get("push_auth", "none")
    if mode not in PUSH_AUTH_MODES:
        raise ValueError(f"PUSH_AUTH must be one of {', '.join(PUSH_AUTH_MODES)}, not {mode!r}")
    required = {"oidc": ("push_service_account", "push_audience"),
                "cloudrun-iam": ("push_service_account",)}.get(str(mode), ())
    missing = [name.upper() for name in required if not values.get(name)]
    if missing:
        raise ValueError(f"PUSH_AUTH={mode} needs {' and '.join(missing)}")


def to_env(config: Config) -> dict[str, str]:
    """The environment that reproduces `config` in a child process (jobs, dev stack)."""
    env: dict[str, str] = {}
    for f in fields(Config):
        value = getattr(config, f.name)
        if f.name == "min_examples":
            env["LBTRAIN_MIN_EXAMPLES"] = ",".join(f"{k}={v}" for k, v in value.items())
        elif f.name == "project":
            env["GOOGLE_CLOUD_PROJECT"] = str(value)
        elif f.name == "fetch_allow_loopback":
            if value:
                env["LBTRAIN_FETCH_ALLOW_LOOPBACK"] = "1"
        elif f.name in (*(n for n, _ in _LBTRAIN_NUMBERS), "job_python", "job_module", "api_url", "state_dir") or (
                f.name == "max_active_runs_per_type" and value):
            env[f"LBTRAIN_{f.name.upper()}"] = str(value)
        elif value != "":
            env[f.name.upper()] = str(value)
    return env
