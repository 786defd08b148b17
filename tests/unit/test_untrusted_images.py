"""Images are untrusted in ETL, training and serving: one helper (jobs/tasks/images.open_image)
refuses formats off the allowlist and images over the pixel limit from the header, before a
decompression bomb (a few KB of PNG declaring 12000×12000, ~600 MB decoded) is decoded. The model
server refuses request bodies it cannot bound (Content-Length missing, negative, not a number, too
large, chunked) with 4xx, without reading to EOF."""

from __future__ import annotations

import base64
import io
import json
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobs import serving
from jobs.tasks import images
from jobs.tasks.image_single_classification import TASK

DATA = Path(__file__).resolve().parent.parent / "data"
RED = DATA / "images" / "red_8x6.png"
SIDE = 12000


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """A valid 12000×12000 grayscale PNG of black pixels: 144 MB of pixels (~600 MB once converted to
    RGB floats by a trainer) in about 140 KB."""
    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + SIDE)
    idat = b"".join(comp.compress(row) for _ in range(SIDE)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", SIDE, SIDE, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def test_the_bomb_is_small_and_a_real_png(bomb: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    import warnings

    from PIL import Image

    assert len(bomb) < 200_000
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with warnings.catch_warnings(), Image.open(io.BytesIO(bomb)) as im:  # Pillow unlimited would decode it
        warnings.simplefilter("ignore")
        assert im.format == "PNG" and im.size == (SIDE, SIDE)


def test_open_image_refuses_it_from_the_header(bomb: bytes) -> None:
    started = time.monotonic()
    with pytest.raises(images.ImageRefused) as info, images.open_image(bomb):
        pass
    assert info.value.reason == "refused_image_pixels" and "pixel limit" in str(info.value)
    assert time.monotonic() - started < 1.0  # nothing was decoded


def test_training_and_serving_decoders_refuse_it(bomb: bytes, tmp_path: Path) -> None:
    (tmp_path / "bomb.png").write_bytes(bomb)
    with pytest.raises(images.ImageRefused):
        images.load_image(str(tmp_path / "bomb.png"), size=8)  # training
    with pytest.raises(ValueError, match="pixel limit"):
        images.decode_b64(base64.b64encode(bomb).decode(), size=8)  # serving


def test_the_pixel_limit_is_the_configured_one() -> None:
    assert images.decode_image(RED.read_bytes()).shape == (6, 8)
    images.set_max_pixels(47)  # 8×6 = 48 (restored after the test by tests/conftest.py)
    with pytest.raises(images.ImageRefused, match="47-pixel limit"):
        images.decode_image(RED.read_bytes())
    with pytest.raises(ValueError):
        images.set_max_pixels(0)


def test_formats_off_the_allowlist_are_refused() -> None:
    from PIL import Image

    for fmt in ("TIFF", "ICO", "PPM"):
        buf = io.BytesIO()
        Image.new("RGB", (4, 4)).save(buf, format=fmt)
        with pytest.raises(images.ImageRefused) as info, images.open_image(buf.getvalue()):
            pass
        assert info.value.reason == "not_an_allowed_image"
    for fmt in images.ALLOWED_FORMATS:
        buf = io.BytesIO()
        Image.new("RGB", (4, 4)).save(buf, format=fmt)
        with images.open_image(buf.getvalue()) as im:
            assert im.size == (4, 4)


def test_etl_skips_the_bomb_with_its_reason_in_stats(bomb: bytes, tmp_path: Path) -> None:
    (tmp_path / "bomb.png").write_bytes(bomb)
    text = (DATA / "export_image_single.ndjson").read_text(encoding="utf-8").replace("__DATA__", str(DATA / "images"))
    rows = [json.loads(line) for line in text.splitlines()]
    victim = rows[0]["data_row"]["id"]
    rows[0]["data_row"]["row_data"] = (tmp_path / "bomb.png").as_uri()
    dataset = TASK.convert(rows, "mr-img", {}, str(tmp_path / "etl"), lambda *a, **k: None)
    assert victim not in {e["data_row_id"] for e in dataset.examples + dataset.predict_only}
    assert dataset.stats["skipped"]["refused_image_pixels"]["data_row_ids"] == [victim]
    assert dataset.stats["media"]["reasons"]["refused_image_pixels"] == 1
    assert "pixel limit" in dataset.stats["media"]["failures"][victim]
    assert not list((tmp_path / "etl").rglob(f"{victim}.*"))  # nothing stored for it


# --- the model server ---------------------------------------------------------------------------


class ImagePredictor:
    """Decodes each instance as the image tasks do."""

    meta = {"model_type": "image_single_classification"}

    def parse_instances(self, instances: list[Any]) -> list[dict[str, Any]]:
        return [{"pixels": images.decode_b64(images.instance_b64(i), size=8)} for i in instances]

    def predict(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"label": "x", "shape": list(r["pixels"].shape)} for r in rows]


@pytest.fixture()
def server() -> Iterator[tuple[str, int]]:
    srv = serving.make_server(ImagePredictor(), "127.0.0.1", 0, "/predict", "/health")
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield "127.0.0.1", srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def _raw(addr: tuple[str, int], head: str, body: bytes = b"") -> tuple[int, dict[str, Any]]:
    """Send a request as given and read the answer, keeping our side open (a server reading to EOF
    would hang here until the socket timeout)."""
    with socket.create_connection(addr, timeout=5) as s:
        s.sendall(head.encode("latin-1") + b"\r\n" + body)
        data = b""
        while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + _length(data):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, json.loads(data.split(b"\r\n\r\n", 1)[1])


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


def _head(*headers: str) -> str:
    return "POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + "".join(
        h + "\r\n" for h in headers)


def test_serving_answers_a_bomb_with_400(server: tuple[str, int], bomb: bytes) -> None:
    body = json.dumps({"instances": [{"b64": base64.b64encode(bomb).decode()}]}).encode()
    status, payload = _raw(server, _head(f"Content-Length: {len(body)}"), body)
    assert status == 400 and "pixel limit" in payload["error"]
    ok = json.dumps({"instances": [{"b64": base64.b64encode(RED.read_bytes()).decode()}]}).encode()
    assert _raw(server, _head(f"Content-Length: {len(ok)}"), ok) == (200, {"predictions": [{"label": "x",
                                                                                           "shape": [8, 8]}]})


@pytest.mark.parametrize(("header", "status"), [
    (None, 411), ("Content-Length: -1", 400), ("Content-Length: abc", 400), ("Content-Length: 1e3", 400),
    ("Content-Length: +5", 400), (f"Content-Length: {serving.MAX_REQUEST_BYTES + 1}", 413),
    ("Content-Length: 99999999999999999999", 400), ("Transfer-Encoding: chunked", 411),
])
def test_serving_refuses_bodies_it_cannot_bound(server: tuple[str, int], header: str | None, status: int) -> None:
    started = time.monotonic()
    got, payload = _raw(server, _head(*([header] if header else [])), b"{\"instances\": []}")
    assert got == status and payload["error"]
    assert time.monotonic() - started < 3.0  # answered at once, not after reading to EOF


def test_serving_refuses_two_different_content_lengths(server: tuple[str, int]) -> None:
    got, _ = _raw(server, _head("Content-Length: 2", "Content-Length: 17"), b"{\"instances\": []}")
    assert got == 400


def test_serving_answers_a_bounded_body(server: tuple[str, int]) -> None:
    body = b'{"instances": []}'
    assert _raw(server, _head(f"Content-Length: {len(body)}"), body) == (200, {"predictions": []})
