"""lbtrain/fetch.py: row data is untrusted. Each reproduced way `row_data` could make a job read
what it must not (its own files, other buckets, loopback/private/metadata addresses directly or
by redirect or DNS rebinding), or be held up (a drip, a huge body, a quadratic charset), refused.

"The internet" here is a TLS server on 127.0.0.1 with a certificate for made-up public names: the
policy's resolver maps those names to made-up public addresses and its connector maps those (and
only those) to the local server, so no packet leaves 127.0.0.1 and the address checks run as in
production. Plain http servers on 127.0.0.1 stand for internal services that must never be hit.
"""

from __future__ import annotations

import datetime
import http.server
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from jobs.tasks import exportv2, images
from lbtrain import fetch, storage
from lbtrain.config import Config, from_env

PUBLIC_IP = "93.184.216.34"  # what rows.example "resolves" to: global, never contacted
CDN_IP = "93.184.216.35"  # cdn.example
NAMES = ("rows.example", "cdn.example", "rebind.example")
RED = Path(__file__).resolve().parent.parent / "data" / "images" / "red_8x6.png"


def _tls_pair(tmp: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context trusting only its self-signed certificate for NAMES)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAMES[0])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in NAMES]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_pem = tmp / "cert.pem"
    key_pem = tmp / "key.pem"
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_pem, key_pem)
    client = ssl.create_default_context(cafile=str(cert_pem))
    return server, client


class _Internal(http.server.BaseHTTPRequestHandler):
    """An internal service (metadata server, admin port …): counts every request it gets."""

    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802
        type(self).hits.append(self.path)
        body = b"SECRET=internal"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class _Origin(http.server.BaseHTTPRequestHandler):
    """The "public" server behind rows.example / cdn.example."""

    internal_port = 0
    hosts: list[str] = []

    def _body(self, body: bytes, content_type: str = "text/plain; charset=utf-8", length: bool = True) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802
        cls = type(self)
        cls.hosts.append(self.headers.get("Host", ""))
        path = self.path
        if path == "/ok.txt":
            self._body("café – ok".encode())
        elif path == "/latin1.txt":
            self._body("café".encode("latin-1"), "text/plain; charset=ISO-8859-1")
        elif path == "/utf16.txt":
            self._body("café".encode("utf-16"), "text/plain; charset=utf-16")
        elif path == "/punycode.txt":
            self._body(b"a" * 200_000 + b"-" + b"9" * 10, "text/plain; charset=punycode")
        elif path == "/red.png":
            self._body(RED.read_bytes(), "image/png")
        elif path == "/redirect-loopback":
            self._redirect(f"http://127.0.0.1:{cls.internal_port}/computeMetadata/v1/")
        elif path == "/redirect-loopback-https":
            self._redirect(f"https://127.0.0.1:{cls.internal_port}/")
        elif path == "/redirect-metadata":
            self._redirect("http://169.254.169.254/computeMetadata/v1/instance/service-accounts/default/token")
        elif path == "/redirect-metadata-name":
            self._redirect("https://metadata.google.internal/computeMetadata/v1/")
        elif path == "/redirect-private":
            self._redirect("https://10.0.0.7/admin")
        elif path == "/redirect-private-name":
            self._redirect("https://internal.example/admin")
        elif path == "/redirect-http":
            self._redirect("http://cdn.example/ok.txt")
        elif path == "/redirect-file":
            self._redirect("file:///proc/self/environ")
        elif path == "/redirect-ok":
            self._redirect("https://cdn.example/ok.txt")
        elif path == "/loop":
            self._redirect("/loop")
        elif path == "/drip":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", "40")
            self.end_headers()
            try:
                for _ in range(40):  # 40 bytes over 8 s: each read is quick, the whole is not
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:
                pass
        elif path == "/drip-headers":
            try:
                self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                for i in range(40):  # 40 header lines over 8 s, each one quick
                    self.wfile.write(b"X-Slow-%d: x\r\n" % i)
                    self.wfile.flush()
                    time.sleep(0.2)
                self.wfile.write(b"Content-Length: 2\r\n\r\nok")
            except OSError:
                pass
            self.close_connection = True
        elif path == "/short":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"only this")
            self.close_connection = True
        elif path == "/503":
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/big-declared":
            self._body(b"x" * 5000)
        elif path == "/big-undeclared":
            self.close_connection = True
            try:
                self._body(b"x" * 300_000, length=False)
            except OSError:
                pass
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


class _TLSServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, ctx: ssl.SSLContext):
        super().__init__(("127.0.0.1", 0), _Origin)
        self.ctx = ctx

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        return self.ctx.wrap_socket(sock, server_side=True), addr


@dataclass
class Net:
    """The made-up internet: resolver and connector for the policy, and what they were asked."""

    origin_port: int
    internal_port: int
    client_ctx: ssl.SSLContext
    dns: dict[str, list[str]] = field(default_factory=dict)
    rebind: dict[str, list[list[str]]] = field(default_factory=dict)  # successive answers
    resolved: list[str] = field(default_factory=list)
    connected: list[tuple[str, int]] = field(default_factory=list)

    def resolve(self, host: str, port: int) -> list[str]:
        self.resolved.append(host)
        if host in self.rebind:
            answers = self.rebind[host]
            return answers[min(self.resolved.count(host), len(answers)) - 1]
        if host not in self.dns:
            raise socket.gaierror(f"unknown host {host}")
        return self.dns[host]

    def connect(self, ip: str, port: int, timeout: float) -> socket.socket:
        self.connected.append((ip, port))
        if ip in (PUBLIC_IP, CDN_IP) and port == 443:
            return socket.create_connection(("127.0.0.1", self.origin_port), timeout)
        if ip == "127.0.0.1":  # only with the loopback allowance: the internal server
            return socket.create_connection(("127.0.0.1", port), timeout)
        raise AssertionError(f"the test must not connect to {ip}:{port}")

    def policy(self, **kw: Any) -> fetch.FetchPolicy:
        kw.setdefault("deadline_seconds", 10.0)
        return fetch.FetchPolicy(resolver=self.resolve, connector=self.connect, ssl_context=self.client_ctx, **kw)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int, ssl.SSLContext]]:
    server_ctx, client_ctx = _tls_pair(tmp_path_factory.mktemp("tls"))
    internal = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Internal)
    origin = _TLSServer(server_ctx)
    _Origin.internal_port = internal.server_address[1]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (internal, origin)]
    for t in threads:
        t.start()
    try:
        yield origin.server_address[1], internal.server_address[1], client_ctx
    finally:
        for s in (internal, origin):
            s.shutdown()
            s.server_close()


@pytest.fixture()
def net(servers: tuple[int, int, ssl.SSLContext]) -> Net:
    _Internal.hits = []
    _Origin.hosts = []
    origin_port, internal_port, client_ctx = servers
    return Net(origin_port, internal_port, client_ctx,
               dns={"rows.example": [PUBLIC_IP], "cdn.example": [CDN_IP], "internal.example": ["192.168.10.4"],
                    "evil.example": ["127.0.0.1"], "mixed.example": [PUBLIC_IP, "10.1.2.3"]})


def _refused(reason: str, uri: str, policy: fetch.FetchPolicy, limit: int = 1 << 20) -> fetch.Refused:
    with pytest.raises(fetch.Refused) as info:
        fetch.fetch(uri, limit=limit, policy=policy)
    assert info.value.reason == reason, str(info.value)
    return info.value


# --- public https works, over the checked address -------------------------------------------------


def test_public_https_by_name_is_fetched_from_the_checked_address(net: Net) -> None:
    got = fetch.fetch("https://rows.example/ok.txt", limit=1000, policy=net.policy())
    assert fetch.decode_text(got) == "café – ok"
    assert net.connected == [(PUBLIC_IP, 443)]
    assert _Origin.hosts == ["rows.example"]  # Host (and SNI, or the handshake fails) name the host


def test_the_certificate_is_still_checked_against_the_name(net: Net) -> None:
    net.dns["other.example"] = [PUBLIC_IP]  # right address, name not in the certificate
    with pytest.raises(fetch.FetchError) as info:
        fetch.fetch("https://other.example/ok.txt", limit=1000, policy=net.policy())
    assert "CERTIFICATE" in str(info.value).upper()


def test_a_name_resolved_again_cannot_switch_the_connection(net: Net) -> None:
    """DNS rebinding: the first answer is checked and connected to; a second lookup never happens."""
    net.rebind["rebind.example"] = [[PUBLIC_IP], ["127.0.0.1"]]
    assert fetch.fetch("https://rebind.example/red.png", limit=1 << 20, policy=net.policy()).data == RED.read_bytes()
    assert net.resolved == ["rebind.example"] and net.connected == [(PUBLIC_IP, 443)]


# --- addresses ----------------------------------------------------------------------------------


def test_a_name_resolving_to_loopback_is_refused_before_connecting(net: Net) -> None:
    _refused("refused_address", "https://evil.example/x", net.policy())
    _refused("refused_address", "https://mixed.example/x", net.policy())  # one private answer is enough
    assert net.connected == []


@pytest.mark.parametrize("uri", [
    "https://127.0.0.1/", "https://127.8.9.1/", "https://10.0.0.1/", "https://172.16.3.4/", "https://192.168.1.1/",
    "https://169.254.169.254/computeMetadata/v1/", "http://169.254.169.254/", "https://metadata.google.internal/",
    "https://metadata/", "https://[::1]/", "https://[::ffff:127.0.0.1]/", "https://[fe80::1]/", "https://[fd00::1]/",
    "https://100.64.0.1/", "https://0.0.0.0/", "https://224.0.0.1/", "https://240.0.0.1/",
])
def test_private_loopback_link_local_metadata_and_reserved_addresses_are_refused(net: Net, uri: str) -> None:
    _refused("refused_address", uri, net.policy())
    assert net.connected == []


@pytest.mark.parametrize("path", ["/redirect-loopback", "/redirect-loopback-https", "/redirect-metadata",
                                  "/redirect-metadata-name", "/redirect-private", "/redirect-private-name"])
def test_every_redirect_is_checked_like_the_first_address(net: Net, path: str) -> None:
    _refused("refused_address", f"https://rows.example{path}", net.policy())
    assert net.connected == [(PUBLIC_IP, 443)] and _Internal.hits == []


def test_a_redirect_to_plain_http_or_a_file_is_refused(net: Net) -> None:
    _refused("refused_scheme", "https://rows.example/redirect-http", net.policy())
    _refused("refused_scheme", "https://rows.example/redirect-file", net.policy(allow_files=True))


def test_a_redirect_to_another_public_host_is_followed(net: Net) -> None:
    got = fetch.fetch("https://rows.example/redirect-ok", limit=1000, policy=net.policy())
    assert fetch.decode_text(got) == "café – ok"
    assert net.connected == [(PUBLIC_IP, 443), (CDN_IP, 443)]


def test_redirects_are_followed_at_most_max_redirects_times(net: Net) -> None:
    _refused("refused_redirects", "https://rows.example/loop", net.policy(max_redirects=3))
    assert len(net.connected) == 4


# --- schemes, files and buckets -------------------------------------------------------------------


def test_plain_http_is_refused_without_the_loopback_allowance(net: Net) -> None:
    _refused("refused_scheme", "http://rows.example/ok.txt", net.policy())
    _refused("refused_address", f"http://127.0.0.1:{net.internal_port}/", net.policy())
    assert net.connected == [] and _Internal.hits == []


def test_the_loopback_allowance_allows_http_to_loopback_only(net: Net) -> None:
    policy = net.policy(allow_loopback=True)
    assert fetch.fetch(f"http://127.0.0.1:{net.internal_port}/x", limit=100, policy=policy).data == b"SECRET=internal"
    _refused("refused_scheme", "http://rows.example/ok.txt", policy)  # plain http to anything else: no
    _refused("refused_address", "https://10.0.0.1/", policy)


@pytest.mark.parametrize("uri", ["file:///proc/self/environ", "/proc/self/environ", "proc/self/environ",
                                 "file://localhost/etc/passwd", "data:text/plain,hi", "ftp://rows.example/a",
                                 "https://user:pw@rows.example/ok.txt"])
def test_files_and_other_schemes_are_refused_under_the_sdk_backend(uri: str, net: Net) -> None:
    policy = fetch.policy_from_config(Config(labelbox_backend="sdk"))
    _refused("refused_scheme", uri, policy)


def test_local_files_are_read_with_the_file_backend_within_the_limit(tmp_path: Path) -> None:
    policy = fetch.policy_from_config(Config(labelbox_backend="file"))
    (tmp_path / "a.txt").write_text("hello", encoding="utf-8")
    assert fetch.fetch(str(tmp_path / "a.txt"), limit=5, policy=policy).data == b"hello"
    assert fetch.fetch((tmp_path / "a.txt").as_uri(), limit=5, policy=policy).data == b"hello"
    _refused("refused_too_large", str(tmp_path / "a.txt"), policy, limit=4)


def test_gs_outside_the_configured_buckets_is_refused_without_a_request(monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[str] = []

    def read_bytes(uri: str, **kw: Any) -> bytes:
        reads.append(uri)
        return b"object"

    monkeypatch.setattr(storage, "read_bytes", read_bytes)
    config = from_env({"LABELBOX_BACKEND": "sdk", "ARTIFACT_ROOT": "gs://lbtrain-art/root",
                       "MEDIA_BUCKETS": "rows-a, rows-b"})
    policy = fetch.policy_from_config(config)
    assert policy.gcs_buckets == {"rows-a", "rows-b", "lbtrain-art"}
    _refused("refused_bucket", "gs://someone-elses-bucket/secret.png", policy)
    _refused("refused_bucket", "gs://rows-a.evil/x.png", policy)
    assert reads == []
    for uri in ("gs://rows-a/x.png", "gs://rows-b/y.png", "gs://lbtrain-art/root/z.png"):
        assert fetch.fetch(uri, limit=100, policy=policy).data == b"object"
    assert len(reads) == 3


def test_an_unconfigured_process_refuses_everything_but_public_https(tmp_path: Path) -> None:
    policy = fetch.FetchPolicy()
    (tmp_path / "a.txt").write_text("x", encoding="utf-8")
    _refused("refused_scheme", str(tmp_path / "a.txt"), policy)
    _refused("refused_bucket", "gs://any/x", policy)
    _refused("refused_address", "https://127.0.0.1/", policy)


def test_config_builds_the_policy() -> None:
    sdk = fetch.policy_from_config(from_env({"LABELBOX_BACKEND": "sdk"}))
    assert not sdk.allow_files and not sdk.allow_loopback and sdk.gcs_buckets == frozenset()
    assert (sdk.max_image_bytes, sdk.max_text_bytes, sdk.deadline_seconds) == (20 << 20, 1 << 20, 60.0)
    env = {"LBTRAIN_FETCH_ALLOW_LOOPBACK": "1", "LBTRAIN_FETCH_MAX_IMAGE_BYTES": "5",
           "LBTRAIN_FETCH_MAX_TEXT_BYTES": "6", "LBTRAIN_FETCH_DEADLINE_SECONDS": "2.5"}
    local = fetch.policy_from_config(from_env(env))
    assert local.allow_files and local.allow_loopback
    assert (local.max_image_bytes, local.max_text_bytes, local.deadline_seconds) == (5, 6, 2.5)


@pytest.mark.parametrize("env", [{"MEDIA_BUCKETS": "gs://rows-a"}, {"MEDIA_BUCKETS": "rows-a/path"},
                                 {"LBTRAIN_FETCH_ALLOW_LOOPBACK": "yes please"},
                                 {"LBTRAIN_FETCH_MAX_IMAGE_BYTES": "-1"}, {"LBTRAIN_FETCH_DEADLINE_SECONDS": "0"},
                                 {"LBTRAIN_MAX_IMAGE_PIXELS": "lots"}])
def test_bad_fetch_settings_are_refused_at_start(env: dict[str, str]) -> None:
    with pytest.raises(ValueError, match=next(iter(env))):
        from_env(env)


# --- size, time, charset ----------------------------------------------------------------------------


def test_a_drip_feed_hits_the_overall_deadline(net: Net) -> None:
    started = time.monotonic()
    _refused("refused_deadline", "https://rows.example/drip", net.policy(deadline_seconds=1.0))
    assert time.monotonic() - started < 3.0  # 40 bytes would take 8 s; every read alone was quick


def test_a_drip_of_headers_hits_the_overall_deadline(net: Net) -> None:
    started = time.monotonic()
    _refused("refused_deadline", "https://rows.example/drip-headers", net.policy(deadline_seconds=1.0))
    assert time.monotonic() - started < 3.0


def test_a_body_cut_short_is_a_failure_not_a_short_row(net: Net) -> None:
    with pytest.raises(fetch.FetchError) as info:
        fetch.fetch("https://rows.example/short", limit=10_000, policy=net.policy())
    assert "early" in str(info.value) and info.value.transient


def test_a_slow_name_lookup_hits_the_deadline(net: Net) -> None:
    def slow(host: str, port: int) -> list[str]:
        time.sleep(3)
        return [PUBLIC_IP]

    started = time.monotonic()
    policy = net.policy(deadline_seconds=0.5).with_overrides(resolver=slow)
    _refused("refused_deadline", "https://rows.example/ok.txt", policy)
    assert time.monotonic() - started < 1.5 and net.connected == []


def test_retries_share_the_one_deadline(net: Net) -> None:
    """A server that fails every time is retried only while the fetch's deadline lasts."""
    started = time.monotonic()
    with pytest.raises(fetch.FetchError):
        fetch.fetch_retrying("https://rows.example/503", limit=100, policy=net.policy(deadline_seconds=1.0),
                             retries=50, backoff=0.2)
    assert time.monotonic() - started < 2.0
    assert 2 <= len(net.connected) < 10


def test_a_declared_oversize_body_is_refused_before_reading(net: Net) -> None:
    _refused("refused_too_large", "https://rows.example/big-declared", net.policy(), limit=4096)


def test_an_undeclared_oversize_body_is_refused_at_the_limit(net: Net) -> None:
    _refused("refused_too_large", "https://rows.example/big-undeclared", net.policy(), limit=4096)


def test_a_punycode_charset_is_refused_without_decoding(net: Net) -> None:
    got = fetch.fetch("https://rows.example/punycode.txt", limit=1 << 20, policy=net.policy())
    started = time.monotonic()
    with pytest.raises(fetch.Refused) as info:
        fetch.decode_text(got)
    assert info.value.reason == "refused_charset" and time.monotonic() - started < 0.5
    with pytest.raises(fetch.Refused):
        fetch.charset_codec("x-unknown-codec")


@pytest.mark.parametrize(("path", "text"), [("/latin1.txt", "café"), ("/utf16.txt", "café"), ("/ok.txt", "café – ok")])
def test_allowed_charsets_decode(net: Net, path: str, text: str) -> None:
    assert fetch.decode_text(fetch.fetch(f"https://rows.example{path}", limit=1000, policy=net.policy())) == text


# --- the row-data callers count refusals under their reason -----------------------------------------


def test_text_rows_refused_are_skipped_with_their_reason(net: Net) -> None:
    values = ["https://rows.example/ok.txt", "file:///proc/self/environ", "https://rows.example/redirect-metadata",
              "https://rows.example/punycode.txt", "inline text"]
    out = exportv2.resolve_texts(values, policy=net.policy(), retries=0)
    assert out[0] == "café – ok" and out[4] == "inline text"
    assert [getattr(o, "reason", None) for o in out[1:4]] == ["refused_scheme", "refused_address", "refused_charset"]


def test_text_over_the_text_limit_is_refused(net: Net) -> None:
    with pytest.raises(fetch.Refused) as info:
        exportv2.fetch_text("https://rows.example/big-declared", policy=net.policy(max_text_bytes=1000))
    assert info.value.reason == "refused_too_large"


def test_image_rows_refused_are_skipped_with_their_reason_in_stats(net: Net, tmp_path: Path) -> None:
    def row(i: str, uri: str) -> dict[str, Any]:
        return {"data_row": {"id": i, "row_data": uri},
                "experiments": {"m": {"runs": {"mr": {"split": "training", "labels": []}}}}}

    rows = [row("ok", "https://rows.example/red.png"), row("env", "file:///proc/self/environ"),
            row("gs", "gs://someone-elses-bucket/a.png"), row("meta", "https://rows.example/redirect-metadata"),
            row("big", "https://rows.example/big-declared")]
    with fetch.using(net.policy(max_image_bytes=4096)):
        converted = images.convert_rows(rows, "mr", str(tmp_path), lambda ref: ({}, None), lambda *a, **k: None,
                                        workers=2, retries=0)
    assert [e["data_row_id"] for e in converted.examples] == ["ok"]
    skipped = converted.skipped.as_dict()
    assert {k: v["data_row_ids"] for k, v in skipped.items()} == {
        "refused_scheme": ["env"], "refused_bucket": ["gs"], "refused_address": ["meta"], "refused_too_large": ["big"]}
    assert converted.fetch["reasons"] == {"refused_address": 1, "refused_bucket": 1, "refused_scheme": 1,
                                          "refused_too_large": 1}
    assert _Internal.hits == []


def test_jobs_main_configures_the_process_from_the_job_config(tmp_path: Path) -> None:
    """What every job does at start-up (jobs.main.prepare): the policy and pixel limit of its config."""
    from jobs import main

    main.configure_untrusted_data(from_env({"LABELBOX_BACKEND": "sdk", "MEDIA_BUCKETS": "rows-a",
                                            "LBTRAIN_MAX_IMAGE_PIXELS": "47"}))
    policy = fetch.current()
    assert not policy.allow_files and policy.gcs_buckets == {"rows-a"}
    out = exportv2.resolve_texts(["file:///proc/self/environ"], retries=0)
    assert isinstance(out[0], fetch.Refused) and out[0].reason == "refused_scheme"
    (res,) = images.fetch_media([images.MediaRef("a", str(RED))], str(tmp_path), retries=0)
    assert isinstance(res, images.FetchError) and res.reason == "refused_scheme"
    with pytest.raises(images.ImageRefused):
        images.decode_image(RED.read_bytes())  # 8×6 = 48 > 47
