"""Starting and stopping the Pub/Sub and Firestore emulators that ship with the gcloud CLI.

The Java launchers are started directly (not through `gcloud …`, whose pid is a wrapper that
leaves the Java child behind when killed), each in its own process group so that stopping
one stops all of it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

READY_TIMEOUT = 60.0


class EmulatorError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def preferred_port(port: int) -> int:
    """The conventional port (8085 Pub/Sub, 8086 Firestore) when free, else any free one."""
    return port if port_free(port) else free_port()


def sdk_root() -> Path:
    gcloud = shutil.which("gcloud")
    if not gcloud:
        raise EmulatorError("the gcloud CLI is not on PATH: install it with the pubsub-emulator and "
                            "cloud-firestore-emulator components")
    candidates = [Path(gcloud).resolve().parent.parent, Path("/usr/lib/google-cloud-sdk")]
    for root in candidates:
        if (root / "platform").is_dir():
            return root
    out = subprocess.run([gcloud, "info", "--format=value(installation.sdk_root)"], capture_output=True,
                         text=True, timeout=60, check=True)
    return Path(out.stdout.strip())


@dataclass
class Emulator:
    name: str
    host: str  # host:port
    process: subprocess.Popen | None  # None when reused (…_EMULATOR_HOST was set)
    log_path: Path | None = None

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(timeout=10)


def _wait_http(url: str, name: str, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise EmulatorError(f"{name} emulator exited with {process.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.25)
    raise EmulatorError(f"{name} emulator not ready after {READY_TIMEOUT:.0f}s; see {log_path}")


def _start(name: str, cmd: list[str], port: int, log_dir: Path) -> Emulator:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}-emulator.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    emulator = Emulator(name, f"127.0.0.1:{port}", proc, log_path)
    try:
        _wait_http(f"http://127.0.0.1:{port}/", name, proc, log_path)
    except BaseException:
        emulator.stop()
        raise
    return emulator


def start_pubsub(log_dir: Path, port: int | None = None, project: str = "demo") -> Emulator:
    port = port or free_port()
    launcher = sdk_root() / "platform" / "pubsub-emulator" / "bin" / "cloud-pubsub-emulator"
    return _start("pubsub", [str(launcher), "--host=127.0.0.1", f"--port={port}"], port, log_dir)


def start_firestore(log_dir: Path, port: int | None = None) -> Emulator:
    port = port or free_port()
    launcher = sdk_root() / "platform" / "cloud-firestore-emulator" / "cloud_firestore_emulator"
    return _start("firestore", [str(launcher), "start", "--host=127.0.0.1", f"--port={port}"], port, log_dir)


def hosts_starting_missing(log_dir: Path, owned: list[Emulator]) -> dict[str, str]:
    """PUBSUB_EMULATOR_HOST / FIRESTORE_EMULATOR_HOST from the environment, the missing ones started
    (appended to `owned` as each starts: the caller stops them, also when the second fails), and set
    in os.environ for the clients."""
    hosts = {k: os.environ.get(k, "") for k in ("PUBSUB_EMULATOR_HOST", "FIRESTORE_EMULATOR_HOST")}
    if not hosts["PUBSUB_EMULATOR_HOST"]:
        owned.append(start_pubsub(log_dir))
        hosts["PUBSUB_EMULATOR_HOST"] = owned[-1].host
    if not hosts["FIRESTORE_EMULATOR_HOST"]:
        owned.append(start_firestore(log_dir))
        hosts["FIRESTORE_EMULATOR_HOST"] = owned[-1].host
    os.environ.update(hosts)
    return hosts


def reuse(name: str, host: str) -> Emulator:
    return Emulator(name, host, None)


def reset_firestore(host: str, project: str) -> None:
    """Delete every document of the project's default database (between tests)."""
    url = f"http://{host}/emulator/v1/projects/{project}/databases/(default)/documents"
    req = urllib.request.Request(url, method="DELETE")
    with urllib.request.urlopen(req, timeout=30):
        pass


def main() -> int:
    """`python -m lbtrain.emulators [--pubsub-port N] [--firestore-port N]`: both, until Ctrl-C."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m lbtrain.emulators")
    p.add_argument("--pubsub-port", type=int, default=8085)
    p.add_argument("--firestore-port", type=int, default=8086)
    p.add_argument("--log-dir", default=".lbtrain/logs")
    args = p.parse_args()
    started = [start_pubsub(Path(args.log_dir), args.pubsub_port),
               start_firestore(Path(args.log_dir), args.firestore_port)]
    print(f"export PUBSUB_EMULATOR_HOST={started[0].host} FIRESTORE_EMULATOR_HOST={started[1].host}", flush=True)
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        for em in started:
            em.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
