"""Labelbox webhook signatures: HMAC of the raw body, sha1 (`X-Hub-Signature`) or sha256
(`X-Hub-Signature-256`), compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

SHA1_HEADER = "X-Hub-Signature"
SHA256_HEADER = "X-Hub-Signature-256"


def sign(secret: str, body: bytes, algorithm: str = "sha1") -> str:
    """Header value for `body`: `sha1=<hex>` or `sha256=<hex>`."""
    digest = hmac.new(secret.encode(), body, getattr(hashlib, algorithm)).hexdigest()
    return f"{algorithm}={digest}"


def headers(secret: str, body: bytes) -> dict[str, str]:
    """Both signature headers, as newer Labelbox deliveries carry them."""
    return {SHA1_HEADER: sign(secret, body, "sha1"), SHA256_HEADER: sign(secret, body, "sha256")}


def _get(headers_: Mapping[str, str], name: str) -> str | None:
    for key, value in headers_.items():
        if key.lower() == name.lower():
            return value
    return None


def verify(secret: str, body: bytes, request_headers: Mapping[str, str]) -> str | None:
    """None if the body is signed with `secret`; otherwise why not (for the 401 answer).

    sha256 is preferred when present; the check is constant time per header.
    """
    if not secret:
        return "webhook signature cannot be checked: LABELBOX_WEBHOOK_SECRET is not configured"
    for name, algorithm in ((SHA256_HEADER, "sha256"), (SHA1_HEADER, "sha1")):
        value = _get(request_headers, name)
        if value is None:
            continue
        expected = sign(secret, body, algorithm)
        if hmac.compare_digest(expected.encode(), value.strip().encode()):
            return None
        return f"{name} does not match the body"
    return f"missing signature header ({SHA1_HEADER} or {SHA256_HEADER})"
