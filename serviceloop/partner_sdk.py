"""The partner SDK: a service partner's system talking to the dispatch gateway over HTTP.

    client = PartnerClient.from_file("var/partners/tianhe.json")
    for order in client.list_orders(status="assigned")["items"]:
        client.accept(order["order_id"])

Every request is signed as contracts/signing.py defines; every GET carries a fresh `nonce`
query parameter (the gateway refuses a replayed signature, and two identical GETs in one
second would otherwise sign identically); every POST carries an Idempotency-Key that its
retries reuse, so a retry after a lost answer cannot act twice. Connection errors, timeouts,
429 and 5xx are retried with exponential back-off; any other non-2xx answer raises
GatewayError with the gateway's error code.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase

from contracts.errors import ServiceError
from contracts.gateway import IDEMPOTENCY_HEADER, ROUTES_BY_OPERATION, path_for
from contracts.signing import TIMESTAMP_HEADER, signed_headers

DEFAULT_PORT = 8080
NONCE_PARAMETER = "nonce"
MAX_RETRY_AFTER = 30.0  # seconds: a longer Retry-After is waited for this long, then retried
MAX_BACKOFF = 10.0


class GatewayError(ServiceError):
    """A non-2xx answer from the gateway (status 0: no answer at all), with its error code."""

    def __init__(self, status: int, code: str, message: str, fields: dict | None = None,
                 body: Any = None) -> None:
        super().__init__(message, fields, code)
        self.status = status
        self.http_status = status
        self.body = body

    @classmethod
    def from_response(cls, response: requests.Response) -> GatewayError:
        """Built from `{"error": {"code", "message", "fields"}}`, or whatever else came back."""
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            fields = error.get("fields")
            status = response.status_code
            return cls(status, str(error.get("code") or f"http_{status}"),
                       str(error.get("message") or response.reason or ""),
                       fields if isinstance(fields, dict) else {}, body)
        text = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)
        message = (text.strip()[:500] or response.reason or f"HTTP {response.status_code}")
        return cls(response.status_code, f"http_{response.status_code}", message, {}, body)


class CredentialsMissing(ServiceError):
    code = "credentials_missing"


class PartnerAuth(AuthBase):
    """Signs a prepared request exactly as sent; a GET first gets a fresh `nonce` parameter."""

    def __init__(self, partner_id: str, secret: str,
                 clock: Callable[[], float] = time.time) -> None:
        self.partner_id = partner_id
        self.secret = secret
        self.clock = clock
        self.last_timestamp: str | None = None  # X-Timestamp of the latest signature

    def __call__(self, prepared: requests.PreparedRequest) -> requests.PreparedRequest:
        if (prepared.method or "").upper() == "GET":
            query = parse_qsl(urlsplit(prepared.url or "").query, keep_blank_values=True)
            if not any(name == NONCE_PARAMETER for name, _ in query):
                prepared.prepare_url(prepared.url, {NONCE_PARAMETER: uuid.uuid4().hex})
        body = prepared.body or b""
        if isinstance(body, str):
            body = body.encode("utf-8")
        headers = signed_headers(self.partner_id, self.secret, prepared.method or "GET",
                                 prepared.path_url, body, self.clock())
        prepared.headers.update(headers)
        self.last_timestamp = headers[TIMESTAMP_HEADER]
        return prepared


class PartnerClient:
    """One partner's connection to the gateway; methods are named after the gateway's routes
    (contracts.gateway.ROUTES) and return the decoded JSON answer."""

    max_retry_after = MAX_RETRY_AFTER

    def __init__(self, base_url: str, partner_id: str, secret: str, *, timeout: float = 10,
                 retries: int = 4, backoff: float = 0.2,
                 session: requests.Session | None = None, connections: int = 10,
                 clock: Callable[[], float] = time.time) -> None:
        """`connections`: requests this client may have in flight at once over kept-alive
        connections (its own session's pool; more at once each open a connection and close
        it after)."""
        self.base_url = base_url.rstrip("/")
        self.partner_id = partner_id
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.clock = clock
        self.sleep: Callable[[float], None] = time.sleep
        self.auth = PartnerAuth(partner_id, secret, clock)
        self._own_session = session is None
        self.session = session if session is not None else requests.Session()
        if self._own_session:
            adapter = HTTPAdapter(pool_connections=1, pool_maxsize=connections)
            for scheme in ("http://", "https://"):
                self.session.mount(scheme, adapter)
            # the environment's proxy (HTTP(S)_PROXY, NO_PROXY) and CA bundle for the
            # gateway, read once: requests would scan os.environ on every request again
            found = self.session.merge_environment_settings(self.base_url, {}, None, None,
                                                            None)
            self.session.proxies.update(found["proxies"])
            self.session.verify = found["verify"]
            self.session.trust_env = False

    # -- construction ---------------------------------------------------------------------

    @staticmethod
    def default_gateway() -> str:
        return os.environ.get("SERVICELOOP_GATEWAY") or \
            f"http://127.0.0.1:{os.environ.get('GATEWAY_PORT') or DEFAULT_PORT}"

    @classmethod
    def from_env(cls, base_url: str | None = None, **options: Any) -> PartnerClient:
        """SERVICELOOP_GATEWAY (default http://127.0.0.1:${GATEWAY_PORT:-8080}),
        SERVICELOOP_PARTNER_ID and SERVICELOOP_PARTNER_SECRET."""
        partner_id = os.environ.get("SERVICELOOP_PARTNER_ID")
        secret = os.environ.get("SERVICELOOP_PARTNER_SECRET")
        if not (partner_id and secret):
            raise CredentialsMissing(
                "set SERVICELOOP_PARTNER_ID and SERVICELOOP_PARTNER_SECRET, or give a "
                "credentials file", {"credentials": ["missing"]})
        return cls(base_url or cls.default_gateway(), partner_id, secret, **options)

    @classmethod
    def from_file(cls, path: str | os.PathLike, base_url: str | None = None,
                  **options: Any) -> PartnerClient:
        """A JSON credentials file {"partner_id", "secret", "gateway"} (as `serviceloop partner
        register --save` writes it); `base_url` wins over the file's gateway."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise CredentialsMissing(f"cannot read credentials file {path}: {error}",
                                     {"credentials": ["unreadable"]}) from None
        if not (isinstance(data, dict) and data.get("partner_id") and data.get("secret")):
            raise CredentialsMissing(f"{path} needs partner_id and secret",
                                     {"credentials": ["incomplete"]})
        return cls(base_url or data.get("gateway") or cls.default_gateway(),
                   str(data["partner_id"]), str(data["secret"]), **options)

    def close(self) -> None:
        if self._own_session:
            self.session.close()

    def __enter__(self) -> PartnerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the gateway's operations ---------------------------------------------------------

    def list_orders(self, status: str | None = None, page: int = 1,
                    page_size: int = 20) -> dict:
        query: dict[str, Any] = {"page": page, "page_size": page_size}
        if status:
            query["status"] = status
        return self.call("list_orders", query=query)

    def get_order(self, order_id: str) -> dict:
        return self.call("get_order", order_id=order_id)

    def accept(self, order_id: str, note: str = "", *,
               idempotency_key: str | None = None) -> dict:
        return self.call("accept", order_id=order_id, body={"note": note},
                         idempotency_key=idempotency_key)

    def reject(self, order_id: str, reason_code: str, note: str = "", *,
               idempotency_key: str | None = None) -> dict:
        return self.call("reject", order_id=order_id,
                         body={"reason_code": reason_code, "note": note},
                         idempotency_key=idempotency_key)

    def schedule(self, order_id: str, window_start: datetime | str, window_end: datetime | str,
                 *, idempotency_key: str | None = None) -> dict:
        """Datetimes, or ISO 8601 strings with an offset; a naive datetime is local time."""
        return self.call("schedule", order_id=order_id,
                         body={"window_start": _iso(window_start),
                               "window_end": _iso(window_end)},
                         idempotency_key=idempotency_key)

    def cancel_appointment(self, order_id: str, reason_code: str, note: str = "", *,
                           idempotency_key: str | None = None) -> dict:
        return self.call("cancel_appointment", order_id=order_id,
                         body={"reason_code": reason_code, "note": note},
                         idempotency_key=idempotency_key)

    def arrive(self, order_id: str, lat: float | None = None, lon: float | None = None,
               accuracy_m: int | None = None, *, idempotency_key: str | None = None) -> dict:
        body: dict[str, Any] = {}
        if lat is not None and lon is not None:
            body["coordinates"] = {"lat": lat, "lon": lon, "accuracy_m": accuracy_m}
        return self.call("arrive", order_id=order_id, body=body,
                         idempotency_key=idempotency_key)

    def complete(self, order_id: str, *, idempotency_key: str | None = None,
                 **fields: Any) -> dict:
        """Fields of contracts.dispatch.CompleteRequest: work_done, labour_fee_cents, parts …"""
        return self.call("complete", order_id=order_id, body=fields,
                         idempotency_key=idempotency_key)

    # -- one call, with retries -----------------------------------------------------------

    def call(self, operation: str, *, order_id: str | None = None,
             query: dict | None = None, body: dict | None = None,
             idempotency_key: str | None = None) -> dict:
        route = ROUTES_BY_OPERATION[operation]
        params = {"order_id": quote(str(order_id), safe="")} if order_id is not None else {}
        url = self.base_url + path_for(operation, **params)
        headers: dict[str, str] = {"Accept": "application/json"}
        data: bytes | None = None
        if route.method == "POST":
            # one key and one body for every attempt: a retry is the same request
            headers[IDEMPOTENCY_HEADER] = idempotency_key or uuid.uuid4().hex
            headers["Content-Type"] = "application/json"
            data = json.dumps(body or {}, ensure_ascii=False, separators=(",", ":"),
                              default=str).encode("utf-8")
        response = self._send(route.method, url, query, data, headers)
        if not 200 <= response.status_code < 300:
            raise GatewayError.from_response(response)
        try:
            return response.json()
        except ValueError:
            raise GatewayError(response.status_code, "invalid_response",
                               "the gateway's answer is not JSON", {},
                               response.text[:500]) from None

    def _send(self, method: str, url: str, query: dict | None, data: bytes | None,
              headers: dict[str, str]) -> requests.Response:
        attempt = 0
        while True:
            if attempt and method != "GET":
                self._await_new_timestamp()
            params = query
            if method == "GET":  # a fresh one each attempt, in the URL as it is first built
                params = {**(query or {}), NONCE_PARAMETER: uuid.uuid4().hex}
            try:
                response = self.session.request(method, url, params=params, data=data,
                                                headers=headers, auth=self.auth,
                                                timeout=self.timeout)
            except (requests.ConnectionError, requests.Timeout) as error:
                if attempt >= self.retries:
                    raise GatewayError(0, "gateway_unreachable",
                                       f"{method} {url}: {error}") from error
                self.sleep(self._backoff(attempt))
                attempt += 1
                continue
            status = response.status_code
            if (status == 429 or status >= 500) and attempt < self.retries:
                wait = self._backoff(attempt)
                if status == 429:
                    wait = max(wait, self._retry_after(response))
                response.close()
                self.sleep(wait)
                attempt += 1
                continue
            return response

    def _backoff(self, attempt: int) -> float:
        return min(MAX_BACKOFF, self.backoff * 2 ** attempt)

    def _retry_after(self, response: requests.Response) -> float:
        try:
            seconds = float(response.headers.get("Retry-After", ""))
        except ValueError:
            return 0.0
        return min(max(seconds, 0.0), self.max_retry_after)

    def _await_new_timestamp(self) -> None:
        """A POST retry signed in the same second as the last attempt would sign identically
        (same key, same body), and the gateway refuses a repeated signature as a replay."""
        last = self.auth.last_timestamp
        while last is not None:
            now = self.clock()
            if str(int(now)) != last:
                return
            self.sleep(max(0.01, int(now) + 1 - now))


def _iso(value: datetime | str) -> str:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.astimezone()
        return value.isoformat()
    return str(value)
