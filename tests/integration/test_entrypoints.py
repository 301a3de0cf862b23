"""serviceloop's `@rpc` and `@http` (serviceloop/entrypoints.py), against a real RabbitMQ and
over real HTTP: RPC replies are sent without a publisher confirm, once serialized, and
otherwise both answer exactly as nameko's do."""

import functools

import pytest
import requests
from nameko.exceptions import IncorrectSignature, RemoteError
from nameko.standalone.rpc import ServiceRpcProxy

from serviceloop.entrypoints import Replies, http, rpc
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


@pytest.fixture
def counter(container_factory, service_config):
    config = {**service_config(), "WEB_SERVER_ADDRESS": f"127.0.0.1:{free_port()}"}
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
