"""Artifact storage over local paths and file:// URIs (lbtrain/storage.py)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from lbtrain import storage


def test_run_dir_layout() -> None:
    assert storage.run_dir("/art", "r1", "train", 2) == "/art/runs/r1/train/a2"
    assert storage.run_dir("/art/", "r1", "etl", 1) == "/art/runs/r1/etl/a1"
    assert storage.run_dir("gs://bucket/lbtrain", "r1", "deploy", 3) == "gs://bucket/lbtrain/runs/r1/deploy/a3"
    assert storage.run_dir("file:///srv/art", "r1", "evaluate", 1) == "file:///srv/art/runs/r1/evaluate/a1"


@pytest.mark.parametrize("base,parts,expected", [
    ("a", ("b", "c"), "a/b/c"),
    ("a/", ("/b/", "c/"), "a/b/c"),
    ("/abs", ("x",), "/abs/x"),
    ("gs://bucket", ("dir", "f.json"), "gs://bucket/dir/f.json"),
    ("gs://bucket/", ("f.json",), "gs://bucket/f.json"),
    ("file:///tmp/x", ("y",), "file:///tmp/x/y"),
    ("a", (), "a"),
    ("a", ("b/c", "d"), "a/b/c/d"),
])
def test_join(base: str, parts: tuple[str, ...], expected: str) -> None:
    assert storage.join(base, *parts) == expected


def test_local_path_of_plain_paths_and_file_uris() -> None:
    assert storage.local_path("/tmp/a/b.json") == Path("/tmp/a/b.json")
    assert storage.local_path("rel/b.json") == Path("rel/b.json")
    assert storage.local_path("file:///tmp/a/b.json") == Path("/tmp/a/b.json")
    assert storage.local_path("file:///tmp/with%20space/%C3%A9.json") == Path("/tmp/with space/é.json")
    assert storage.local_path("file://localhost/tmp/x") == Path("/tmp/x")


@pytest.mark.parametrize("uri", ["gs://bucket/x", "https://example.com/x", "s3://b/k"])
def test_local_path_refuses_remote_uris(uri: str) -> None:
    with pytest.raises(ValueError, match="not a local"):
        storage.local_path(uri)


def test_write_and_read_through_a_file_uri(tmp_path: Path) -> None:
    uri = (tmp_path / "dir with space" / "out.json").as_uri()
    assert uri.startswith("file://") and "%20" in uri
    storage.write_json(uri, {"b": 1, "a": "é"})
    assert storage.exists(uri)
    assert storage.read_json(uri) == {"b": 1, "a": "é"}
    assert (tmp_path / "dir with space" / "out.json").read_text(encoding="utf-8").startswith("{")


def test_write_creates_parent_dirs(tmp_path: Path) -> None:
    uri = str(tmp_path / "a" / "b" / "c.txt")
    storage.write_text(uri, "hi")
    assert storage.read_text(uri) == "hi"
    assert storage.read_bytes(uri) == b"hi"


def test_write_json_is_stable_and_utf8(tmp_path: Path) -> None:
    uri = str(tmp_path / "m.json")
    storage.write_json(uri, {"z": 1, "a": "ünï"})
    text = (tmp_path / "m.json").read_text(encoding="utf-8")
    assert text.index('"a"') < text.index('"z"') and "ünï" in text and text.endswith("\n")


def test_overwrite_replaces_and_leaves_no_temp_files(tmp_path: Path) -> None:
    uri = str(tmp_path / "f.bin")
    storage.write_bytes(uri, b"old" * 1000)
    storage.write_bytes(uri, b"new")
    assert storage.read_bytes(uri) == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_failed_write_keeps_the_old_content_and_no_temp_file(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    uri = str(tmp_path / "f.json")
    storage.write_bytes(uri, b"old")

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(storage.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        storage.write_bytes(uri, b"new")
    monkeypatch.undo()
    assert storage.read_bytes(uri) == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_failed_write_before_rename_leaves_no_file(tmp_path: Path) -> None:
    uri = str(tmp_path / "g.json")
    with pytest.raises(TypeError):
        storage.write_bytes(uri, "not bytes")  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_readers_never_see_a_partial_file(tmp_path: Path) -> None:
    """Atomic replace: a concurrent reader sees either the old or the new content, whole."""
    uri = str(tmp_path / "big.bin")
    a, b = b"a" * 2_000_000, b"b" * 2_000_000
    storage.write_bytes(uri, a)
    stop = threading.Event()
    seen: set[bytes] = set()

    def reader() -> None:
        while not stop.is_set():
            data = storage.read_bytes(uri)
            seen.add(data[:1] + data[-1:] + str(len(data)).encode())

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(30):
            storage.write_bytes(uri, b if i % 2 == 0 else a)
    finally:
        stop.set()
        t.join()
    assert seen <= {b"aa2000000", b"bb2000000"}


def test_makedirs_and_exists(tmp_path: Path) -> None:
    uri = (tmp_path / "x" / "y").as_uri()
    assert not storage.exists(uri)
    path = storage.makedirs(uri)
    assert path.is_dir() and storage.exists(uri)
    assert storage.makedirs(uri) == path  # idempotent


def test_read_missing_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        storage.read_json(str(tmp_path / "missing.json"))
