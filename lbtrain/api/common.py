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
from lbtrain.messages import BadMessage

log = logging.getLogger("lbtrain.api")


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


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
        return error(exc.status, exc.message)

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
