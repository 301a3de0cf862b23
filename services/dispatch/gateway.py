"""The partner gateway's HTTP plumbing: reading, signing, limiting, idempotency, answers.

Every request goes through `Gateway.serve` (each route a `partner_endpoint` of
DispatchService): the body is read with a size cap, the signature verified against the
partner's secret and recorded so it cannot be replayed, the partner's rate checked, the
query or JSON body loaded through its schema in contracts/, and every outcome answered as
JSON. Bad input is never a 500 and never changes state; a 5xx carries a correlation id, never
exception text. What is remembered of requests (used signatures, answered Idempotency-Keys)
is in services/dispatch/idempotency.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from nameko.extensions import DependencyProvider
from nameko.web.handlers import http
from sqlalchemy import RowMapping
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from werkzeug.wrappers import Request, Response

from contracts.errors import BadRequest, Conflict, PayloadTooLarge, RateLimited, ServiceError
from contracts.gateway import IDEMPOTENCY_HEADER, MAX_BODY_BYTES, ROUTES_BY_OPERATION
from contracts.registry import load
from contracts.signing import verify as verify_signature
from serviceloop.clock import isoformat
from serviceloop.observability import count, log_context
from services.dispatch import idempotency, queries

if TYPE_CHECKING:
    from serviceloop.clock import Clock
    from serviceloop.nameko_deps import WorkerDatabase
    from serviceloop.observability import Probes

log = logging.getLogger(__name__)

CORRELATION_HEADER = "X-Correlation-Id"
MAX_IDEMPOTENCY_KEY = 128
_SCHEMAS = {route.operation: (route.query() if route.query else None,
                              route.body() if route.body else None)
            for route in ROUTES_BY_OPERATION.values()}


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


def partner_endpoint(operation: str):  # noqa: ANN201
    """A gateway route from contracts/gateway.py, served through `Gateway.serve` with the
    service's `db`, `clock`, `gateway` (GatewaySettings) and `probes`."""
    route = ROUTES_BY_OPERATION[operation]

    def decorate(handler):  # noqa: ANN001, ANN202
        # not functools.wraps: nameko checks the call against the signature it finds
        def entrypoint(self, request: Request, **params: str) -> Response:
            served = Gateway(self.db, self.clock, self.gateway, self.probes)
            return served.serve(operation, request, params.get("order_id"),
                                lambda partner_id, data: handler(self, partner_id, data,
                                                                 **params))

        entrypoint.__name__ = handler.__name__
        entrypoint.__doc__ = route.summary
        return http(route.method, route.path)(entrypoint)

    return decorate


class Gateway:
    """Everything around one partner request: the route's handler only sees who asked and
    what they sent, already checked. `handler(partner_id, query or body)` gives the view."""

    def __init__(self, db: WorkerDatabase, clock: Clock, settings: GatewaySettings,
                 probes: Probes) -> None:
        self.db = db
        self.clock = clock
        self.settings = settings
        self.probes = probes

    def serve(self, operation: str, request: Request, order_id: str | None,
              handler: Callable[[str, dict], dict]) -> Response:
        correlation_id = str(uuid.uuid4())
        log_context(correlation_id=correlation_id, actor=f"gateway:{operation}")
        response = self._answer(operation, request, order_id, handler, correlation_id)
        count(self.probes, "serviceloop_gateway_requests_total", operation=operation,
              code=str(response.status_code))
        return response

    def _answer(self, operation: str, request: Request, order_id: str | None,
                handler: Callable[[str, dict], dict], correlation_id: str) -> Response:
        try:
            return self._serve_signed(operation, request, order_id, handler, correlation_id)
        except ServiceError as error:
            self.db.rollback()
            return error_response(error, correlation_id)
        except (OperationalError, DBAPIError) as error:
            self.db.rollback()
            log.error("gateway %s %s [%s]: database: %s", request.method, request.path,
                      correlation_id, error)
            return internal_error(correlation_id, 503)
        except Exception:  # noqa: BLE001 - logged here; the partner sees only the id
            self.db.rollback()
            log.exception("gateway %s %s [%s] failed", request.method, request.path,
                          correlation_id)
            return internal_error(correlation_id)

    def _serve_signed(self, operation: str, request: Request, order_id: str | None,
                      handler: Callable[[str, dict], dict], correlation_id: str) -> Response:
        body = read_body(request)
        signed_at = time.time()  # transport freshness: wall time, not the business clock
        signature = request.headers.get("X-Signature", "").strip().lower()
        query_schema, body_schema = _SCHEMAS[operation]
        key = fingerprint = None
        if request.method == "POST":
            key = idempotency_key(request)
            fingerprint = request_hash(request.method, request.path, body)
        # one short transaction: the secret, the stored answer of a retried POST, and the
        # signature recorded as used (committed whatever the request then does)
        with self.db.transaction() as conn:
            partner_id = verify_signature(request.headers,
                                          lambda pid: queries.partner_secret(conn, pid),
                                          request.method, path_with_query(request), body,
                                          signed_at)
            # from here the log names who asked and which order: the request id is the cause
            log_context(correlation_id=order_id, causation_id=correlation_id,
                        actor=f"partner:{partner_id}")
            check_rate(self.settings, partner_id)
            if key is not None:
                # a retry of an answered request, even resent byte for byte, gets the first
                # answer; any other reuse of a signature is a replay
                stored = replayed(idempotency.stored_answer(conn, partner_id, key),
                                  fingerprint, correlation_id)
                if stored is not None:
                    return stored
            idempotency.record_signature(conn, partner_id, signature,
                                         int(request.headers["X-Timestamp"]))
        if request.method == "GET":
            query = query_params(request, query_schema)
            return json_response(200, handler(partner_id, query), correlation_id)
        if request.args:
            raise BadRequest("a POST takes no query parameters",
                             {name: ["unexpected"] for name in request.args},
                             code="unexpected_parameter")
        data = load(body_schema, json_body(body, request.content_type))
        return self._idempotent(partner_id, key, fingerprint, correlation_id,
                                lambda: handler(partner_id, data))

    def _idempotent(self, partner_id: str, key: str, fingerprint: str, correlation_id: str,
                    act: Callable[[], dict]) -> Response:
        """Run `act` once per (partner, key): a retry gets the first answer, another body 409."""
        conn = self.db.conn
        try:
            idempotency.claim_key(conn, partner_id, key, fingerprint,
                                  isoformat(self.clock.now()))
        except IntegrityError:  # a concurrent request with this key committed first
            self.db.rollback()
            with self.db.reader() as reader:
                row = idempotency.stored_answer(reader, partner_id, key)
            stored = replayed(row, fingerprint, correlation_id)
            if stored is None:
                raise
            return stored
        view = act()
        response = json_response(200, view, correlation_id)
        idempotency.save_answer(conn, partner_id, key, 200, response.get_data(as_text=True))
        self.db.commit()
        return response


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


def replayed(row: RowMapping | None, fingerprint: str, correlation_id: str) -> Response | None:
    """The first answer again, for a retry under an answered Idempotency-Key; None if there
    is none yet; 409 if the key came with another request."""
    if row is None or row["status"] == 0:
        return None
    if row["request_hash"] != fingerprint:
        raise Conflict("this Idempotency-Key was used with another request",
                       {"Idempotency-Key": ["already used with another body or path"]},
                       code="idempotency_key_reused")
    response = Response(row["response"], status=row["status"], mimetype="application/json")
    response.headers[CORRELATION_HEADER] = correlation_id
    response.headers["Idempotent-Replayed"] = "true"
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
