"""Shared image ETL (jobs/tasks/images.py): fetching media by file://, path and http with retries,
bounded parallelism, sizes from media_attributes or the image, per-row failures, decoding."""

from __future__ import annotations

import base64
import http.server
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from jobs.tasks import images
from lbtrain import fetch, storage

# The explicit test-only allowance for http servers on 127.0.0.1 (never set in production config).
LOOPBACK = fetch.FetchPolicy(allow_files=True, allow_loopback=True)
DATA = Path(__file__).resolve().parent.parent / "data" / "images"
RED = DATA / "red_8x6.png"  # 8 wide, 6 high, RGB
BAR = DATA / "bar_10x10.png"  # 10×10 grayscale


def test_media_ref_from_export_row() -> None:
    row = {
        "data_row": {"id": "d1", "row_data": " file:///x/y.png "},
        "media_attributes": {"height": 480, "width": 640, "mime_type": "image/jpeg"},
    }
    assert images.media_ref(row) == images.MediaRef("d1", "file:///x/y.png", 640, 480, "image/jpeg")
    assert images.media_ref({"data_row": {"id": "d2", "row_data": "/p.png"}}) == images.MediaRef("d2", "/p.png")
    assert images.media_ref({"data_row": {"id": "d3"}}) is None


def test_file_uri_and_plain_path(tmp_path: Path) -> None:
    refs = [
        images.MediaRef("a", RED.as_uri()),
        images.MediaRef("b/../x", str(BAR)),
        images.MediaRef("c", str(tmp_path / "missing.png")),
        images.MediaRef("d", "ftp://host/x.png"),
    ]
    out = images.fetch_media(refs, str(tmp_path / "etl"), workers=2)
    a, b, c, d = out
    assert isinstance(a, images.MediaResult) and (a.width, a.height, a.mime) == (8, 6, "image/png")
    assert a.local_uri == str(tmp_path / "etl" / "media" / "a.png")
    assert Path(a.local_uri).read_bytes() == RED.read_bytes()
    assert isinstance(b, images.MediaResult) and (b.width, b.height) == (10, 10)
    assert Path(b.local_uri).parent == tmp_path / "etl" / "media"  # id made file-name safe
    assert isinstance(c, images.FetchError) and c.data_row_id == "c" and "FileNotFoundError" in str(c)
    assert isinstance(d, images.FetchError) and "unsupported" in str(d)
    stats = images.fetch_stats(out)
    assert stats["fetched"] == 2 and stats["failed"] == 2 and set(stats["failures"]) == {"c", "d"}


def test_size_from_media_attributes_wins(tmp_path: Path) -> None:
    (res,) = images.fetch_media([images.MediaRef("a", str(RED), width=640, height=480)], str(tmp_path))
    assert isinstance(res, images.MediaResult) and (res.width, res.height) == (640, 480)
    (res,) = images.fetch_media([images.MediaRef("a", str(RED), width=640)], str(tmp_path))  # partial: ignored
    assert isinstance(res, images.MediaResult) and (res.width, res.height) == (8, 6)


def test_not_an_image_is_a_row_failure(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    (res,) = images.fetch_media([images.MediaRef("x", str(bad))], str(tmp_path / "o"))
    assert isinstance(res, images.FetchError) and "not a readable image" in str(res)


def test_gs_without_client_library_says_what_to_install(tmp_path: Path, monkeypatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_gcs(name: str, globals_: Any = None, locals_: Any = None, fromlist: Any = (), level: int = 0) -> Any:
        if name == "google.cloud.storage" or (name == "google.cloud" and "storage" in (fromlist or ())):
            raise ImportError("No module named 'google.cloud.storage'")
        return real_import(name, globals_, locals_, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", no_gcs)
    monkeypatch.setattr(storage, "_gcs_client", None)
    policy = fetch.FetchPolicy(gcs_buckets=frozenset({"bucket"}))
    (res,) = images.fetch_media([images.MediaRef("g", "gs://bucket/a.png")], str(tmp_path), policy=policy)
    assert isinstance(res, images.FetchError) and "pip install google-cloud-storage" in str(res)


class _Server(http.server.BaseHTTPRequestHandler):
    """Serves RED; the first request of /flaky* paths gets a 503; counts concurrent requests."""

    seen: set[str] = set()
    lock = threading.Lock()
    active = 0
    peak = 0
    delay = 0.0

    def do_GET(self) -> None:  # noqa: N802
        cls = type(self)
        with cls.lock:
            cls.active += 1
            cls.peak = max(cls.peak, cls.active)
            first = self.path not in cls.seen
            cls.seen.add(self.path)
        try:
            time.sleep(cls.delay)
            if self.path.startswith("/flaky") and first:
                self.send_response(503)
                self.end_headers()
                return
            if self.path.startswith("/gone"):
                self.send_response(404)
                self.end_headers()
                return
            body = RED.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        finally:
            with cls.lock:
                cls.active -= 1

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def server():
    _Server.seen, _Server.active, _Server.peak, _Server.delay = set(), 0, 0, 0.0
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Server)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def test_http_retries_transient_then_succeeds(tmp_path: Path, server: str) -> None:
    refs = [
        images.MediaRef("f", f"{server}/flaky.png"),
        images.MediaRef("g", f"{server}/gone.png"),
        images.MediaRef("n", "http://127.0.0.1:9/nothing-listens"),
    ]
    f, g, n = images.fetch_media(refs, str(tmp_path), timeout=2, retries=2, backoff=0.01, policy=LOOPBACK)
    assert isinstance(f, images.MediaResult) and (f.width, f.height) == (8, 6)
    assert Path(f.local_uri).read_bytes() == RED.read_bytes()
    assert isinstance(g, images.FetchError) and "404" in str(g)  # not transient: no retry
    assert isinstance(n, images.FetchError) and n.data_row_id == "n"


def test_parallelism_is_bounded(tmp_path: Path, server: str) -> None:
    _Server.delay = 0.05
    refs = [images.MediaRef(f"r{i}", f"{server}/img{i}.png") for i in range(12)]
    out = images.fetch_media(refs, str(tmp_path), workers=3, timeout=5, policy=LOOPBACK)
    assert all(isinstance(r, images.MediaResult) for r in out)
    assert [r.data_row_id for r in out] == [f"r{i}" for i in range(12)]  # order kept
    assert 2 <= _Server.peak <= 3


def test_decode_helpers() -> None:
    gray = images.load_image(str(RED), size=(4, 3))
    assert gray.shape == (3, 4) and gray.dtype.name == "uint8"
    rgb = images.load_image(RED.read_bytes(), mode="RGB")
    assert rgb.shape == (6, 8, 3) and rgb[0, 0].tolist() == [255, 0, 0] and rgb[0, 7].tolist() == [0, 0, 0]
    b64 = base64.b64encode(BAR.read_bytes()).decode()
    for inst in (b64, {"b64": b64}, {"image": {"b64": b64}}, {"content": b64}):
        arr = images.decode_b64(images.instance_b64(inst), size=5)
        assert arr.shape == (5, 5)
    assert images.decode_b64("data:image/png;base64," + b64).shape == (10, 10)
    with pytest.raises(ValueError, match="b64"):
        images.instance_b64({"text": "x"})
    with pytest.raises(ValueError, match="not a readable image"):
        images.decode_b64(base64.b64encode(b"nope").decode())
