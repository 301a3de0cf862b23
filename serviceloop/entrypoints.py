"""The services' `@rpc` and `@http`: nameko's, with less work per call.

Both check a call's arguments against the method's signature read once, where nameko
inspects the method afresh on every call (`SignatureReadOnce`).

`@rpc` answers with a reply that costs one write instead of a round trip.

`@http` is served by `ServiceWebServer`: nameko's WebServer and eventlet's WSGI server, with
a request's header fields read by a plain parser instead of the email package (which parses a
request's dozen fields as a MIME message: about 20 µs of the partner gateway's request), and
no access-log line formatted for a logger that would drop it (`nameko.web.server` is at
WARNING in config.yaml; at INFO the lines are logged as eventlet writes them).

nameko's Responder builds a new broker Connection for every reply, serializes the result
twice (once to check that it can), and publishes it persistent with a publisher confirm,
so every worker waits for the broker's ack before its request is acknowledged. None of that
protects a reply: it goes to the caller's own reply queue, which is neither durable nor
kept once the caller is gone, so a confirmed reply is lost as surely as an unconfirmed one
when the broker restarts. What protects the caller is its timeout and the request id every
write RPC takes (serviceloop/answers.py): asked again, it gets the first answer.

So here a reply is serialized once, published transient with no confirm over a Connection
made once per service, and the request acknowledged after it, as nameko does; everything
else (the request queue, routing, context headers, errors as nameko's serialized
exceptions, callers' proxies) is nameko's own. Every service uses this `rpc` for every
method: two RPC consumers in one container would share the service's queue and each refuse
the other's methods.
"""

from __future__ import annotations

import inspect
import logging
import re
import sys
from http import HTTPStatus

import kombu.serialization
from kombu import Connection
from kombu.pools import producers
from nameko.constants import (
    AMQP_SSL_CONFIG_KEY,
    AMQP_URI_CONFIG_KEY,
    DEFAULT_RETRY_POLICY,
    DEFAULT_SERIALIZER,
    DEFAULT_TRANSPORT_OPTIONS,
    LOGIN_METHOD_CONFIG_KEY,
    NON_PERSISTENT,
    SERIALIZER_CONFIG_KEY,
)
from nameko.exceptions import IncorrectSignature, UnserializableValueError, serialize
from nameko.rpc import Rpc, RpcConsumer, get_rpc_exchange
from nameko.web.handlers import HttpRequestHandler
from nameko.web.server import HttpOnlyProtocol, WebServer


class SignatureReadOnce:
    """Mixed into a nameko Entrypoint: a call's arguments are bound to the method's
    signature, read at set-up. As nameko's inspect.getcallargs sees it: a wrapper's own
    signature (answered_once takes request_id=), not that of the method it wraps."""

    def setup(self) -> None:
        super().setup()
        method = getattr(self.container.service_cls, self.method_name)
        self._signature = inspect.signature(method, follow_wrapped=False)

    def check_signature(self, args, kwargs) -> None:  # noqa: ANN001 - nameko's
        try:
            self._signature.bind(None, *args, **kwargs)
        except TypeError as exc:
            raise IncorrectSignature(str(exc)) from None


class Replies(RpcConsumer):
    """The service's RPC queue consumer (shared by its methods), answering as above."""

    def setup(self) -> None:
        super().setup()
        config = self.container.config
        self.exchange = get_rpc_exchange(config)
        self.connection = Connection(
            config[AMQP_URI_CONFIG_KEY],
            transport_options={**DEFAULT_TRANSPORT_OPTIONS, "confirm_publish": False},
            ssl=config.get(AMQP_SSL_CONFIG_KEY),
            login_method=config.get(LOGIN_METHOD_CONFIG_KEY))
        # looked up once: kombu finds a connection's pool by hashing its settings each time
        self.producers = producers[self.connection]
        self.default_serializer = config.get(SERIALIZER_CONFIG_KEY, DEFAULT_SERIALIZER)

    def handle_result(self, message, result, exc_info):  # noqa: ANN001, ANN201 - nameko's
        # answer in the encoding the request came in, as nameko does
        content_type = message.properties.get("content_type")
        serializer = kombu.serialization.registry.type_to_name.get(
            content_type, self.default_serializer)
        error = serialize(exc_info[1]) if exc_info is not None else None
        try:
            dumped = kombu.serialization.dumps({"result": result, "error": error}, serializer)
        except Exception:  # noqa: BLE001 - nameko's answer to a result it cannot send
            exc_info = sys.exc_info()
            unsendable = serialize(UnserializableValueError(result))
            result = None
            dumped = kombu.serialization.dumps({"result": None, "error": unsendable},
                                               serializer)
        content_type, encoding, body = dumped
        with self.producers.acquire(block=True) as producer:
            producer.publish(
                body, content_type=content_type, content_encoding=encoding,
                exchange=self.exchange, routing_key=message.properties["reply_to"],
                correlation_id=message.properties.get("correlation_id"),
                delivery_mode=NON_PERSISTENT, retry=True, retry_policy=DEFAULT_RETRY_POLICY)
        self.queue_consumer.ack_message(message)
        return result, exc_info


class ServiceRpc(SignatureReadOnce, Rpc):
    """nameko's Rpc entrypoint, answering through `Replies`."""

    rpc_consumer = Replies()


# a header field: a token, a colon, the value (RFC 9112 5; no space before the colon, no
# folded continuation line, no CR or NUL inside a value: each is a 400, as the RFC has a
# server do)
_FIELD = re.compile(r"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([^\r\n\x00]*?)[ \t]*\r?\n")
MAX_FIELDS = 100  # http.client's limit: more is 431


class RequestHeaders:
    """A request's header fields, as eventlet.wsgi and http.server read them: `get` (the
    first field of a name, any case), `_headers` (every field in order, which eventlet puts
    into the WSGI environ) and `get_content_type`."""

    __slots__ = ("_headers", "_first")

    def __init__(self, fields: list[tuple[str, str]]) -> None:
        self._headers = fields
        self._first: dict[str, str] = {}
        for name, value in fields:
            self._first.setdefault(name.lower(), value)

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._first.get(name.lower(), default)

    def get_content_type(self) -> str:
        """As email.message.Message has it: 'text/plain' if there is none or it is not a
        type/subtype."""
        value = self._first.get("content-type", "").split(";", 1)[0].strip().lower()
        return value if value.count("/") == 1 else "text/plain"


class Protocol(HttpOnlyProtocol):
    """nameko's HTTP protocol, reading a request's line as http.server does and its header
    fields into `RequestHeaders`; eventlet's limits on a field's and all fields' length
    still apply (its reader raises, and it answers 400)."""

    def parse_request(self) -> bool:
        self.command = None  # as http.server: set in case the request line is bad
        # unlike http.server's HTTP/0.9, so that a refusal of the request line has a status
        # line (its answer is sent as HTTP/1.0 and the connection closed)
        self.request_version = "HTTP/1.0"
        self.close_connection = True
        self.requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        words = self.requestline.split()
        if not words:
            return False
        if len(words) != 3:  # HTTP/0.9 ("GET /path") is not served here
            self.send_error(HTTPStatus.BAD_REQUEST, f"Bad request syntax ({self.requestline!r})")
            return False
        command, path, version = words
        if version not in ("HTTP/1.0", "HTTP/1.1"):
            status = (HTTPStatus.HTTP_VERSION_NOT_SUPPORTED
                      if re.fullmatch(r"HTTP/[2-9]\.\d", version) else HTTPStatus.BAD_REQUEST)
            self.send_error(status, f"Bad request version ({version!r})")
            return False
        self.request_version = version
        self.close_connection = not (version == "HTTP/1.1"
                                     and self.protocol_version >= "HTTP/1.1")
        self.command = command
        self.path = "/" + path.lstrip("/") if path.startswith("//") else path
        fields = self._read_fields()
        if fields is None:
            return False
        self.headers = RequestHeaders(fields)
        connection = self.headers.get("Connection", "").lower()
        if connection == "close":
            self.close_connection = True
        elif connection == "keep-alive" and self.protocol_version >= "HTTP/1.1":
            self.close_connection = False
        if (self.headers.get("Expect", "").lower() == "100-continue"
                and self.protocol_version >= "HTTP/1.1" and version == "HTTP/1.1"):
            return self.handle_expect_100()
        return True

    def _read_fields(self) -> list[tuple[str, str]] | None:
        """The header fields up to the blank line; None once a refusal has been sent."""
        fields = []
        while (line := self.rfile.readline()) not in (b"\r\n", b"\n", b""):
            if len(fields) == MAX_FIELDS:
                self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Too many headers")
                return None
            field = _FIELD.fullmatch(line.decode("iso-8859-1"))
            if field is None:
                self.send_error(HTTPStatus.BAD_REQUEST, "Bad header field")
                return None
            fields.append(field.groups())
        return fields


class ServiceWebServer(WebServer):
    """nameko's WebServer, speaking `Protocol`, and formatting eventlet's access-log line
    only if `nameko.web.server` would log it (decided when the server starts)."""

    def get_wsgi_server(self, sock, wsgi_app, protocol=Protocol, debug=False):  # noqa: ANN001, ANN201 - nameko's
        server = super().get_wsgi_server(sock, wsgi_app, protocol=protocol, debug=debug)
        server.log_output = logging.getLogger("nameko.web.server").isEnabledFor(logging.INFO)
        return server


class ServiceHttp(SignatureReadOnce, HttpRequestHandler):
    """nameko's HTTP entrypoint (the partner gateway's routes, probes and metrics), served
    by `ServiceWebServer`: every `@http` of a service must be this one, as the server is
    shared by a container's entrypoints of one class and binds the service's port."""

    server = ServiceWebServer()


rpc = ServiceRpc.decorator
http = ServiceHttp.decorator
