"""Cloud Run function called by Cloud Scheduler every few minutes: re-drives lost steps."""

from __future__ import annotations

from typing import Any

import functions_framework

from lbtrain.reconcile import reconcile_once
from lbtrain.service import bootstrap

_deps = bootstrap()


@functions_framework.http
def reconcile(request: Any) -> tuple[dict[str, Any], int]:
    actions = reconcile_once(_deps)
    return {"actions": actions}, 200
