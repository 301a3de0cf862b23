"""Partner request signing, shared by the dispatch gateway (verify) and the partner SDK (sign).

A request carries `X-Partner-Id`, `X-Timestamp` (unix seconds) and `X-Signature`: hex
HMAC-SHA256 with the partner's secret over

    timestamp + "\\n" + METHOD + "\\n" + path_with_query + "\\n" + hex_sha256(body)

Requests whose timestamp is more than MAX_SKEW_SECONDS away from now, either way, are refused.
Standard library only, so the SDK can vendor this file as it is.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Mapping

from contracts.errors import ServiceError

MAX_SKEW_SECONDS = 300

PARTNER_ID_HEADER = "X-Partner-Id"
TIMESTAMP_HEADER = "X-Timestamp"
SIGNATURE_HEADER = "X-Signature"

# ASCII digits only: int() would also accept " 12", "+12", "1_2" and non-ASCII digits.
_TIMESTAMP = re.compile(r"[0-9]{1,12}", re.ASCII)
# An unknown partner still costs one HMAC, so timing does not tell whether the partner exists.
_DECOY_SECRET = secrets.token_urlsafe(32)


class SignatureError(ServiceError):
    """Why a partner request was refused; the gateway answers 401 with `code`."""

    http_status = 401

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, code=code)


def canonical_request(timestamp: str, method: str, path_with_query: str, body: bytes) -> bytes:
    """The exact bytes that are signed; the path and query are used as sent, never normalised."""
    body_hash = hashlib.sha256(body).hexdigest()
    return f"{timestamp}\n{method.upper()}\n{path_with_query}\n{body_hash}".encode()


def sign(secret: str, timestamp: str, method: str, path_with_query: str, body: bytes) -> str:
    """Hex HMAC-SHA256 of the canonical request under the partner's secret."""
    message = canonical_request(timestamp, method, path_with_query, body)
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signed_headers(partner_id: str, secret: str, method: str, path_with_query: str,
                   body: bytes, now: float) -> dict[str, str]:
    """The three headers a partner adds to a request sent at `now` (unix seconds)."""
    timestamp = str(int(now))
    return {
        PARTNER_ID_HEADER: partner_id,
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: sign(secret, timestamp, method, path_with_query, body),
    }


def verify(headers: Mapping[str, str], secret_for: Callable[[str], str | None], method: str,
           path_with_query: str, body: bytes, now: float) -> str:
    """Return the partner id of a correctly signed, fresh request; raise SignatureError if not.

    `secret_for(partner_id)` returns the partner's active secret, or None if there is no such
    partner; an unknown partner is reported as a bad signature, like a wrong secret.
    """
    partner_id = _header(headers, PARTNER_ID_HEADER)
    timestamp = _header(headers, TIMESTAMP_HEADER)
    signature = _header(headers, SIGNATURE_HEADER)
    if not (partner_id and timestamp and signature):
        missing = [name for name, value in ((PARTNER_ID_HEADER, partner_id),
                                            (TIMESTAMP_HEADER, timestamp),
                                            (SIGNATURE_HEADER, signature)) if not value]
        raise SignatureError("missing_signature", f"missing header(s): {', '.join(missing)}")
    if not _TIMESTAMP.fullmatch(timestamp):
        raise SignatureError("bad_timestamp", f"{TIMESTAMP_HEADER} must be unix seconds")
    if abs(now - int(timestamp)) > MAX_SKEW_SECONDS:
        raise SignatureError(
            "stale_signature",
            f"{TIMESTAMP_HEADER} is more than {MAX_SKEW_SECONDS} s away from the server's clock")
    secret = secret_for(partner_id)
    expected = sign(secret or _DECOY_SECRET, timestamp, method, path_with_query, body)
    # bytes, because compare_digest refuses str with non-ASCII characters
    given = signature.strip().lower().encode("utf-8", "surrogatepass")
    if not hmac.compare_digest(expected.encode(), given) or not secret:
        raise SignatureError("bad_signature", "the signature does not match the request")
    return partner_id


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """The header `name`, whatever its case: a direct look-up first (a web framework's
    headers are case-insensitive already), then a scan (a plain dict)."""
    value = headers.get(name)
    if value is None:
        wanted = name.lower()
        value = next((v for key, v in headers.items() if key.lower() == wanted), None)
    return value


def new_secret() -> str:
    """A fresh partner secret (43 URL-safe characters, 256 bits)."""
    return secrets.token_urlsafe(32)


def secret_fingerprint(secret: str) -> str:
    """Shows which secret is active without revealing it: first 16 hex digits of its SHA-256."""
    return hashlib.sha256(secret.encode()).hexdigest()[:16]
