"""The file-level storage API (delete, list_prefix, localized, localized_dir, staged, upload_dir,
download_dir): one test body, run on a local directory and on gs:// (the real google-cloud-storage
client against the in-process GCS emulator)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from lbtrain import storage


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Python's temp dir for this test, so leftovers of gs:// copies can be asserted on."""
    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


@pytest.fixture(params=["local", "file-uri", "gs"])
def root(request: pytest.FixtureRequest, tmp_path: Path, scratch: Path) -> Iterator[str]:
    if request.param == "gs":
        bucket = request.getfixturevalue("gcs_bucket")
        yield f"gs://{bucket}/art"
    elif request.param == "file-uri":
        yield (tmp_path / "art dir").as_uri()
    else:
        yield str(tmp_path / "art")
    assert list(scratch.iterdir()) == []  # every temporary copy was removed


def test_delete_tolerates_missing(root: str) -> None:
    uri = storage.join(root, "runs", "outputs.json")
    storage.write_json(uri, {"a": 1})
    assert storage.delete(uri) is True
    assert not storage.exists(uri)
    assert storage.delete(uri) is False


def test_list_prefix_is_recursive_and_stops_at_the_directory(root: str) -> None:
    for name in ("m/b.txt", "m/c/d.bin", "mx/not-me.txt", "m.txt"):
        storage.write_text(storage.join(root, name), name)
    assert storage.list_prefix(storage.join(root, "m")) == [storage.join(root, "m/b.txt"),
                                                              storage.join(root, "m/c/d.bin")]
    assert storage.list_prefix(storage.join(root, "m") + "/") == storage.list_prefix(storage.join(root, "m"))
    assert storage.list_prefix(storage.join(root, "nothing")) == []


def test_localized_gives_a_readable_file(root: str) -> None:
    uri = storage.join(root, "model", "model.joblib")
    storage.write_bytes(uri, b"\x00weights")
    with storage.localized(uri) as path:
        assert path.is_file() and path.read_bytes() == b"\x00weights" and path.name == "model.joblib"
    with pytest.raises(FileNotFoundError), storage.localized(storage.join(root, "model", "nope.pt")):
        pass


def test_localized_dir_holds_every_file(root: str) -> None:
    storage.write_json(storage.join(root, "model", "model.json"), {"model_type": "x"})
    storage.write_bytes(storage.join(root, "model", "sub", "w.pt"), b"w")
    with storage.localized_dir(storage.join(root, "model")) as d:
        assert sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file()) == [
            "model.json", "sub/w.pt"]
        assert (d / "sub" / "w.pt").read_bytes() == b"w"
    with pytest.raises(FileNotFoundError), storage.localized_dir(storage.join(root, "empty")):
        pass


def test_staged_publishes_only_on_success(root: str) -> None:
    uri = storage.join(root, "model", "model.pt")
    with storage.staged(uri) as path:
        path.write_bytes(b"v1")
        assert not storage.exists(uri)  # nothing visible before the block ends
    assert storage.read_bytes(uri) == b"v1"
    with pytest.raises(RuntimeError), storage.staged(uri) as path:
        path.write_bytes(b"half")
        raise RuntimeError("training crashed")
    assert storage.read_bytes(uri) == b"v1"  # the old content survives a failed write
    assert storage.list_prefix(storage.join(root, "model")) == [uri]  # no temporary file left beside it


def test_upload_and_download_dir_round_trip(root: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "top.json").write_text("{}")
    (src / "a" / "b" / "deep.bin").write_bytes(b"\x01\x02")
    target = storage.join(root, "copy")
    assert storage.upload_dir(src, target) == [storage.join(target, "a/b/deep.bin"),
                                               storage.join(target, "top.json")]
    assert storage.read_bytes(storage.join(target, "a/b/deep.bin")) == b"\x01\x02"
    dest = tmp_path / "dest"
    got = storage.download_dir(target, dest)
    assert sorted(p.relative_to(dest).as_posix() for p in got) == ["a/b/deep.bin", "top.json"]
    assert (dest / "top.json").read_text() == "{}"


@pytest.mark.parametrize("name", ["m/../../evil.txt", "m/../x", "m//abs"])
def test_object_names_escaping_the_directory_are_refused(name: str) -> None:
    """GCS object names may contain `..` (the emulator refuses them, so the guard is tested directly)."""
    with pytest.raises(ValueError, match="unsafe object name"):
        storage._relative(f"gs://b/art/{name}", "gs://b/art/m")


def test_gs_objects_are_real_objects_in_the_bucket(gcs_bucket: str) -> None:
    """What the API wrote is visible to a plain google-cloud-storage client, byte for byte."""
    from google.cloud import storage as gcs

    with storage.staged(f"gs://{gcs_bucket}/art/model/model.joblib") as path:
        path.write_bytes(b"joblib")
    storage.write_text(f"gs://{gcs_bucket}/art/model/model.json", "{}")
    bucket = gcs.Client().bucket(gcs_bucket)
    assert sorted(b.name for b in bucket.list_blobs(prefix="art/", timeout=30)) == [
        "art/model/model.joblib", "art/model/model.json"]
    assert bucket.blob("art/model/model.joblib").download_as_bytes(timeout=30) == b"joblib"


def test_bad_gs_uris_fail_before_any_work() -> None:
    with pytest.raises(ValueError, match="bad gs://"), storage.staged("gs://bucket-only"):
        pytest.fail("the block must not run")
    with pytest.raises(ValueError, match="bad gs://"):
        storage.delete("gs://bucket/dir/")
