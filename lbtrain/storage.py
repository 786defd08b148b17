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


# --- compare-and-swap on an object's generation (deploy's champion record and its lease) -------
# On gs:// the generation is the object's GCS generation and writes use if_generation_match, so
# of two writers that read the same generation only one succeeds. Locally a counter in a sidecar
# file (`.NAME.cas`, also the fcntl lock serialising compare-and-write) numbers the versions.
# Note: gcp-storage-emulator does not enforce if_generation_match; only real GCS does.


class GenerationMismatch(Exception):
    """The object changed (or appeared, or vanished) since its generation was read."""


class _LocalCas:
    """The local file's generation counter, held under an exclusive fcntl lock."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> _LocalCas:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.path.with_name(f".{self.path.name}.cas"), "a+")  # noqa: SIM115 - closed in __exit__
        fcntl.flock(self.fh, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        import fcntl

        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()

    def counter(self) -> int:
        self.fh.seek(0)
        text = self.fh.read().strip()
        return int(text) if text.isdigit() else 0

    def generation(self) -> int:
        """0 while the file does not exist (the counter only grows, so no generation repeats)."""
        return max(self.counter(), 1) if self.path.exists() else 0

    def bump(self) -> int:
        new = max(self.counter(), 1) + 1  # above the 1 a file written without a counter reads as
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(str(new))
        self.fh.flush()
        return new


def read_json_generation(uri: str, attempts: int = 5) -> tuple[Any, int]:
    """(parsed JSON or None if absent, generation; 0 = the object does not exist)."""
    if is_gcs(uri):
        from google.api_core import exceptions as gexc

        blob = _blob(uri)
        for _ in range(attempts):
            try:
                blob.reload(timeout=GCS_TIMEOUT)
            except gexc.NotFound:
                return None, 0
            generation = int(blob.generation)
            try:  # the content of exactly that generation (it may be replaced in between: read again)
                data = blob.download_as_bytes(if_generation_match=generation, timeout=GCS_TIMEOUT)
            except (gexc.NotFound, gexc.PreconditionFailed):
                continue
            return json.loads(data.decode("utf-8")), generation
        raise GenerationMismatch(f"{uri} kept changing while being read ({attempts} attempts)")
    path = local_path(uri)
    with _LocalCas(path) as cas:
        generation = cas.generation()
        return (json.loads(path.read_text(encoding="utf-8")) if generation else None), generation


def write_json_if_generation(uri: str, obj: Any, generation: int) -> int:
    """Write `obj` only if the object is still at `generation` (0: only if absent); the new generation."""
    data = (json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
    if is_gcs(uri):
        from google.api_core import exceptions as gexc

        blob = _blob(uri)
        try:
            blob.upload_from_string(data, content_type="application/json", if_generation_match=generation,
                                    timeout=GCS_TIMEOUT)
        except gexc.PreconditionFailed:
            raise GenerationMismatch(f"{uri} is no longer at generation {generation}") from None
        return int(blob.generation)
    with _LocalCas(local_path(uri)) as cas:
        if cas.generation() != generation:
            raise GenerationMismatch(f"{uri} is no longer at generation {generation}")
        new = cas.bump()  # first: a crash before the write leaves old content under a new number, never the reverse
        write_bytes(uri, data)
        return new


def delete_if_generation(uri: str, generation: int) -> None:
    """Delete the object only if it is still at `generation`; absent already is fine."""
    if is_gcs(uri):
        from google.api_core import exceptions as gexc

        try:
            _blob(uri).delete(if_generation_match=generation, timeout=GCS_TIMEOUT)
        except gexc.NotFound:
            pass
        except gexc.PreconditionFailed:
            raise GenerationMismatch(f"{uri} is no longer at generation {generation}") from None
        return
    path = local_path(uri)
    with _LocalCas(path) as cas:
        current = cas.generation()
        if current and current != generation:
            raise GenerationMismatch(f"{uri} is no longer at generation {generation}")
        path.unlink(missing_ok=True)
