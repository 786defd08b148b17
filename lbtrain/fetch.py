"""Fetching data-row media and text (`row_data`) that anyone who edits a Labelbox project chose.

Every row-data fetch goes through `fetch()` with a `FetchPolicy` (built from the config by
`policy_from_config`): `row_data` is attacker input, so the job must not be made to read its own
files (`file:///proc/self/environ`), buckets it can read but the project does not own, the metadata
server or anything else on the private network, nor be held up or exhausted by a slow, huge or
oddly encoded answer.

- Schemes: `https://` to public addresses; `gs://` only in the configured buckets (MEDIA_BUCKETS
  and the artifact bucket); `file://` and plain paths only with the file-backed Labelbox (local
  dev, where the operator wrote the rows); `http://` only to loopback and only with the explicit
  LBTRAIN_FETCH_ALLOW_LOOPBACK allowance (tests, the local stack), never set in the cloud.
- Every host name is resolved here and refused when any address is not global (private, loopback,
  link-local, the metadata server, multicast, reserved, CGNAT …); the connection goes to the checked
  address (Host header and TLS SNI/certificate check still use the name), so a second DNS answer
  cannot switch it. Redirects are followed by hand, each one checked the same way, at most
  `max_redirects`.
- One overall deadline per fetch (not per socket read), a byte limit per row (checked against
  Content-Length and while reading), and for text a charset allowlist.

Stdlib only, so importing it stays cheap. The process-wide policy is fail-closed until
`configure()` is called (jobs.main does, from the job's config).
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import os
import socket
import ssl
import stat
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

from lbtrain.config import (
    DEFAULT_FETCH_DEADLINE_SECONDS as DEFAULT_DEADLINE_SECONDS,
)
from lbtrain.config import (
    DEFAULT_FETCH_MAX_IMAGE_BYTES as DEFAULT_MAX_IMAGE_BYTES,
)
from lbtrain.config import (
    DEFAULT_FETCH_MAX_TEXT_BYTES as DEFAULT_MAX_TEXT_BYTES,
)
from lbtrain.config import Config

DEFAULT_MAX_REDIRECTS = 5
_CHUNK = 64 * 1024
_REDIRECTS = (301, 302, 303, 307, 308)
# Names that reach the metadata server without going through DNS answers we could check.
_METADATA_NAMES = frozenset({"metadata", "metadata.google.internal", "metadata.google.internal."})
# Charsets a text row may declare (lower-cased, "_" → "-"), mapped to the codec decoding them.
CHARSETS = {
    "utf-8": "utf-8", "utf8": "utf-8", "us-ascii": "ascii", "ascii": "ascii",
    "iso-8859-1": "latin-1", "latin-1": "latin-1", "latin1": "latin-1", "iso8859-1": "latin-1",
    "windows-1252": "cp1252", "cp1252": "cp1252",
    "utf-16": "utf-16", "utf-16le": "utf-16-le", "utf-16be": "utf-16-be",
}

Resolver = Callable[[str, int], list[str]]
# (checked address, port, timeout) → connected socket. Tests map made-up public addresses to
# servers on 127.0.0.1 here; nothing else replaces it.
Connector = Callable[[str, int, float], socket.socket]


class FetchError(Exception):
    """A row's data could not be fetched. `reason` is the stats.json skip reason; `transient` says
    whether trying again may help."""

    reason = "fetch_failed"

    def __init__(self, message: str, *, reason: str | None = None, transient: bool = False, code: int | None = None):
        super().__init__(message)
        if reason:
            self.reason = reason
        self.transient = transient
        self.code = code


class Refused(FetchError):
    """The policy refused the row's data: never retried, never fetched (or not beyond the limit)."""

    def __init__(self, message: str, reason: str):
        super().__init__(message, reason=reason)


def system_resolver(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (A and AAAA)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def system_connector(ip: str, port: int, timeout: float) -> socket.socket:
    return socket.create_connection((ip, port), timeout)


@dataclass(frozen=True)
class FetchPolicy:
    """What a row-data fetch may read. The defaults refuse everything but public https."""

    allow_files: bool = False
    gcs_buckets: frozenset[str] = frozenset()
    allow_loopback: bool = False
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES
    deadline_seconds: float = DEFAULT_DEADLINE_SECONDS
    max_redirects: int = DEFAULT_MAX_REDIRECTS
    resolver: Resolver = field(default=system_resolver, compare=False)
    connector: Connector = field(default=system_connector, compare=False)
    ssl_context: ssl.SSLContext | None = field(default=None, compare=False)

    def with_overrides(self, **kwargs: object) -> FetchPolicy:
        return replace(self, **kwargs)  # type: ignore[arg-type]


def bucket_of(uri: str) -> str:
    return uri[len("gs://"):].partition("/")[0]


def policy_from_config(config: Config) -> FetchPolicy:
    """The policy a job runs with: files only with the file-backed Labelbox, gs:// only in
    MEDIA_BUCKETS and the artifact bucket, loopback only with the explicit allowance."""
    buckets = {b.strip() for b in config.media_buckets.split(",") if b.strip()}
    if config.artifact_root.startswith("gs://"):
        buckets.add(bucket_of(config.artifact_root))
    return FetchPolicy(
        allow_files=config.labelbox_backend == "file",
        gcs_buckets=frozenset(buckets),
        allow_loopback=config.fetch_allow_loopback,
        max_image_bytes=config.fetch_max_image_bytes,
        max_text_bytes=config.fetch_max_text_bytes,
        deadline_seconds=config.fetch_deadline_seconds,
    )


_lock = threading.Lock()
_policy = FetchPolicy()


def configure(policy: FetchPolicy) -> None:
    """Set the process's policy (jobs.main, from the job's config)."""
    global _policy
    with _lock:
        _policy = policy


def current() -> FetchPolicy:
    return _policy


@contextlib.contextmanager
def using(policy: FetchPolicy) -> Iterator[FetchPolicy]:
    """The process's policy is `policy` inside the block (tests)."""
    previous = current()
    configure(policy)
    try:
        yield policy
    finally:
        configure(previous)


@dataclass(frozen=True)
class Fetched:
    data: bytes
    content_type: str = ""
    charset: str | None = None


# --- checks ------------------------------------------------------------------------------------


def check_address(ip: str, policy: FetchPolicy) -> None:
    """Refuse an address that is not on the public internet (loopback only with the allowance)."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        raise Refused(f"{ip!r} is not an IP address", "refused_address") from None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if addr.is_loopback and policy.allow_loopback:
        return
    if not addr.is_global or addr.is_multicast or addr.is_reserved or addr.is_unspecified:
        raise Refused(f"address {addr} is not a public address (private, loopback, link-local, "
                      "metadata or reserved)", "refused_address")


def _lookup(host: str, port: int, policy: FetchPolicy, timeout: float) -> list[str]:
    """policy.resolver within `timeout` (getaddrinfo has none: a slow name server could otherwise
    hold the fetch past its deadline); the lookup left behind ends on its own."""
    box: list[list[str] | BaseException] = []

    def run() -> None:
        try:
            box.append(policy.resolver(host, port))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box.append(exc)

    worker = threading.Thread(target=run, name="lbtrain-fetch-dns", daemon=True)
    worker.start()
    worker.join(timeout)
    if not box:
        raise Refused(f"resolving {host} took longer than the fetch deadline", "refused_deadline")
    if isinstance(box[0], OSError):
        raise FetchError(f"cannot resolve {host}: {box[0]}", transient=True)
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


def _resolve(host: str, port: int, policy: FetchPolicy, timeout: float) -> str:
    """The address to connect to; every address of the name must pass check_address."""
    if host.lower() in _METADATA_NAMES:
        raise Refused(f"host {host} is the metadata server", "refused_address")
    try:
        ipaddress.ip_address(host.strip("[]"))
        addresses = [host.strip("[]")]
    except ValueError:
        addresses = _lookup(host, port, policy, timeout)
    if not addresses:
        raise FetchError(f"{host} resolves to no address", transient=True)
    for ip in addresses:
        check_address(ip, policy)
    return addresses[0]


def charset_codec(charset: str | None) -> str:
    """The codec for a declared charset (utf-8 when none); anything off the allowlist is refused
    (some codecs, e.g. punycode, take quadratic time on hostile input)."""
    if not charset:
        return "utf-8"
    codec = CHARSETS.get(charset.strip().strip('"').lower().replace("_", "-"))
    if codec is None:
        raise Refused(f"charset {charset[:40]!r} is not allowed (use utf-8, ascii, latin-1, "
                      "windows-1252 or utf-16)", "refused_charset")
    return codec


def decode_text(fetched: Fetched) -> str:
    return fetched.data.decode(charset_codec(fetched.charset), errors="replace")


# --- the schemes -------------------------------------------------------------------------------


def _watch(sock: socket.socket, deadline: float) -> threading.Timer:
    """Shut the socket down at the deadline: a byte every few seconds (in the TLS handshake, the
    status line or the headers, where no per-read check of ours runs) cannot outlast it."""

    def kill() -> None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(max(0.0, deadline - time.monotonic()), kill)
    timer.daemon = True
    timer.start()
    return timer


class _PinnedHTTP(http.client.HTTPConnection):
    """Connects to the checked address; the Host header still names the host."""

    def __init__(self, host: str, port: int, ip: str, deadline: float, connector: Connector):
        super().__init__(host, port, timeout=max(0.001, deadline - time.monotonic()))
        self._ip = ip
        self._deadline = deadline
        self._connector = connector
        self.watchdog: threading.Timer | None = None

    def _raw(self) -> socket.socket:
        return self._connector(self._ip, self.port, self.timeout)  # type: ignore[arg-type]

    def connect(self) -> None:
        self.sock = self._raw()
        self.watchdog = _watch(self.sock, self._deadline)

    def close(self) -> None:
        if self.watchdog is not None:
            self.watchdog.cancel()
        super().close()


class _PinnedHTTPS(_PinnedHTTP):
    """Connects to the checked address; SNI and the certificate check use the host name."""

    def __init__(self, host: str, port: int, ip: str, deadline: float, context: ssl.SSLContext,
                 connector: Connector):
        super().__init__(host, port, ip, deadline, connector)
        self.default_port = 443
        self._ctx = context

    def connect(self) -> None:
        # Watched from before the handshake (wrapping detaches the plain socket: watch the TLS one).
        sock = self._ctx.wrap_socket(self._raw(), server_hostname=self.host, do_handshake_on_connect=False)
        self.sock = sock
        self.watchdog = _watch(sock, self._deadline)
        sock.do_handshake()


def _remaining(deadline: float, uri: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise Refused(f"{uri} took longer than the fetch deadline", "refused_deadline")
    return left


def _http(uri: str, limit: int, policy: FetchPolicy) -> Fetched:
    deadline = time.monotonic() + policy.deadline_seconds
    url = uri
    for _ in range(policy.max_redirects + 1):
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme.lower()
        host = parts.hostname or ""
        if scheme not in ("http", "https") or not host:
            raise Refused(f"refused URL {url[:200]!r} (only https:// to a public host)", "refused_scheme")
        if parts.username or parts.password:
            raise Refused("refused URL with credentials in it", "refused_scheme")
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            raise Refused(f"bad port in {url[:200]!r}", "refused_scheme") from None
        ip = _resolve(host, port, policy, _remaining(deadline, uri))
        if scheme == "http" and not (policy.allow_loopback and ipaddress.ip_address(ip).is_loopback):
            raise Refused(f"refused {url[:200]!r}: plain http is not allowed (use https)", "refused_scheme")
        _remaining(deadline, uri)
        if scheme == "https":
            ctx = policy.ssl_context or ssl.create_default_context()
            conn: _PinnedHTTP = _PinnedHTTPS(host, port, ip, deadline, ctx, policy.connector)
        else:
            conn = _PinnedHTTP(host, port, ip, deadline, policy.connector)
        try:
            path = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
            try:
                conn.request("GET", path, headers={"User-Agent": "lbtrain-fetch/1", "Accept-Encoding": "identity"})
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                _remaining(deadline, uri)
                raise FetchError(f"could not fetch {uri}: {type(exc).__name__}: {exc}", transient=True) from None
            if resp.status in _REDIRECTS and resp.getheader("Location"):
                url = urllib.parse.urljoin(url, resp.getheader("Location") or "")
                continue
            if resp.status != 200:
                transient = resp.status >= 500 or resp.status in (408, 429)
                raise FetchError(f"could not fetch {uri}: HTTP {resp.status}", transient=transient, code=resp.status)
            declared = resp.getheader("Content-Length")
            if declared and declared.strip().isdigit() and int(declared) > limit:
                raise Refused(f"{uri} is {int(declared)} bytes, over the {limit}-byte limit", "refused_too_large")
            data = _read_limited(conn, resp, limit, deadline, uri)
            msg = resp.msg
            return Fetched(data, msg.get_content_type(), msg.get_content_charset())
        finally:
            conn.close()
    raise Refused(f"{uri} redirects more than {policy.max_redirects} times", "refused_redirects")


def _read_limited(conn: http.client.HTTPConnection, resp: http.client.HTTPResponse, limit: int,
                  deadline: float, uri: str) -> bytes:
    """Read the body in chunks, each socket wait bounded by what is left of the deadline."""
    out = bytearray()
    while True:
        left = _remaining(deadline, uri)
        if conn.sock is not None:
            conn.sock.settimeout(left)
        try:
            chunk = resp.read1(_CHUNK)
        except TimeoutError:
            _remaining(deadline, uri)
            raise FetchError(f"could not fetch {uri}: read timed out", transient=True) from None
        except (OSError, http.client.HTTPException) as exc:
            _remaining(deadline, uri)
            raise FetchError(f"could not fetch {uri}: {type(exc).__name__}: {exc}", transient=True) from None
        if not chunk:
            _remaining(deadline, uri)  # the watchdog's shutdown also reads as an end
            if resp.length:  # http.client's read1 returns b"" on a connection cut short
                raise FetchError(f"could not fetch {uri}: the connection closed {resp.length} bytes early",
                                 transient=True)
            return bytes(out)
        out += chunk
        if len(out) > limit:
            raise Refused(f"{uri} is over the {limit}-byte limit", "refused_too_large")


def _local(uri: str, limit: int, policy: FetchPolicy) -> Fetched:
    if not policy.allow_files:
        raise Refused(f"refused {uri[:200]!r}: local files are read only with LABELBOX_BACKEND=file",
                      "refused_scheme")
    from lbtrain import storage

    path = storage.local_path(uri)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise FetchError(f"could not read {uri}: {type(exc).__name__}: {exc}") from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise Refused(f"{uri} is not a regular file", "refused_scheme")
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise Refused(f"{uri} is over the {limit}-byte limit", "refused_too_large")
    return Fetched(data)


def _gcs(uri: str, limit: int, policy: FetchPolicy) -> Fetched:
    bucket = bucket_of(uri)
    if bucket not in policy.gcs_buckets:
        raise Refused(f"refused {uri[:200]!r}: bucket {bucket!r} is not in MEDIA_BUCKETS", "refused_bucket")
    from lbtrain import storage

    try:
        data = storage.read_bytes(uri, timeout=policy.deadline_seconds, max_bytes=limit)
    except storage.TooLarge as exc:
        raise Refused(str(exc), "refused_too_large") from None
    except ImportError as exc:  # gs:// without google-cloud-storage: retrying cannot help
        raise FetchError(str(exc)) from None
    except FileNotFoundError:
        raise FetchError(f"could not fetch {uri}: no such object") from None
    except Exception as exc:  # noqa: BLE001 - google.api_core errors; the client retried already
        raise FetchError(f"could not fetch {uri}: {type(exc).__name__}: {exc}") from None
    return Fetched(data)


def fetch(uri: str, *, limit: int, policy: FetchPolicy | None = None) -> Fetched:
    """The bytes `uri` names, under `policy` (the process's by default); raises Refused or
    FetchError. One attempt: `fetch_retrying` retries transient failures."""
    policy = policy or current()
    lower = uri.strip().lower()
    if lower.startswith(("https://", "http://")):
        return _http(uri.strip(), limit, policy)
    if lower.startswith("gs://"):
        return _gcs(uri.strip(), limit, policy)
    if lower.startswith("file://") or "://" not in lower:
        return _local(uri.strip(), limit, policy)
    raise Refused(f"refused {uri[:200]!r}: unsupported scheme (use https or gs)", "refused_scheme")


def fetch_retrying(uri: str, *, limit: int, policy: FetchPolicy | None = None, retries: int = 3,
                   backoff: float = 0.5) -> Fetched:
    """`fetch`, trying a transient failure (5xx/408/429, network errors) `retries` more times, all
    attempts and waits within the one deadline of the policy."""
    policy = policy or current()
    deadline = time.monotonic() + policy.deadline_seconds
    for attempt in range(retries + 1):
        try:
            left = _remaining(deadline, uri)
            return fetch(uri, limit=limit, policy=policy.with_overrides(deadline_seconds=left))
        except Refused:
            raise
        except FetchError as exc:
            pause = backoff * (2**attempt)
            if attempt == retries or not exc.transient or time.monotonic() + pause >= deadline:
                raise
            time.sleep(pause)
    raise AssertionError("unreachable")
