"""Image media for the image model types: fetch Export v2 image rows into the run's artifacts, and
decode image files into numpy arrays for training and serving. Shared by every image task.

API (keep it small and stable; the image tasks and the bounding-box task build on it):

    ref = media_ref(row, data_row_id)              # Export v2 row → MediaRef (uri, size/mime if exported)
    results = fetch_media(refs, out_uri, workers=8, timeout=30, retries=3)
        # → list[MediaResult | FetchError], same order as `refs`. Media go to
        #   `{out_uri}/media/{data_row_id}.{ext}` (lbtrain.storage). One failure never stops the others.
    stats = fetch_stats(results)                    # {"fetched": n, "failed": n, "failures": {id: reason}}
    array = load_image(uri_or_bytes, size=(w, h), mode="L" | "RGB")   # uint8 H×W or H×W×3
    arrays = load_images(uris, size=..., mode=..., workers=8)        # the same, reading in parallel
    array = decode_b64(instance_b64(instance), size=..., mode=...)   # a Vertex image instance
    converted = convert_rows(rows, model_run_id, out_uri, target_of, progress, workers=8)
        # → ImageRows(examples, predict_only, skipped, fetch, rows): Export v2 rows → examples
        #   {data_row_id, split, image (local URI), width, height, mime, source, global_key?, **target}
        #   with every row not used counted and named by reason (target_of(ref) → (fields, reason)).
    mode = guess_mode(uris)                         # "L" if the sampled images are gray, else "RGB"

Sources: whatever the process's `lbtrain.fetch` policy allows (row_data is untrusted: public
`https://`, `gs://` in the configured buckets, local files only with the file-backed Labelbox),
retried with exponential backoff on 5xx/408/429 and network errors; a refused row is never fetched
and is counted under its reason (refused_scheme, refused_address, refused_too_large …). Every image
is opened through `open_image`: allowlisted formats and at most `max_pixels` pixels (40 MP unless
LBTRAIN_MAX_IMAGE_PIXELS says otherwise), in ETL, training and serving alike. Width/height come from
`media_attributes` when exported, else from the image header. PIL and numpy are imported inside
functions so importing this module stays cheap.
"""

from __future__ import annotations

import base64
import contextlib
import io
import re
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from jobs.tasks import exportv2
from lbtrain import fetch, storage
from lbtrain.config import DEFAULT_MAX_IMAGE_PIXELS

MEDIA_DIR = "media"
DEFAULT_WORKERS = 8
IMAGE_SCHEMES = ("http://", "https://", "file://", "gs://")
# Decoders an untrusted image may reach (no TIFF, EPS, PSD … and their larger attack surface).
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
_EXT_BY_MIME = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/jpg": "jpg",
    "image/gif": "gif",
    "image/bmp": "bmp",
    "image/webp": "webp",
    "image/tiff": "tif",
}
_EXT_BY_FORMAT = {"PNG": "png", "JPEG": "jpg", "GIF": "gif", "BMP": "bmp", "WEBP": "webp", "TIFF": "tif"}
_MIME_BY_EXT = {v: k for k, v in _EXT_BY_MIME.items() if k != "image/jpg"}


@dataclass(frozen=True)
class MediaRef:
    """Where one data row's image is, and what the export already says about it."""

    data_row_id: str
    uri: str
    width: int | None = None
    height: int | None = None
    mime: str | None = None


@dataclass(frozen=True)
class MediaResult:
    """A fetched image: its copy in the run's artifacts and its size in pixels."""

    data_row_id: str
    uri: str  # where it came from (row_data)
    local_uri: str  # the copy under {out_uri}/media/
    width: int
    height: int
    mime: str


class FetchError(exportv2.FetchError):
    """One row's media could not be fetched, was refused or is not an image (a per-row result, not
    raised). `reason` is the skip reason stats.json counts it under."""

    def __init__(self, message: str, data_row_id: str = "", uri: str = "", reason: str = "fetch_failed"):
        super().__init__(message, reason=reason)
        self.data_row_id = data_row_id
        self.uri = uri


class ImageRefused(ValueError):
    """An image over the pixel limit (reason refused_image_pixels) or not an image in an allowed
    format (not_an_allowed_image); never decoded."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


_max_pixels = DEFAULT_MAX_IMAGE_PIXELS


def set_max_pixels(max_pixels: int) -> None:
    """The process's pixel limit (jobs.main sets it from LBTRAIN_MAX_IMAGE_PIXELS)."""
    global _max_pixels
    if max_pixels <= 0:
        raise ValueError("the pixel limit must be positive")
    _max_pixels = int(max_pixels)


@contextlib.contextmanager
def open_image(data: bytes, *, max_pixels: int | None = None) -> Iterator[Any]:
    """PIL image of untrusted bytes: only ALLOWED_FORMATS, and refused from its header alone when
    width × height is over the limit (a few KB of PNG can declare 12000×12000, ~600 MB decoded).
    Pillow's own bomb check is set to the same limit and its warning raised as an error."""
    from PIL import Image, UnidentifiedImageError

    limit = max_pixels or _max_pixels
    Image.MAX_IMAGE_PIXELS = limit
    # Process-wide and once (catch_warnings is not thread-safe; images are decoded from a pool).
    warnings.filterwarnings("error", category=Image.DecompressionBombWarning)
    try:
        im = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRefused(f"image over the {limit}-pixel limit ({exc})", "refused_image_pixels") from None
    except UnidentifiedImageError:
        raise ImageRefused(f"not a readable image in an allowed format ({', '.join(ALLOWED_FORMATS)})",
                           "not_an_allowed_image") from None
    with im:
        width, height = im.size
        if width * height > limit:
            raise ImageRefused(f"image of {width}×{height} pixels is over the {limit}-pixel limit",
                               "refused_image_pixels")
        yield im


def _positive_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        return None
    return n if n > 0 else None


def media_ref(row: Mapping[str, Any], data_row_id: str | None = None) -> MediaRef | None:
    """Export v2 row → MediaRef, or None when row_data is not a string."""
    data_row = row.get("data_row") or {}
    uri = data_row.get("row_data")
    if not isinstance(uri, str) or not uri.strip():
        return None
    attrs = row.get("media_attributes") or {}
    mime = attrs.get("mime_type") or attrs.get("mimeType")
    return MediaRef(
        data_row_id=str(data_row_id or data_row.get("id") or ""),
        uri=uri.strip(),
        width=_positive_int(attrs.get("width")),
        height=_positive_int(attrs.get("height")),
        mime=str(mime) if isinstance(mime, str) and mime.startswith("image/") else None,
    )


def safe_file_name(data_row_id: str) -> str:
    """A data row id usable as a file name (ids are cuids already; be safe with anything else)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", data_row_id).strip("._") or "row"


# --- reading bytes -----------------------------------------------------------------------------


def read_media(
    uri: str,
    *,
    timeout: float | None = None,
    retries: int = 3,
    backoff: float = 0.5,
    policy: fetch.FetchPolicy | None = None,
) -> bytes:
    """Bytes of one media URI under the fetch policy (the process's by default; `timeout` replaces
    its overall deadline per attempt), retrying transient errors `retries` times with exponential
    backoff. Raises lbtrain.fetch.FetchError (Refused when the policy refuses it)."""
    policy = policy or fetch.current()
    if timeout is not None:
        policy = policy.with_overrides(deadline_seconds=timeout)
    if storage.is_gcs(uri):
        retries = 0  # lbtrain.storage retries with the client's retry policy
    return fetch.fetch_retrying(uri, limit=policy.max_image_bytes, policy=policy, retries=retries,
                                backoff=backoff).data


# --- fetching into the run's artifacts ---------------------------------------------------------


def _image_info(data: bytes) -> tuple[int, int, str]:
    """(width, height, extension) from the image header; raises FetchError if it is not an allowed
    image or is over the pixel limit."""
    try:
        with open_image(data) as im:
            width, height = im.size
            fmt = im.format or ""
    except ImageRefused as exc:
        raise FetchError(str(exc), reason=exc.reason) from None
    except (OSError, ValueError) as exc:
        raise FetchError(f"not a readable image ({exc})") from None
    return width, height, _EXT_BY_FORMAT.get(fmt, fmt.lower() or "img")


def fetch_one(
    ref: MediaRef,
    out_uri: str,
    *,
    timeout: float | None = None,
    retries: int = 3,
    backoff: float = 0.5,
    policy: fetch.FetchPolicy | None = None,
) -> MediaResult:
    """Fetch one image into `{out_uri}/media/`; raises FetchError naming the row, the cause and the
    skip reason."""
    try:
        data = read_media(ref.uri, timeout=timeout, retries=retries, backoff=backoff, policy=policy)
        width, height, ext = _image_info(data)
    except fetch.FetchError as exc:
        raise FetchError(str(exc), ref.data_row_id, ref.uri, reason=exc.reason) from None
    if ref.width and ref.height:  # the exported media_attributes are authoritative
        width, height = ref.width, ref.height
    local_uri = storage.join(out_uri, MEDIA_DIR, f"{safe_file_name(ref.data_row_id)}.{ext}")
    storage.write_bytes(local_uri, data)
    mime = _MIME_BY_EXT.get(ext) or ref.mime or "application/octet-stream"
    return MediaResult(ref.data_row_id, ref.uri, local_uri, int(width), int(height), mime)


def fetch_media(
    refs: Sequence[MediaRef],
    out_uri: str,
    *,
    workers: int = DEFAULT_WORKERS,
    timeout: float | None = None,
    retries: int = 3,
    backoff: float = 0.5,
    policy: fetch.FetchPolicy | None = None,
    progress: Callable[..., None] | None = None,
) -> list[MediaResult | FetchError]:
    """Fetch every ref in a pool of at most `workers` threads; results in `refs` order, failures as
    FetchError values (with .data_row_id and .reason) so the caller counts and names them."""
    if not refs:
        return []
    policy = policy or fetch.current()
    done = [0]
    lock = threading.Lock()
    step = max(1, len(refs) // 10)

    def one(ref: MediaRef) -> MediaResult | FetchError:
        try:
            result: MediaResult | FetchError = fetch_one(
                ref, out_uri, timeout=timeout, retries=retries, backoff=backoff, policy=policy
            )
        except FetchError as exc:
            result = exc
        except Exception as exc:  # noqa: BLE001 - e.g. a full disk: still a per-row result
            result = FetchError(f"could not store {ref.uri}: {type(exc).__name__}: {exc}", ref.data_row_id, ref.uri)
        if progress is not None:
            with lock:
                done[0] += 1
                n = done[0]
            if n % step == 0 or n == len(refs):
                progress(f"fetched {n}/{len(refs)} images", fetched=n, total=len(refs))
        return result

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(refs)))) as pool:
        return list(pool.map(one, refs))


def fetch_stats(results: Sequence[MediaResult | FetchError], cap: int = exportv2.MAX_NAMED_IDS) -> dict[str, Any]:
    """For stats.json: how many fetched, how many failed (and per reason), and the first `cap`
    failures by row id."""
    failed = [r for r in results if isinstance(r, FetchError)]
    reasons: dict[str, int] = {}
    for f in failed:
        reasons[f.reason] = reasons.get(f.reason, 0) + 1
    return {
        "fetched": len(results) - len(failed),
        "failed": len(failed),
        "reasons": dict(sorted(reasons.items())),
        "failures": {f.data_row_id: str(f)[:300] for f in failed[:cap]},
    }


# --- decoding for training and inference -----------------------------------------------------


def _size(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def decode_image(data: bytes, *, size: int | tuple[int, int] | None = None, mode: str = "L") -> Any:
    """Image bytes → uint8 numpy array (H×W for mode "L", H×W×3 for "RGB"), resized to size=(w, h)."""
    import numpy as np
    from PIL import Image

    with open_image(data) as im:
        im = im.convert(mode)
        wh = _size(size)
        if wh is not None and im.size != wh:
            im = im.resize(wh, Image.Resampling.BILINEAR)
        return np.asarray(im, dtype=np.uint8).copy()


def load_image(source: str | bytes, *, size: int | tuple[int, int] | None = None, mode: str = "L") -> Any:
    """A local artifact URI/path (or raw bytes) → uint8 numpy array, see decode_image."""
    data = source if isinstance(source, bytes) else storage.read_bytes(source)
    return decode_image(data, size=size, mode=mode)


def load_images(
    uris: Sequence[str], *, size: int | tuple[int, int] | None = None, mode: str = "L",
    workers: int = DEFAULT_WORKERS,
) -> list[Any]:
    """load_image for many URIs, in order, reading `workers` at a time: on gs:// every image is
    one request, so a sequential loop would spend a training job's time waiting on the network."""
    if len(uris) <= 1 or workers <= 1:
        return [load_image(u, size=size, mode=mode) for u in uris]
    with ThreadPoolExecutor(max_workers=min(workers, len(uris))) as pool:
        return list(pool.map(lambda u: load_image(u, size=size, mode=mode), uris))


def decode_b64(text: str, *, size: int | tuple[int, int] | None = None, mode: str = "L") -> Any:
    """A base64 image (Vertex `{"b64": ...}` instance; a data: URL prefix is accepted) → array."""
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        data = base64.b64decode(text, validate=False)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not valid base64: {exc}") from None
    try:
        return decode_image(data, size=size, mode=mode)
    except ImageRefused:
        raise
    except Exception as exc:  # noqa: BLE001 - PIL raises several types for bad data
        raise ValueError(f"not a readable image: {type(exc).__name__}") from None


def instance_b64(instance: Any) -> str:
    """The base64 string of a Vertex image instance: "<b64>", {"b64"}, {"image": {"b64"}},
    {"content"} or {"image_bytes": {"b64"}}; raises ValueError otherwise."""
    if isinstance(instance, str):
        return instance
    if isinstance(instance, Mapping):
        for key in ("b64", "content", "image_bytes", "image"):
            value = instance.get(key)
            if isinstance(value, str):
                return value
            if isinstance(value, Mapping) and isinstance(value.get("b64"), str):
                return value["b64"]
    raise ValueError('must be {"b64": "<base64 image>"}, {"image": {"b64": ...}} or {"content": ...}')


def guess_mode(uris: Sequence[str], sample: int = 20) -> str:
    """"L" when the first `sample` images are all gray (R == G == B), else "RGB"."""
    import numpy as np

    for uri in list(uris)[:sample]:
        rgb = load_image(uri, mode="RGB").astype(np.int16)
        if (rgb[..., 0] != rgb[..., 1]).any() or (rgb[..., 1] != rgb[..., 2]).any():
            return "RGB"
    return "L"


# --- Export v2 image rows → examples (shared by the image tasks) ---------------------------------


@dataclass
class ImageRows:
    """What `convert_rows` produces; the task adds label_map and its own stats."""

    examples: list[dict[str, Any]]
    predict_only: list[dict[str, Any]]
    skipped: exportv2.SkipLog
    fetch: dict[str, Any]
    rows: int


TargetFn = Callable[[exportv2.RowRef], tuple[dict[str, Any], str | None]]


def convert_rows(
    rows: exportv2.Rows,
    model_run_id: str,
    out_uri: str,
    target_of: TargetFn,
    progress: Callable[..., None],
    *,
    workers: int = DEFAULT_WORKERS,
    timeout: float | None = None,
    retries: int = 3,
    policy: fetch.FetchPolicy | None = None,
) -> ImageRows:
    """Export v2 image rows → examples with the image copied under `{out_uri}/media/`.

    Each row of the model run becomes exactly one of: an example (split + usable target), a
    predict-only row (`reason` no_split/unassigned_split/unknown_split or the task's reason such as
    no_label/no_answer: still predicted by evaluate), or a skipped row (not_in_model_run,
    no_data_row_id, duplicate_data_row, no_media, fetch_failed or a refusal such as refused_address,
    refused_too_large, refused_image_pixels: nothing to predict on).
    `target_of(ref)` → (target fields to add, e.g. {"target": "cat"}, reason or None)."""
    skipped = exportv2.SkipLog()
    refs: list[tuple[exportv2.RowRef, MediaRef]] = []
    seen: set[str] = set()
    for row in rows:
        ref = exportv2.row_ref(row, model_run_id)
        if ref.run is None:
            skipped.add("not_in_model_run", ref.data_row_id or ref.global_key or "?")
        elif not ref.data_row_id:
            skipped.add("no_data_row_id", ref.global_key or "?")
        elif ref.data_row_id in seen:
            skipped.add("duplicate_data_row", ref.data_row_id)
        else:
            seen.add(ref.data_row_id)
            media = media_ref(row, ref.data_row_id)
            if media is None:
                skipped.add("no_media", ref.data_row_id)
            else:
                refs.append((ref, media))
    if refs:
        progress(f"fetching {len(refs)} images ({workers} at a time)", images=len(refs))
    results = fetch_media(
        [m for _, m in refs], out_uri, workers=workers, timeout=timeout, retries=retries, policy=policy,
        progress=progress,
    )
    examples: list[dict[str, Any]] = []
    predict_only: list[dict[str, Any]] = []
    for (ref, _), result in zip(refs, results, strict=True):
        if isinstance(result, FetchError):
            skipped.add(result.reason, ref.data_row_id)
            continue
        item: dict[str, Any] = {
            "data_row_id": ref.data_row_id,
            "image": result.local_uri,
            "source": result.uri,
            "width": result.width,
            "height": result.height,
            "mime": result.mime,
        }
        if ref.global_key:
            item["global_key"] = ref.global_key
        split, reason = exportv2.parse_split(ref.run.get("split") if ref.run else None)
        fields, target_reason = target_of(ref)
        item["split"] = split or "unassigned"
        item.update(fields)
        reason = target_reason or reason
        if reason:
            skipped.add(reason, ref.data_row_id)
            predict_only.append({**item, "reason": reason})
        else:
            examples.append(item)
    return ImageRows(examples, predict_only, skipped, fetch_stats(results), len(rows))
