"""Who may deliver a Pub/Sub push (or Cloud Scheduler) request: one model for every service.

Pub/Sub and Scheduler sign as the invoker service account, with the receiving service's custom
audience. Where that token is checked depends on how the service is reached (`PUSH_AUTH`):

- `none`: the local stack; the emulator sends no token.
- `cloudrun-iam`: a private Cloud Run service. Cloud Run IAM has verified the token before the
  request reaches the container, and forwards it with the signature replaced by
  `SIGNATURE_REMOVED_BY_GOOGLE`, so verifying it again can only fail. The app reads the forwarded
  claims and checks the identity: `email` is `PUSH_SERVICE_ACCOUNT` (verified), `aud` is
  `PUSH_AUDIENCE` when set, Google issued it and it has not expired.
- `oidc`: the public ingress (`allUsers` may invoke it, so nothing has checked the token). The app
  verifies Google's signature itself, with Google's certificates cached as their Cache-Control
  allows, then the same identity checks, with `PUSH_AUDIENCE` required.

Nothing here logs or returns a token.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lbtrain.config import Config

log = logging.getLogger("lbtrain.pushauth")

GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
GOOGLE_ISSUERS = ("accounts.google.com", "https://accounts.google.com")
STRIPPED_SIGNATURE = "SIGNATURE_REMOVED_BY_GOOGLE"
# Cloud Run checks IAM with this header instead of Authorization when a caller sends it; the
# Authorization header is then the caller's own and unchecked.
SERVERLESS_HEADER = "X-Serverless-Authorization"
CLOCK_SKEW_SECONDS = 30
CERTS_TIMEOUT_SECONDS = 10.0


class PushAuthError(Exception):
    """A refused push request: 401 (wrong or missing identity), 503 (certificates unreachable:
    Pub/Sub redelivers), 500 (the service is misconfigured)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def verify(config: Config, headers: Mapping[str, str]) -> dict[str, Any]:
    """The claims of an accepted push request (empty under PUSH_AUTH=none); PushAuthError otherwise,
    logged: a refused push is retried and then dead-lettered, and this says why."""
    try:
        return _verify(config, headers)
    except PushAuthError as exc:
        log.warning("push refused (%d, PUSH_AUTH=%s): %s", exc.status, config.push_auth, exc.message)
        raise


def _verify(config: Config, headers: Mapping[str, str]) -> dict[str, Any]:
    mode = config.push_auth
    if mode == "none":
        return {}
    if mode not in ("oidc", "cloudrun-iam"):
        raise PushAuthError(500, f"unknown PUSH_AUTH {mode!r}")
    if not config.push_service_account or (mode == "oidc" and not config.push_audience):
        raise PushAuthError(500, f"PUSH_AUTH={mode} without PUSH_SERVICE_ACCOUNT/PUSH_AUDIENCE refuses every push")
    # Only behind Cloud Run IAM is X-Serverless-Authorization the checked one; on the public
    # ingress nothing checked either header, so only the conventional one counts.
    name = SERVERLESS_HEADER if mode == "cloudrun-iam" and SERVERLESS_HEADER in headers else "Authorization"
    scheme, _, token = (headers.get(name) or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise PushAuthError(401, "push request without an OIDC token")
    if token.count(".") != 2:
        raise PushAuthError(401, "malformed OIDC token (not a JWT)")
    claims = _verified_claims(token, config) if mode == "oidc" else _forwarded_claims(token)
    _check_identity(claims, config, signed=mode == "oidc")
    return claims


def _forwarded_claims(token: str) -> dict[str, Any]:
    """The payload of a token Cloud Run IAM verified and forwarded without its signature.

    A token that still has a signature did not come through Cloud Run's IAM check (the check is
    off, or the service is not on Cloud Run): refused, since nothing here can trust it."""
    header, payload, signature = token.split(".")
    if signature != STRIPPED_SIGNATURE:
        raise PushAuthError(401, "PUSH_AUTH=cloudrun-iam expects a token Cloud Run IAM checked "
                                 f"(signature {STRIPPED_SIGNATURE}); this one was not")
    _decode_segment(header)
    return _decode_segment(payload)


def _decode_segment(segment: str) -> dict[str, Any]:
    try:
        value = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (binascii.Error, ValueError, RecursionError):
        raise PushAuthError(401, "malformed OIDC token (a segment is not base64url JSON)") from None
    if not isinstance(value, dict):
        raise PushAuthError(401, "malformed OIDC token (a segment is not a JSON object)")
    return value


def _verified_claims(token: str, config: Config) -> dict[str, Any]:
    """Google's signature, the audience, `iat` and `exp`, checked by google-auth."""
    from google.auth import exceptions as gauth_exc
    from google.oauth2 import id_token

    # A token that could not be accepted whatever its signature is refused before the certificates are
    # fetched: anyone can send one, and an unreachable certificates URL would make it a 503.
    header, payload, _ = token.split(".")
    head = _decode_segment(header)
    if head.get("alg") != "RS256" or not isinstance(head.get("kid"), str):
        raise PushAuthError(401, "OIDC token is not signed the way Google signs (RS256 with a key id)")
    _check_identity(_decode_segment(payload), config, signed=False)
    try:
        return dict(id_token.verify_token(token, certs_request(), audience=config.push_audience,
                                          certs_url=config.push_certs_url or GOOGLE_CERTS_URL,
                                          clock_skew_in_seconds=CLOCK_SKEW_SECONDS))
    except gauth_exc.TransportError as exc:
        raise PushAuthError(503, f"cannot fetch the token certificates: {exc}") from None
    except (ValueError, RecursionError, gauth_exc.GoogleAuthError) as exc:
        raise PushAuthError(401, f"invalid OIDC token: {_without_token(str(exc), token)}") from None


def _without_token(message: str, token: str) -> str:
    """google-auth quotes token segments in some errors; none goes to a log or a response."""
    if any(len(part) >= 4 and part[:16] in message for part in token.split(".")):
        return "malformed token"
    return message


def _check_identity(claims: Mapping[str, Any], config: Config, *, signed: bool) -> None:
    """The push service account, for this service, from Google, not expired (what IAM or the
    signature check already saw, checked again on the claims this app acts on)."""
    if claims.get("iss") not in GOOGLE_ISSUERS:
        raise PushAuthError(401, "OIDC token not issued by Google")
    if not signed:  # google-auth checked these for a signed token
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            raise PushAuthError(401, "OIDC token without an expiry")
        if time.time() > exp + CLOCK_SKEW_SECONDS:
            raise PushAuthError(401, "OIDC token has expired")
        if config.push_audience and not _audience_matches(claims.get("aud"), config.push_audience):
            raise PushAuthError(401, "OIDC token is for another audience")
    if claims.get("email") != config.push_service_account:
        raise PushAuthError(401, "OIDC token is not the push service account's")
    if claims.get("email_verified") is not True:
        raise PushAuthError(401, "OIDC token email is not verified")


def _audience_matches(aud: Any, expected: str) -> bool:
    if isinstance(aud, str):
        return aud == expected
    return isinstance(aud, list) and expected in aud


# -- Google's certificates, fetched once per max-age -----------------------------------------------

@dataclass(frozen=True)
class _Cached:
    status: int
    headers: Mapping[str, str]
    data: bytes


def max_age(headers: Mapping[str, str]) -> float:
    """Seconds a response may be reused: Cache-Control max-age less its Age; 0 = don't keep it."""
    lowered = {str(k).lower(): str(v) for k, v in headers.items()}
    seconds = 0.0
    for directive in lowered.get("cache-control", "").split(","):
        name, _, value = directive.strip().partition("=")
        name = name.strip().lower()
        if name in ("no-store", "no-cache"):
            return 0.0
        if name == "max-age":
            try:
                seconds = float(value.strip().strip('"'))
            except ValueError:
                return 0.0
    try:
        seconds -= float(lowered.get("age", "0"))
    except ValueError:
        pass
    return max(seconds, 0.0)


class CachingRequest:
    """A google.auth transport Request that answers a GET from memory while the last response's
    Cache-Control allows: verify_token fetches the certificates for every token otherwise."""

    def __init__(self, inner: Callable[..., Any] | None = None, clock: Callable[[], float] = time.monotonic):
        self._inner = inner
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, _Cached]] = {}

    def _transport(self) -> Callable[..., Any]:
        if self._inner is None:
            from google.auth.transport import requests as grequests

            self._inner = grequests.Request()
        return self._inner

    def __call__(self, url: str, method: str = "GET", body: Any = None, headers: Any = None,
                 timeout: float | None = None, **kwargs: Any) -> Any:
        if method.upper() != "GET" or body is not None:
            return self._transport()(url, method=method, body=body, headers=headers, timeout=timeout, **kwargs)
        with self._lock:
            hit = self._cache.get(url)
            if hit is not None and hit[0] > self._clock():
                return hit[1]
        response = self._transport()(url, method="GET", headers=headers,
                                     timeout=timeout or CERTS_TIMEOUT_SECONDS, **kwargs)
        if response.status != 200:
            return response
        cached = _Cached(response.status, dict(response.headers), response.data)
        keep = max_age(cached.headers)
        with self._lock:
            if keep > 0:
                self._cache[url] = (self._clock() + keep, cached)
            else:
                self._cache.pop(url, None)
        return cached


_certs_request: CachingRequest | None = None
_certs_lock = threading.Lock()


def certs_request() -> CachingRequest:
    """The process's one certificate cache (built on first use: the ingress imports no HTTP client
    until a push arrives)."""
    global _certs_request
    with _certs_lock:
        if _certs_request is None:
            _certs_request = CachingRequest()
        return _certs_request
