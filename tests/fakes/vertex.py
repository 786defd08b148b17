"""A local fake of Vertex AI's REST API (v1), for the real aiplatform client.

Keeps resources in memory, records every request, and moves jobs through their states on command
(`set_state`). Only what lbtrain calls is answered. This module: CustomJobs (create, get, list with
`display_name=` and `labels.k=` filters joined by AND, cancel) and long-running operations; further
resource families are route functions in sibling modules (`ROUTES`), each answering
`(fake, method, path, query, body) -> (status, body) | None`. See docs/architecture.md §13.

As strict as the real API, bad days included:
  - every request body is parsed into its v1 message type before any route sees it
    (tests/fakes/vertex_schema.py): an unknown field, a wrong enum value or a missing required field
    is a 400 INVALID_ARGUMENT, as from Vertex;
  - long-running operations carry their metadata type with `genericMetadata` times; with
    `lro_polls = N` each stays `done: false` for N polls (its effect happens when it completes), at
    the path the REST client polls (GET /ui/{name}; /v1/{name} too), or until `complete_operations()`;
  - `inject(target, failure, times)` makes the next matching requests fail (`Failure` with `http`:
    quota 429, 503, 500) or the next created job/operation end in error (`http=0`: a CustomJob,
    pipeline or batch job then goes PENDING → RUNNING → `failure.state` on successive reads).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

from tests.fakes.json_api import serve_json

OPERATION = re.compile(r"^/(?:v1|ui)/(projects/[^/]+/locations/[^/]+/.*operations/[^/:]+)$")
# Any v1 resource request: (parent), (family), (id), (verb), e.g. …/endpoints/7:deployModel, …/models:upload.
RESOURCE = re.compile(r"^/v1/(projects/[^/]+/locations/[^/]+)/(\w+)(?:/([^/:]+))?(?::(\w+))?$")
CODES = {3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED", 5: "NOT_FOUND", 7: "PERMISSION_DENIED",
         8: "RESOURCE_EXHAUSTED", 9: "FAILED_PRECONDITION", 10: "ABORTED", 13: "INTERNAL", 14: "UNAVAILABLE"}
TERMINAL = ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED",
            "JOB_STATE_PARTIALLY_SUCCEEDED")


@dataclass(frozen=True)
class Failure:
    """A bad day at Vertex. `http` > 0: the request itself is answered with that status and the
    google.rpc error `code`/`message`; `http` = 0: the job (or long-running operation) is created and
    ends in `state` with `error {code, message}` (a batch job ending PARTIALLY_SUCCEEDED reports it in
    `partialFailures` instead, and the rows listed by `vertex_automl.configure(missing=…)` fail)."""

    code: int
    message: str
    http: int = 0
    state: str = "FAILED"

    @property
    def status(self) -> str:
        return CODES.get(self.code, "UNKNOWN")

    def answer(self) -> tuple[int, Any]:
        return self.http, {"error": {"code": self.http, "message": self.message, "status": self.status}}

    def error(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}


# Texts seen from Vertex (docs/architecture.md §13).
QUOTA = Failure(8, "The following quota metrics exceed quota limits: "
                   "aiplatform.googleapis.com/custom_model_training_nvidia_l4_gpus", http=429)
OUT_OF_CAPACITY = Failure(8, "Unable to submit request because the service is temporarily out of capacity. "
                             "Try again later.", http=429)
UNAVAILABLE = Failure(14, "The service is currently unavailable.", http=503)
INTERNAL = Failure(13, "Internal error encountered.", http=500)
STOCKOUT = Failure(8, "Resources are insufficient in region: us-central1. Please try a different region. "
                      "If you use K80, please consider using P100 or V100 instead.")
JOB_INTERNAL = Failure(13, "Internal error occurred. Please retry in a few minutes. If you still "
                           "experience errors, contact Vertex AI.")
PARTIAL = Failure(3, "Some instances could not be predicted; see the errors files in the output "
                     "directory.", state="PARTIALLY_SUCCEEDED")
JOBS = re.compile(r"^/v1/projects/([^/]+)/locations/([^/]+)/customJobs(?:/([^/:]+))?(:cancel)?$")


V1 = "type.googleapis.com/google.cloud.aiplatform.v1."


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())


def _matches(job: dict[str, Any], expression: str) -> bool:
    for clause in filter(None, (c.strip() for c in re.split(r"\s+AND\s+", expression))):
        key, _, value = clause.partition("=")
        key, value = key.strip(), value.strip().strip('"')
        if key == "display_name":
            if job.get("displayName") != value:
                return False
        elif key.startswith("labels."):
            if job.get("labels", {}).get(key[len("labels."):]) != value:
                return False
        else:
            raise ValueError(f"unsupported filter {clause!r}")
    return True


Route = Callable[["FakeVertex", str, str, dict[str, list[str]], Any], "tuple[int, Any] | None"]


def not_found(what: str) -> tuple[int, Any]:
    return 404, {"error": {"code": 404, "message": f"{what} not found", "status": "NOT_FOUND"}}


def _default_routes() -> list[Route]:
    from tests.fakes import vertex_automl, vertex_models

    return [vertex_models.route, vertex_automl.route]


@dataclass
class FakeVertex:
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    operations: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str, Any]] = field(default_factory=list)
    lock: threading.RLock = field(default_factory=threading.RLock)
    next_id: int = 1000
    routes: list[Route] = field(default_factory=_default_routes)
    # Extra per-family state the route modules keep (models, endpoints, datasets, …).
    resources: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    # Called (outside the lock) with each CustomJob just created: lets a test or the local stack run it.
    on_job_created: Callable[[dict[str, Any]], None] | None = None
    # Failure injection: called with each CustomJob create body; an answer (status, google error body)
    # is sent instead of creating the job, as Vertex answers a quota or capacity refusal. (The callback
    # form of `inject("customJobs", QUOTA)`, for a test that decides by the body, e.g. the machine asked.)
    create_error: Callable[[dict[str, Any]], tuple[int, Any] | None] | None = None
    # Polls a long-running operation answers `done: false` before it completes (0: done in its POST).
    lro_polls: int = 0
    # Operations not done yet: name → [polls left, the effect that completes it → (response, error)].
    pending: dict[str, list[Any]] = field(default_factory=dict)
    # inject(): target → [[failure, times left], …]; and what is fated for created resources (name → failure).
    injected: dict[str, list[list[Any]]] = field(default_factory=dict)
    fated: dict[str, Failure] = field(default_factory=dict)
    # Every job state change, in order: (resource name, state) — CustomJobs, pipelines, batch jobs.
    history: list[tuple[str, str]] = field(default_factory=list)

    def new_id(self) -> str:
        with self.lock:
            self.next_id += 1
            return str(self.next_id)

    def table(self, family: str) -> dict[str, dict[str, Any]]:
        return self.resources.setdefault(family, {})

    def operation(self, parent: str, response: dict[str, Any] | None = None,
                  metadata: dict[str, Any] | str | None = None, error: dict[str, Any] | None = None,
                  effect: Callable[[], tuple[dict[str, Any] | None, dict[str, Any] | None]] | None = None,
                  fate: Failure | None = None) -> dict[str, Any]:
        """A long-running operation under `parent` (a resource name), stored for GET. `effect` does the
        operation's work when it completes and returns (response, error); without it the operation
        answers `response`/`error`. `metadata`: its metadata (or just the v1 type name, e.g.
        "DeployModelOperationMetadata"), given `genericMetadata` times. A `fate` (an injected failure)
        makes it end in that error instead, without its effect."""
        if isinstance(metadata, str):
            metadata = {"@type": V1 + metadata}
        if metadata is not None and "genericMetadata" not in metadata:
            metadata = {**metadata, "genericMetadata": {"createTime": _now(), "updateTime": _now()}}
        op: dict[str, Any] = {"name": f"{parent}/operations/{self.new_id()}", "done": False}
        if metadata is not None:
            op["metadata"] = metadata
        if fate is not None:
            def run() -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
                return None, fate.error()
        else:
            def run() -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
                return effect() if effect is not None else (response or {}, error)
        self.operations[op["name"]] = op
        if self.lro_polls > 0:
            self.pending[op["name"]] = [self.lro_polls, run]
        else:
            self._finish(op, run)
        return dict(op)

    def _finish(self, op: dict[str, Any], run: Callable[[], tuple[Any, Any]]) -> None:
        answer, failed = run()
        op["done"] = True
        if failed is not None:
            op["error"] = failed
        else:
            op["response"] = answer or {}
        if "metadata" in op and "genericMetadata" in op["metadata"]:
            op["metadata"]["genericMetadata"]["updateTime"] = _now()
        self.pending.pop(op["name"], None)

    def complete_operations(self) -> None:
        """Complete every pending long-running operation now (on demand, without polls)."""
        with self.lock:
            for name, (_, run) in list(self.pending.items()):
                self._finish(self.operations[name], run)

    def _poll(self, name: str) -> tuple[int, Any]:
        op = self.operations.get(name)
        if op is None:
            return not_found(f"operation {name}")
        waiting = self.pending.get(name)
        if waiting is not None:
            waiting[0] -= 1
            if waiting[0] < 0:
                self._finish(op, waiting[1])
        return 200, op

    # -- failure injection ---------------------------------------------------------------------
    def inject(self, target: str, failure: Failure, times: int = 1) -> None:
        """The next `times` requests matching `target` fail with `failure`.

        `target`: a resource family for its create (`"customJobs"`, `"trainingPipelines"`,
        `"batchPredictionJobs"`, `"datasets"`, `"endpoints"`), `family:verb` for a custom method
        (`"endpoints:deployModel"`, `"models:upload"`, `"datasets:import"`, `"customJobs:cancel"`),
        `"GET family"` for its reads (get and list). A `failure` with `http` answers the request
        itself; one without (`http=0`) lets the create succeed and fates what it created: the job
        ends in `failure.state`, the operation ends with `failure.error()`.
        """
        with self.lock:
            self.injected.setdefault(target, []).append([failure, times])

    def _take(self, target: str, http: bool) -> Failure | None:
        for planned in self.injected.get(target, []):
            failure, left = planned
            if left > 0 and bool(failure.http) == http:
                planned[1] -= 1
                return failure
        return None

    def fate(self, target: str) -> Failure | None:
        """For a route: the job-ending failure injected for `target`'s next create, if any (consumed)."""
        return self._take(target, http=False)

    @staticmethod
    def target(method: str, family: str, verb: str) -> str:
        key = f"{family}:{verb}" if verb else family
        return key if method == "POST" else f"{method} {key}"

    def created(self) -> list[dict[str, Any]]:
        """Bodies of every create request, in order."""
        return [body for method, path, body in self.requests if method == "POST" and path.endswith("/customJobs")]

    def set_state(self, job_id: str, state: str, error: str = "", code: int = 3) -> None:
        """`code` is the google.rpc code Vertex puts beside the error (3 for a replica's non-zero exit)."""
        with self.lock:
            job = self.jobs[job_id]
            job["state"] = f"JOB_STATE_{state}"
            job["updateTime"] = _now()
            self.history.append((job["name"], job["state"]))
            if state == "RUNNING":
                job.setdefault("startTime", _now())
            if job["state"] in TERMINAL:
                job.setdefault("endTime", _now())
            if error:
                job["error"] = {"code": code, "message": error}

    def handle(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        created: dict[str, Any] | None = None
        with self.lock:
            self.requests.append((method, path, body))
            status, answer, created = self._handle(method, path, query, body)
            if status == 200:
                status, answer = self._checked(method, path, answer)
        if created is not None and self.on_job_created is not None:
            self.on_job_created(dict(created))
        return status, answer

    def _checked(self, method: str, path: str, answer: Any) -> tuple[int, Any]:
        """The fake's own answer must be a valid message of its type: else a 500 naming the fake's bug."""
        from tests.fakes import vertex_schema

        r = RESOURCE.match(unquote(path))
        kind = "Operation" if OPERATION.match(path) else \
            vertex_schema.response_type(method, r.group(2), r.group(3) or "", r.group(4) or "") if r else ""
        if kind:
            try:
                vertex_schema.check_response(kind, answer)
            except ValueError as exc:
                return 500, {"error": {"code": 500, "message": f"fake bug: {exc}", "status": "INTERNAL"}}
        return 200, answer

    def _handle(self, method: str, path: str, query: dict[str, list[str]],
                body: Any) -> tuple[int, Any, dict[str, Any] | None]:
        op = OPERATION.match(path)
        if op and method == "GET":
            return (*self._poll(op.group(1)), None)
        r = RESOURCE.match(unquote(path))
        if r:
            from tests.fakes import vertex_schema

            parent, family, rid, verb = r.groups()
            resource = f"{parent}/{family}/{rid}" if rid else parent
            try:
                vertex_schema.check(method, family, verb or "", resource, body)
            except vertex_schema.Invalid as exc:
                return (*vertex_schema.bad_request(exc), None)
            refused = self._take(self.target(method, family, verb or ""), http=True)
            if refused is not None:
                return (*refused.answer(), None)
        m = JOBS.match(path)
        if not m:
            for route in self.routes:
                answer = route(self, method, path, query, body)
                if answer is not None:
                    return (*answer, None)
            return (*not_found(f"no route {method} {path}:"), None)
        project, location, job_id, cancel = m.groups()
        parent = f"projects/{project}/locations/{location}"
        if method == "POST" and job_id is None:
            refused = self.create_error(body) if self.create_error is not None else None
            if refused is not None:
                return (*refused, None)
            new_id = self.new_id()
            job = {**body, "name": f"{parent}/customJobs/{new_id}", "state": "JOB_STATE_PENDING",
                   "createTime": _now(), "updateTime": _now()}
            self.jobs[new_id] = job
            self.history.append((job["name"], job["state"]))
            fate = self.fate("customJobs")
            if fate is not None:
                self.fated[job["name"]] = fate
            return 200, job, job
        status, answer = self._job(method, parent, query, job_id, cancel)
        return status, answer, None

    def _job(self, method: str, parent: str, query: dict[str, list[str]], job_id: str | None,
             cancel: str | None) -> tuple[int, Any]:
        if method == "GET" and job_id is None:
            expression = unquote(query.get("filter", [""])[0])
            found = [j for j in self.jobs.values() if j["name"].startswith(parent) and _matches(j, expression)]
            return 200, {"customJobs": found}
        if job_id not in self.jobs:
            return 404, {"error": {"code": 404, "message": f"customJob {job_id} not found", "status": "NOT_FOUND"}}
        job = self.jobs[job_id]
        if method == "GET":
            fate = self.fated.get(job["name"])
            if fate is not None and job["state"] not in TERMINAL and job["state"] != "JOB_STATE_CANCELLING":
                self._advance(job_id, fate)
            return 200, job
        if method == "POST" and cancel:
            if job["state"] not in ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"):
                job["state"] = "JOB_STATE_CANCELLING"
                job["updateTime"] = _now()
            return 200, {}
        return 405, {"error": {"code": 405, "message": "method not allowed"}}

    def _advance(self, job_id: str, fate: Failure) -> None:
        """A fated CustomJob moves one state per read: PENDING → RUNNING → its failure's state."""
        if self.jobs[job_id]["state"] == "JOB_STATE_PENDING":
            self.set_state(job_id, "RUNNING")
        else:
            self.set_state(job_id, fate.state, error=fate.message, code=fate.code)


def serve(fake: FakeVertex, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """Start serving `fake` in a daemon thread; `server.server_address` tells the port."""
    return serve_json(lambda r: fake.handle(r.method, r.path, r.query, r.json()), host, port)
