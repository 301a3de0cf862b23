"""The partner SDK against a real local HTTP server that checks signatures as the gateway does
(contracts.signing.verify, and a signature is good for one request only)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from contracts.signing import SignatureError, verify
from serviceloop.partner_sdk import CredentialsMissing, GatewayError, PartnerClient

PARTNER_ID = "p-test"
SECRET = "secret-of-p-test"


class FakeGateway:
    """Records every request; answers from `script` (status, headers, body) first, then 200."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.script: list[tuple[int, dict, bytes]] = []
        self.seen_signatures: set[str] = set()
        self.lock = threading.Lock()

    def answer(self, method: str, path: str, headers: dict, body: bytes) -> tuple:
        record = {"method": method, "path": path, "headers": headers, "body": body,
                  "query": parse_qs(urlsplit(path).query)}
        with self.lock:
            self.requests.append(record)
            try:
                verify(headers, {PARTNER_ID: SECRET}.get, method, path, body, time.time())
            except SignatureError as error:
                record["refused"] = error.code
                return 401, {}, _json({"error": error.as_dict()})
            signature = headers["X-Signature"]
            if signature in self.seen_signatures:
                record["refused"] = "signature_replayed"
                return 401, {}, _json({"error": {"code": "signature_replayed",
                                                 "message": "replayed", "fields": {}}})
            self.seen_signatures.add(signature)
            if self.script:
                return self.script.pop(0)
        return 200, {}, _json({"method": method, "path": urlsplit(path).path,
                               "body": json.loads(body) if body else None})


def _json(value: object) -> bytes:
    return json.dumps(value).encode()


@pytest.fixture
def gateway():
    fake = FakeGateway()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            status, headers, answer = fake.answer(self.command, self.path,
                                                  dict(self.headers.items()), body)
            send_json(self, answer, status, headers)

        do_GET = do_POST = _serve

        def log_message(self, *args: object) -> None:
            pass

    with serving(Handler) as base_url:
        fake.base_url = base_url
        yield fake


def send_json(handler: BaseHTTPRequestHandler, answer: bytes, status: int = 200,
              headers: dict | None = None) -> None:
    """Answer `handler`'s request with the JSON bytes `answer` (and `headers`)."""
    handler.send_response(status)
    for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(answer)))
    handler.end_headers()
    handler.wfile.write(answer)


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A local HTTP server of `handler`s, in a thread, for the block; its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def client(gateway):
    with PartnerClient(gateway.base_url, PARTNER_ID, SECRET, timeout=5, retries=3,
                       backoff=0.001) as partner:
        yield partner


def test_every_request_is_signed_as_the_contract_defines(gateway, client) -> None:
    client.list_orders(status="assigned", page=2)
    client.get_order("o-1")
    answer = client.accept("o-1", note="已联系用户")
    assert answer == {"method": "POST", "path": "/api/v1/orders/o-1/accept",
                      "body": {"note": "已联系用户"}}
    assert [r.get("refused") for r in gateway.requests] == [None, None, None]
    listing, _, post = gateway.requests
    assert listing["query"]["status"] == ["assigned"] and listing["query"]["page"] == ["2"]
    assert post["headers"]["Content-Type"] == "application/json"
    assert post["body"] == json.dumps({"note": "已联系用户"}, ensure_ascii=False,
                                      separators=(",", ":")).encode()
    assert post["headers"]["Idempotency-Key"]


def test_identical_gets_carry_distinct_nonces_so_neither_is_a_replay(gateway, client) -> None:
    client.get_order("o-1")
    client.get_order("o-1")
    first, second = gateway.requests
    assert "refused" not in first and "refused" not in second
    assert first["query"]["nonce"] != second["query"]["nonce"]


def test_a_get_retried_after_503_carries_a_fresh_nonce_and_is_not_a_replay(gateway,
                                                                          client) -> None:
    gateway.script.append((503, {"Retry-After": "1"}, _json(
        {"error": {"code": "unavailable", "message": "retry", "fields": {}}})))
    assert client.get_order("o-1")["path"] == "/api/v1/orders/o-1"
    first, retry = gateway.requests
    assert "refused" not in first and "refused" not in retry
    assert first["query"]["nonce"] != retry["query"]["nonce"]


def test_the_environments_proxy_settings_are_read_when_the_client_is_made(monkeypatch) -> None:
    """HTTP_PROXY and NO_PROXY as requests reads them, once, not on every request."""
    seen: list[str] = []

    class Proxy(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            seen.append(self.path)
            send_json(self, _json({"proxied": True}))

        def log_message(self, *args: object) -> None:
            pass

    gateway = "http://gateway.invalid:8080"
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "REQUEST_METHOD"):
        monkeypatch.delenv(name, raising=False)
    with serving(Proxy) as proxy:
        for name in ("HTTP_PROXY", "http_proxy"):
            monkeypatch.setenv(name, proxy)
        with PartnerClient(gateway, PARTNER_ID, SECRET, timeout=5, retries=0) as partner:
            for name in ("HTTP_PROXY", "http_proxy"):  # read already: no effect now
                monkeypatch.delenv(name)
            assert partner.get_order("o-1") == {"proxied": True}
        assert seen[0].startswith(f"{gateway}/api/v1/orders/o-1?nonce=")
        for name in ("HTTP_PROXY", "http_proxy"):
            monkeypatch.setenv(name, proxy)
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.setenv(name, "gateway.invalid")
        with PartnerClient(gateway, PARTNER_ID, SECRET, timeout=5, retries=0) as partner, \
                pytest.raises(GatewayError) as refused:
            partner.get_order("o-1")
    assert refused.value.code == "gateway_unreachable"
    assert len(seen) == 1


def test_a_post_retried_after_503_reuses_key_and_body_and_is_signed_afresh(gateway,
                                                                           client) -> None:
    gateway.script.append((503, {"Retry-After": "1"}, _json(
        {"error": {"code": "unavailable", "message": "retry", "fields": {}}})))
    client.reject("o-1", "out_of_area", note="太远")
    first, retry = gateway.requests
    assert "refused" not in first and "refused" not in retry
    assert retry["headers"]["Idempotency-Key"] == first["headers"]["Idempotency-Key"]
    assert retry["body"] == first["body"]
    assert retry["headers"]["X-Signature"] != first["headers"]["X-Signature"]
    assert int(retry["headers"]["X-Timestamp"]) > int(first["headers"]["X-Timestamp"])


def test_the_caller_may_choose_the_idempotency_key(gateway, client) -> None:
    client.arrive("o-1", lat=23.13, lon=113.33, idempotency_key="visit-o-1")
    client.arrive("o-2")
    with_coordinates, without = gateway.requests
    assert with_coordinates["headers"]["Idempotency-Key"] == "visit-o-1"
    assert json.loads(with_coordinates["body"]) == {
        "coordinates": {"lat": 23.13, "lon": 113.33, "accuracy_m": None}}
    assert json.loads(without["body"]) == {}


def test_429_is_retried_after_the_retry_after_seconds(gateway, client) -> None:
    waits: list[float] = []
    client.sleep = waits.append
    client.max_retry_after = 0.05  # the gateway says 2 s; the cap keeps the test quick
    gateway.script.append((429, {"Retry-After": "2"}, _json(
        {"error": {"code": "rate_limited", "message": "slow down", "fields": {}}})))
    assert client.list_orders()["path"] == "/api/v1/orders"
    assert len(gateway.requests) == 2
    assert waits == [0.05]


def test_retries_stop_after_the_limit_with_the_last_answer(gateway, client) -> None:
    client.sleep = lambda seconds: None
    gateway.script += [(502, {}, b"bad gateway")] * 4
    with pytest.raises(GatewayError) as failed:
        client.get_order("o-1")
    assert failed.value.status == 502 and failed.value.code == "http_502"
    assert len(gateway.requests) == 1 + client.retries


def test_a_409_becomes_a_gateway_error_with_its_code_and_is_not_retried(gateway,
                                                                        client) -> None:
    gateway.script.append((409, {}, _json({"error": {
        "code": "already_accepted", "message": "the order is already accepted",
        "fields": {"status": ["accepted"]}, "correlation_id": "c-1"}})))
    with pytest.raises(GatewayError) as refused:
        client.accept("o-1")
    error = refused.value
    assert (error.status, error.code, error.message) == (
        409, "already_accepted", "the order is already accepted")
    assert error.fields == {"status": ["accepted"]}
    assert error.body["error"]["correlation_id"] == "c-1"
    assert error.as_dict()["code"] == "already_accepted"
    assert len(gateway.requests) == 1


def test_an_error_body_that_is_not_json_does_not_crash(gateway, client) -> None:
    gateway.script.append((404, {"Content-Type": "text/html"}, b"<h1>Not Found</h1>"))
    with pytest.raises(GatewayError) as refused:
        client.get_order("o-404")
    assert refused.value.status == 404
    assert refused.value.code == "http_404"
    assert "Not Found" in refused.value.message


def test_an_unreachable_gateway_is_a_gateway_error_after_retrying() -> None:
    with PartnerClient("http://127.0.0.1:9", PARTNER_ID, SECRET, retries=1,
                       backoff=0.001, timeout=2) as client:
        with pytest.raises(GatewayError) as failed:
            client.get_order("o-1")
    assert (failed.value.status, failed.value.code) == (0, "gateway_unreachable")


def test_schedule_sends_datetimes_as_iso_with_offset(gateway, client) -> None:
    start = datetime(2030, 5, 1, 9, 0, tzinfo=timezone(timedelta(hours=8)))
    client.schedule("o-1", start, "2030-05-01T11:00:00+08:00")
    assert json.loads(gateway.requests[0]["body"]) == {
        "window_start": "2030-05-01T09:00:00+08:00", "window_end": "2030-05-01T11:00:00+08:00"}


def test_complete_sends_the_fields_it_is_given(gateway, client) -> None:
    parts = [{"part_code": "WH-P-ELEMENT", "new_serial": "N1", "fee_cents": 12000}]
    client.complete("o-1", work_done="换加热管", labour_fee_cents=8000, parts=parts)
    assert json.loads(gateway.requests[0]["body"]) == {
        "work_done": "换加热管", "labour_fee_cents": 8000, "parts": parts}


def test_order_ids_are_quoted_into_the_path(gateway, client) -> None:
    client.get_order("a/b c")
    assert urlsplit(gateway.requests[0]["path"]).path == "/api/v1/orders/a%2Fb%20c"
    assert "refused" not in gateway.requests[0]


def test_credentials_come_from_a_file_or_the_environment(tmp_path, monkeypatch) -> None:
    path = tmp_path / "partner.json"
    path.write_text(json.dumps({"partner_id": "p-1", "secret": "s", "gateway": "http://gw:1/"}))
    from_file = PartnerClient.from_file(path)
    assert (from_file.base_url, from_file.partner_id) == ("http://gw:1", "p-1")
    assert PartnerClient.from_file(path, base_url="http://other").base_url == "http://other"

    monkeypatch.delenv("SERVICELOOP_GATEWAY", raising=False)
    monkeypatch.setenv("GATEWAY_PORT", "9191")
    monkeypatch.setenv("SERVICELOOP_PARTNER_ID", "p-2")
    monkeypatch.setenv("SERVICELOOP_PARTNER_SECRET", "s2")
    from_env = PartnerClient.from_env()
    assert (from_env.base_url, from_env.partner_id) == ("http://127.0.0.1:9191", "p-2")
    monkeypatch.delenv("SERVICELOOP_PARTNER_SECRET")
    with pytest.raises(CredentialsMissing):
        PartnerClient.from_env()


def test_a_clock_far_off_is_refused_by_the_gateway(gateway) -> None:
    late = datetime.now(UTC).timestamp() - 3600
    with PartnerClient(gateway.base_url, PARTNER_ID, SECRET, retries=0,
                       clock=lambda: late) as client:
        with pytest.raises(GatewayError) as refused:
            client.get_order("o-1")
    assert (refused.value.status, refused.value.code) == (401, "stale_signature")


def _ports_used(connections: int, at_once: int = 12, each: int = 5) -> int:
    """Client ports a PartnerClient's `at_once` concurrent callers used for `each` requests
    apiece, against a keep-alive server that answers a round's requests only once all
    `at_once` are in: every round has that many connections in use at once. Callers start
    the next round only when all have their answer (and have given their connection back),
    so a pool smaller than a round closes what it cannot keep, and the next round opens as
    many again."""
    ports: set[int] = set()
    round_in, round_done = threading.Barrier(at_once), threading.Barrier(at_once)

    class KeepAlive(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            ports.add(self.client_address[1])
            round_in.wait(timeout=10)  # the round's other requests are in flight too
            send_json(self, _json({"order_id": "o-1"}))

        def log_message(self, *args: object) -> None:
            pass

    with serving(KeepAlive) as base_url, PartnerClient(
            base_url, PARTNER_ID, SECRET, timeout=15, retries=0,
            connections=connections) as partner:
        def caller() -> None:
            for _ in range(each):
                partner.get_order("o-1")
                round_done.wait(timeout=10)

        callers = [threading.Thread(target=caller) for _ in range(at_once)]
        for caller_thread in callers:
            caller_thread.start()
        for caller_thread in callers:
            caller_thread.join(60)
    return len(ports)


def test_a_client_keeps_as_many_connections_as_it_is_told_it_will_use_at_once() -> None:
    # requests' own pool keeps 10: each round after the first opens the two over it again
    assert _ports_used(connections=10) == 12 + 2 * 4
    assert _ports_used(connections=12) <= 12
