"""Health, Prometheus metrics and JSON logs for every service and relay.

`Observable` is mixed into each nameko service: on its WEB_SERVER_PORT it answers
`/health/live` (the process runs), `/health/ready` (its database and the broker answer, each
checked with a short timeout; 503 naming what failed) and `/metrics` (Prometheus text
format 0.0.4). Counts come from the service's own database, so they are right across
restarts and replicas; only per-request counters (gateway answers by code) are kept in the
process. `serve_relay_health` gives `serviceloop relay` the same three paths. `JsonFormatter`
writes one JSON object per log line with the correlation and causation ids and the actor of
whatever the green thread is working on (`log_context`).
"""

from __future__ import annotations

import contextvars
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import eventlet
from nameko.events import EventHandler
from nameko.extensions import DependencyProvider
from nameko.rpc import Rpc
from sqlalchemy import Connection, text
from werkzeug.wrappers import Request, Response

from serviceloop.config import amqp_uri
from serviceloop.entrypoints import http

CHECK_TIMEOUT = 2.0  # seconds: a probe never waits longer on one dependency
BROKER_CHECK_TTL = 2.0  # seconds a broker answer is reused
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# named, and looked up, apart from this module: nameko's logging config imports this module
# for JsonFormatter and so disables any logger the module had already made
WORKER_LOG = "serviceloop.worker"

# what the current green thread works on, for log lines (set where work starts)
_CONTEXT: contextvars.ContextVar[dict | None] = contextvars.ContextVar("serviceloop_log",
                                                                      default=None)


def log_context(correlation_id: str | None = None, causation_id: str | None = None,
                actor: str | None = None) -> None:
    """Say what this green thread is working on: every log line it writes carries it."""
    _CONTEXT.set({"correlation_id": correlation_id, "causation_id": causation_id,
                  "actor": actor})


def _about_order(correlation_id: str) -> None:
    """Name the order a worker turned out to be about, unless something already did."""
    context = dict(_CONTEXT.get() or {})
    if not context.get("correlation_id"):
        _CONTEXT.set({**context, "correlation_id": correlation_id})


# -- checks -------------------------------------------------------------------------------


def database_ready(engine) -> str | None:  # noqa: ANN001
    """None when `SELECT 1` answers within the timeout, else why not."""
    try:
        with eventlet.Timeout(CHECK_TIMEOUT):
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
    except eventlet.Timeout:
        return f"no answer within {CHECK_TIMEOUT:g} s"
    except Exception as error:  # noqa: BLE001 - any failure means not ready
        return _why(error)
    return None


def _why(error: BaseException) -> str:
    first = (str(error).splitlines() or [""])[0][:200]
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


class BrokerCheck:
    """Connects to the broker (reused for a couple of seconds) and reports queue depths."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._answer: tuple[float, str | None] = (0.0, None)

    def ready(self) -> str | None:
        checked_at, problem = self._answer
        if time.monotonic() - checked_at < BROKER_CHECK_TTL:
            return problem
        problem = None
        try:
            self.queue_depths([])
        except Exception as error:  # noqa: BLE001 - any failure means not ready
            problem = _why(error)
        self._answer = (time.monotonic(), problem)
        return problem

    def queue_depths(self, queues: Iterable[str]) -> dict[str, int]:
        """Messages waiting in each of `queues` (a missing queue is left out)."""
        from kombu import Connection

        depths = {}
        no_answer = TimeoutError("no answer from the broker")
        with eventlet.Timeout(CHECK_TIMEOUT, no_answer), \
                Connection(self.uri, connect_timeout=CHECK_TIMEOUT, heartbeat=0) as connection:
            connection.ensure_connection(max_retries=1)
            for queue in queues:
                channel = connection.channel()
                try:
                    _, depth, _ = channel.queue_declare(queue, passive=True)
                    depths[queue] = depth
                except Exception:  # noqa: BLE001 - not declared (yet): nothing to report
                    pass
                finally:
                    try:
                        channel.close()
                    except Exception:  # noqa: BLE001 - a failed passive declare closed it
                        pass
        return depths


# -- metrics ------------------------------------------------------------------------------


class Metrics:
    """Prometheus text: `add` samples, `text()` the exposition."""

    def __init__(self) -> None:
        self._families: dict[str, tuple[str, str, list[tuple[dict, float]]]] = {}

    def add(self, name: str, kind: str, help_: str, value: float, **labels: str) -> None:
        family = self._families.setdefault(name, (kind, help_, []))
        family[2].append((labels, value))

    def text(self) -> str:
        lines = []
        for name, (kind, help_, samples) in self._families.items():
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]
            for labels, value in samples:
                rendered = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
                lines.append(f"{name}{{{rendered}}} {value:g}" if rendered
                             else f"{name} {value:g}")
        return "\n".join(lines) + "\n"


def _escape(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def log_metrics(metrics: Metrics, conn: Connection, service: str) -> None:
    """What every service's log says: appended, published by the relay, relay lag, parked."""
    head = conn.execute(text("SELECT MAX(global_position) FROM events")).scalar() or 0
    published = conn.execute(text("SELECT position FROM relay_positions WHERE relay = :r"),
                             {"r": f"{service}-relay"}).scalar() or 0
    parked = conn.execute(text("SELECT COUNT(*) FROM parked_messages")).scalar() or 0
    metrics.add("serviceloop_events_appended_total", "counter",
                "Events appended to the service's log", head, service=service)
    metrics.add("serviceloop_events_published_total", "counter",
                "Events the outbox relay has published and recorded (on PostgreSQL a relay "
                "records a window with its next read, within a second when idle)", published,
                service=service)
    metrics.add("serviceloop_relay_lag_events", "gauge",
                "Events appended but not yet recorded as published", head - published,
                service=service)
    metrics.add("serviceloop_parked_messages", "gauge",
                "Messages a consumer gave up on (serviceloop parked)", parked, service=service)
    for source, position in conn.execute(
            text("SELECT source, position FROM consumer_positions")).tuples():
        metrics.add("serviceloop_consumer_position", "gauge",
                    "How far catch-up has read each producer's log", position,
                    service=service, source=source)


# -- the nameko side -----------------------------------------------------------------------


class Probes(DependencyProvider):
    """The broker check and per-process counters a service's probes share."""

    def setup(self) -> None:
        self.broker = BrokerCheck(amqp_uri(self.container.config))
        self.counters: Counter = Counter()

    def get_dependency(self, worker_ctx):  # noqa: ANN001, ANN201
        return self

    def worker_result(self, worker_ctx, result=None, exc_info=None) -> None:  # noqa: ANN001
        """One log line per consumed event, per RPC a person (not `system`) made and per
        signed partner request, in the worker's own green thread, so it carries the order,
        the cause and the actor."""
        entrypoint = worker_ctx.entrypoint
        if isinstance(entrypoint, EventHandler):
            what = f"{entrypoint.source_service}.{entrypoint.event_type}"
        elif isinstance(entrypoint, Rpc) and \
                worker_ctx.context_data.get("actor") not in (None, "system"):
            what = "rpc"
            if isinstance(result, dict) and isinstance(result.get("order_id"), str):
                _about_order(result["order_id"])  # an RPC's answer names the order it served
        elif str((_CONTEXT.get() or {}).get("actor") or "").startswith("partner:"):
            what = "a partner request"  # signed: dispatch.gateway.Gateway.serve said who
        else:  # probes, metrics, timers, internal reads: not news
            return
        name = f"{worker_ctx.service_name}.{entrypoint.method_name}"
        log = logging.getLogger(WORKER_LOG)
        if exc_info is None:
            log.info("%s handled %s", name, what)
        else:
            log.info("%s did not complete %s: %s", name, what, _why(exc_info[1]))


class Observable:
    """Mix into a service with `db` (serviceloop.nameko_deps.Database); it may define
    `service_metrics(self, metrics, conn)` for its own figures."""

    probes = Probes()

    @http("GET", "/health/live")
    def health_live(self, request: Request) -> Response:
        return _json(200, {"status": "live", "service": self.name})

    @http("GET", "/health/ready")
    def health_ready(self, request: Request) -> Response:
        problems = {"database": database_ready(self.db.engine),
                    "broker": self.probes.broker.ready()}
        failed = {name: why for name, why in problems.items() if why}
        if failed:
            return _json(503, {"status": "not ready", "service": self.name, "failed": failed})
        return _json(200, {"status": "ready", "service": self.name})

    @http("GET", "/metrics")
    def metrics(self, request: Request) -> Response:
        metrics = Metrics()
        with self.db.reader() as conn:
            log_metrics(metrics, conn, self.name)
            extra = getattr(self, "service_metrics", None)
            if extra is not None:
                extra(metrics, conn)
        self._queue_metrics(metrics)
        for (name, labels), value in sorted(self.probes.counters.items()):
            metrics.add(name, "counter", "Requests answered, by status code", value,
                        **dict(labels))
        return Response(metrics.text(), status=200, content_type=PROMETHEUS_TYPE)

    def _queue_metrics(self, metrics: Metrics) -> None:
        from contracts.subscriptions import SUBSCRIPTIONS
        from serviceloop.consumer import queue_name

        queues = [queue_name(s.source, s.event_type, s.consumer, s.method)
                  for s in SUBSCRIPTIONS if s.consumer == self.name]
        try:
            depths = self.probes.broker.queue_depths(queues)
        except Exception:  # noqa: BLE001 - the broker is away: readiness says so
            return
        for queue, depth in depths.items():
            metrics.add("serviceloop_consumer_lag_messages", "gauge",
                        "Messages waiting in the service's event queues", depth,
                        service=self.name, queue=queue)


def count(probes: Probes, name: str, **labels: str) -> None:
    """One more of an in-process counter (e.g. gateway answers by code)."""
    probes.counters[(name, tuple(sorted(labels.items())))] += 1


def _json(status: int, body: dict) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json")


# -- the relay side ------------------------------------------------------------------------


def serve_relay_health(port: int, service: str, engine, broker: BrokerCheck,  # noqa: ANN001
                       status: Callable[[], dict]) -> ThreadingHTTPServer:
    """`/health/live`, `/health/ready` and `/metrics` for `serviceloop relay`, in a thread."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path == "/health/live":
                self._send(200, "application/json", json.dumps({"status": "live"}))
            elif self.path == "/health/ready":
                failed = {k: v for k, v in {"database": database_ready(engine),
                                            "broker": broker.ready()}.items() if v}
                self._send(503 if failed else 200, "application/json", json.dumps(
                    {"status": "not ready" if failed else "ready", "failed": failed}))
            elif self.path == "/metrics":
                metrics = Metrics()
                with engine.connect() as conn:
                    log_metrics(metrics, conn, service)
                for key, value in status().items():
                    metrics.add(f"serviceloop_relay_{key}", "gauge", f"relay {key}", value,
                                service=service)
                self._send(200, PROMETHEUS_TYPE, metrics.text())
            else:
                self._send(404, "application/json", json.dumps({"error": "no such path"}))

        def _send(self, code: int, content_type: str, body: str) -> None:
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:  # probes are not news
            pass

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# -- logs ----------------------------------------------------------------------------------


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and what the green thread
    is working on (correlation_id, causation_id, actor); a traceback as `exc_info`."""

    def __init__(self, *args: object, service: str | None = None, **kwargs: object) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{record.msecs:03.0f}Z",
                 "level": record.levelname, "logger": record.name,
                 "message": record.getMessage()}
        if self.service:
            entry["service"] = self.service
        entry.update({k: v for k, v in (_CONTEXT.get() or {}).items() if v})
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)

    converter = time.gmtime
