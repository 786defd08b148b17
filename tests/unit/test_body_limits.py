"""Over-limit request bodies are answered 413 on every Flask app, chunked ones included, through real
HTTP servers (werkzeug's, as the local stack runs it, and gunicorn, as the services run): werkzeug
alone cut a chunked body at the limit and handed the stump to the handlers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from tests.fakes import bounded_apps

ROOT = Path(__file__).resolve().parent.parent.parent
# (app, path) pairs that take a POST body on each deployable app.
ROUTES = [("ingress", "/runs"), ("ingress", "/webhooks/labelbox"), ("launcher", "/push/step/etl"),
          ("dashboard", "/dashboard/api/runs/r1/cancel"), ("dev", "/runs"), ("dev", "/push/runs")]


def _chunked(port: int, path: str, body: bytes) -> tuple[int, bytes]:
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            "Authorization: Bearer tok\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 700]), body[i:i + 700]) for i in range(0, len(body), 700))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head + chunks + b"0\r\n\r\n")
        data = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
            head_end = data.find(b"\r\n\r\n")
            if head_end >= 0:
                length = [int(line.split(b":")[1]) for line in data[:head_end].split(b"\r\n")
                          if line.lower().startswith(b"content-length:")]
                if length and len(data) >= head_end + 4 + length[0]:
                    break
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


def _big() -> bytes:
    return json.dumps({"model_type": "text_single_classification", "pad": "x" * 5000}).encode()


def _small() -> bytes:
    return json.dumps({"pad": "x" * 900, "model_type": "text_single_classification"}).encode()  # < 1000 bytes


@pytest.fixture(scope="module")
def werkzeug_ports() -> Iterator[dict[str, int]]:
    servers = {name: make_server("127.0.0.1", 0, getattr(bounded_apps, name), threaded=True)
               for name in ("ingress", "launcher", "dashboard", "dev")}
    for srv in servers.values():
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield {name: srv.server_port for name, srv in servers.items()}
    for srv in servers.values():
        srv.shutdown()
        srv.server_close()


@pytest.mark.parametrize(("app", "path"), ROUTES)
def test_werkzeug_answers_an_over_limit_chunked_body_413(werkzeug_ports: dict[str, int], app: str,
                                                          path: str) -> None:
    status, body = _chunked(werkzeug_ports[app], path, _big())
    assert status == 413, body
    assert json.loads(body) == {"error": f"request body is larger than {bounded_apps.LIMIT} bytes"}


def test_werkzeug_passes_a_chunked_body_within_the_limit_whole(werkzeug_ports: dict[str, int]) -> None:
    status, body = _chunked(werkzeug_ports["ingress"], "/runs", _small())
    assert (status, json.loads(body)) == (400, {"error": "missing field 'model_run_id'"})  # parsed whole


@pytest.fixture(scope="module")
def gunicorn_port() -> Iterator[int]:
    gunicorn = Path(sys.executable).with_name("gunicorn")
    if not gunicorn.exists():
        pytest.skip("gunicorn is not installed (the services extra)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.Popen([str(gunicorn), "--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", "2",
                             "tests.fakes.bounded_apps:ingress"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"gunicorn did not start: {proc.stderr.read().decode()[-2000:]}") from None
                time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.mark.parametrize("path", ["/runs", "/webhooks/labelbox"])
def test_gunicorn_answers_an_over_limit_chunked_body_413(gunicorn_port: int, path: str) -> None:
    status, body = _chunked(gunicorn_port, path, _big())
    assert status == 413 and "larger than 1000 bytes" in json.loads(body)["error"]


def test_gunicorn_passes_a_chunked_body_within_the_limit_whole(gunicorn_port: int) -> None:
    status, body = _chunked(gunicorn_port, "/runs", _small())
    assert (status, json.loads(body)) == (400, {"error": "missing field 'model_run_id'"})
