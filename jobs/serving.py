"""Model server behind the Vertex AI custom-container prediction contract, and the local
process management around it (start, health, stop, `stop_all`).

Contract (Vertex custom containers): listen on $AIP_HTTP_PORT; GET $AIP_HEALTH_ROUTE → 200
once the model is loaded; POST $AIP_PREDICT_ROUTE {"instances": [...]} → {"predictions": [...]};
the model directory is $AIP_STORAGE_URI (gs://… on Vertex, copied to a local temporary directory
through lbtrain.storage before loading; a local directory as is). `python -m jobs.serving` is the
container command.

Locally, deploy starts it as a detached process (own session, so it outlives the job) and
records it in `{ARTIFACT_ROOT}/serving/<model_type>.<run_id>.json`; `stop_all(artifact_root)`
stops every recorded server (`lbtrain dev` calls it on exit). Only the standard library is
imported at module level: `lbtrain dev` imports this module.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

SERVING_DIR = "serving"
DEFAULT_PREDICT_ROUTE = "/predict"
DEFAULT_HEALTH_ROUTE = "/health"
MAX_REQUEST_BYTES = 10 << 20
# Seconds a client may take to send its request (each socket wait): a slow body cannot hold a thread.
REQUEST_TIMEOUT = 30.0
_MARKER = "jobs.serving"
# The model file's SHA-256 as its train step recorded it (deploy sets it; required for pickled models).
MODEL_SHA256_ENV = "LBTRAIN_MODEL_SHA256"  # in the server's command line: guards against signalling a reused pid


class ServingError(Exception):
    """The model server could not be started or reached."""


# --- the server (runs in the serving process) ----------------------------------------------


def _load_predictor(model_dir: str, sha256: str = "") -> Any:
    from jobs import tasks
    from jobs.tasks.base import read_model_meta

    meta = read_model_meta(model_dir)
    return tasks.load(meta["model_type"]).load_predictor(model_dir, sha256)


def make_server(
    predictor: Any,
    host: str,
    port: int,
    predict_route: str = DEFAULT_PREDICT_ROUTE,
    health_route: str = DEFAULT_HEALTH_ROUTE,
) -> ThreadingHTTPServer:
    """An HTTP server answering the Vertex prediction contract for `predictor`."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "lbtrain-serving/1"
        timeout = REQUEST_TIMEOUT

        def _send(self, code: int, body: Any) -> None:
            data = json.dumps(body, ensure_ascii=False).encode("utf-8")
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - http.server naming
            path = self.path.split("?", 1)[0]
            if path == health_route:
                self._send(200, {"status": "ok", "model_type": predictor.meta.get("model_type")})
            elif path == predict_route:
                self._send(405, {"error": f"use POST {predict_route}"})
            else:
                self._send(404, {"error": f"no route {path}"})

        def do_POST(self) -> None:  # noqa: N802
            path = self.path.split("?", 1)[0]
            if path != predict_route:
                self._send(404, {"error": f"no route {path}"})
                return
            length, refusal = body_length(self.headers.get_all("Content-Length") or [],
                                          self.headers.get("Transfer-Encoding"))
            if refusal is not None:
                self.close_connection = True  # the body (if any) is never read: no keep-alive after it
                self._send(*refusal)
                return
            try:
                body = json.loads(self.rfile.read(length) or b"null")
                instances = body.get("instances") if isinstance(body, dict) else None
                if not isinstance(instances, list):
                    raise ValueError('body must be a JSON object with an "instances" list')
                rows = predictor.parse_instances(instances)
            except (ValueError, UnicodeDecodeError) as exc:
                self._send(400, {"error": str(exc)})
                return
            try:
                self._send(200, {"predictions": predictor.predict(rows)})
            except Exception as exc:  # noqa: BLE001 - one bad request must not kill the server
                self._send(500, {"error": f"{type(exc).__name__}: {exc}"})

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet access log
            pass

    return ThreadingHTTPServer((host, port), Handler)


def body_length(values: list[str], transfer_encoding: str | None) -> tuple[int, tuple[int, dict[str, str]] | None]:
    """(length, None) for a request whose body may be read, else (0, (status, error body)): a body
    is read only with one plain decimal Content-Length within MAX_REQUEST_BYTES, never to EOF."""
    if transfer_encoding:
        return 0, (411, {"error": "send the body with a Content-Length (no Transfer-Encoding)"})
    if not values:
        return 0, (411, {"error": "Content-Length required"})
    distinct = {v.strip() for v in values}
    if len(distinct) != 1 or not re.fullmatch(r"[0-9]{1,12}", next(iter(distinct))):
        return 0, (400, {"error": "Content-Length must be one non-negative whole number"})
    length = int(next(iter(distinct)))
    if length > MAX_REQUEST_BYTES:
        return 0, (413, {"error": f"request body over {MAX_REQUEST_BYTES} bytes"})
    return length, None


def serve(model_uri: str, host: str, port: int, predict_route: str, health_route: str, sha256: str = "") -> int:
    """Load the model under `model_uri` (a local directory or a gs:// prefix, copied to a temporary
    directory for the server's lifetime; its model file checked against `sha256`, the digest its
    train step recorded) and answer requests until SIGTERM."""
    from jobs.tasks.base import ModelError
    from lbtrain import storage

    try:
        with storage.localized_dir(model_uri) as local_dir:
            predictor = _load_predictor(str(local_dir), sha256)
            server = make_server(predictor, host, port, predict_route, health_route)

            def _stop(signum: int, frame: Any) -> None:
                raise SystemExit(0)

            signal.signal(signal.SIGTERM, _stop)
            message = f"serving {model_uri} on {host}:{server.server_address[1]}"
            print(json.dumps({"severity": "INFO", "message": message}), flush=True)
            try:
                server.serve_forever(poll_interval=0.2)
            except KeyboardInterrupt:
                pass
            finally:
                server.server_close()
    except (FileNotFoundError, ModelError) as exc:
        print(f"jobs.serving: no loadable model at {model_uri}: {exc}", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    """Serving process entry point (`python -m jobs.serving`)."""
    model_uri = os.environ.get("AIP_STORAGE_URI") or os.environ.get("LBTRAIN_MODEL_DIR", "")
    if not model_uri:
        print("jobs.serving: AIP_STORAGE_URI (the model directory) is not set", file=sys.stderr)
        return 2
    from jobs.tasks import images
    from lbtrain.config import from_env

    try:  # request images are untrusted: the same pixel limit as ETL and training
        images.set_max_pixels(from_env().max_image_pixels)
    except ValueError as exc:
        print(f"jobs.serving: bad configuration: {exc}", file=sys.stderr)
        return 2
    return serve(
        model_uri,
        os.environ.get("LBTRAIN_SERVING_HOST", "0.0.0.0"),
        int(os.environ.get("AIP_HTTP_PORT", "8080")),
        os.environ.get("AIP_PREDICT_ROUTE", DEFAULT_PREDICT_ROUTE),
        os.environ.get("AIP_HEALTH_ROUTE", DEFAULT_HEALTH_ROUTE),
        os.environ.get(MODEL_SHA256_ENV, "").strip().lower(),
    )


# --- local process management (used by deploy and `lbtrain dev`) ----------------------------


def serving_dir(artifact_root: str) -> Path:
    from lbtrain import storage

    return storage.local_path(storage.join(artifact_root, SERVING_DIR))


def record_path(artifact_root: str, model_type: str, run_id: str) -> Path:
    return serving_dir(artifact_root) / f"{model_type}.{run_id}.json"


def read_record(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _reap(pid: int) -> None:
    """Collect the exit status if `pid` is our child (tests start servers in-process)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def pid_alive(pid: int) -> bool:
    """A live (non-zombie) server process with this pid, started as `jobs.serving`."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    _reap(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # someone else's process: the pid was reused
    proc = Path(f"/proc/{pid}")
    if proc.is_dir():
        try:
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except (OSError, IndexError):
            return False
        return state != "Z" and _MARKER in cmdline
    return True


def healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def is_alive(record: dict[str, Any] | None) -> bool:
    """The recorded server is running and answers its health route."""
    return bool(record) and pid_alive(record.get("pid", 0)) and healthy(record.get("health_url", ""))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _write_record(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _log_tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def start(
    model_dir: str,
    artifact_root: str,
    model_type: str,
    run_id: str,
    *,
    host: str = "127.0.0.1",
    timeout: float = 60.0,
    python: str = "",
    sha256: str = "",
) -> dict[str, Any]:
    """Start (or find already running) the server for this run; return its record once healthy.
    `sha256` is the model file's digest its train step recorded (the server refuses another file)."""
    path = record_path(artifact_root, model_type, run_id)
    existing = read_record(path)
    if existing and is_alive(existing):
        return existing
    if existing:
        stop_record(existing, path)
    log_path = path.with_suffix(".log")
    repo = str(Path(__file__).resolve().parent.parent)
    last_error = ""
    for _ in range(3):  # a free port can be taken between probing and binding: retry on a new one
        port = free_port(host)
        env = {
            **os.environ,
            "AIP_HTTP_PORT": str(port),
            "AIP_PREDICT_ROUTE": DEFAULT_PREDICT_ROUTE,
            "AIP_HEALTH_ROUTE": DEFAULT_HEALTH_ROUTE,
            "AIP_STORAGE_URI": model_dir,
            "LBTRAIN_SERVING_HOST": host,
            MODEL_SHA256_ENV: sha256,
            "PYTHONPATH": os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH", "")) if p),
        }
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log_fh:
            proc = subprocess.Popen(
                [python or sys.executable, "-m", "jobs.serving"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        base = f"http://{host}:{port}"
        record = {
            "pid": proc.pid,
            "port": port,
            "model_type": model_type,
            "run_id": run_id,
            "model_uri": model_dir,
            "model_sha256": sha256,
            "endpoint": base + DEFAULT_PREDICT_ROUTE,
            "health_url": base + DEFAULT_HEALTH_ROUTE,
            "log": str(log_path),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        _write_record(path, record)  # before waiting: stop_all finds it even if we die here
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    last_error = f"exited with code {proc.returncode}: {_log_tail(log_path)}"
                    break
                if healthy(record["health_url"], timeout=1.0):
                    return record
                time.sleep(0.2)
            else:
                last_error = f"not healthy after {timeout:.0f}s: {_log_tail(log_path)}"
        except BaseException:  # cancelled while waiting: leave no half-started server behind
            stop_record(record, path)
            raise
        stop_record(record, path)
    raise ServingError(f"the model server for run {run_id} did not start ({last_error})")


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    left = [p for p in pids if pid_alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in left if pid_alive(p)]
    return left


def stop_record(record: dict[str, Any], path: Path | None = None, timeout: float = 5.0) -> bool:
    """SIGTERM the recorded server (SIGKILL after `timeout`), remove its record. True if it was running."""
    pid = record.get("pid", 0)
    running = pid_alive(pid)
    if running:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        for straggler in _wait_gone([pid], timeout):
            with contextlib.suppress(ProcessLookupError):
                os.kill(straggler, signal.SIGKILL)
            _wait_gone([straggler], 2.0)
    if path is not None:
        current = read_record(path)
        if current is None or current.get("pid") == pid:
            path.unlink(missing_ok=True)
    return running


def records(artifact_root: str) -> Iterator[tuple[Path, dict[str, Any]]]:
    d = serving_dir(artifact_root)
    if d.is_dir():
        for path in sorted(d.glob("*.json")):
            record = read_record(path)
            if record is not None:
                yield path, record


def stop_all(artifact_root: str, timeout: float = 5.0) -> int:
    """Stop every model server recorded under `artifact_root`; return how many were running."""
    found = list(records(artifact_root))
    running = [(p, r) for p, r in found if pid_alive(r.get("pid", 0))]
    for _, r in running:
        with contextlib.suppress(ProcessLookupError):
            os.kill(r["pid"], signal.SIGTERM)
    for pid in _wait_gone([r["pid"] for _, r in running], timeout):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _wait_gone([r["pid"] for _, r in running], 2.0)
    for path, _ in found:
        path.unlink(missing_ok=True)
    return len(running)


def predict(endpoint: str, instances: list[Any], timeout: float = 30.0) -> dict[str, Any]:
    """POST instances to a running server (used by tests and the CLI)."""
    req = urllib.request.Request(
        endpoint,
        data=json.dumps({"instances": instances}).encode("utf-8"),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


if __name__ == "__main__":
    sys.exit(main())
