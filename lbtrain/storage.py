"""Artifact storage: one small API over local paths and gs:// URIs.

Jobs and services address artifacts by URI: a plain path or `file://` URI locally, `gs://bucket/…`
on Google Cloud (google-cloud-storage, imported on first gs:// use; it honours
STORAGE_EMULATOR_HOST). Callers never branch on the scheme.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

GCS_TIMEOUT = 120.0
_gcs_client: Any = None


def is_gcs(uri: str) -> bool:
    return uri.startswith("gs://")


def _blob(uri: str) -> Any:
    global _gcs_client
    bucket, _, name = uri[len("gs://"):].partition("/")
    if not bucket or not name:
        raise ValueError(f"bad gs:// URI {uri!r} (expected gs://bucket/object)")
    if _gcs_client is None:
        from google.cloud import storage as gcs

        _gcs_client = gcs.Client()
    return _gcs_client.bucket(bucket).blob(name)


def local_path(uri: str) -> Path:
    """Filesystem path of a local URI (plain path or file://)."""
    if uri.startswith("file://"):
        return Path(unquote(urlparse(uri).path))
    if "://" in uri:
        raise ValueError(f"not a local artifact URI: {uri!r}")
    return Path(uri)


def join(uri: str, *parts: str) -> str:
    out = uri.rstrip("/")
    for p in parts:
        out += "/" + p.strip("/")
    return out


def run_dir(artifact_root: str, run_id: str, stage: str, attempt: int) -> str:
    """Where a step attempt's job writes (DESIGN §4)."""
    return join(artifact_root, "runs", run_id, stage, f"a{attempt}")


def exists(uri: str) -> bool:
    if is_gcs(uri):
        return bool(_blob(uri).exists(timeout=GCS_TIMEOUT))
    return local_path(uri).exists()


def read_bytes(uri: str) -> bytes:
    if is_gcs(uri):
        from google.api_core import exceptions as gexc

        try:
            return _blob(uri).download_as_bytes(timeout=GCS_TIMEOUT)
        except gexc.NotFound:
            raise FileNotFoundError(uri) from None
    return local_path(uri).read_bytes()


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def read_json(uri: str) -> Any:
    return json.loads(read_text(uri))


def write_bytes(uri: str, data: bytes) -> None:
    """Atomic write: readers never see a half-written file (GCS objects are atomic by nature)."""
    if is_gcs(uri):
        _blob(uri).upload_from_string(data, timeout=GCS_TIMEOUT)
        return
    path = local_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def write_json(uri: str, obj: Any) -> None:
    write_text(uri, json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n")


def makedirs(uri: str) -> Path | None:
    """Create a local directory (GCS has no directories: nothing to do, None)."""
    if is_gcs(uri):
        return None
    path = local_path(uri)
    path.mkdir(parents=True, exist_ok=True)
    return path
