"""gs:// image rows through the real google-cloud-storage client against a local storage emulator
(gcp-storage-emulator, in process): fetched, copied into the run's artifacts, sized from the image."""

from __future__ import annotations

import io

import pytest

from jobs.tasks import images
from lbtrain import fetch


@pytest.fixture
def gcs(gcs_bucket):
    from google.cloud import storage

    return storage.Client(project="test").bucket(gcs_bucket)


def png(width: int, height: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (width, height), color=128).save(buf, format="PNG")
    return buf.getvalue()


def test_gs_rows_are_fetched_copied_and_sized(gcs, tmp_path):
    gcs.blob("rows/a.png").upload_from_string(png(40, 30), content_type="image/png")
    gcs.blob("rows/b.png").upload_from_string(png(12, 8), content_type="image/png")
    refs = [images.MediaRef("dr-a", "gs://lbtrain-test/rows/a.png"),
            images.MediaRef("dr-b", "gs://lbtrain-test/rows/b.png", width=12, height=8, mime="image/png"),
            images.MediaRef("dr-missing", "gs://lbtrain-test/rows/nope.png")]
    policy = fetch.FetchPolicy(gcs_buckets=frozenset({"lbtrain-test"}))  # MEDIA_BUCKETS=lbtrain-test
    results = images.fetch_media(refs, str(tmp_path / "etl"), workers=2, retries=1, backoff=0.01, policy=policy)
    a, b, missing = results
    assert isinstance(a, images.MediaResult) and (a.width, a.height) == (40, 30)
    assert isinstance(b, images.MediaResult) and (b.width, b.height) == (12, 8)
    assert (tmp_path / "etl" / "media").is_dir()
    with open(a.local_uri.removeprefix("file://"), "rb") as fh:
        assert fh.read() == png(40, 30)
    assert isinstance(missing, images.FetchError) and missing.data_row_id == "dr-missing"
    stats = images.fetch_stats(results)
    assert stats["fetched"] == 2 and stats["failed"] == 1 and "dr-missing" in stats["failures"]


def test_gs_rows_outside_the_media_buckets_are_refused_and_oversize_objects_never_downloaded(gcs, tmp_path):
    gcs.blob("rows/a.png").upload_from_string(png(40, 30), content_type="image/png")
    refs = [images.MediaRef("dr-a", "gs://lbtrain-test/rows/a.png")]
    (other,) = images.fetch_media(refs, str(tmp_path / "o1"), retries=0, policy=fetch.FetchPolicy())
    assert isinstance(other, images.FetchError) and other.reason == "refused_bucket"
    small = fetch.FetchPolicy(gcs_buckets=frozenset({"lbtrain-test"}), max_image_bytes=50)
    (big,) = images.fetch_media(refs, str(tmp_path / "o2"), retries=0, policy=small)
    assert isinstance(big, images.FetchError) and big.reason == "refused_too_large"
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
