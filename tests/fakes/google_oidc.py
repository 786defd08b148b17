"""A local stand-in for Google's OIDC signer: an RSA key made here, its certificate served in the
format of https://www.googleapis.com/oauth2/v1/certs (`{kid: PEM}`, Cache-Control max-age), and
tokens signed with it, or shaped as Cloud Run forwards them after its IAM check (signature
replaced by SIGNATURE_REMOVED_BY_GOOGLE). Counts certificate fetches."""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt
from google.auth import jwt as gjwt

from lbtrain.pushauth import STRIPPED_SIGNATURE

PUSH_SA = "lbtrain-invoker@proj-1.iam.gserviceaccount.com"


def _self_signed(key: rsa.RSAPrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lbtrain-test-oidc")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


class Issuer:
    """Signs ID tokens with a local key; `serve()` publishes its certificate."""

    def __init__(self, kid: str = "test-key-1", max_age: int | None = 3600):
        self.kid = kid
        self.max_age = max_age
        self.fetches = 0
        self._lock = threading.Lock()
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        self._signer = crypt.RSASigner.from_string(pem, key_id=kid)
        self.cert_pem = _self_signed(key).decode()
        self.server: ThreadingHTTPServer | None = None

    def claims(self, audience: str, **overrides: Any) -> dict[str, Any]:
        """What Pub/Sub's push token for PUSH_SA carries (None removes a claim)."""
        now = int(time.time())
        base = {"iss": "https://accounts.google.com", "aud": audience, "azp": "1234567890",
                "email": PUSH_SA, "email_verified": True, "sub": "1234567890", "iat": now, "exp": now + 3600}
        base.update(overrides)
        return {k: v for k, v in base.items() if v is not None}

    def signed(self, claims: dict[str, Any]) -> str:
        return gjwt.encode(self._signer, claims).decode()

    def stripped(self, claims: dict[str, Any]) -> str:
        """The token as Cloud Run hands it to the container once IAM has checked it."""
        header, payload, _ = self.signed(claims).split(".")
        return f"{header}.{payload}.{STRIPPED_SIGNATURE}"

    @property
    def certs_url(self) -> str:
        assert self.server is not None, "serve() first"
        return f"http://127.0.0.1:{self.server.server_address[1]}/oauth2/v1/certs"

    def serve(self) -> Issuer:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                if self.path != "/oauth2/v1/certs":
                    self.send_error(404)
                    return
                with issuer._lock:
                    issuer.fetches += 1
                data = json.dumps({issuer.kid: issuer.cert_pem}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                if issuer.max_age is not None:
                    self.send_header("Cache-Control",
                                     f"public, max-age={issuer.max_age}, must-revalidate, no-transform")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def forged(claims: dict[str, Any]) -> str:
    """A token nobody signed, shaped as Cloud Run forwards one (what a caller could send anywhere)."""
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.{STRIPPED_SIGNATURE}"
