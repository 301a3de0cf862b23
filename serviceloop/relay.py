"""The outbox relay: publishes a service's committed events to RabbitMQ, in log order.

The log is the outbox. The relay reads events after its recorded position, publishes
a window of them with asynchronous publisher confirms (pika), and records the new
position only once the broker has confirmed the whole window. A crash anywhere
loses nothing: the unconfirmed window is published again (at least once, in order),
and consumers are idempotent. Messages are ordinary nameko events: exchange
`<service>.events`, routing key = event type, JSON body = the whole envelope.

Messages are transient (delivery mode 1): the broker is transport, not the ledger, so it
does not write them to disk and its confirm waits for no fsync. One the broker loses (its
restart, a purged queue) is still in the log, and the consumer's catch-up brings it
(serviceloop/catchup.py, every CATCH_UP_INTERVAL). Quorum queues (deploy/k8s) keep every
message on disk whatever its mode.

On PostgreSQL the log notifies each commit of an append (eventstore.append_notify_sql) and
the relay LISTENs on a connection of its own, watched by pika's ioloop: an idle relay reads
only when told, with a slow poll as the fallback; while that connection is down it polls as
on SQLite (`idle_poll`) and opens it again.
"""

from __future__ import annotations

import fcntl
import functools
import json
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path

import pika
from pika.adapters.select_connection import PollEvents
from pika.adapters.utils import io_services_utils
from pika.spec import Basic
from sqlalchemy import Engine

from serviceloop.clock import Clock, SystemClock, isoformat
from serviceloop.crashpoints import crash_point
from serviceloop.db import (
    is_sqlite,
    read_position,
    relay_position_write,
    save_relay_position,
    with_next_statement,
)
from serviceloop.eventstore import EventStore, notify_channel
from serviceloop.unit_of_work import read_only

log = logging.getLogger(__name__)
RELAY_LOCK_KEY = 7_420_002
LISTEN_RETRY = 1.0  # seconds between attempts to LISTEN again after the connection was lost


def event_exchange(service: str) -> str:
    return f"{service}.events"


def message_properties(envelope: dict) -> pika.BasicProperties:
    return pika.BasicProperties(
        content_type="application/json",
        content_encoding="utf-8",
        delivery_mode=1,  # transient: see above
        message_id=envelope["event_id"],
        correlation_id=envelope["correlation_id"],
        headers={"nameko.correlation_id": envelope["correlation_id"]},
    )


def send_frames_together() -> None:
    """Make pika send what it has buffered in one `send` instead of one per frame.

    pika's asynchronous transport queues each frame it is given (a publish is three: method,
    header, body) and, once the socket is writable, sends them one system call each. A
    relay publishes its whole window before the ioloop gets there, so joining the queue
    first sends the window in one call, and the broker reads it as one segment rather than
    three per event. Idempotent; plain TCP only (TLS has its own `_produce`, left alone)."""
    transport = io_services_utils._AsyncPlaintextTransport
    produce = transport._produce
    if getattr(produce, "sends_together", False):
        return

    @functools.wraps(produce)
    def produce_joined(self) -> None:  # noqa: ANN001 - pika's transport
        buffers = self._tx_buffers
        if len(buffers) > 1:
            joined = b"".join(buffers)
            buffers.clear()
            buffers.append(joined)
        produce(self)

    produce_joined.sends_together = True
    transport._produce = produce_joined


@contextmanager
def relay_lease(engine: Engine, service: str):  # noqa: ANN201
    """Only one relay per log publishes: a PostgreSQL session lock, or a file lock for SQLite."""
    if is_sqlite(engine):
        db_path = Path(str(engine.url.database))
        with open(db_path.with_suffix(".relay.lock"), "w") as handle:
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    time.sleep(0.5)
            yield
        return
    with engine.connect() as conn:
        while not conn.exec_driver_sql(f"SELECT pg_try_advisory_lock({RELAY_LOCK_KEY})").scalar():
            conn.rollback()
            time.sleep(0.5)
        conn.commit()
        try:
            yield
        finally:
            conn.exec_driver_sql(f"SELECT pg_advisory_unlock({RELAY_LOCK_KEY})")
            conn.commit()


class Relay:
    def __init__(
        self,
        service: str,
        engine: Engine,
        store: EventStore,
        amqp_uri: str,
        *,
        window: int = 2000,
        idle_poll: float = 0.02,
        listen_poll: float = 1.0,
        coalesce: float = 0.025,
        clock: Clock | None = None,
    ) -> None:
        """`idle_poll`: seconds between reads of an idle log when nothing tells the relay of
        appends (SQLite; PostgreSQL while its LISTEN connection is down). `listen_poll`: the
        same while LISTENing, a fallback only. `coalesce`: the least time between the starts
        of two reads (a window's), an idle relay's wait after it is told of an append among
        them, so that the appends just behind it share the window. Under a steady trickle of
        150 appends/s (bench/relay_busy.py) 25 ms took 0.58 of the relay CPU per event that an
        idle relay's 10 ms wait alone took, a few ms more latency per event."""
        self.service = service
        self.name = f"{service}-relay"
        self.exchange = event_exchange(service)
        self.engine = engine
        self.store = store
        self.amqp_uri = amqp_uri
        self.window = window
        self.idle_poll = idle_poll
        self.listen_poll = listen_poll
        self.coalesce = coalesce
        self._listens = not is_sqlite(engine)
        self._listener = None  # psycopg2 connection LISTENing on the log's channel
        self._listener_fd = -1
        self._listen_again_at = 0.0
        self.clock = clock or SystemClock()
        self._stopping = False
        self.holds_lease = False
        self._connection: pika.SelectConnection | None = None
        self._channel = None
        self._reset_window()

    def _reset_window(self) -> None:
        self._unconfirmed: set[int] = set()
        self._window_end = 0
        self._next_tag = 0
        self._idle_read = None  # the pending read of an idle relay (a timeout of the ioloop)
        self._idle_read_at = 0.0
        self._heard = False  # notified of an append since the last read
        self._window_full = False
        self._read_at = 0.0  # when the last read began (monotonic)
        self._unsaved: tuple[int, str] | None = None  # a confirmed position (and when) to record
        self._position: int | None = None  # read once per connection: only the lease holder
        # writes it, so an idle poll is one query (the events after it)

    # -- lifecycle ---------------------------------------------------------------------------

    def run_forever(self) -> None:
        """Publish until `stop()`; reconnect with back-off on broker or database trouble."""
        delay = 0.5
        send_frames_together()  # for every connection this relay opens
        with relay_lease(self.engine, self.service):
            log.info("relay %s holds the lease", self.name)
            self.holds_lease = True
            while not self._stopping:
                started = time.monotonic()
                try:
                    self._run_connection()
                except Exception:  # broker away, database away: wait and try again
                    log.exception("relay %s lost its connection", self.name)
                if self._stopping:
                    break
                delay = 0.5 if time.monotonic() - started > 10 else min(delay * 2, 10)
                time.sleep(delay)

    def status(self) -> dict[str, int]:
        """For /metrics: whether this relay publishes (one per log does), and its window."""
        return {"holds_lease": int(self.holds_lease), "unconfirmed": len(self._unconfirmed)}

    def stop(self) -> None:
        self._stopping = True
        if self._connection is not None:
            self._connection.ioloop.add_callback_threadsafe(self._close)

    def _close(self) -> None:
        if self._unsaved is not None:  # confirmed; no next read will record it now
            self._save_position()
        if self._connection is not None and self._connection.is_open:
            self._connection.close()
        elif self._connection is not None:
            self._connection.ioloop.stop()

    def _run_connection(self) -> None:
        self._reset_window()
        params = pika.URLParameters(self.amqp_uri)
        params.heartbeat = 30
        params.blocked_connection_timeout = 60
        self._connection = pika.SelectConnection(
            params,
            on_open_callback=self._on_connection_open,
            on_open_error_callback=self._on_connection_failed,
            on_close_callback=self._on_connection_closed,
        )
        try:
            self._connection.ioloop.start()
        finally:
            self._stop_listening()  # its handler belongs to this connection's ioloop

    def _on_connection_failed(self, _connection, error) -> None:  # noqa: ANN001
        log.warning("relay %s could not connect: %s", self.name, error)
        self._connection.ioloop.stop()

    def _on_connection_closed(self, _connection, reason) -> None:  # noqa: ANN001
        if not self._stopping:
            log.warning("relay %s connection closed: %s", self.name, reason)
        self._connection.ioloop.stop()

    def _on_connection_open(self, connection) -> None:  # noqa: ANN001
        connection.channel(on_open_callback=self._on_channel_open)

    def _on_channel_open(self, channel) -> None:  # noqa: ANN001
        self._channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        channel.exchange_declare(
            self.exchange, exchange_type="topic", durable=True, callback=self._on_exchange_ready
        )

    def _on_channel_closed(self, _channel, reason) -> None:  # noqa: ANN001
        if self._connection.is_open:
            log.warning("relay %s channel closed: %s", self.name, reason)
            self._connection.close()

    def _on_exchange_ready(self, _frame) -> None:  # noqa: ANN001
        self._channel.confirm_delivery(self._on_confirm, callback=lambda _f: self._publish_window())

    # -- the work ----------------------------------------------------------------------------

    def _publish_window(self) -> None:
        self._idle_read = None
        if self._stopping:
            if self._unsaved is not None:
                self._save_position()
            self._close()
            return
        if self._listens and self._listener is None \
                and time.monotonic() >= self._listen_again_at:
            self._start_listening()  # before the read: an append after it is heard
        self._heard = False
        self._read_at = time.monotonic()
        try:
            with read_only(self.engine) as conn:
                if self._position is None:
                    self._position = read_position(conn, "relay_positions", self.name)
                if self._unsaved is None:
                    batch = self.store.events_since(conn, self._position, self.window)
                else:  # the last window's position is recorded in this read's round trip
                    with with_next_statement(conn, *relay_position_write(self.name,
                                                                         *self._unsaved)):
                        batch = self.store.events_since(conn, self._position, self.window)
                    self._unsaved = None
        except Exception:
            log.exception("relay %s could not read its log", self.name)
            self._connection.ioloop.call_later(1.0, self._publish_window)
            return
        if not batch:
            self._wait_for_appends()
            return
        self._window_full = len(batch) == self.window
        for envelope in batch:
            body = envelope.to_dict()
            self._channel.basic_publish(
                self.exchange,
                envelope.event_type,
                json.dumps(body, ensure_ascii=False).encode("utf-8"),
                message_properties(body),
            )
            self._next_tag += 1
            self._unconfirmed.add(self._next_tag)
        self._window_end = batch[-1].global_position

    def _on_confirm(self, frame) -> None:  # noqa: ANN001
        method = frame.method
        if isinstance(method, Basic.Nack):
            # the broker refused part of the window: publish it again on a fresh channel
            log.warning("relay %s got a nack for tag %s", self.name, method.delivery_tag)
            self._channel.close()
            return
        if method.multiple:
            self._unconfirmed = {t for t in self._unconfirmed if t > method.delivery_tag}
        else:
            self._unconfirmed.discard(method.delivery_tag)
        if not self._unconfirmed:
            self._window_confirmed()

    def _window_confirmed(self) -> None:
        crash_point(f"{self.name}.after_publish")  # published and confirmed, not recorded
        self._unsaved = (self._window_end, isoformat(self.clock.now()))
        more = self._heard or self._window_full or self._listener is None
        if not self._listens and not self._save_position():
            return
        self._position = self._window_end
        if not more:
            # nothing appended since the read (it would have been notified): wait for it
            self._wait_for_appends()
            return
        # more to publish: at once if the window was full (behind), else no sooner than
        # `coalesce` after the last read began, so that a busy relay's windows fill as an
        # idle one's do instead of carrying an event or two each
        wait = 0.0 if self._window_full else self._read_at + self.coalesce - time.monotonic()
        if wait > 0:
            self._read_in(wait)
        else:
            self._connection.ioloop.add_callback_threadsafe(self._publish_window)

    def _save_position(self) -> bool:
        """Record the confirmed position now, in a round trip of its own (SQLite, or a relay
        stopping). On PostgreSQL the next read records it in its round trip instead, busy
        or idle (an idle relay reads at least every `listen_poll`): saved or not, a position
        lost in a crash only means a window published again (at least once)."""
        try:
            save_relay_position(self.engine, self.name, *self._unsaved)
        except Exception:
            log.exception("relay %s could not record its position", self.name)
            self._channel.close()  # the window will be published again: at least once
            return False
        self._unsaved = None
        return True

    # -- idle: told of appends (PostgreSQL LISTEN), or polling --------------------------------

    def _wait_for_appends(self) -> None:
        if self._listener is not None:
            wait = self.listen_poll
        elif self._listens:  # polling until LISTEN is back
            wait = min(self.idle_poll, LISTEN_RETRY)
        else:
            wait = self.idle_poll
        self._read_in(wait)

    def _read_in(self, wait: float) -> None:
        self._idle_read_at = time.monotonic() + wait
        self._idle_read = self._connection.ioloop.call_later(wait, self._publish_window)

    def _start_listening(self) -> None:
        listener = None
        try:
            pooled = self.engine.raw_connection()
            listener = pooled.driver_connection
            pooled.detach()  # the relay's own: not given back to the pool
            listener.autocommit = True
            with listener.cursor() as cursor:
                cursor.execute(f"LISTEN {notify_channel(self.service)}")
        except Exception as error:  # database away: poll, and try again
            log.warning("relay %s cannot LISTEN (polls meanwhile): %s", self.name, error)
            self._listen_again_at = time.monotonic() + LISTEN_RETRY
            if listener is not None:
                listener.close()
            return
        self._listener, self._listener_fd = listener, listener.fileno()
        self._connection.ioloop.add_handler(self._listener_fd, self._on_listener_readable,
                                            PollEvents.READ | PollEvents.ERROR)

    def _on_listener_readable(self, _fd: int, _events: int) -> None:
        try:
            self._listener.poll()
        except Exception as error:  # terminated, or the server went away
            log.warning("relay %s lost its LISTEN connection (polls meanwhile): %s",
                        self.name, error)
            self._stop_listening()
            self._listen_again_at = time.monotonic() + LISTEN_RETRY
            self._read_soon(min(self.idle_poll, LISTEN_RETRY))
            return
        if self._listener.notifies:
            self._listener.notifies.clear()
            # idle: read now. Else a window is in flight, and a read follows its confirm
            # (the notification follows the commit, so that read sees the append).
            self._heard = True
            self._read_soon(self.coalesce)

    def _read_soon(self, wait: float) -> None:
        """Bring an idle relay's pending read forward to `wait` seconds from now."""
        if self._idle_read is None or self._idle_read_at <= time.monotonic() + wait:
            return
        self._connection.ioloop.remove_timeout(self._idle_read)
        if wait:
            self._read_in(wait)
        else:
            self._publish_window()

    def _stop_listening(self) -> None:
        listener, self._listener = self._listener, None
        if listener is None:
            return
        try:
            self._connection.ioloop.remove_handler(self._listener_fd)
        except Exception:  # noqa: BLE001 - the driver closed its socket: the poller forgot it
            log.debug("relay %s: LISTEN socket already closed", self.name)
        try:
            listener.close()
        except Exception:  # noqa: BLE001 - a dead connection is closed all the same
            log.debug("relay %s: LISTEN connection already closed", self.name)


def run_relay(service: str) -> None:
    """Entry point of `serviceloop relay SERVICE`."""
    import signal

    from serviceloop.config import amqp_uri, database_url
    from serviceloop.db import make_engine
    from serviceloop.services import service_metadata

    # The relay's read (`global_position > ? ORDER BY global_position LIMIT window`) must
    # walk the primary key from its position. Until autovacuum first analyzes a new log,
    # PostgreSQL guesses a third of the rows match and plans a scan of the whole table and a
    # sort: measured in the loop bench, ~490 pages read for ~6 events, a quarter of the
    # database's CPU. A relay's sessions run nothing else, so they never take that plan.
    engine = make_engine(database_url(service), pool_size=2,
                         connect_args={"options": "-c enable_seqscan=off"})
    relay = Relay(service, engine, EventStore(service_metadata(service).tables["events"]),
                  amqp_uri(), window=int(os.environ.get("RELAY_WINDOW", "2000")),
                  coalesce=float(os.environ.get("RELAY_COALESCE_MS", "25")) / 1000)
    signal.signal(signal.SIGTERM, lambda *_: relay.stop())
    signal.signal(signal.SIGINT, lambda *_: relay.stop())
    if os.environ.get("RELAY_HTTP_PORT"):  # /health/live, /health/ready, /metrics
        from serviceloop.observability import BrokerCheck, serve_relay_health

        serve_relay_health(int(os.environ["RELAY_HTTP_PORT"]), service, engine,
                           BrokerCheck(amqp_uri()), relay.status)
    relay.run_forever()
