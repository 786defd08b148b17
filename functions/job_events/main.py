"""Cloud Run function (CloudEvent) on the job-events topic: a job ended → next stage."""

from __future__ import annotations

from typing import Any

import functions_framework

from lbtrain.api.push import process_job_event
from lbtrain.service import bootstrap

_deps = bootstrap()


class TransientError(RuntimeError):
    """Raised so the function answers 500 and Pub/Sub redelivers."""


@functions_framework.cloud_event
def on_job_event(cloud_event: Any) -> None:
    body, status = process_job_event(_deps, cloud_event.data)
    if status >= 500:
        raise TransientError(body)
    # 4xx: the event can never be processed; acknowledging it is right (it was logged).
