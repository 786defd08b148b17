"""A local fake of the Cloud Run Admin API v2 (REST), for the real google-cloud-run (run_v2) client.

Keeps resources in memory and records every request. Jobs (create with `jobId`, get, list, update by
PATCH, `:run` with overrides), executions (get, list, `:cancel`), services (create with `serviceId`, get,
update by PATCH: a new revision when the template changes, traffic as asked), revisions (get, list) and
long-running operations (`GET …/operations/…`, as the REST client polls them). JSON bodies in the
camelCase the client sends; an operation's response/metadata carry their `@type`. Executions move through
their states on command (`set_execution`), the way Cloud Run reports them (conditions and counts);
`on_execution_created` lets a runner start them as local processes. See docs/architecture.md §13.
"""

from __future__ import annotations

import copy
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from typing import Any

from tests.fakes.json_api import serve_json

LOC = r"/v2/projects/([^/]+)/locations/([^/]+)"
OPERATION = re.compile(rf"^{LOC}/operations/([^/:]+)$")
JOBS = re.compile(rf"^{LOC}/jobs(?:/([^/:]+))?(:run)?$")
EXECUTIONS = re.compile(rf"^{LOC}/jobs/([^/]+)/executions(?:/([^/:]+))?(:cancel)?$")
SERVICES = re.compile(rf"^{LOC}/services(?:/([^/:]+))?$")
REVISIONS = re.compile(rf"^{LOC}/services/([^/]+)/revisions(?:/([^/:]+))?$")
TYPE = "type.googleapis.com/google.cloud.run.v2."


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())


def error(code: int, status: str, message: str) -> tuple[int, Any]:
    return code, {"error": {"code": code, "message": message, "status": status}}


@dataclass
class FakeCloudRun:
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    executions: dict[str, dict[str, Any]] = field(default_factory=dict)
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    revisions: dict[str, dict[str, Any]] = field(default_factory=dict)
    operations: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str, Any]] = field(default_factory=list)
    lock: threading.RLock = field(default_factory=threading.RLock)
    # Called (outside the lock) with each execution just started: a test or the local stack runs it.
    on_execution_created: Callable[[dict[str, Any]], None] | None = None
    # The URL a service answers on, by service id (tests point it at a local model server).
    service_urls: dict[str, str] = field(default_factory=dict)
    # Revision ids whose container fails its startup probe (Ready: CONDITION_FAILED).
    unhealthy: set[str] = field(default_factory=set)

    # -- helpers for tests ---------------------------------------------------------------------
    def calls(self, method: str, suffix: str) -> list[Any]:
        return [body for m, p, body in self.requests if m == method and p.endswith(suffix)]

    def set_execution(self, name: str, state: str, message: str = "") -> None:
        """Move an execution (full name) the way Cloud Run reports it: RUNNING, SUCCEEDED, FAILED, CANCELLED."""
        with self.lock:
            ex = self.executions[name]
            ex["updateTime"] = _now()
            if state == "RUNNING":
                ex.update(startTime=_now(), runningCount=1)
                return
            ex.update(completionTime=_now(), runningCount=0)
            completed = {"type": "Completed", "lastTransitionTime": _now()}
            if state == "SUCCEEDED":
                ex["succeededCount"] = 1
                completed.update(state="CONDITION_SUCCEEDED", message="Execution completed successfully.")
            elif state == "FAILED":
                ex["failedCount"] = 1
                completed.update(state="CONDITION_FAILED", executionReason="NON_ZERO_EXIT_CODE",
                                 message=message or "Task 0 failed with message: The container exited with an error.")
            elif state == "CANCELLED":
                ex["cancelledCount"] = 1
                completed.update(state="CONDITION_FAILED", executionReason="CANCELLED",
                                 message="The execution was cancelled.")
            else:
                raise ValueError(state)
            ex["conditions"] = [c for c in ex.get("conditions", []) if c["type"] != "Completed"] + [completed]

    def cancelling(self, name: str) -> bool:
        with self.lock:
            return any(c.get("executionReason") == "CANCELLING" for c in self.executions[name].get("conditions", []))

    # -- operations ------------------------------------------------------------------------------
    def _operation(self, parent: str, kind: str, resource: dict[str, Any], done: bool = True) -> dict[str, Any]:
        op: dict[str, Any] = {"name": f"{parent}/operations/{secrets.token_hex(8)}", "done": done,
                              "metadata": {"@type": TYPE + kind, **copy.deepcopy(resource)}}
        if done:
            op["response"] = {"@type": TYPE + kind, **copy.deepcopy(resource)}
        self.operations[op["name"]] = op
        return op

    # -- dispatch ----------------------------------------------------------------------------------
    def handle(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        created: dict[str, Any] | None = None
        with self.lock:
            self.requests.append((method, path, body))
            status, answer, created = self._handle(method, path, query, body or {})
        if created is not None and self.on_execution_created is not None:
            self.on_execution_created(copy.deepcopy(created))
        return status, answer

    def _handle(self, method: str, path: str, query: dict[str, list[str]],
                body: dict[str, Any]) -> tuple[int, Any, dict[str, Any] | None]:
        if m := OPERATION.match(path):
            name = path.removeprefix("/v2/")
            return (200, self.operations[name], None) if name in self.operations else \
                (*error(404, "NOT_FOUND", f"operation {name} not found"), None)
        if m := EXECUTIONS.match(path):
            return (*self._executions(method, m.groups()), None)
        if m := JOBS.match(path):
            return self._jobs(method, m.groups(), query, body)
        if m := REVISIONS.match(path):
            return (*self._revisions(method, m.groups()), None)
        if m := SERVICES.match(path):
            return (*self._services(method, m.groups(), query, body), None)
        return (*error(404, "NOT_FOUND", f"no route {method} {path}"), None)

    # -- jobs and executions -------------------------------------------------------------------------
    def _jobs(self, method: str, groups: tuple[str, ...], query: dict[str, list[str]],
              body: dict[str, Any]) -> tuple[int, Any, dict[str, Any] | None]:
        project, location, job_id, run = groups
        parent = f"projects/{project}/locations/{location}"
        if method == "POST" and job_id is None:
            job_id = query.get("jobId", [""])[0]
            if not re.fullmatch(r"[a-z][a-z0-9-]{0,48}", job_id):
                return (*error(400, "INVALID_ARGUMENT", f"bad jobId {job_id!r}"), None)
            name = f"{parent}/jobs/{job_id}"
            if name in self.jobs:
                return (*error(409, "ALREADY_EXISTS", f"job {name} already exists"), None)
            job = {**body, "name": name, "generation": "1", "createTime": _now(), "updateTime": _now(),
                   "executionCount": 0}
            self.jobs[name] = job
            return 200, self._operation(parent, "Job", job), None
        if method == "GET" and job_id is None:
            return 200, {"jobs": [j for j in self.jobs.values() if j["name"].startswith(parent + "/")]}, None
        name = f"{parent}/jobs/{job_id}"
        job = self.jobs.get(name)
        if job is None:
            return (*error(404, "NOT_FOUND", f"job {name} not found"), None)
        if method == "GET":
            return 200, job, None
        if method == "PATCH":
            job.update({k: v for k, v in body.items() if k != "name"})
            job.update(generation=str(int(job["generation"]) + 1), updateTime=_now())
            return 200, self._operation(parent, "Job", job), None
        if method == "POST" and run:
            return self._run(parent, job, body.get("overrides") or {})
        return (*error(405, "METHOD_NOT_ALLOWED", "method not allowed"), None)

    def _run(self, parent: str, job: dict[str, Any],
             overrides: dict[str, Any]) -> tuple[int, Any, dict[str, Any] | None]:
        job["executionCount"] = int(job.get("executionCount", 0)) + 1
        short = job["name"].rsplit("/", 1)[1]
        name = f"{job['name']}/executions/{short}-{secrets.token_hex(3)[:5]}"
        template = copy.deepcopy(job.get("template", {}).get("template", {}))
        containers = template.setdefault("containers", [{}])
        for override in overrides.get("containerOverrides", []):
            container = containers[0]
            if override.get("args") or override.get("clearArgs"):
                container["args"] = list(override.get("args") or [])
            env = {e["name"]: e for e in container.get("env", [])}
            env.update({e["name"]: e for e in override.get("env", [])})
            container["env"] = list(env.values())
        if overrides.get("timeout"):
            template["timeout"] = overrides["timeout"]
        execution = {"name": name, "uid": secrets.token_hex(8), "job": short, "generation": "1",
                     "labels": dict(job.get("labels", {})), "createTime": _now(), "updateTime": _now(),
                     "taskCount": int(overrides.get("taskCount") or job.get("template", {}).get("taskCount", 1)),
                     "parallelism": 1, "template": template, "conditions": [],
                     "logUri": f"https://console.cloud.google.com/logs/viewer?execution={short}"}
        self.executions[name] = execution
        job["latestCreatedExecution"] = {"name": name, "createTime": execution["createTime"]}
        return 200, self._operation(parent, "Execution", execution, done=False), execution

    def _executions(self, method: str, groups: tuple[str, ...]) -> tuple[int, Any]:
        project, location, job_id, execution_id, cancel = groups
        job_name = f"projects/{project}/locations/{location}/jobs/{job_id}"
        if method == "GET" and execution_id is None:
            if job_id != "-" and job_name not in self.jobs:
                return error(404, "NOT_FOUND", f"job {job_name} not found")
            prefix = f"projects/{project}/locations/{location}/jobs/" + ("" if job_id == "-" else f"{job_id}/")
            found = [e for n, e in self.executions.items() if n.startswith(prefix)]
            return 200, {"executions": sorted(found, key=lambda e: e["createTime"], reverse=True)}
        name = f"{job_name}/executions/{execution_id}"
        execution = self.executions.get(name)
        if execution is None:
            return error(404, "NOT_FOUND", f"execution {name} not found")
        if method == "GET":
            return 200, execution
        if method == "POST" and cancel:
            if not execution.get("completionTime"):
                execution["conditions"] = [c for c in execution["conditions"] if c["type"] != "Completed"] + [
                    {"type": "Completed", "state": "CONDITION_PENDING", "executionReason": "CANCELLING"}]
            return 200, self._operation(f"projects/{project}/locations/{location}", "Execution", execution)
        return error(405, "METHOD_NOT_ALLOWED", "method not allowed")

    # -- services and revisions ------------------------------------------------------------------------
    def _new_revision(self, service: dict[str, Any]) -> str:
        short = service["name"].rsplit("/", 1)[1]
        generation = int(service.get("generation", "0")) + 1
        rev_id = service["template"].get("revision") or f"{short}-{generation:05d}-{secrets.token_hex(2)[:3]}"
        name = f"{service['name']}/revisions/{rev_id}"
        if name in self.revisions:
            raise KeyError(rev_id)
        self.revisions[name] = {"name": name, "service": short, "generation": "1", "createTime": _now(),
                                "containers": copy.deepcopy(service["template"].get("containers", [])),
                                "scaling": copy.deepcopy(service["template"].get("scaling", {})),
                                "maxInstanceRequestConcurrency":
                                    service["template"].get("maxInstanceRequestConcurrency", 80),
                                "serviceAccount": service["template"].get("serviceAccount", ""),
                                "labels": dict(service["template"].get("labels", {})),
                                "conditions": [{"type": "Ready", "state": "CONDITION_SUCCEEDED"}]}
        if rev_id in self.unhealthy:
            self.revisions[name]["conditions"] = [{
                "type": "Ready", "state": "CONDITION_FAILED",
                "message": "The user-provided container failed the configured startup probe checks."}]
        service["generation"] = str(generation)
        service["latestCreatedRevision"] = service["latestReadyRevision"] = name
        return rev_id

    def _traffic(self, service: dict[str, Any]) -> None:
        """Resolve LATEST targets and give each tag its own URL, as Cloud Run reports them."""
        short = service["name"].rsplit("/", 1)[1]
        base = self.service_urls.get(short, f"https://{short}-uc.a.run.app")
        statuses = []
        for target in service.get("traffic", []):
            revision = target.get("revision") or service["latestReadyRevision"].rsplit("/", 1)[1]
            status = {"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION", "revision": revision,
                      "percent": int(target.get("percent", 0))}
            if target.get("tag"):
                status.update(tag=target["tag"], uri=base.replace("://", f"://{target['tag']}---", 1))
            statuses.append(status)
        service["trafficStatuses"] = statuses
        service["uri"] = base
        service["urls"] = [base]

    def _services(self, method: str, groups: tuple[str, ...], query: dict[str, list[str]],
                  body: dict[str, Any]) -> tuple[int, Any]:
        project, location, service_id = groups
        parent = f"projects/{project}/locations/{location}"
        if method == "POST" and service_id is None:
            service_id = query.get("serviceId", [""])[0]
            name = f"{parent}/services/{service_id}"
            if name in self.services:
                return error(409, "ALREADY_EXISTS", f"service {name} already exists")
            service = {**body, "name": name, "generation": "0", "createTime": _now()}
            service.setdefault("traffic", [{"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST", "percent": 100}])
            self._new_revision(service)
            self._traffic(service)
            self.services[name] = service
            return 200, self._operation(parent, "Service", service)
        name = f"{parent}/services/{service_id}"
        service = self.services.get(name)
        if service is None:
            return error(404, "NOT_FOUND", f"service {name} not found")
        if method == "GET":
            return 200, service
        if method == "PATCH":
            template_changed = body.get("template") and body["template"] != service.get("template")
            service.update({k: v for k, v in body.items() if k != "name"})
            if template_changed:
                try:
                    self._new_revision(service)
                except KeyError as exc:
                    return error(409, "ALREADY_EXISTS", f"revision {exc.args[0]} already exists")
            missing = [t["revision"] for t in service.get("traffic", []) if t.get("revision")
                       and f"{name}/revisions/{t['revision']}" not in self.revisions]
            if missing:
                return error(400, "INVALID_ARGUMENT", f"revision {missing[0]} not found")
            self._traffic(service)
            return 200, self._operation(parent, "Service", service)
        return error(405, "METHOD_NOT_ALLOWED", "method not allowed")

    def _revisions(self, method: str, groups: tuple[str, ...]) -> tuple[int, Any]:
        project, location, service_id, revision_id = groups
        prefix = f"projects/{project}/locations/{location}/services/{service_id}/revisions/"
        if method == "GET" and revision_id is None:
            return 200, {"revisions": [r for n, r in self.revisions.items() if n.startswith(prefix)]}
        found = self.revisions.get(prefix + str(revision_id))
        return (200, found) if found and method == "GET" else error(404, "NOT_FOUND", f"revision {revision_id}")


def serve(fake: FakeCloudRun, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """Start serving `fake` in a daemon thread; `server.server_address` tells the port."""
    return serve_json(lambda r: fake.handle(r.method, r.path, r.query, r.json()), host, port)
