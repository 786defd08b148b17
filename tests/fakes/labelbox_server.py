"""A local fake of the Labelbox API, for the real `labelbox.Client` (SDK 7.x) pointed at it.

Answers only the GraphQL operations lbtrain's SDK adapter causes (by operation name, on
`/graphql` and the experimental `/_gql`), serves the export files and the prediction
import's status/error files at URLs it hands out itself, records every request, and can
fail the next call of an operation on command (`fail`). For retraining rules it also holds models,
projects (Export v2 *project* rows, labels under `projects`) and their webhooks: a model run
created under a model gets the project's labeled rows when `upsert_labels` runs, and its
export shows each row with the split assigned to it. For the prelabel step a project's rows still
to label are exported (`workflow_status: ToLabel`), its MAL imports are kept by name (a second
create of a name is refused: RESOURCE_CONFLICT) and its queue priorities by data row.
Operations can be made slow (`slow`, a big project) or held until the test lets them go
(`hold`). The query texts the SDK sends are recorded per operation, so tests can compare them
with the golden copies in
tests/data/labelbox_sdk/ (see docs/architecture.md §13).
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

OPERATION = re.compile(r"^\s*(?:query|mutation)\s+(\w+)")
FILE = re.compile(r"^/files/([^/]+)/(RESULT|ERRORS)/(\d+)-(\d+)$")
IMPORT_FILE = re.compile(r"^/imports/([^/]+)/(errors|statuses|inputs)$")
USER_ID = "user-fake"
PAGE = re.compile(r"\(skip: (\d+) first: (\d+)\)")
# Operations the SDK marks experimental: sent to /_gql, refused on /graphql as the real API would.
EXPERIMENTAL = {"setPipelineStatusPyApi", "assignDataSplitPyApi", "assignDataRowsToDataSplitTaskStatusPyApi"}
# Webhook.create / update inline their values in the query text (no GraphQL variables).
WEBHOOK_CREATE = re.compile(r'createWebhook\(data:\{(?:project:\{id:"(?P<project>[^"]*)"\},)? '
                            r'topics:\{set:\[(?P<topics>[^\]]*)\]\}, '
                            r'url:"(?P<url>[^"]*)", secret:"(?P<secret>[^"]*)" \}\)')
WEBHOOK_UPDATE = re.compile(r'updateWebhook\(where: \{id: "(?P<id>[^"]*)"\} data:\{(?P<data>[^}]*(?:\}[^}]*)?)\}\)')


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())


def _ndjson(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


@dataclass
class Request:
    path: str
    operation: str
    query: str
    variables: dict[str, Any]
    headers: dict[str, str]
    files: dict[str, bytes] = field(default_factory=dict)


@dataclass
class ModelRun:
    rows: list[dict[str, Any]] = field(default_factory=list)
    export_errors: list[dict[str, Any]] = field(default_factory=list)
    export_status: str = "COMPLETE"  # what the export task ends in (COMPLETE or FAILED)
    export_polls_in_progress: int = 0  # task refreshes answered IN_PROGRESS first (each costs the SDK 2 s)
    # Prediction rows rejected by the import, by their 0-based index in each upload, with the message.
    reject_rows: dict[int, str] = field(default_factory=dict)
    import_polls_running: int = 0  # import refreshes answered RUNNING before FINISHED (0: done at once)
    model_id: str = "model-fake"
    name: str = ""
    # Created by the SDK (create_model_run): data rows added by upsert_labels, by id, in project-row
    # shape; the export is generated from them and the splits assigned so far.
    created: bool = False
    members: dict[str, dict[str, Any]] = field(default_factory=dict)
    project_id: str = ""
    splits: dict[str, str] = field(default_factory=dict)  # data row id -> TRAINING/VALIDATION/TEST
    created_at: str = field(default_factory=lambda: _now())

    def export_rows(self, model_run_id: str) -> list[dict[str, Any]]:
        if not self.created:
            return self.rows
        out = []
        for data_row_id, row in self.members.items():
            labels = ((row.get("projects") or {}).get(self.project_id) or {}).get("labels") or []
            run: dict[str, Any] = {"name": self.name, "labels": labels, "predictions": []}
            if data_row_id in self.splits:
                run["split"] = self.splits[data_row_id].lower()
            exported = {k: v for k, v in row.items() if k != "projects"}
            exported["experiments"] = {self.model_id: {"name": self.model_id, "runs": {model_run_id: run}}}
            out.append(exported)
        return out


@dataclass
class Project:
    """A Labelbox project: Export v2 project rows (`projects.<id>.labels`), the labeled ones count."""
    rows: list[dict[str, Any]] = field(default_factory=list)
    name: str = "fake project"
    # Workflow step per data row id (ToLabel, InReview, InRework, Done); unset: ToLabel when the row
    # has no label, else Done.
    workflow: dict[str, str] = field(default_factory=dict)
    imports: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # MAL import name -> its rows
    priorities: dict[str, int] = field(default_factory=dict)  # data row id -> labeling-queue priority
    reject_rows: dict[int, str] = field(default_factory=dict)  # MAL rows rejected, by index in each import
    import_polls_running: int = 0  # MAL import refreshes answered RUNNING first

    def step(self, row: dict[str, Any], project_id: str) -> str:
        labels = ((row.get("projects") or {}).get(project_id) or {}).get("labels")
        return self.workflow.get(row["data_row"]["id"], "Done" if labels else "ToLabel")


class GraphQLError(Exception):
    """Answered as `{"errors": [{"message", "extensions": {"code"}}]}` (HTTP 200), as Labelbox does."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


@dataclass
class FakeLabelbox:
    model_runs: dict[str, ModelRun] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    statuses: list[dict[str, Any]] = field(default_factory=list)  # {model_run_id, status, metadata, errorMessage}
    uploads: list[dict[str, Any]] = field(default_factory=list)  # {model_run_id, name, rows, file_name}
    mal_uploads: list[dict[str, Any]] = field(default_factory=list)  # {project_id, name, rows, file_name}
    exports: list[dict[str, Any]] = field(default_factory=list)  # the export mutation's input
    models: dict[str, str] = field(default_factory=dict)  # model id -> name
    projects: dict[str, Project] = field(default_factory=dict)
    webhooks: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> {project_id, url, topics, secret, status}
    created_model_runs: list[dict[str, Any]] = field(default_factory=list)  # CreateModelRun inputs
    label_registrations: list[dict[str, Any]] = field(default_factory=list)  # {model_run_id, project_id}
    split_assignments: list[dict[str, Any]] = field(default_factory=list)  # {model_run_id, split, data_row_ids}
    label_task_status: str = "COMPLETE"  # what upsert_labels' task reports (COMPLETE or FAILED)
    priority_task_status: str = "COMPLETE"  # what a queue-priority update task ends in
    # An unknown MAL import name: `null` data (False) or a RESOURCE_NOT_FOUND error (True).
    mal_not_found_error: bool = False
    chunk_lines: int = 3  # lines per export file the stream fetches
    # A big project: operation -> seconds each call is answered late (label upsert, export, …).
    slow: dict[str, float] = field(default_factory=dict)
    # operation -> event its calls wait for (recorded first), so a test can hold Labelbox mid-way.
    gates: dict[str, threading.Event] = field(default_factory=dict)
    base_url: str = ""
    _tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    _imports: dict[str, dict[str, Any]] = field(default_factory=dict)
    _failures: list[list[Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- test controls ---------------------------------------------------------------
    def add_model_run(self, model_run_id: str, rows: list[dict[str, Any]], **kwargs: Any) -> ModelRun:
        self.model_runs[model_run_id] = ModelRun(rows=list(rows), **kwargs)
        return self.model_runs[model_run_id]

    def add_model(self, model_id: str, name: str = "fake model") -> None:
        self.models[model_id] = name

    def add_project(self, project_id: str, rows: list[dict[str, Any]], name: str = "fake project") -> Project:
        self.projects[project_id] = Project(rows=list(rows), name=name)
        return self.projects[project_id]

    def model_runs_of(self, model_id: str) -> dict[str, ModelRun]:
        return {k: r for k, r in self.model_runs.items() if r.model_id == model_id and r.created}

    def fail(self, operation: str, status: int = 429, *, times: int = 1, body: Any = None,
             after: bool = False) -> None:
        """Answer the next `times` calls of `operation` (GraphQL name, or `GET /files` etc.) with `status`;
        status 0 drops the connection without an answer. `after`: carry the operation out first (a
        lost answer)."""
        if body is None:
            body = {"message": "You have exceeded the rate limit"} if status == 429 else {"message": "boom"}
        self._failures.append([operation, status, times, body, after])

    def hold(self, operation: str) -> threading.Event:
        """Calls of `operation` wait (after being recorded) until the returned event is set."""
        self.gates[operation] = threading.Event()
        return self.gates[operation]

    def operations(self) -> list[str]:
        return [r.operation for r in self.requests]

    def queries(self) -> dict[str, str]:
        """The last query text seen per operation name."""
        return {r.operation: r.query for r in self.requests if r.query}

    # -- dispatch --------------------------------------------------------------------
    def _injected(self, operation: str) -> tuple[int, Any] | None:
        with self._lock:
            for failure in self._failures:
                if failure[0] == operation and failure[2] > 0:
                    failure[2] -= 1
                    return failure[1], failure[3], failure[4]
        return None

    def handle_post(self, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, Any]:
        if path not in ("/graphql", "/_gql"):
            return 404, {"message": f"no route {path}"}
        files: dict[str, bytes] = {}
        if headers.get("content-type", "").startswith("multipart/form-data"):
            body, files = _parse_multipart(headers["content-type"], raw)
        else:
            body = json.loads(raw)
        query = body.get("query") or ""
        match = OPERATION.match(query)
        operation = match.group(1) if match else ""
        variables = body.get("variables") or {}
        self.requests.append(Request(path, operation, query, variables, headers, files))
        gate = self.gates.get(operation)
        if gate is not None:
            gate.wait(timeout=120)
        if self.slow.get(operation):
            time.sleep(self.slow[operation])
        injected = self._injected(operation)
        if injected and not injected[2]:
            return injected[:2]
        handler = getattr(self, f"_op_{operation}", None)
        if handler is None:
            return 200, {"errors": [{"message": f"fake: unknown operation {operation!r}",
                                     "extensions": {"code": "GRAPHQL_VALIDATION_FAILED"}}]}
        if operation in EXPERIMENTAL and path != "/_gql":
            return 200, {"errors": [{"message": "experimental operation on /graphql",
                                     "extensions": {"code": "GRAPHQL_VALIDATION_FAILED"}}]}
        try:
            if "query" in handler.__code__.co_varnames[: handler.__code__.co_argcount]:
                data = handler(variables, files, query)
            else:
                data = handler(variables, files)
        except GraphQLError as exc:
            return injected[:2] if injected else (200, {"data": None, "errors": [
                {"message": exc.message, "extensions": {"code": exc.code}}]})
        return injected[:2] if injected else (200, {"data": data})

    def handle_get(self, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
        self.requests.append(Request(path, f"GET {path.split('/')[1]}", "", {}, headers))
        injected = self._injected(f"GET /{path.split('/')[1]}")
        if injected:
            return injected[0], json.dumps(injected[1]).encode()  # (`after` means nothing for a GET)
        m = FILE.match(path)
        if m:
            task = self._tasks.get(m.group(1))
            if task is None:
                return 404, b"no such task"
            data = task[m.group(2)]
            return 200, data[int(m.group(3)): int(m.group(4)) + 1]
        m = IMPORT_FILE.match(path)
        if m and m.group(1) in self._imports:
            return 200, _ndjson(self._imports[m.group(1)][m.group(2)])
        return 404, b"not found"

    # -- operations ------------------------------------------------------------------
    def _model_run_json(self, run_id: str) -> dict[str, Any]:
        run = self.model_runs[run_id]
        return {"id": run_id, "name": run.name or f"run {run_id}", "modelId": run.model_id,
                "createdAt": run.created_at, "updatedAt": _now(), "createdBy": USER_ID, "modelAppId": None,
                "trainingMetadata": None}

    def _op_GetModelRunPyApi(self, v: dict[str, Any], _: Any) -> dict[str, Any]:  # noqa: N802
        run_id = v["param_0"]
        return {"modelRun": self._model_run_json(run_id) if run_id in self.model_runs else None}

    # -- models, projects, model runs made from projects ---------------------------------
    def _op_GetModelPyApi(self, v: dict[str, Any], _: Any) -> dict[str, Any]:  # noqa: N802
        model_id = v["param_0"]
        if model_id not in self.models:
            return {"model": None}
        return {"model": {"id": model_id, "name": self.models[model_id], "ontologyId": "ontology-fake"}}

    def _op_GetProjectPyApi(self, v: dict[str, Any], _: Any) -> dict[str, Any]:  # noqa: N802
        if v["param_0"] not in self.projects:
            return {"project": None}
        return {"project": self._project_json(v["param_0"])}

    def _project_json(self, project_id: str) -> dict[str, Any]:
        project = self.projects[project_id]
        return {
            "id": project_id, "name": project.name, "description": "", "createdAt": _now(), "updatedAt": _now(),
            "setupComplete": _now(), "lastActivityTime": _now(), "autoAuditNumberOfLabels": 1,
            "autoAuditPercentage": 1.0, "allowedMediaType": "TEXT", "editorTaskType": None,
            "dataRowCount": len(project.rows), "modelSetupComplete": False, "uploadType": None,
            "isBenchmarkEnabled": False, "isConsensusEnabled": False}

    def _page(self, items: list[Any], query: str) -> list[Any]:
        skip, first = (int(x) for x in PAGE.search(query).groups())
        return items[skip: skip + first]

    def _op_GetModelModelRunsPyApi(self, v: dict[str, Any], _: Any, query: str) -> dict[str, Any]:  # noqa: N802
        if v["param_0"] not in self.models:
            return {"model": None}
        runs = [self._model_run_json(r) for r in self.model_runs_of(v["param_0"])]
        return {"model": {"modelRuns": self._page(runs, query)}}

    def _op_CreateModelRunPyApi(self, v: dict[str, Any], _: Any) -> dict[str, Any]:  # noqa: N802
        self.created_model_runs.append(dict(v))
        run_id = f"mr-{uuid.uuid4().hex[:12]}"
        self.model_runs[run_id] = ModelRun(model_id=v["modelId"], name=v["name"], created=True)
        return {"createModelRun": self._model_run_json(run_id)}

    def _op_createMEAModelRunProjectLabelRegistrationTaskPyApi(self, v: dict[str, Any], _: Any) -> dict[str, Any]:  # noqa: N802
        run, project = self.model_runs[v["modelRunId"]], self.projects[v["projectId"]]
        self.label_registrations.append({"model_run_id": v["modelRunId"], "project_id": v["projectId"]})
        run.project_id = v["projectId"]
        for row in project.rows:  # upsert: labeled data rows join (again), nothing leaves
            if ((row.get("projects") or {}).get(v["projectId"]) or {}).get("labels"):
                run.members[row["data_row"]["id"]] = row
        task_id = f"task-{uuid.uuid4().hex[:12]}"
        return {"createMEAModelRunProjectLabelRegistrationTask": task_id}

    def _op_MEALabelRegistrationTaskStatusPyApi(self, v: dict[str, Any], _: Any) -> dict[str, Any]:  # noqa: N802
        message = "labels could not be registered" if self.label_task_status == "FAILED" else None
        return {"MEALabelRegistrationTaskStatus": {"status": self.label_task_status, "errorMessage": message}}

    def _op_assignDataSplitPyApi(self, v: dict[str, Any], _: Any) -> dict[str, Any]:  # noqa: N802
        run = self.model_runs[v["modelRunId"]]
        for assignment in v["data"]["assignments"]:
            ids = assignment.get("dataRowIds") or []
            self.split_assignments.append({"model_run_id": v["modelRunId"], "split": assignment["split"],
                                           "data_row_ids": list(ids)})
            for data_row_id in ids:
                if data_row_id in run.members:
                    run.splits[data_row_id] = assignment["split"]
        return {"createAssignDataRowsToDataSplitTask": f"task-{uuid.uuid4().hex[:12]}"}

    def _op_assignDataRowsToDataSplitTaskStatusPyApi(self, v: dict[str, Any], _: Any) -> dict[str, Any]:  # noqa: N802
        return {"assignDataRowsToDataSplitTaskStatus": {"status": "COMPLETE", "errorMessage": None}}

    # -- webhooks ----------------------------------------------------------------------
    def _webhook_json(self, hook_id: str) -> dict[str, Any]:
        hook = self.webhooks[hook_id]
        return {"id": hook_id, "url": hook["url"], "topics": list(hook["topics"]), "status": hook["status"],
                "createdAt": hook["createdAt"], "updatedAt": hook["updatedAt"]}

    def _op_GetProjectWebhooksPyApi(self, v: dict[str, Any], _: Any, query: str) -> dict[str, Any]:  # noqa: N802
        if v["param_0"] not in self.projects:
            return {"project": None}
        hooks = [self._webhook_json(k) for k, h in self.webhooks.items() if h["project_id"] == v["param_0"]]
        return {"project": {"webhooks": self._page(hooks, query)}}

    def _op_CreateWebhookPyApi(self, v: dict[str, Any], _: Any, query: str) -> dict[str, Any]:  # noqa: N802
        m = WEBHOOK_CREATE.search(query)
        hook_id = f"wh-{uuid.uuid4().hex[:12]}"
        self.webhooks[hook_id] = {"project_id": m.group("project"), "url": m.group("url"),
                                  "topics": m.group("topics").split(), "secret": m.group("secret"),
                                  "status": "ACTIVE", "createdAt": _now(), "updatedAt": _now()}
        return {"createWebhook": self._webhook_json(hook_id)}

    def _op_UpdateWebhookPyApi(self, v: dict[str, Any], _: Any, query: str) -> dict[str, Any]:  # noqa: N802
        m = WEBHOOK_UPDATE.search(query)
        hook, data = self.webhooks[m.group("id")], m.group("data")
        topics = re.search(r"topics: \{set: \[([^\]]*)\]\}", data)
        url = re.search(r'url: "([^"]*)"', data)
        status = re.search(r"status: (\w+)", data)
        if topics:
            hook["topics"] = topics.group(1).split()
        if url:
            hook["url"] = url.group(1)
        if status:
            hook["status"] = status.group(1)
        hook["updatedAt"] = _now()
        return {"updateWebhook": self._webhook_json(m.group("id"))}

    def _op_setPipelineStatusPyApi(self, v: dict[str, Any], _: Any) -> dict[str, Any]:  # noqa: N802
        data = v["data"]
        self.statuses.append({"model_run_id": v["modelRunId"], "status": data["status"],
                              "metadata": data.get("metadata"), "errorMessage": data.get("errorMessage")})
        return {"updateTrainingPipeline": {"status": data["status"]}}

    def _op_GetUserPyApi(self, v: dict[str, Any], _: Any) -> dict[str, Any]:  # noqa: N802
        return {"user": {"id": USER_ID, "email": "fake@example.com", "isExternalUser": False, "isViewer": False,
                         "lastLoginAt": _now(), "nickname": "fake", "name": "fake", "picture": "",
                         "createdAt": _now(), "updatedAt": _now()}}

    def _op_exportDataRowsInModelRunPyApi(self, v: dict[str, Any], _: Any) -> dict[str, Any]:  # noqa: N802
        inp = v["input"]
        self.exports.append(inp)
        run = self.model_runs[inp["filters"]["modelRunId"]]
        rows = run.export_rows(inp["filters"]["modelRunId"])
        task_id = f"task-{uuid.uuid4().hex[:12]}"
        self._tasks[task_id] = {"run": run, "polls": run.export_polls_in_progress, "RESULT": _ndjson(rows),
                                "ERRORS": _ndjson(run.export_errors), "RESULT_lines": len(rows),
                                "ERRORS_lines": len(run.export_errors)}
        return {"exportDataRowsInModelRun": {"taskId": task_id, "isStreamable": True}}

    def _op_GetUserCreatedTasksPyApi(self, v: dict[str, Any], _: Any) -> dict[str, Any]:  # noqa: N802
        task_id = v["param_0"]
        task = self._tasks.get(task_id)
        if task is None:
            return {"user": {"createdTasks": []}}
        if task["polls"] > 0:
            task["polls"] -= 1
            status = "IN_PROGRESS"
        else:
            status = task["run"].export_status if "run" in task else task["final"]
        return {"user": {"createdTasks": [
            {"id": task_id, "name": task.get("name", "lbtrain export"), "status": status,
             "type": task.get("type", "export-data-rows"),
             "completionPercentage": 100.0 if status != "IN_PROGRESS" else 50.0, "createdAt": _now(),
             "updatedAt": _now(), "errors": None, "result": None, "metadata": None}]}}

    # -- the prelabel step: rows to label, MAL imports, queue priorities --------------------
    def _op_exportDataRowsInProjectPyApi(self, v: dict[str, Any], _: Any) -> dict[str, Any]:  # noqa: N802
        inp = v["input"]
        self.exports.append(inp)
        project_id = inp["filters"]["projectId"]
        project = self.projects[project_id]
        rows = project.rows
        for term in inp["filters"]["searchQuery"]["query"]:
            if term == {"type": "task_queue_not_exist"}:
                rows = [r for r in rows if project.step(r, project_id) == "ToLabel"]
            elif term.get("type") == "task_queue_status":
                rows = [r for r in rows if project.step(r, project_id) == term["status"]]
            else:
                raise GraphQLError("MALFORMED_REQUEST", f"fake: unsupported export filter {term}")
        task_id = f"task-{uuid.uuid4().hex[:12]}"
        self._tasks[task_id] = {"final": "COMPLETE", "polls": 0, "RESULT": _ndjson(rows), "ERRORS": b"",
                                "RESULT_lines": len(rows), "ERRORS_lines": 0}
        return {"exportDataRowsInProject": {"taskId": task_id, "isStreamable": True}}

    def _op_createMALPredictionImportByFilePyApi(self, v: dict[str, Any], files: dict[str, bytes]) -> dict[str, Any]:  # noqa: N802
        project_id, name = v["projectId"], v["name"]
        project = self.projects[project_id]
        if name in project.imports:
            raise GraphQLError("RESOURCE_CONFLICT", f"An import named {name!r} already exists in this project")
        (file_name, payload), = files.items()
        rows = [json.loads(line) for line in payload.decode().splitlines() if line.strip()]
        import_id = f"mal-{uuid.uuid4().hex[:12]}"
        statuses, errors = [], []
        for i, row in enumerate(rows):
            status = {"uuid": row.get("uuid"), "dataRow": row.get("dataRow"), "status": "SUCCESS"}
            if i in project.reject_rows:
                status = {**status, "status": "FAILURE",
                          "errors": [{"name": "ValidationError", "message": project.reject_rows[i]}]}
                errors.append(status)
            statuses.append(status)
        project.imports[name] = rows
        self.mal_uploads.append({"project_id": project_id, "name": name, "rows": rows, "file_name": file_name,
                             "content_length": v["contentLength"]})
        self._imports[import_id] = {"name": name, "project_id": project_id, "polls": project.import_polls_running,
                                    "errors": errors, "statuses": statuses, "inputs": rows}
        state = "RUNNING" if project.import_polls_running else "FINISHED"
        return {"createModelAssistedLabelingPredictionImport": self._import_json(import_id, state)}

    def _op_getModelAssistedLabelingPredictionImportPyApi(self, v: dict[str, Any], _: Any) -> dict[str, Any]:  # noqa: N802
        for import_id, imp in self._imports.items():
            if imp.get("project_id") == v["projectId"] and imp["name"] == v["name"]:
                state = "FINISHED"
                if imp["polls"] > 0:
                    imp["polls"] -= 1
                    state = "RUNNING"
                return {"modelAssistedLabelingPredictionImport": self._import_json(import_id, state)}
        if self.mal_not_found_error:
            raise GraphQLError("RESOURCE_NOT_FOUND", "ModelAssistedLabelingPredictionImport not found")
        return {"modelAssistedLabelingPredictionImport": None}

    def _op_createQueuePriorityUpdateTaskPyApi(self, v: dict[str, Any], _: Any) -> dict[str, Any]:  # noqa: N802
        project = self.projects.get(v["projectId"])
        if project is None:
            raise GraphQLError("RESOURCE_NOT_FOUND", "Project not found")
        identifiers = v["dataRowIdentifiers"]
        if identifiers["idType"] != "ID":
            raise GraphQLError("MALFORMED_REQUEST", f"fake: idType {identifiers['idType']} not supported")
        priority = int(v["priority"])
        project.priorities.update(dict.fromkeys(identifiers["ids"], priority))
        task_id = f"task-{uuid.uuid4().hex[:12]}"
        self._tasks[task_id] = {"final": self.priority_task_status, "polls": 0, "type": "queue-priority-update",
                                "name": "Queue priority update"}
        return {"project": {"createQueuePriorityUpdateTask": {"taskId": task_id}}}

    def _op_GetExportMetadataHeaderPyApi(self, v: dict[str, Any], _: Any) -> dict[str, Any]:  # noqa: N802
        task = self._tasks[v["where"]["id"]]
        stream = v["streamType"]
        if not task[stream]:
            return {"task": {"exportMetadataHeader": None}}
        return {"task": {"exportMetadataHeader": {"totalSize": len(task[stream]),
                                                  "totalLines": task[f"{stream}_lines"]}}}

    def _op_GetExportFileFromOffsetPyApi(self, v: dict[str, Any], _: Any) -> dict[str, Any]:  # noqa: N802
        task_id, stream, offset = v["where"]["id"], v["streamType"], int(v["offset"])
        data: bytes = self._tasks[task_id][stream]
        first_line = data[:offset].count(b"\n")
        end, lines = offset, 0
        while end < len(data) and lines < self.chunk_lines:
            end = data.index(b"\n", end) + 1
            lines += 1
        return {"task": {"exportFileFromOffset": {
            "offsets": {"start": offset, "end": end - 1},
            "lines": {"start": first_line, "end": first_line + lines - 1},
            "file": f"{self.base_url}/files/{task_id}/{stream}/{offset}-{end - 1}"}}}

    def _op_createMEAPredictionImportByFilePyApi(self, v: dict[str, Any], files: dict[str, bytes]) -> dict[str, Any]:  # noqa: N802
        run = self.model_runs[v["modelRunId"]]
        (file_name, payload), = files.items()
        rows = [json.loads(line) for line in payload.decode().splitlines() if line.strip()]
        import_id = f"imp-{uuid.uuid4().hex[:12]}"
        statuses, errors = [], []
        for i, row in enumerate(rows):
            status = {"uuid": row.get("uuid", f"{import_id}-{i}"), "dataRow": row.get("dataRow"),
                      "status": "SUCCESS"}
            if i in run.reject_rows:
                status = {**status, "status": "FAILURE",
                          "errors": [{"name": "ValidationError", "message": run.reject_rows[i]}]}
                errors.append(status)
            statuses.append(status)
        self.uploads.append({"model_run_id": v["modelRunId"], "name": v["name"], "rows": rows,
                             "file_name": file_name, "content_length": v["contentLength"]})
        self._imports[import_id] = {"name": v["name"], "model_run_id": v["modelRunId"], "polls":
                                    run.import_polls_running, "errors": errors, "statuses": statuses,
                                    "inputs": rows}
        state = "RUNNING" if run.import_polls_running else "FINISHED"
        return {"createModelErrorAnalysisPredictionImport": self._import_json(import_id, state)}

    def _op_getModelErrorAnalysisPredictionImportPyApi(self, v: dict[str, Any], _: Any) -> dict[str, Any]:  # noqa: N802
        for import_id, imp in self._imports.items():
            if imp["model_run_id"] == v["modelRunId"] and imp["name"] == v["name"]:
                if imp["polls"] > 0:
                    imp["polls"] -= 1
                    return {"modelErrorAnalysisPredictionImport": self._import_json(import_id, "RUNNING")}
                return {"modelErrorAnalysisPredictionImport": self._import_json(import_id, "FINISHED")}
        return {"modelErrorAnalysisPredictionImport": None}

    def _import_json(self, import_id: str, state: str) -> dict[str, Any]:
        imp = self._imports[import_id]
        base = f"{self.base_url}/imports/{import_id}"
        parent = ({"project": self._project_json(imp["project_id"])} if "project_id" in imp
                  else {"modelRunId": imp["model_run_id"]})
        return {"id": import_id, "name": imp["name"], **parent, "state": state,
                "progress": "100%" if state == "FINISHED" else "0%", "inputFileUrl": f"{base}/inputs",
                "errorFileUrl": f"{base}/errors", "statusFileUrl": f"{base}/statuses"}


def _parse_multipart(content_type: str, raw: bytes) -> tuple[dict[str, Any], dict[str, bytes]]:
    """GraphQL multipart request: `operations` (the query), `map`, then the file parts."""
    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw)
    body: dict[str, Any] = {}
    files: dict[str, bytes] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        if name == "operations":
            body = json.loads(payload)
        elif name != "map":
            files[part.get_filename() or name] = payload
    return body, files


def serve(fake: FakeLabelbox, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """Start serving `fake` in a daemon thread; sets `fake.base_url`. Endpoint: `{base_url}/graphql`."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out as separate writes

        def _send(self, status: int, data: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:  # noqa: N802
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, answer = fake.handle_post(self.path, headers, raw)
            if status == 0:  # an injected dropped connection
                self.close_connection = True
                return
            data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
            self._send(status, data, "application/json")

        def do_GET(self) -> None:  # noqa: N802
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, data = fake.handle_get(self.path, headers)
            self._send(status, data, "application/octet-stream")

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    fake.base_url = f"http://{host}:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server
