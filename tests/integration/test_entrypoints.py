"""serviceloop's `@rpc` and `@http` (serviceloop/entrypoints.py), against a real RabbitMQ and
over real HTTP: RPC replies are sent without a publisher confirm, once serialized, and
otherwise both answer exactly as nameko's do; `@http`'s server reads requests' header fields
itself (what reaches the handler, keep-alive, refusals of malformed requests) and formats
no access-log line nobody logs."""

import functools
import json
import logging
import socket
from http.client import HTTPConnection

import pytest
import requests
from nameko.exceptions import IncorrectSignature, RemoteError
from nameko.standalone.rpc import ServiceRpcProxy

from serviceloop.entrypoints import MAX_FIELDS, Replies, ServiceWebServer, http, rpc
from tests.helpers import queue_counts, wait_until
from tests.integration.dispatch_system import free_port


def takes_request_id(method):
    """A wrapper with its own keyword, as serviceloop.answers.answered_once is."""

    @functools.wraps(method)
    def wrapper(self, *args, request_id=None, **kwargs):
        return {"request_id": request_id, "answer": method(self, *args, **kwargs)}

    return wrapper


class Counter:
    name = "rpc_under_test"

    @rpc
    def add(self, a: int, b: int = 1) -> int:
        return a + b

    @rpc
    def refuse(self, reason: str) -> None:
        raise ValueError(reason)

    @rpc
    def unsendable(self) -> object:
        return object()

    @rpc
    @takes_request_id
    def kept(self, value: str) -> str:
        return value.upper()

    @http("GET", "/add/<int:a>")
    def add_over_http(self, request, a: int) -> str:  # noqa: ANN001
        return str(a + int(request.args.get("b", 1)))

    @http("POST", "/seen")
    def seen(self, request) -> str:  # noqa: ANN001
        """What the handler gets of a request: some fields, the content type, the body."""
        return json.dumps({"signature": request.headers.get("X-Signature"),
                           "tags": request.headers.get("X-Tag"),
                           "content_type": request.environ.get("CONTENT_TYPE"),
                           "body": request.get_data(as_text=True)})


def listening_config(service_config) -> dict:  # noqa: ANN001 - the fixture's maker
    """A container config whose web server listens on a free loopback port."""
    return {**service_config(), "WEB_SERVER_ADDRESS": f"127.0.0.1:{free_port()}"}


def http_port(container) -> int:  # noqa: ANN001
    return int(container.config["WEB_SERVER_ADDRESS"].rsplit(":", 1)[1])


@pytest.fixture
def counter(container_factory, service_config):
    config = listening_config(service_config)
    container = container_factory(Counter, config)
    container.start()
    with ServiceRpcProxy("rpc_under_test", config, timeout=10) as proxy:
        yield proxy, container


def test_answers_come_back_and_every_request_is_acknowledged(counter, broker_uri):
    proxy, container = counter
    assert [proxy.add(n, b=n) for n in range(5)] == [0, 2, 4, 6, 8]
    assert proxy.add(41) == 42
    # one consumer for the service's queue, and it is serviceloop's (no confirm on replies)
    consumers = [e for e in container.extensions if isinstance(e, Replies)]
    assert len(consumers) == 1
    assert consumers[0].connection.transport_options["confirm_publish"] is False
    # each request was acknowledged after its answer went out: none is left unacknowledged
    wait_until(lambda: queue_counts(broker_uri, "messages_unacknowledged")
               .get("rpc-rpc_under_test") == 0, timeout=10, message="no request unacknowledged")


def test_errors_reach_the_caller_as_nameko_sends_them(counter):
    proxy, _ = counter
    with pytest.raises(RemoteError) as raised:
        proxy.refuse("no such fault code")
    assert raised.value.exc_type == "ValueError"
    assert "no such fault code" in raised.value.value
    with pytest.raises(RemoteError) as raised:
        proxy.unsendable()
    assert raised.value.exc_type == "UnserializableValueError"
    # the service still answers after both
    assert proxy.add(2, 3) == 5


def test_arguments_are_checked_against_the_signature_nameko_would_check(counter):
    proxy, _ = counter
    with pytest.raises(IncorrectSignature):
        proxy.add()
    with pytest.raises(IncorrectSignature):
        proxy.add(1, 2, 3)
    with pytest.raises(IncorrectSignature):
        proxy.add(1, c=2)
    # a wrapper's own keyword is accepted, as inspect.getcallargs on the wrapper accepts it
    assert proxy.kept("ok", request_id="r-1") == {"request_id": "r-1", "answer": "OK"}
    assert proxy.kept(value="ok") == {"request_id": None, "answer": "OK"}


def test_http_routes_answer_with_their_path_values(counter):
    _, container = counter
    base = f"http://{container.config['WEB_SERVER_ADDRESS']}"
    assert requests.get(f"{base}/add/41", timeout=10).text == "42"
    assert requests.get(f"{base}/add/1?b=5", timeout=10).text == "6"
    assert requests.get(f"{base}/add/x", timeout=10).status_code == 404


def raw_exchange(port: int, data: bytes) -> bytes:
    """Send `data` as it is and read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_http_handlers_get_the_header_fields_sent(counter):
    _, container = counter
    port = http_port(container)
    connection = HTTPConnection("127.0.0.1", port, timeout=10)
    # names in any case, values without the blanks around them; a field sent twice is one
    # value joined with a comma, as eventlet puts it into the WSGI environ
    connection.putrequest("POST", "/seen")
    connection.putheader("x-signature", "  abc123 \t")
    connection.putheader("X-Tag", "first")
    connection.putheader("X-TAG", "second")
    connection.putheader("Content-Type", "application/json; charset=utf-8")
    connection.putheader("Content-Length", "7")
    connection.endheaders(b'{"a":1}')
    response = connection.getresponse()
    assert response.status == 200
    assert json.loads(response.read()) == {
        "signature": "abc123", "tags": "first,second",
        "content_type": "application/json; charset=utf-8", "body": '{"a":1}'}
    # the same connection is kept (HTTP/1.1) and answers again; with no Content-Type the
    # handler sees text/plain, as eventlet has always given it
    connection.putrequest("POST", "/seen")
    connection.putheader("Content-Length", "5")
    connection.endheaders(b"plain")
    first = connection.getresponse()
    assert json.loads(first.read())["content_type"] == "text/plain"
    connection.request("GET", "/add/2")
    second = connection.getresponse()
    assert (second.status, second.read()) == (200, b"3")
    connection.close()


def test_http_keeps_or_closes_the_connection_as_asked(counter):
    _, container = counter
    port = http_port(container)
    # two requests written at once on one HTTP/1.1 connection, the second asking to close:
    # both answered, then the server closes (raw_exchange returns only once it has)
    answer = raw_exchange(port, b"GET /add/1 HTTP/1.1\r\nHost: x\r\n\r\n"
                                b"GET /add/2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.count(b"HTTP/1.1 200 OK") == 2
    assert answer.endswith(b"3")
    # HTTP/1.0 closes after its answer unless it asks to keep the connection
    assert raw_exchange(port, b"GET /add/4 HTTP/1.0\r\n\r\n").endswith(b"5")
    # a client that expects 100 Continue gets it before sending its body
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /seen HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                     b"Expect: 100-continue\r\nConnection: close\r\n\r\n")
        assert sock.recv(25).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(b"hi")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert b"200 OK" in answer and b'"body": "hi"' in answer


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GET /add/1 HTTP/1.1\r\nHost x\r\n\r\n", 400),  # no colon
    (b"GET /add/1 HTTP/1.1\r\nHost : x\r\n\r\n", 400),  # a space before the colon
    (b"GET /add/1 HTTP/1.1\r\nX-A: 1\r\n  folded\r\n\r\n", 400),  # a folded line
    (b"GET /add/1 HTTP/1.1\r\n: x\r\n\r\n", 400),  # no name
    (b"GET /add/1 HTTP/1.1\r\nX-A: 1\r2\r\n\r\n", 400),  # a CR inside a value
    (b"GET /add/1 HTTP/1.1\r\nX-A: 1\x002\r\n\r\n", 400),  # a NUL inside a value
    (b"GET /add/1 HTTP/1.1\r\nX-A: " + b"a" * 9000 + b"\r\n\r\n", 400),  # over eventlet's line
    (b"GET /add/1 HTTP/1.1\r\n" + b"X-A: 1\r\n" * (MAX_FIELDS + 1) + b"\r\n", 431),
    (b"GET /add/1 HTTP/2.0\r\n\r\n", 505),
    (b"GET /add/1 HTTP/1.x\r\n\r\n", 400),
    (b"GET /add/1\r\n\r\n", 400),  # HTTP/0.9 is not served
    (b"GET /add/1 HTTP/1.1 extra\r\n\r\n", 400),
])
def test_http_refuses_malformed_requests(counter, request_bytes, status):
    _, container = counter
    port = http_port(container)
    answer = raw_exchange(port, request_bytes)
    assert answer.split(b"\r\n", 1)[0].split(b" ")[1] == str(status).encode()
    # and the server goes on serving
    assert requests.get(f"http://127.0.0.1:{port}/add/1", timeout=10).text == "2"


@pytest.mark.parametrize("level", [logging.INFO, logging.WARNING])
def test_http_access_lines_are_formatted_only_when_logged(container_factory, service_config,
                                                         caplog, level):
    caplog.set_level(level, logger="nameko.web.server")
    config = listening_config(service_config)
    container = container_factory(Counter, config)
    container.start()
    servers = [e for e in container.extensions if isinstance(e, ServiceWebServer)]
    assert len(servers) == 1
    assert servers[0]._serv.log_output is (level == logging.INFO)
    assert requests.get(f"http://{config['WEB_SERVER_ADDRESS']}/add/1", timeout=10).text == "2"
    lines = [r.getMessage() for r in caplog.records if r.name == "nameko.web.server"]
    if level == logging.INFO:  # eventlet's access line, written once the answer is sent
        wait_until(lambda: any('"GET /add/1 HTTP/1.1" 200' in line for line in
                               [r.getMessage() for r in caplog.records]),
                   timeout=10, message="the access line is logged")
    else:
        assert lines == []
