"""`lbtrain dev`: the whole system on one machine (docs/architecture.md §10).

Starts (or reuses) the emulators, creates the deployment's topics and push subscriptions
pointing at this process, serves every piece on one port and runs the reconciler loop.
`stop()` undoes all of it, including local jobs and model servers still running.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from werkzeug.serving import BaseWSGIServer, make_server

from lbtrain import emulators, storage
from lbtrain.config import Config
from lbtrain.deps import Deps

log = logging.getLogger("lbtrain.dev")
logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access log per poll


def local_secrets(config: Config) -> Config:
    """Locally, secrets missing from the environment are generated once and kept in
    `{state_dir}/dev.json` (mode 0600) so the CLI and the demo can use them. Secrets that come
    from the environment are never written there; none is ever printed or logged."""
    path = Path(config.state_dir) / "dev.json"
    # A link in dev.json's place is neither read nor written through: it is replaced below.
    saved: dict[str, str] = json.loads(path.read_text(encoding="utf-8")) if path.is_file() and \
        not path.is_symlink() else {}
    values = {}
    for name in ("api_token", "labelbox_webhook_secret"):
        if getattr(config, name):
            saved.pop(name, None)
            continue
        values[name] = saved.get(name) or secrets.token_urlsafe(32)
        saved[name] = values[name]
    saved["api_url"] = config.api_url
    write_private_json(path, saved)
    return config.with_overrides(**values)


def write_private_json(path: Path, obj: object) -> None:
    """Write `obj` to `path` readable by its owner only (0600), whatever mode, owner or link an
    existing file had: a new file (O_EXCL, 0600, chmod'ed past any umask) replaces it atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(obj, fh)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_local_secrets(state_dir: str) -> dict[str, str]:
    path = Path(state_dir) / "dev.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


@dataclass
class DevStack:
    config: Config
    port: int = 8080
    reconcile_interval: float = 5.0
    emulators: list[emulators.Emulator] = field(default_factory=list)
    deps: Deps | None = None
    server: BaseWSGIServer | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str:
        return f"{self.url}/dashboard/"

    def start(self) -> DevStack:
        from lbtrain.adapters.pubsub_bus import ensure_topology
        from lbtrain.api.apps import dev_app
        from lbtrain.api.push import all_stages

        state = Path(self.config.state_dir)
        state.mkdir(parents=True, exist_ok=True)
        cfg = self.config.with_overrides(api_url=self.url)
        if cfg.pubsub_emulator_host:
            self.emulators.append(emulators.reuse("pubsub", cfg.pubsub_emulator_host))
        else:
            em = emulators.start_pubsub(state / "logs", emulators.preferred_port(8085))
            self.emulators.append(em)
            cfg = cfg.with_overrides(pubsub_emulator_host=em.host)
        if cfg.firestore_emulator_host:
            self.emulators.append(emulators.reuse("firestore", cfg.firestore_emulator_host))
        else:
            em = emulators.start_firestore(state / "logs", emulators.preferred_port(8086))
            self.emulators.append(em)
            cfg = cfg.with_overrides(firestore_emulator_host=em.host)
        # The Google client libraries read these from the environment.
        os.environ["PUBSUB_EMULATOR_HOST"] = cfg.pubsub_emulator_host
        os.environ["FIRESTORE_EMULATOR_HOST"] = cfg.firestore_emulator_host
        cfg = local_secrets(cfg)
        storage.makedirs(cfg.artifact_root)
        Path(cfg.labelbox_dir, "model_runs").mkdir(parents=True, exist_ok=True)
        self.config = cfg
        self.deps = Deps(cfg)
        ensure_topology(cfg.project, cfg.deployment_name, self.url, all_stages(),
                        max_delivery_attempts=cfg.max_delivery_attempts)
        self.server = make_server("127.0.0.1", self.port, dev_app(self.deps), threaded=True)
        self._spawn(self.server.serve_forever, "http")
        self._spawn(self._reconcile_loop, "reconciler")
        self._wait_ready()
        return self

    def _spawn(self, target, name: str) -> None:  # noqa: ANN001
        t = threading.Thread(target=target, name=f"lbtrain-{name}", daemon=True)
        t.start()
        self._threads.append(t)

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"the local stack did not answer {self.url}/healthz within {timeout:.0f}s")

    def _reconcile_loop(self) -> None:
        from lbtrain.reconcile import reconcile_once

        while not self._stop.wait(self.reconcile_interval):
            try:
                reconcile_once(self.deps)
            except Exception:  # noqa: BLE001 - the loop must outlive a failed sweep
                log.exception("reconciler sweep failed")

    def stop(self) -> None:
        self._stop.set()
        if self.server is not None:
            self.server.shutdown()
        stop_jobs = getattr(self.deps.backend, "stop_all", None) if self.deps is not None else None
        if stop_jobs is not None:  # local jobs are ours to stop; cloud jobs outlive the dev stack
            stopped = stop_jobs()
            if stopped:
                log.info("cancelled %d local job(s) still running", stopped)
        if self.config.job_backend == "local":  # local deploys start model servers; Vertex ones live on
            try:
                from jobs.serving import stop_all

                stopped = stop_all(self.config.artifact_root)
                if stopped:
                    log.info("stopped %d local model server(s)", stopped)
            except ImportError:
                pass
        for em in reversed(self.emulators):
            em.stop()
        self.emulators.clear()
