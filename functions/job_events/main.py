"""Cloud Run function (CloudEvent) on the job-events topic: a job ended → next stage."""

from __future__ import annotations

from typing import Any

import flask
import functions_framework

from lbtrain import pushauth
from lbtrain.api.push import process_job_event
from lbtrain.messages import BadMessage, parse_json
from lbtrain.service import bootstrap

_deps = bootstrap()


def _refuse_unparseable_body() -> None:
    """Before functions-framework parses the body into a CloudEvent (which answers 500 to a body that is
    not UTF-8 and recurses on deep nesting): every body here is JSON, under the shared limits."""
    try:
        parse_json(flask.request.get_data(cache=True), what="push body")
    except BadMessage as exc:
        flask.abort(400, str(exc))


if flask.has_app_context():  # functions-framework executes this module inside its app's context
    flask.current_app.before_request(_refuse_unparseable_body)


class TransientError(RuntimeError):
    """Raised so the function answers 500 and Pub/Sub redelivers."""


@functions_framework.cloud_event
def on_job_event(cloud_event: Any) -> None:
    try:  # who pushed (PUSH_AUTH=cloudrun-iam in the cloud): the CloudEvent has no headers, the request does
        pushauth.verify(_deps.config, flask.request.headers)
    except pushauth.PushAuthError as exc:
        flask.abort(exc.status, exc.message)
    body, status = process_job_event(_deps, cloud_event.data)
    if status >= 500:
        raise TransientError(body)
    # 4xx: the event can never be processed; acknowledging it is right (it was logged).
