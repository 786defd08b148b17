"""One HTTP server for the fakes of Google's JSON/REST APIs (Vertex AI, Cloud Run, Secret Manager):
each fake is a pure `handle(...)` returning (status, JSON answer); this serves it in a daemon thread."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    raw: bytes

    def json(self) -> Any:
        return json.loads(self.raw) if self.raw else None


METHODS = ("GET", "POST", "PATCH", "DELETE")


def serve_json(dispatch: Callable[[Request], tuple[int, Any]], host: str = "127.0.0.1",
               port: int = 0) -> ThreadingHTTPServer:
    """Serve `dispatch` (a Request → (status, answer)) until the server is shut down."""

    class Handler(BaseHTTPRequestHandler):
        def _dispatch(self) -> None:
            url = urlparse(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            request = Request(self.command, url.path, parse_qs(url.query, keep_blank_values=True),
                              {k.lower(): v for k, v in self.headers.items()},
                              self.rfile.read(length) if length else b"")
            status, answer = dispatch(request)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
            pass

    for method in METHODS:
        setattr(Handler, f"do_{method}", Handler._dispatch)
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
