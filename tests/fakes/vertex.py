"""A local fake of Vertex AI's REST API (v1), for the real aiplatform client.

Keeps resources in memory, records every request, and moves jobs through their states on command
(`set_state`). Only what lbtrain calls is answered. This module: CustomJobs (create, get, list with
`display_name=` and `labels.k=` filters joined by AND, cancel) and long-running operations; further
resource families are route functions in sibling modules (`ROUTES`), each answering
`(fake, method, path, query, body) -> (status, body) | None`. See docs/architecture.md §13.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

OPERATION = re.compile(r"^/v1/(projects/[^/]+/locations/[^/]+/.*operations/[^/:]+)$")
JOBS = re.compile(r"^/v1/projects/([^/]+)/locations/([^/]+)/customJobs(?:/([^/:]+))?(:cancel)?$")


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
    # is sent instead of creating the job, as Vertex answers a quota or capacity refusal.
    create_error: Callable[[dict[str, Any]], tuple[int, Any] | None] | None = None

    def new_id(self) -> str:
        with self.lock:
            self.next_id += 1
            return str(self.next_id)

    def table(self, family: str) -> dict[str, dict[str, Any]]:
        return self.resources.setdefault(family, {})

    def operation(self, parent: str, response: dict[str, Any] | None = None,
                  metadata: dict[str, Any] | None = None, error: dict[str, Any] | None = None) -> dict[str, Any]:
        """A finished long-running operation under `parent` (a resource name), stored for GET."""
        op: dict[str, Any] = {"name": f"{parent}/operations/{self.new_id()}", "done": True}
        if metadata is not None:
            op["metadata"] = metadata
        if error is not None:
            op["error"] = error
        else:
            op["response"] = response or {}
        self.operations[op["name"]] = op
        return op

    def created(self) -> list[dict[str, Any]]:
        """Bodies of every create request, in order."""
        return [body for method, path, body in self.requests if method == "POST" and path.endswith("/customJobs")]

    def set_state(self, job_id: str, state: str, error: str = "", code: int = 3) -> None:
        """`code` is the google.rpc code Vertex puts beside the error (3 for a replica's non-zero exit)."""
        with self.lock:
            job = self.jobs[job_id]
            job["state"] = f"JOB_STATE_{state}"
            job["updateTime"] = _now()
            if error:
                job["error"] = {"code": code, "message": error}

    def handle(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        created: dict[str, Any] | None = None
        with self.lock:
            self.requests.append((method, path, body))
            status, answer, created = self._handle(method, path, query, body)
        if created is not None and self.on_job_created is not None:
            self.on_job_created(dict(created))
        return status, answer

    def _handle(self, method: str, path: str, query: dict[str, list[str]],
                body: Any) -> tuple[int, Any, dict[str, Any] | None]:
        op = OPERATION.match(path)
        if op and method == "GET":
            found = self.operations.get(op.group(1))
            return (200, found, None) if found else (*not_found(f"operation {op.group(1)}"), None)
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
            return 200, job
        if method == "POST" and cancel:
            if job["state"] not in ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"):
                job["state"] = "JOB_STATE_CANCELLING"
                job["updateTime"] = _now()
            return 200, {}
        return 405, {"error": {"code": 405, "message": "method not allowed"}}


def serve(fake: FakeVertex, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """Start serving `fake` in a daemon thread; `server.server_address` tells the port."""

    class Handler(BaseHTTPRequestHandler):
        def _dispatch(self, method: str) -> None:
            url = urlparse(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            status, answer = fake.handle(method, url.path, parse_qs(url.query, keep_blank_values=True), body)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            self._dispatch("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._dispatch("POST")

        def do_DELETE(self) -> None:  # noqa: N802
            self._dispatch("DELETE")

        def do_PATCH(self) -> None:  # noqa: N802
            self._dispatch("PATCH")

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
