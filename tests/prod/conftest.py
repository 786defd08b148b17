"""One production-shaped deployment per module (tests/prod/deployment.py), on the session's emulators."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import ARTIFACTS, fresh_id, storage_emulator
from tests.prod.deployment import Deployment


@pytest.fixture(scope="module")
def gcs_host() -> Iterator[str]:
    with storage_emulator() as host:
        yield host


@pytest.fixture(scope="module")
def deployment(emulator_hosts: dict[str, str], gcs_host: str,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("prod")
    # Terraform variables a small test project sets: the reference data here is a few hundred rows, and
    # its image rows live in the project's own media bucket (Deployment.media_bucket), which jobs may read.
    project = fresh_id("proj")
    dep = Deployment(root, project=project, deployment=fresh_id("p"), emulator_hosts=emulator_hosts,
                     gcs_host=gcs_host, variables={"min_examples": "train=1,validation=0,test=0",
                                                   "media_buckets": [f"{project}-media"]})
    assert dep.media_bucket == f"{project}-media"
    try:
        yield dep.start()
    finally:
        dep.stop()
        ARTIFACTS.mkdir(exist_ok=True)
        for log in [*root.glob("*.log"), *(root / "vertex-jobs").glob("*.log")]:
            (ARTIFACTS / f"prod-{log.name}").write_bytes(log.read_bytes())
