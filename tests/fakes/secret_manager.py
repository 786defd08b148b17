"""A local fake of Secret Manager's REST API (v1), for the real google-cloud-secret-manager client.

Answers only what jobs call: `GET /v1/{projects/P/secrets/S/versions/V}:access`, with the real
response shape (the version's full name, `payload.data` base64 and `payload.dataCrc32c`, an int64
sent as a decimal string). `latest` is the newest version. Unknown secrets or versions answer 404,
secrets in `denied` 403 (as the API does for a missing IAM grant), and `fail_next` injects
transient statuses (e.g. 503) for the next calls. Every request is recorded.
"""

from __future__ import annotations

import base64
import re
import threading
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from typing import Any

import google_crc32c

from tests.fakes.json_api import serve_json

ACCESS = re.compile(r"^/v1/(projects/([^/]+)/secrets/([^/]+))/versions/([^/:]+):access$")
STATUS = {403: "PERMISSION_DENIED", 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
          503: "UNAVAILABLE"}


def _error(code: int, message: str) -> tuple[int, Any]:
    return code, {"error": {"code": code, "message": message, "status": STATUS.get(code, "UNKNOWN")}}


@dataclass
class FakeSecretManager:
    # "projects/P/secrets/S" → version payloads, version 1 first.
    secrets: dict[str, list[bytes]] = field(default_factory=dict)
    # Secret names ("projects/P/secrets/S") the caller may not read.
    denied: set[str] = field(default_factory=set)
    # HTTP statuses to answer the next access calls with, in order (transient failures).
    fail_next: list[int] = field(default_factory=list)
    # Serve a wrong dataCrc32c (a payload corrupted in transit).
    corrupt: bool = False
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    base_url: str = ""

    def add(self, secret: str, value: str | bytes) -> str:
        """Add a version to `secret` (projects/P/secrets/S); returns the version's name."""
        with self.lock:
            versions = self.secrets.setdefault(secret, [])
            versions.append(value.encode() if isinstance(value, str) else value)
            return f"{secret}/versions/{len(versions)}"

    def accesses(self) -> list[str]:
        """Version names (as requested) of every access call, failed ones included."""
        return [path.removeprefix("/v1/").removesuffix(":access") for method, path, _ in self.requests
                if method == "GET" and path.endswith(":access")]

    def handle(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, Any]:
        with self.lock:
            self.requests.append((method, path, headers))
            m = ACCESS.match(path)
            if method != "GET" or not m:
                return _error(404, f"no such method {method} {path}")
            if self.fail_next:
                code = self.fail_next.pop(0)
                return _error(code, "The service is currently unavailable.")
            secret, version = m.group(1), m.group(4)
            resource = f"{secret}/versions/{version}"
            if secret in self.denied:
                return _error(403, f"Permission 'secretmanager.versions.access' denied for resource "
                                   f"'{resource}' (or it may not exist).")
            versions = self.secrets.get(secret)
            if not versions:
                return _error(404, f"Secret [{secret}] not found or has no versions.")
            if version == "latest":
                number = len(versions)
            elif version.isdigit() and 1 <= int(version) <= len(versions):
                number = int(version)
            else:
                return _error(404, f"Secret Version [{resource}] not found.")
            data = versions[number - 1]
            crc = google_crc32c.value(data) ^ (1 if self.corrupt else 0)
            return 200, {"name": f"{secret}/versions/{number}",
                         "payload": {"data": base64.b64encode(data).decode(), "dataCrc32c": str(crc)}}


def serve(fake: FakeSecretManager, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """Start serving `fake` in a daemon thread; sets `fake.base_url` (the client's api_endpoint)."""
    server = serve_json(lambda r: fake.handle(r.method, r.path, r.headers), host, port)
    fake.base_url = f"http://{host}:{server.server_address[1]}"
    return server
