"""The services' `@rpc` and `@http`: nameko's, with less work per call.

Both check a call's arguments against the method's signature read once, where nameko
inspects the method afresh on every call (`SignatureReadOnce`).

`@rpc` answers with a reply that costs one write instead of a round trip.

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
import sys

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


class ServiceHttp(SignatureReadOnce, HttpRequestHandler):
    """nameko's HTTP entrypoint (the partner gateway's routes, probes and metrics)."""


rpc = ServiceRpc.decorator
http = ServiceHttp.decorator
