"""Artifact storage: one small API over local paths (and, later, gs:// URIs).

Jobs and services address artifacts by URI. Locally a URI is a plain path or a
`file://` URI under ARTIFACT_ROOT.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse


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
    return local_path(uri).exists()


def read_bytes(uri: str) -> bytes:
    return local_path(uri).read_bytes()


def read_text(uri: str) -> str:
    return local_path(uri).read_text(encoding="utf-8")


def read_json(uri: str) -> Any:
    return json.loads(read_text(uri))


def write_bytes(uri: str, data: bytes) -> None:
    """Atomic write: readers never see a half-written file."""
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


def makedirs(uri: str) -> Path:
    path = local_path(uri)
    path.mkdir(parents=True, exist_ok=True)
    return path
