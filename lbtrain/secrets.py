"""Secret values read from Secret Manager at run time, by resource name (never by value in the env).

Vertex AI jobs get no secret mounts: the launcher passes `LABELBOX_API_KEY_SECRET`
(`projects/P/secrets/S/versions/V`) and the job reads the value here, once per process, with
its own service account. Without a secret name the value from the environment is used as is (the
local stack). google-cloud-secret-manager is imported on first use only (cold starts).

A `SECRET_MANAGER_API_ENDPOINT` of `http://…` is a local fake of the REST API (tests): REST
transport and anonymous credentials, as lbtrain/adapters/vertex_client.py does for Vertex.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from lbtrain.config import Config, secret_version

# Per attempt, and for all attempts of one access together.
ACCESS_TIMEOUT_SECONDS = 10.0
RETRY_DEADLINE_SECONDS = 60.0

_lock = threading.Lock()
_values: dict[tuple[str, str], str] = {}
_clients: dict[str, Any] = {}


class SecretError(RuntimeError):
    """A secret could not be read. The message names the secret's resource, never a value."""


def _client(endpoint: str) -> Any:
    try:
        from google.cloud import secretmanager
    except ImportError:
        raise SecretError("google-cloud-secret-manager is not installed: an image that reads secrets "
                          "needs lbtrain[secrets]") from None

    with _lock:
        client = _clients.get(endpoint)
        if client is None:
            # The client's DEBUG records carry response payloads, base64 (which lbtrain.log cannot scrub).
            sm_logger = logging.getLogger("google.cloud.secretmanager_v1")
            sm_logger.setLevel(max(sm_logger.getEffectiveLevel(), logging.INFO))
            kwargs: dict[str, Any] = {}
            if endpoint:
                kwargs["client_options"] = {"api_endpoint": endpoint}
                if endpoint.startswith("http://"):
                    from google.auth.credentials import AnonymousCredentials

                    kwargs.update(transport="rest", credentials=AnonymousCredentials())
            client = _clients[endpoint] = secretmanager.SecretManagerServiceClient(**kwargs)
    return client


def _transient(exc: BaseException) -> bool:
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as auth_exc

    return isinstance(exc, gexc.ServiceUnavailable | gexc.InternalServerError | gexc.DeadlineExceeded
                      | gexc.TooManyRequests | gexc.ResourceExhausted | auth_exc.TransportError
                      | OSError)  # OSError: requests' ConnectionError / Timeout under REST


def access(name: str, *, endpoint: str = "", timeout: float = ACCESS_TIMEOUT_SECONDS,
           deadline: float = RETRY_DEADLINE_SECONDS, initial_backoff: float = 0.5) -> str:
    """The text of secret version `name`, read once per process (later calls answer from memory).

    Transient failures (unavailable, 5xx, 429, network) are retried with backoff for up to
    `deadline` seconds; each attempt may take `timeout`. The payload's CRC32C is verified.
    """
    try:
        name = secret_version(name, "the secret")
    except ValueError as exc:
        raise SecretError(str(exc)) from None
    key = (endpoint, name)
    with _lock:
        if key in _values:
            return _values[key]
    from google.api_core import exceptions as gexc
    from google.api_core.retry import Retry

    retry = Retry(predicate=_transient, initial=initial_backoff, maximum=8.0, multiplier=2.0, timeout=deadline)
    try:
        response = _client(endpoint).access_secret_version(name=name, retry=retry, timeout=timeout)
    except gexc.NotFound:
        raise SecretError(f"Secret Manager secret version {name} does not exist: add a version "
                          "(gcloud secrets versions add), or fix the secret's name") from None
    except gexc.FailedPrecondition:
        raise SecretError(f"Secret Manager secret version {name} is disabled or destroyed") from None
    except (gexc.Forbidden, gexc.Unauthorized):  # PermissionDenied, Unauthenticated are subclasses
        raise SecretError(f"permission denied reading Secret Manager secret {name}: the job's service account "
                          "needs roles/secretmanager.secretAccessor on it") from None
    except gexc.RetryError as exc:
        cause = type(exc.cause).__name__ if exc.cause is not None else "timeout"
        raise SecretError(f"reading Secret Manager secret {name} failed for {deadline:.0f}s "
                          f"(last error: {cause})") from None
    except (gexc.GoogleAPICallError, OSError) as exc:
        raise SecretError(f"reading Secret Manager secret {name} failed: {type(exc).__name__}") from None
    data = bytes(response.payload.data)
    if "data_crc32c" in response.payload:
        import google_crc32c

        if google_crc32c.value(data) != response.payload.data_crc32c:
            raise SecretError(f"Secret Manager secret {name} failed its CRC32C check (corrupted in transit)")
    try:
        value = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise SecretError(f"Secret Manager secret {name} is not UTF-8 text") from None
    if not value:
        raise SecretError(f"Secret Manager secret {name} is empty")
    with _lock:
        _values[key] = value
    return value


def labelbox_api_key(config: Config) -> str:
    """The Labelbox API key: from Secret Manager when LABELBOX_API_KEY_SECRET names it, else
    LABELBOX_API_KEY's own value (the local stack)."""
    if not config.labelbox_api_key_secret:
        return config.labelbox_api_key
    return access(config.labelbox_api_key_secret, endpoint=config.secret_manager_api_endpoint)


def resolve(config: Config) -> Config:
    """`config` with the secret values a job needs read in: only LABELBOX_BACKEND=sdk needs the key."""
    if config.labelbox_backend != "sdk" or not config.labelbox_api_key_secret:
        return config
    return config.with_overrides(labelbox_api_key=labelbox_api_key(config))


def clear_cache() -> None:
    """Forget values and clients (tests; a job reads each secret once)."""
    with _lock:
        _values.clear()
        _clients.clear()
