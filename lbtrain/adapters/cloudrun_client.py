"""The one place google-cloud-run (run_v2) clients are built (imported on first use, never at import time).

A `CLOUD_RUN_API_ENDPOINT` of `http://…` is a local fake of the Cloud Run Admin API v2 (tests, the local
stack with STAGE_BACKENDS naming cloudrun): REST transport and anonymous credentials. Anything else is the
endpoint override of the real service; empty is Google's (`run.googleapis.com`), always over REST so the
services need no gRPC channel at cold start.
"""

from __future__ import annotations

from typing import Any

from lbtrain.config import Config

# Every call carries a deadline; idempotent ones (get, list, create-or-update, cancel) retry transient
# errors. RunJob is NOT retried: a retried RunJob can start a second execution, so a failed start is left to
# the launcher's redelivery, which first looks the execution up (CloudRunBackend.find_by_name).
CALL_TIMEOUT_S = 30.0
RETRY_DEADLINE_S = 60.0


def retry() -> Any:
    """The retry policy of the idempotent Cloud Run calls: transient HTTP errors only, 60 s in all."""
    from google.api_core import exceptions as gexc
    from google.api_core import retry as gretry

    return gretry.Retry(
        predicate=gretry.if_exception_type(gexc.ServiceUnavailable, gexc.InternalServerError,
                                           gexc.TooManyRequests, gexc.DeadlineExceeded),
        initial=0.5, maximum=8.0, multiplier=2.0, timeout=RETRY_DEADLINE_S)


def _options(config: Config) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"transport": "rest"}
    endpoint = config.cloud_run_api_endpoint
    if endpoint:
        kwargs["client_options"] = {"api_endpoint": endpoint}
        if endpoint.startswith("http://"):
            from google.auth.credentials import AnonymousCredentials

            kwargs["credentials"] = AnonymousCredentials()
    return kwargs


def jobs(config: Config) -> Any:
    from google.cloud import run_v2

    return run_v2.JobsClient(**_options(config))


def executions(config: Config) -> Any:
    from google.cloud import run_v2

    return run_v2.ExecutionsClient(**_options(config))


def services(config: Config) -> Any:
    from google.cloud import run_v2

    return run_v2.ServicesClient(**_options(config))


def revisions(config: Config) -> Any:
    from google.cloud import run_v2

    return run_v2.RevisionsClient(**_options(config))


def location(config: Config) -> str:
    return f"projects/{config.project}/locations/{config.region}"
