"""Cloud Run function called by Cloud Scheduler every few minutes: re-drives lost steps."""

from __future__ import annotations

from typing import Any

import functions_framework

from lbtrain import pushauth
from lbtrain.reconcile import reconcile_once
from lbtrain.service import bootstrap

_deps = bootstrap()


@functions_framework.http
def reconcile(request: Any) -> tuple[dict[str, Any], int]:
    try:  # Scheduler signs as the push service account (PUSH_AUTH=cloudrun-iam in the cloud)
        pushauth.verify(_deps.config, request.headers)
    except pushauth.PushAuthError as exc:
        return {"error": exc.message}, exc.status
    actions = reconcile_once(_deps)
    return {"actions": actions}, 200
