"""What every HTTP entry point shares: JSON errors, request context for logs, push auth."""

from __future__ import annotations

import hmac
import io
import json
import logging
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from lbtrain import log as logmod
from lbtrain import pushauth
from lbtrain.config import Config
from lbtrain.deps import Deps
from lbtrain.errors import Busy, NotFound
from lbtrain.messages import BadMessage, is_valid_id, parse_json

log = logging.getLogger("lbtrain.api")


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def jsonable(value: Any) -> Any:
    """Firestore values → JSON (timestamps as ISO 8601 UTC)."""
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def error(status: int, message: str) -> tuple[Response, int]:
    return jsonify({"error": message}), status


BUSY_RETRY_AFTER_SECONDS = 2
MAX_HEADER_BYTES = 8 * 1024  # any one header value (Cloud Run's front allows more; nothing here needs it)
MAX_HEADERS = 100
MAX_ID_HEADER = 256  # X-Labelbox-Id, X-Labelbox-Event, Idempotency-Key


def json_body(what: str = "body") -> Any:
    """The request body as JSON, parsed once with the limits every entry point shares
    (lbtrain/messages.py: parse_json): 400 naming the problem otherwise."""
    try:
        return parse_json(request.get_data(cache=True), what=what)
    except BadMessage as exc:
        raise ApiError(400, str(exc)) from None


def id_header(name: str, limit: int = MAX_ID_HEADER) -> str:
    """A header that becomes a dedupe key or is stored: at most `limit` characters, printable ASCII."""
    value = request.headers.get(name, "")
    if len(value) > limit:
        raise ApiError(400, f"header {name} is longer than {limit} characters")
    if value and not (value.isascii() and value.isprintable()):
        raise ApiError(400, f"header {name} must be printable ASCII")
    return value


PATH_IDS = ("run_id", "stage", "project_id", "action", "model_type")


def check_path_ids(values: dict[str, Any]) -> None:
    """Ids taken from the path become Firestore document ids and file names: anything else is a 400
    before a handler reads or writes (an id like `..` or `__x__` is not even a valid document path)."""
    for name in PATH_IDS:
        value = values.get(name)
        if isinstance(value, str) and not is_valid_id(value):
            raise ApiError(400, f"{name} {value[:80]!r} is not a valid id (1-200 of A-Z a-z 0-9 . _ -, "
                                "not '.', '..' or '__…__')")


def before_cursor(value: str | None) -> str | None:
    """A list's `before` cursor is a run id (it is read as a document): 400 otherwise."""
    if not value:
        return None
    if not is_valid_id(value):
        raise ApiError(400, f"before {value[:80]!r} is not a run id")
    return value


def check_request_shape() -> None:
    """Before any handler: the raw path and query string are UTF-8, headers are bounded."""
    environ = request.environ
    for key, what in (("PATH_INFO", "path"), ("QUERY_STRING", "query string")):
        raw = environ.get(key, "")
        try:
            raw.encode("latin-1").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            raise ApiError(400, f"the request {what} is not valid UTF-8") from None
    headers = request.headers
    if len(headers) > MAX_HEADERS:
        raise ApiError(431, f"more than {MAX_HEADERS} request headers")
    for name, value in headers.items():
        if len(value) > MAX_HEADER_BYTES or len(name) > 256:
            raise ApiError(431, f"request header {name[:64]!r} is larger than {MAX_HEADER_BYTES} bytes")


class BoundedBody:
    """WSGI middleware: a streamed (chunked) request body over `limit` bytes is answered 413.

    Werkzeug applies MAX_CONTENT_LENGTH to a body without Content-Length by reading at most that
    many bytes and stopping there, so an over-limit chunked body reached the handlers silently cut
    (a webhook then failed its signature, a JSON body its parsing). Here such a body is read up to
    limit + 1 bytes first: over the limit it is a 413 and the handlers never run; within it, the
    handlers get it as a plain body with its Content-Length."""

    def __init__(self, app: Callable[..., Iterable[bytes]], limit: int):
        self.app = app
        self.limit = limit

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        from werkzeug.wsgi import get_content_length

        if environ.get("wsgi.input_terminated") and get_content_length(environ) is None:
            stream = environ["wsgi.input"]
            buf = bytearray()
            while len(buf) <= self.limit:
                chunk = stream.read(min(64 * 1024, self.limit + 1 - len(buf)))
                if not chunk:
                    break
                buf += chunk
            if len(buf) > self.limit:
                body = json.dumps({"error": f"request body is larger than {self.limit} bytes"}).encode()
                start_response("413 Request Entity Too Large", [("Content-Type", "application/json"),
                                                                ("Content-Length", str(len(body))),
                                                                ("Connection", "close")])
                return [body]
            environ["wsgi.input"] = io.BytesIO(bytes(buf))
            environ["CONTENT_LENGTH"] = str(len(buf))
            environ.pop("HTTP_TRANSFER_ENCODING", None)
            environ.pop("wsgi.input_terminated", None)
        return self.app(environ, start_response)


def install(app: Flask, deps: Deps) -> None:
    """Error handlers, per-request log context, body limits and config on the app."""
    app.config["MAX_CONTENT_LENGTH"] = deps.config.max_body_bytes
    app.wsgi_app = BoundedBody(app.wsgi_app, deps.config.max_body_bytes)  # type: ignore[method-assign]
    app.extensions["lbtrain"] = deps

    @app.url_value_preprocessor  # runs first of all, before any before_request
    def _shape(endpoint: str | None, values: dict[str, Any] | None) -> None:
        check_request_shape()
        check_path_ids(values or {})

    @app.before_request
    def _bind() -> None:
        g._log_ctx = logmod.bind(trace=logmod.trace_from_header(request.headers.get("X-Cloud-Trace-Context")))
        g._log_ctx.__enter__()

    @app.teardown_request
    def _unbind(exc: BaseException | None) -> None:
        ctx = g.pop("_log_ctx", None)
        if ctx is not None:
            ctx.__exit__(None, None, None)

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):  # noqa: ANN202
        resp, status = error(exc.status, exc.message)
        resp.headers.update(exc.headers)
        return resp, status

    @app.errorhandler(Busy)
    def _busy(exc: Busy):  # noqa: ANN202
        # Contention that outlasted the store's retries is transient, never a server error.
        log.warning("busy on %s %s: %s", request.method, request.path, exc)
        resp, status = error(503, f"busy, retry shortly: {exc}")
        resp.headers["Retry-After"] = str(BUSY_RETRY_AFTER_SECONDS)
        return resp, status

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):  # noqa: ANN202
        if exc.code == 413:
            return error(413, f"request body is larger than {deps.config.max_body_bytes} bytes")
        return error(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):  # noqa: ANN202
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error(500, f"internal error: {type(exc).__name__}")

    @app.get("/healthz")
    def healthz():  # noqa: ANN202
        return jsonify({"ok": True})


def deps_of(app: Flask) -> Deps:
    return app.extensions["lbtrain"]


API_TOKEN_HEADER = "X-API-Token"


def require_token(config: Config) -> None:
    """REST API and dashboard actions: `Authorization: Bearer $API_TOKEN` or `X-API-Token: $API_TOKEN`,
    compared in constant time. The second form is for callers whose Authorization header belongs to
    Google (the dashboard behind IAP or Cloud Run IAM)."""
    if not config.api_token:
        raise ApiError(401, "the REST API is disabled: API_TOKEN is not configured on the server")
    token = request.headers.get(API_TOKEN_HEADER, "")
    if not token:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            token = ""
    if not token:
        raise ApiError(401, f"missing 'Authorization: Bearer <API_TOKEN>' or '{API_TOKEN_HEADER}' header")
    if not hmac.compare_digest(token.strip().encode(), config.api_token.encode()):
        raise ApiError(401, "invalid API token")


def verify_push(config: Config) -> dict[str, Any]:
    """Refuse a push request whose caller is not the push service account (lbtrain/pushauth.py:
    PUSH_AUTH=none locally, cloudrun-iam behind Cloud Run IAM, oidc on the public ingress)."""
    try:
        return pushauth.verify(config, request.headers)
    except pushauth.PushAuthError as exc:
        raise ApiError(exc.status, exc.message) from None


def push_handler(fn: Callable[[Deps, Any], str]) -> Callable[[Deps, Any], tuple[str, int]]:
    """Map a push handler's outcome to Pub/Sub's ack semantics (docs/architecture.md §5):
    204 done or duplicate; 400 never succeeds (→ dead letter); 503 transient (redelivered)."""
    def wrapped(deps: Deps, envelope: Any) -> tuple[str, int]:
        try:
            outcome = fn(deps, envelope)
        except BadMessage as exc:
            log.error("bad message, will not retry: %s", exc)
            return f"bad message: {exc}", 400
        except NotFound as exc:
            log.error("message for unknown run or step %s", exc)
            return f"unknown run or step: {exc}", 400
        except Busy as exc:
            log.info("busy, retry later: %s", exc)
            return f"busy: {exc}", 503
        log.debug(outcome)
        return "", 204

    return wrapped
