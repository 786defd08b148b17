"""Artifact storage: one small API over local paths and gs:// URIs.

Jobs and services address artifacts by URI: a plain path or `file://` URI locally, `gs://bucket/…`
on Google Cloud (google-cloud-storage, imported on first gs:// use; it honours
STORAGE_EMULATOR_HOST). Callers never branch on the scheme.

Libraries that want a file name (joblib, torch, PIL) get one from `localized(uri)` (read) and
`staged(uri)` (write, published atomically on success); whole directories go through
`localized_dir` / `download_dir` / `upload_dir`. Every GCS call has a timeout (GCS_TIMEOUT) and the
client's DEFAULT_RETRY policy: all our object operations are idempotent (whole-object overwrites of
deterministic content, deletes that tolerate "already gone", reads).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlparse

GCS_TIMEOUT = 120.0
TEMP_PREFIX = "lbtrain-"  # temporary copies of gs:// objects live in tempfile.gettempdir()
_gcs_client: Any = None
_gcs_lock = threading.Lock()


def is_gcs(uri: str) -> bool:
    return uri.startswith("gs://")


def _client() -> Any:
    """One google-cloud-storage client per process (thread-safe; media are fetched from a pool)."""
    global _gcs_client
    with _gcs_lock:
        if _gcs_client is None:
            try:
                from google.cloud import storage as gcs  # type: ignore[attr-defined]
            except ImportError:
                raise ImportError(
                    "gs:// URIs need google-cloud-storage: pip install google-cloud-storage"
                ) from None
            _gcs_client = gcs.Client()
        return _gcs_client


def _retry() -> Any:
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY


def _bucket_name(uri: str) -> tuple[str, str]:
    """gs://bucket/name → (bucket, name); name may be empty (a bucket-wide prefix)."""
    bucket, _, name = uri[len("gs://"):].partition("/")
    if not bucket:
        raise ValueError(f"bad gs:// URI {uri!r} (expected gs://bucket/object)")
    return bucket, name


def _blob(uri: str) -> Any:
    bucket, name = _bucket_name(uri)
    if not name or name.endswith("/"):
        raise ValueError(f"bad gs:// URI {uri!r} (expected gs://bucket/object)")
    return _client().bucket(bucket).blob(name)


def _not_found() -> type[Exception]:
    from google.api_core import exceptions as gexc

    return gexc.NotFound


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
    """Where a step attempt's job writes (docs/architecture.md §4)."""
    return join(artifact_root, "runs", run_id, stage, f"a{attempt}")


def exists(uri: str) -> bool:
    """A file / object exists at `uri` (locally also a directory)."""
    if is_gcs(uri):
        return bool(_blob(uri).exists(timeout=GCS_TIMEOUT, retry=_retry()))
    return local_path(uri).exists()


class TooLarge(ValueError):
    """An object is larger than the caller's `max_bytes`."""


def read_bytes(uri: str, *, timeout: float = GCS_TIMEOUT, max_bytes: int | None = None) -> bytes:
    """The bytes at `uri`; with `max_bytes`, an object over it raises TooLarge before it is
    downloaded (its size is read first, and the download pinned to that generation)."""
    if is_gcs(uri):
        try:
            blob = _blob(uri)
            if max_bytes is None:
                return blob.download_as_bytes(timeout=timeout, retry=_retry())
            blob.reload(timeout=timeout, retry=_retry())
            if blob.size is not None and int(blob.size) > max_bytes:
                raise TooLarge(f"{uri} is {blob.size} bytes, over the {max_bytes}-byte limit")
            data = blob.download_as_bytes(timeout=timeout, retry=_retry(), if_generation_match=blob.generation)
        except _not_found():
            raise FileNotFoundError(uri) from None
    else:
        if max_bytes is None:
            return local_path(uri).read_bytes()
        with open(local_path(uri), "rb") as fh:
            data = fh.read(max_bytes + 1)
    if max_bytes is not None and len(data) > max_bytes:
        raise TooLarge(f"{uri} is over the {max_bytes}-byte limit")
    return data


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def read_json(uri: str) -> Any:
    return json.loads(read_text(uri))


def write_bytes(uri: str, data: bytes) -> None:
    """Atomic write: readers never see a half-written file (GCS objects are atomic by nature)."""
    if is_gcs(uri):
        _blob(uri).upload_from_string(data, timeout=GCS_TIMEOUT, retry=_retry())
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


def delete(uri: str) -> bool:
    """Remove one file / object; a missing one is fine. True if something was removed."""
    if is_gcs(uri):
        try:
            _blob(uri).delete(timeout=GCS_TIMEOUT, retry=_retry())
        except _not_found():
            return False  # also: deleted by an earlier attempt that the retry policy repeated
        return True
    path = local_path(uri)
    existed = path.exists()
    path.unlink(missing_ok=True)
    return existed


def list_prefix(uri: str) -> list[str]:
    """URIs of every file / object under the directory `uri` (recursive, sorted); [] if none."""
    if is_gcs(uri):
        bucket, name = _bucket_name(uri)
        prefix = name.rstrip("/") + "/" if name.strip("/") else ""
        blobs = _client().list_blobs(bucket, prefix=prefix, timeout=GCS_TIMEOUT, retry=_retry())
        return sorted(f"gs://{bucket}/{b.name}" for b in blobs if not b.name.endswith("/"))
    root = local_path(uri)
    if not root.is_dir():
        return []
    return sorted(join(uri, p.relative_to(root).as_posix()) for p in root.rglob("*") if p.is_file())


def _relative(uri: str, base: str) -> str:
    """`uri` relative to the directory `base`, refusing names that would escape a local directory."""
    rel = uri[len(base.rstrip("/")) + 1:]
    parts = PurePosixPath(rel).parts
    if not rel or rel.startswith("/") or ".." in parts:
        raise ValueError(f"unsafe object name {uri!r} under {base!r}")
    return rel


def _get_file(uri: str, dest: Path) -> None:
    """Copy one file / object to the local file `dest` (its directory exists)."""
    if is_gcs(uri):
        try:
            _blob(uri).download_to_filename(str(dest), timeout=GCS_TIMEOUT, retry=_retry())
        except _not_found():
            raise FileNotFoundError(uri) from None
    else:
        shutil.copyfile(local_path(uri), dest)


def _put_file(src: Path, uri: str) -> None:
    """Publish the local file `src` at `uri` atomically (readers see the old or the new file)."""
    if is_gcs(uri):
        _blob(uri).upload_from_filename(str(src), timeout=GCS_TIMEOUT, retry=_retry())
        return
    with staged(uri) as tmp:
        shutil.copyfile(src, tmp)


def download_dir(uri: str, local_dir: str | Path) -> list[Path]:
    """Copy every file under the directory `uri` into `local_dir` (keeping sub-paths)."""
    out = []
    for item in list_prefix(uri):
        dest = Path(local_dir) / _relative(item, uri)
        dest.parent.mkdir(parents=True, exist_ok=True)
        _get_file(item, dest)
        out.append(dest)
    return out


def upload_dir(local_dir: str | Path, uri: str) -> list[str]:
    """Copy every file under `local_dir` to the directory `uri` (keeping sub-paths), each atomically."""
    root = Path(local_dir)
    out = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        target = join(uri, path.relative_to(root).as_posix())
        _put_file(path, target)
        out.append(target)
    return out


@contextlib.contextmanager
def localized(uri: str) -> Iterator[Path]:
    """A local file with the content at `uri`, for libraries that want a file name: the file itself
    when local, a temporary copy (removed on exit) when gs://. FileNotFoundError if missing."""
    if not is_gcs(uri):
        path = local_path(uri)
        if not path.is_file():
            raise FileNotFoundError(uri)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix=TEMP_PREFIX) as tmp:
        dest = Path(tmp) / (PurePosixPath(_bucket_name(uri)[1]).name or "object")
        _get_file(uri, dest)
        yield dest


@contextlib.contextmanager
def localized_dir(uri: str) -> Iterator[Path]:
    """A local directory with the files under `uri`: the directory itself when local, a temporary
    copy (removed on exit) when gs://. FileNotFoundError if there is nothing there."""
    if not is_gcs(uri):
        path = local_path(uri)
        if not path.is_dir():
            raise FileNotFoundError(uri)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix=TEMP_PREFIX) as tmp:
        if not download_dir(uri, tmp):
            raise FileNotFoundError(f"no objects under {uri}")
        yield Path(tmp)


@contextlib.contextmanager
def staged(uri: str) -> Iterator[Path]:
    """A local file name to write `uri`'s new content to; published when the block exits without an
    error (local: rename over the target; gs: one upload, objects are atomic), discarded otherwise."""
    if is_gcs(uri):
        _blob(uri)  # a bad URI fails before the caller does the work
        with tempfile.TemporaryDirectory(prefix=TEMP_PREFIX) as tmp:
            path = Path(tmp) / (PurePosixPath(_bucket_name(uri)[1]).name or "object")
            path.touch()
            yield path
            _put_file(path, uri)
        return
    target = local_path(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(fd)
    try:
        yield Path(name)
        os.replace(name, target)
    finally:
        Path(name).unlink(missing_ok=True)


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
