"""The partner gateway's HTTP plumbing: reading, signing, limiting, idempotency, answers.

Every request goes through `serve` (see DispatchService): the body is read with a size cap,
the signature verified against the partner's secret and recorded so it cannot be replayed,
the partner's rate checked, the query or JSON body loaded through its schema in
contracts/, and every outcome answered as JSON. Bad input is never a 500 and never changes
state; a 5xx carries a correlation id, never exception text.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable

from nameko.extensions import DependencyProvider
from werkzeug.wrappers import Request, Response

from contracts.errors import BadRequest, PayloadTooLarge, RateLimited, ServiceError
from contracts.gateway import IDEMPOTENCY_HEADER, MAX_BODY_BYTES
from contracts.registry import load

log = logging.getLogger(__name__)

CORRELATION_HEADER = "X-Correlation-Id"
MAX_IDEMPOTENCY_KEY = 128


class TokenBucket:
    """`rate` requests a second per partner, bursts up to `burst`; per process."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str) -> float:
        """0 if the request may go ahead, else the seconds until it may."""
        now = self.clock()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1:
            self._buckets[key] = (tokens - 1, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1 - tokens) / self.rate


class GatewaySettings(DependencyProvider):
    """Per-process gateway settings and the rate limiter (config GATEWAY_RATE_PER_SECOND,
    GATEWAY_BURST)."""

    def setup(self) -> None:
        config = self.container.config
        rate = float(config.get("GATEWAY_RATE_PER_SECOND", 50))
        self.limiter = TokenBucket(rate, float(config.get("GATEWAY_BURST", 2 * rate)))

    def get_dependency(self, worker_ctx):  # noqa: ANN001, ANN201
        return self


# -- reading a request ----------------------------------------------------------------------


def read_body(request: Request) -> bytes:
    """The body, refusing anything over MAX_BODY_BYTES before reading it all."""
    length = request.content_length
    if length is not None and length > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"the body is {length} bytes; at most {MAX_BODY_BYTES}",
                              {"body": [f"at most {MAX_BODY_BYTES} bytes"]})
    body = request.stream.read(MAX_BODY_BYTES + 1)
    if len(body) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"the body is over {MAX_BODY_BYTES} bytes",
                              {"body": [f"at most {MAX_BODY_BYTES} bytes"]})
    return body


def path_with_query(request: Request) -> str:
    """The path and query exactly as sent (what the partner signed)."""
    environ = request.environ
    path = environ.get("RAW_PATH_INFO") or environ.get("PATH_INFO", "")  # eventlet: as sent
    query = environ.get("QUERY_STRING", "")
    return path + (f"?{query}" if query else "")


def json_body(body: bytes, content_type: str | None) -> dict:
    if content_type and content_type.split(";")[0].strip().lower() != "application/json":
        raise BadRequest(f"send JSON (Content-Type: application/json), not {content_type}",
                         {"Content-Type": ["must be application/json"]},
                         code="unsupported_media_type")
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise BadRequest(f"the body is not valid JSON: {error}", {"body": ["malformed JSON"]},
                         code="malformed_json") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object", {"body": ["expected an object"]},
                         code="malformed_json")
    return data


def query_params(request: Request, schema) -> dict:  # noqa: ANN001
    repeated = [name for name, values in request.args.lists() if len(values) > 1]
    if repeated:
        raise BadRequest("a query parameter is given more than once",
                         {name: ["given more than once"] for name in repeated},
                         code="repeated_parameter")
    return load(schema, dict(request.args.items()))


def idempotency_key(request: Request) -> str:
    key = request.headers.get(IDEMPOTENCY_HEADER, "").strip()
    if not key:
        raise BadRequest(f"every POST needs an {IDEMPOTENCY_HEADER} header",
                         {IDEMPOTENCY_HEADER: ["required"]}, code="idempotency_key_required")
    if len(key) > MAX_IDEMPOTENCY_KEY or not key.isprintable() or not key.isascii():
        raise BadRequest(f"{IDEMPOTENCY_HEADER} must be 1..{MAX_IDEMPOTENCY_KEY} printable "
                         "ASCII characters", {IDEMPOTENCY_HEADER: ["invalid"]},
                         code="idempotency_key_invalid")
    return key


def request_hash(method: str, path: str, body: bytes) -> str:
    """What 'the same request' means for an idempotency key: method, path and body bytes."""
    digest = hashlib.sha256(f"{method}\n{path}\n".encode())
    digest.update(body)
    return digest.hexdigest()


def check_rate(settings: GatewaySettings, partner_id: str) -> None:
    wait = settings.limiter.take(partner_id)
    if wait:
        error = RateLimited(f"more than {settings.limiter.rate:g} requests a second; retry in "
                            f"{wait:.2f} s", {"retry_after": [f"{wait:.2f}"]})
        error.retry_after = wait
        raise error


# -- answers --------------------------------------------------------------------------------


def json_response(status: int, body: object, correlation_id: str,
                  headers: dict | None = None) -> Response:
    response = Response(json.dumps(body, ensure_ascii=False, separators=(",", ":")),
                        status=status, mimetype="application/json")
    response.headers[CORRELATION_HEADER] = correlation_id
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def error_response(error: ServiceError, correlation_id: str) -> Response:
    status = error.http_status if 400 <= error.http_status < 600 else 400
    headers = {}
    if isinstance(error, RateLimited):
        headers["Retry-After"] = str(max(1, round(getattr(error, "retry_after", 1) + 0.5)))
    if status == 401:
        headers["WWW-Authenticate"] = 'HMAC-SHA256 realm="partner-gateway"'
    return json_response(status, {"error": {**error.as_dict(), "correlation_id": correlation_id}},
                         correlation_id, headers)


def internal_error(correlation_id: str, status: int = 500) -> Response:
    message = ("the gateway failed; quote the correlation id to support" if status == 500
               else "a backing service is unavailable; retry later")
    code = "internal_error" if status == 500 else "unavailable"
    return json_response(status, {"error": {"code": code, "message": message, "fields": {},
                                            "correlation_id": correlation_id}},
                         correlation_id, {"Retry-After": "1"} if status == 503 else None)
