"""The partner gateway's HTTP plumbing: reading, signing, limiting, idempotency, answers.

Every request goes through `Gateway.serve` (each route a `partner_endpoint` of
DispatchService): the body is read with a size cap, the signature verified against the
partner's secret and recorded so it cannot be replayed, the partner's rate checked, the
query or JSON body loaded through its schema in contracts/, and every outcome answered as
JSON. Bad input is never a 500 and never changes state; a 5xx carries a correlation id, never
exception text. The database's part of letting a request in (the secret still current, the
signature recorded, a retry's stored answer, the order) is one statement on PostgreSQL:
services/dispatch/admission.py; what is remembered of requests is in idempotency.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from nameko.extensions import DependencyProvider
from sqlalchemy import RowMapping
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from werkzeug.wrappers import Request, Response

from contracts.errors import (
    BadRequest,
    ConcurrencyConflict,
    Conflict,
    PayloadTooLarge,
    RateLimited,
    ServiceError,
)
from contracts.gateway import IDEMPOTENCY_HEADER, MAX_BODY_BYTES, ROUTES_BY_OPERATION
from contracts.registry import load
from contracts.signing import SignatureError
from contracts.signing import verify as verify_signature
from serviceloop.clock import isoformat
from serviceloop.db import fetch_rows, sql, transaction_failed
from serviceloop.entrypoints import http
from serviceloop.observability import count, log_context
from services.dispatch import idempotency
from services.dispatch.admission import ACTION_SAVEPOINT, AdmissionSession, admission_session

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
    """Per-process gateway settings, the rate limiter (config GATEWAY_RATE_PER_SECOND,
    GATEWAY_BURST) and the partners' secrets read so far (partner id -> secret).

    A remembered secret saves a read per request and is never trusted alone: admission
    checks in the same statement that it is still the partner's, and a signature that does
    not match it is checked again against the secret read afresh (rotation takes effect at
    once, on every replica)."""

    def setup(self) -> None:
        config = self.container.config
        rate = float(config.get("GATEWAY_RATE_PER_SECOND", 50))
        self.limiter = TokenBucket(rate, float(config.get("GATEWAY_BURST", 2 * rate)))
        self.secrets: dict[str, str] = {}

    def get_dependency(self, worker_ctx):  # noqa: ANN001, ANN201
        return self


@dataclass(frozen=True, slots=True)
class Asked:
    """Who sent an admitted request, and the order its path names as read at admission
    (None if there is no such order or no order in the path): not yet checked to be theirs.
    A POST is admitted in the worker's unit of work, and its handler acts in it: it calls
    `begin_action(conn)` before its first write (a savepoint: a refused or failed action is
    rolled back to it, and the signature recorded at admission is still committed) and may
    hand its answer to `record_answer` inside its transaction (stored under the
    Idempotency-Key); the gateway stores it otherwise. `request_id` is the request's
    correlation id (its answer's X-Correlation-Id): the events it causes name it as their
    cause (`http-<request_id>`), so support finds them from what the partner was answered."""

    partner_id: str
    order: dict | None
    request_id: str
    record_answer: Callable[[dict], None] | None = None
    # a POST's handler calls it on its transaction's connection before its first write
    begin_action: Callable[[object], None] | None = None


def partner_endpoint(operation: str):  # noqa: ANN201
    """A gateway route from contracts/gateway.py, served through `Gateway.serve` with the
    service's `db`, `clock`, `gateway` (GatewaySettings) and `probes`. The handler is called
    as `handler(service, asked: Asked, query or body, **path parameters)`."""
    route = ROUTES_BY_OPERATION[operation]

    def decorate(handler):  # noqa: ANN001, ANN202
        # not functools.wraps: nameko checks the call against the signature it finds
        def entrypoint(self, request: Request, **params: str) -> Response:
            served = Gateway(self.db, self.clock, self.gateway, self.probes)
            return served.serve(operation, request, params.get("order_id"),
                                lambda asked, data: handler(self, asked, data, **params))

        entrypoint.__name__ = handler.__name__
        entrypoint.__doc__ = route.summary
        return http(route.method, route.path)(entrypoint)

    return decorate


class Gateway:
    """Everything around one partner request: the route's handler only sees who asked and
    what they sent, already checked. `handler(asked, query or body)` gives the view."""

    def __init__(self, db: WorkerDatabase, clock: Clock, settings: GatewaySettings,
                 probes: Probes) -> None:
        self.db = db
        self.clock = clock
        self.settings = settings
        self.probes = probes
        self._action_begun = False  # a POST's savepoint is in its transaction (or deferred)

    def serve(self, operation: str, request: Request, order_id: str | None,
              handler: Callable[[Asked, dict], dict]) -> Response:
        correlation_id = str(uuid.uuid4())
        log_context(correlation_id=correlation_id, actor=f"gateway:{operation}")
        response = self._answer(operation, request, order_id, handler, correlation_id)
        count(self.probes, "serviceloop_gateway_requests_total", operation=operation,
              code=str(response.status_code))
        return response

    def _answer(self, operation: str, request: Request, order_id: str | None,
                handler: Callable[[Asked, dict], dict], correlation_id: str) -> Response:
        try:
            return self._serve_signed(operation, request, order_id, handler, correlation_id)
        except ServiceError as error:
            self.db.rollback()
            return error_response(error, correlation_id)
        # admission uses the driver's own cursor: its errors are the driver's
        except (OperationalError, DBAPIError, self.db.engine.dialect.loaded_dbapi.Error) \
                as error:
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
                      handler: Callable[[Asked, dict], dict], correlation_id: str) -> Response:
        body = read_body(request)
        query_schema, body_schema = _SCHEMAS[operation]
        key = fingerprint = None
        if request.method == "POST":
            key = idempotency_key(request)
            fingerprint = request_hash(request.method, request.path, body)
        # the signature recorded as used (committed whatever the request then does), the
        # stored answer of a retried POST and the order: one statement (admission.py); a
        # POST's opens the transaction its action then runs in
        asked, answered = self._admit(request, body, key, order_id, correlation_id)
        # from here the log names who asked and which order: the request id is the cause
        log_context(correlation_id=order_id, causation_id=correlation_id,
                    actor=f"partner:{asked.partner_id}")
        if request.method == "GET":
            query = query_params(request, query_schema)
            return json_response(200, handler(asked, query), correlation_id)
        try:
            # a retry of an answered request, even resent byte for byte, gets the first
            # answer; any other reuse of a signature is a replay
            stored = replayed(answered, fingerprint, correlation_id)
            if stored is not None:
                self._keep_signature()
                return stored
            if request.args:
                raise BadRequest("a POST takes no query parameters",
                                 {name: ["unexpected"] for name in request.args},
                                 code="unexpected_parameter")
            data = load(body_schema, json_body(body, request.content_type))
            return self._idempotent(asked, key, fingerprint, correlation_id,
                                    lambda asked: handler(asked, data))
        except Exception:  # a worker killed (GreenletExit) is rolled back at its teardown
            self._keep_signature()
            raise

    def _begin_action(self, conn) -> None:  # noqa: ANN001 - the unit of work's connection
        """A savepoint before the action's first write (on PostgreSQL sent with the
        action's append, serviceloop.db.sql deferring it)."""
        sql(conn, f"SAVEPOINT {ACTION_SAVEPOINT}")
        self._action_begun = True

    def _keep_signature(self) -> None:
        """End a POST's transaction without its action: what the action wrote is rolled
        back to its savepoint, the signature recorded at admission is committed (a replay of
        a refused request stays refused). Nothing to do once the transaction has ended.

        On PostgreSQL the action's writes and COMMIT go in one round trip (its append), so
        a transaction still open has written nothing after admission unless that round trip
        failed, which leaves it in error. In error before the savepoint (a read of the
        action failing: the database is away), the whole transaction is rolled back; a
        dropped connection kept nothing, the signature included (the request may be sent
        again as it was)."""
        db = self.db
        if not db.active:
            return
        conn = db.conn
        if conn.invalidated:  # the connection dropped: nothing of the transaction was kept
            db.rollback()
            return
        try:
            if conn.dialect.name == "postgresql":
                if transaction_failed(conn):
                    if not self._action_begun:
                        db.rollback()
                        return
                    fetch_rows(conn, f"ROLLBACK TO SAVEPOINT {ACTION_SAVEPOINT}; COMMIT")
            elif self._action_begun:
                sql(conn, f"ROLLBACK TO SAVEPOINT {ACTION_SAVEPOINT}")
            db.commit()
        except BaseException:
            db.rollback()
            raise

    def _admit(self, request: Request, body: bytes, key: str | None, order_id: str | None,
               correlation_id: str) -> tuple[Asked, tuple | None]:
        """Verify the signature, check the partner's rate, record the signature as used;
        who asked, the order, and the key's earlier answer if there is one."""
        signed_at = time.time()  # transport freshness: wall time, not the business clock
        signature = request.headers.get("X-Signature", "").strip().lower()
        if order_id is not None and "\x00" in order_id:
            order_id = None  # no order has it; the driver would refuse the text
        with admission_session(self.db, in_unit_of_work=key is not None) as session:
            partner_id, secret = self._verified(session, request, body, signed_at)
            check_rate(self.settings, partner_id)
            timestamp = int(request.headers["X-Timestamp"])
            admitted = session.admit(partner_id, secret, signature, timestamp, key, order_id)
            if not admitted.current:  # rotated since we read it: the new one decides
                self.settings.secrets.pop(partner_id, None)
                partner_id, secret = self._verified(session, request, body, signed_at)
                admitted = session.admit(partner_id, secret, signature, timestamp, key,
                                         order_id)
                if not admitted.current:
                    raise SignatureError("bad_signature",
                                         "the signature does not match the request")
        if not admitted.recorded and admitted.answered is None:
            raise SignatureError("signature_replayed",
                                 "this signed request was already used; sign each request "
                                 "afresh")
        return (Asked(partner_id, admitted.order, correlation_id,
                      begin_action=self._begin_action),
                admitted.answered)

    def _verified(self, session: AdmissionSession, request: Request, body: bytes,
                  signed_at: float) -> tuple[str, str]:
        """The partner id and the secret that its signature matches; SignatureError if none.
        A remembered secret that does not match is read again: it may have been rotated."""
        secrets = self.settings.secrets
        used: dict[str, str | None] = {}

        def secret_for(partner_id: str) -> str | None:
            secret = secrets.get(partner_id)
            if secret is None or "again" in used:
                secret = session.secret(partner_id)
                if secret is None:
                    secrets.pop(partner_id, None)
                else:
                    secrets[partner_id] = secret
                used["read"] = secret
            used["secret"] = secret
            return secret

        method, path = request.method, path_with_query(request)
        try:
            partner_id = verify_signature(request.headers, secret_for, method, path, body,
                                          signed_at)
        except SignatureError as error:
            if error.code != "bad_signature" or "read" in used:
                raise
            used["again"] = ""
            partner_id = verify_signature(request.headers, secret_for, method, path, body,
                                          signed_at)
        return partner_id, used["secret"]

    def _idempotent(self, asked: Asked, key: str, fingerprint: str, correlation_id: str,
                    act: Callable[[Asked], dict]) -> Response:
        """Run `act` once per (partner, key): a retry gets the first answer, another body 409.

        The answer is stored under the key in the action's own transaction: by `act` through
        `asked.record_answer` (before it takes the log's append lock, which is held to
        commit), or else here once it returns. A concurrent request with the same key waits
        on that row and then finds the answer."""
        conn = self.db.conn
        created_at = isoformat(self.clock.now())
        recorded: list[str] = []

        def record_answer(view: dict) -> None:
            answer = json_text(view)
            idempotency.save_answer(conn, asked.partner_id, key, fingerprint, 200, answer,
                                    created_at)
            recorded.append(answer)

        try:
            view = act(replace(asked, record_answer=record_answer))
            if not recorded:
                record_answer(view)
        except (IntegrityError, ConcurrencyConflict):  # a request with this key went first?
            self._keep_signature()
            with self.db.reader() as reader:
                row = idempotency.stored_answer(reader, asked.partner_id, key)
            stored = replayed(row, fingerprint, correlation_id)
            if stored is None:
                raise
            return stored
        self.db.commit()
        return json_response(200, recorded[0], correlation_id)


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


def json_text(body: object) -> str:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def json_response(status: int, body: object, correlation_id: str,
                  headers: dict | None = None) -> Response:
    """`body` as JSON (a str is taken as JSON text already)."""
    response = Response(body if isinstance(body, str) else json_text(body),
                        status=status, mimetype="application/json")
    response.headers[CORRELATION_HEADER] = correlation_id
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def replayed(row: RowMapping | tuple | None, fingerprint: str,
             correlation_id: str) -> Response | None:
    """The first answer again, for a retry under an answered Idempotency-Key; None if there
    is none yet; 409 if the key came with another request. `row`: (request_hash, status,
    response), by name or in that order."""
    if row is None:
        return None
    request_hash, status, answer = ((row["request_hash"], row["status"], row["response"])
                                    if isinstance(row, RowMapping) else row)
    if status == 0:
        return None
    if request_hash != fingerprint:
        raise Conflict("this Idempotency-Key was used with another request",
                       {"Idempotency-Key": ["already used with another body or path"]},
                       code="idempotency_key_reused")
    response = Response(answer, status=status, mimetype="application/json")
    response.headers[CORRELATION_HEADER] = correlation_id
    response.headers["Idempotent-Replayed"] = "true"
    return response


def error_response(error: ServiceError, correlation_id: str) -> Response:
    status = error.http_status if 400 <= error.http_status < 600 else 400
    headers = {}
    if isinstance(error, RateLimited):
        headers["Retry-After"] = str(max(1, round(getattr(error, "retry_after", 1) + 0.5)))
    elif status == 503:  # ServiceUnavailable: the database connection dropped, say
        headers["Retry-After"] = "1"
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
