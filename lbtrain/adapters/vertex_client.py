"""The one place google-cloud-aiplatform is initialised (imported on first use, never at import time).

A `VERTEX_API_ENDPOINT` of `http://…` is a local fake of Vertex's REST API (tests, the local
stack with JOB_BACKEND=vertex): REST transport and anonymous credentials. Anything else is the
regional endpoint override of the real service.
"""

from __future__ import annotations

import threading
from typing import Any

from lbtrain.config import Config

_lock = threading.Lock()
_initialised: tuple[str, str, str] | None = None


def aiplatform(config: Config) -> Any:
    """The aiplatform module, initialised for `config`'s project, region and endpoint."""
    global _initialised
    from google.cloud import aiplatform as aip

    key = (config.project, config.region, config.vertex_api_endpoint)
    with _lock:
        if _initialised != key:
            kwargs: dict[str, Any] = {"project": config.project, "location": config.region}
            endpoint = config.vertex_api_endpoint
            if endpoint:
                kwargs["api_endpoint"] = endpoint
                if endpoint.startswith("http://"):
                    from google.auth.credentials import AnonymousCredentials

                    kwargs.update(api_transport="rest", credentials=AnonymousCredentials())
            aip.init(**kwargs)
            _initialised = key
    return aip


def resource_id(resource_name: str) -> str:
    """`projects/p/locations/l/customJobs/123` → `123`."""
    return resource_name.rsplit("/", 1)[-1]
