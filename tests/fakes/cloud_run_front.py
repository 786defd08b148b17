"""What stands in front of a Cloud Run service, for the production-shaped suite (tests/prod).

The Pub/Sub emulator pushes without an Authorization header, and nothing here checks IAM. A front is a
small reverse proxy per service that adds what the cloud adds before the request reaches the container:
- a private service (Cloud Run IAM, `roles/run.invoker` for the push account): the platform checks the
  push token and forwards it with its signature replaced by `SIGNATURE_REMOVED_BY_GOOGLE`; the front
  forwards a token of that shape (tests/fakes/google_oidc.Issuer.stripped);
- the public ingress: Pub/Sub's pushes to `/push/...` carry a Google-signed OIDC token the app verifies
  itself (Issuer.signed, with a local key whose certificates the test serves). Requests from anyone else
  (Labelbox, the REST API) pass through untouched.
Every forwarded request is recorded with its status and duration (a push answered with 5xx or not within
the ack deadline would be redelivered in the cloud).
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade", "host", "content-length"}

@dataclass
class Forwarded:
    method: str
    path: str
    status: int
    seconds: float
    authorized: bool


@dataclass
class CloudRunFront:
    """`authorize(method, path) -> token or None` decides the Authorization the container sees."""

    backend: str  # http://127.0.0.1:PORT of the container
    authorize: Callable[[str, str], str | None]
    timeout: float = 60.0  # Cloud Run's request timeout (and the push ack deadline) as Terraform sets it
    log: list[Forwarded] = field(default_factory=list)
    url: str = ""
    _server: ThreadingHTTPServer | None = None

    def start(self) -> CloudRunFront:
        front = self
        target = urlsplit(self.backend)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                started = time.monotonic()
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                token = front.authorize(self.command, self.path)
                if token is not None:
                    headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
                    headers["Authorization"] = f"Bearer {token}"
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=front.timeout)
                try:
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    resp = conn.getresponse()
                    status, payload = resp.status, resp.read()
                    out_headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP]
                except TimeoutError:
                    status, payload, out_headers = 504, b"upstream request timeout", []
                except OSError as exc:
                    status, payload, out_headers = 503, f"container unavailable: {exc}".encode(), []
                finally:
                    conn.close()
                front.log.append(Forwarded(self.command, self.path, status, time.monotonic() - started,
                                           token is not None))
                self.send_response(status)
                for key, value in out_headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = _forward  # noqa: N815

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a caller that hung up (Pub/Sub's push client does): nothing to report

        self._server = Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def pushes(self) -> list[Forwarded]:
        return [f for f in self.log if f.path.startswith("/push/")]
