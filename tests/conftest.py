"""Shared fixtures: the emulators (started once per session on free ports, or reused when
`*_EMULATOR_HOST` is set) and fresh ids so tests never collide."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lbtrain import emulators

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"


def fresh_id(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def emulator_hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """PUBSUB_EMULATOR_HOST / FIRESTORE_EMULATOR_HOST for the whole session."""
    log_dir = tmp_path_factory.mktemp("emulators")
    started: list[emulators.Emulator] = []
    hosts = {}
    saved = {k: os.environ.get(k) for k in ("PUBSUB_EMULATOR_HOST", "FIRESTORE_EMULATOR_HOST")}
    try:
        for var, start in (("PUBSUB_EMULATOR_HOST", emulators.start_pubsub),
                           ("FIRESTORE_EMULATOR_HOST", emulators.start_firestore)):
            if os.environ.get(var):
                hosts[var] = os.environ[var]
            else:
                em = start(log_dir)
                started.append(em)
                hosts[var] = em.host
            os.environ[var] = hosts[var]
        yield hosts
    finally:
        for em in started:
            em.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def gcs_bucket(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A bucket on an in-process GCS emulator (gcp-storage-emulator); STORAGE_EMULATOR_HOST points at it
    and the cached storage client is reset so it talks to it."""
    from gcp_storage_emulator.server import create_server

    from lbtrain import storage

    port = emulators.free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket="lbtrain-test")
    server.start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(storage, "_gcs_client", None)
    try:
        yield "lbtrain-test"
    finally:
        server.stop()


@contextlib.contextmanager
def storage_emulator(default_bucket: str = "") -> Iterator[str]:
    """gcp-storage-emulator as its own process (servers in other processes write to it); its URL."""
    port = emulators.free_port()
    cmd = [sys.executable, "-m", "gcp_storage_emulator", "start", "--port", str(port), "--in-memory", "-q"]
    if default_bucket:
        cmd += ["--default-bucket", default_bucket]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    host = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(host + "/storage/v1/b", timeout=2).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "storage emulator did not start"
                time.sleep(0.1)
        yield host
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session", autouse=True)
def _local_stack_fetch_policy() -> Iterator[None]:
    """Row data is fetched under the policy of the local stack (LABELBOX_BACKEND=file: local files
    allowed, nothing private over the network), the one `jobs.main` builds from the default config;
    a test that needs loopback http or a bucket says so (`policy=` or `fetch.using(...)`). Session-wide
    so module-scoped fixtures that convert exports get it too."""
    from lbtrain import fetch

    with fetch.using(fetch.FetchPolicy(allow_files=True)):
        yield


@pytest.fixture(autouse=True)
def _untrusted_data_settings_restored() -> Iterator[None]:
    """An in-process `jobs.main` run configures the process's fetch policy and pixel limit from its
    config: put the session's back so it cannot leak into the next test."""
    from lbtrain import fetch

    policy = fetch.current()
    yield
    fetch.configure(policy)
    from jobs.tasks import images
    from lbtrain.config import DEFAULT_MAX_IMAGE_PIXELS

    images.set_max_pixels(DEFAULT_MAX_IMAGE_PIXELS)
