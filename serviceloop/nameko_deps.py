"""nameko dependency providers shared by every service: database, clock, event log access."""

from __future__ import annotations

import functools
import inspect
import logging
from weakref import WeakKeyDictionary

import eventlet
from nameko.extensions import DependencyProvider
from sqlalchemy import Engine, MetaData
from sqlalchemy.exc import DBAPIError

from contracts.errors import ServiceUnavailable, ValidationFailed
from serviceloop.audit.wire import collector_paused, pack_page, page_from_text
from serviceloop.clock import Clock, clock_from_setting
from serviceloop.config import database_url
from serviceloop.crashpoints import crash_point
from serviceloop.db import IdleConnections, ended_by_database, is_sqlite, make_engine
from serviceloop.entrypoints import rpc
from serviceloop.eventstore import CommitInDoubt, Envelope, EventStore
from serviceloop.observability import log_context
from serviceloop.unit_of_work import UnitOfWork, read_only

log = logging.getLogger(__name__)

MAX_EVENTS_PER_CALL = 10_000


class Database(DependencyProvider):
    """Gives each worker one `UnitOfWork` on the service's own database.

    The engine is built once in `setup()`; the pool is `max_workers + 2` wide. On
    PostgreSQL a connection idle for `DB_IDLE_SECONDS` (config, default 60) is closed, but
    for the `DB_KEEP_CONNECTIONS` (default 2) used last: a burst's connections are not held
    for the container's life (several services and replicas share the server's limit).
    A worker's transaction is rolled back at teardown unless the entrypoint committed
    it (nameko sends an RPC reply before `worker_result`, so commit must happen inside
    the entrypoint: see `transactional`).
    """

    def __init__(self, service: str, metadata: MetaData) -> None:
        self.service = service
        self.metadata = metadata
        self.engine: Engine | None = None
        self.store: EventStore | None = None
        self._units: WeakKeyDictionary = WeakKeyDictionary()
        self._write_gate = None
        self._idle: IdleConnections | None = None
        self._closing_idle = None  # the green thread closing idle connections

    def setup(self) -> None:
        config = self.container.config
        max_workers = int(config.get("max_workers", 10))
        self.engine = make_engine(database_url(self.service, config), pool_size=max_workers + 2)
        self.store = EventStore(self.metadata.tables["events"])
        if is_sqlite(self.engine):
            from eventlet.semaphore import Semaphore

            self._write_gate = Semaphore(1)
        else:
            self._idle = IdleConnections(self.engine)

    def start(self) -> None:
        if self._idle is not None:
            self._closing_idle = self.container.spawn_managed_thread(
                self._close_idle_connections, identifier=f"{self.service}.close_idle")

    def _close_idle_connections(self) -> None:
        config = self.container.config
        idle_seconds = float(config.get("DB_IDLE_SECONDS", 60))
        keep = int(config.get("DB_KEEP_CONNECTIONS", 2))
        while True:
            eventlet.sleep(idle_seconds / 2)
            try:
                closed = self._idle.close(idle_seconds, keep)
            except Exception:  # noqa: BLE001 - the container must not die of it; try again
                log.exception("closing idle database connections failed")
            else:
                if closed:
                    log.debug("closed %d database connections idle %g s", closed, idle_seconds)

    def stop(self) -> None:
        if self._closing_idle is not None:
            self._closing_idle.kill()
            self._closing_idle = None
        if self.engine is not None:
            self.engine.dispose()

    def kill(self) -> None:
        self.stop()

    def get_dependency(self, worker_ctx) -> WorkerDatabase:  # noqa: ANN001
        # until a consumer or the gateway says more: the nameko call this worker serves
        log_context(causation_id=worker_ctx.call_id,
                    actor=worker_ctx.context_data.get("actor") or "system")
        unit = WorkerDatabase(self.engine, self.store, self._write_gate)
        self._units[worker_ctx] = unit
        return unit

    def worker_teardown(self, worker_ctx) -> None:  # noqa: ANN001
        unit = self._units.pop(worker_ctx, None)
        if unit is not None:
            unit.rollback()


class WorkerDatabase(UnitOfWork):
    def __init__(self, engine: Engine, store: EventStore, write_gate=None) -> None:  # noqa: ANN001
        super().__init__(engine, write_gate)
        self.store = store

    def reader(self):  # noqa: ANN201
        return read_only(self.engine)

    def append(self, stream_id: str, expected_version: int, events: list,
               **options) -> list[Envelope]:  # noqa: ANN003 - EventStore.append's
        """`EventStore.append` in this worker's transaction, answering the drafts
        (`chain=False`: what every service's append needs). An append that carried its
        COMMIT (`commit=True`) and lost the connection before the answer is looked for in
        the log: found, it committed and answers as usual (this unit of work is then
        finished; anything run after it opens a new one); not found, it raises as any
        dropped connection does (nothing was kept, the work may run again)."""
        try:
            drafts = self.store.append(self.conn, stream_id, expected_version, events,
                                       chain=False, **options)
        except CommitInDoubt as doubt:
            self.rollback()
            if not self.committed(doubt.drafts[0].event_id):
                raise
            return doubt.drafts
        self.appended(drafts[0].event_id)
        return drafts


RUNS = 3  # of a transactional method, when its transaction was lost (see `transactional`)


def transactional(method):  # noqa: ANN001, ANN201
    """Commit the worker's transaction when the entrypoint returns, roll back if it raises.

    When the transaction was lost, nothing was committed and the method runs again, up to
    RUNS times in all: the connection was dropped (restart, `pg_terminate_backend`; discovered
    on use, and the next run takes a fresh one), or PostgreSQL ended a deadlock with it
    (`serviceloop.db.ended_by_database`). A COMMIT whose answer was lost is not taken for
    lost work: `UnitOfWork.commit` (and `WorkerDatabase.append` for an append that carried
    its COMMIT) looks its first event up in the log first, so work that was kept is not run
    again. A stream version conflict is the caller's to answer (ConcurrencyConflict), as the
    interface promises.
    """

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):  # noqa: ANN001, ANN202
        for run in range(1, RUNS + 1):
            try:
                result = method(self, *args, **kwargs)
                self.db.commit()
                crash_point(f"{self.name}.after_commit")
                return result
            except DBAPIError as error:
                self.db.rollback()
                lost = error.connection_invalidated or ended_by_database(error)
                if not lost or run == RUNS:
                    raise
            except BaseException:
                self.db.rollback()
                raise
        raise AssertionError("unreachable")

    return wrapper


def retried_read(method):  # noqa: ANN001, ANN201
    """For an entrypoint that only reads (through `db.reader()`): when PostgreSQL dropped its
    connection while it was in use (a restart, `pg_terminate_backend`), it runs again on a
    fresh one, up to RUNS times in all, instead of answering `unavailable`. A read changes
    nothing, so running it again is always safe; the pool renews every connection it had
    handed out before the drop was found. A database that cannot be reached at all is not
    a dropped connection: that answers at once. Never for a method that writes: a write
    runs again only through `transactional`, which knows whether its commit was made."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):  # noqa: ANN001, ANN202
        for run in range(1, RUNS + 1):
            try:
                return method(self, *args, **kwargs)
            except ServiceUnavailable as error:
                if run == RUNS or not _dropped_in_use(error):
                    raise
                log.warning("%s: its database connection was dropped while reading; reading "
                            "again (run %d of %d)", method.__name__, run + 1, RUNS)
        raise AssertionError("unreachable")

    # the entrypoint checks a call's arguments against the method's own signature
    wrapper.__signature__ = inspect.signature(method)
    return wrapper


def _dropped_in_use(error: ServiceUnavailable) -> bool:
    """`read_only`'s answer to a connection the database dropped while it was in use."""
    cause = error.__cause__
    return isinstance(cause, DBAPIError) and cause.connection_invalidated


class ClockProvider(DependencyProvider):
    """The service's clock: `CLOCK` in config is 'system', 'file:PATH' or a clock object."""

    def setup(self) -> None:
        self.clock: Clock = clock_from_setting(self.container.config.get("CLOCK", "system"))

    def get_dependency(self, worker_ctx) -> Clock:  # noqa: ANN001
        return self.clock


class EventLogRpc:
    """The auditor's read access every service offers (mix into the service class)."""

    @rpc
    @retried_read
    def events_since(self, position: int, limit: int = 1000, raw: bool = False,
                     packed: bool = False, event_types: list[str] | None = None
                     ) -> list[dict] | dict:
        """Events after `position`, in log order. `raw`: each payload as the canonical JSON
        text it was hashed and stored as (`payload_json`), for auditors re-computing hashes.
        `packed`: for auditors reading whole logs, the page column by column and compressed
        (serviceloop/audit/wire.py), a fraction of a dict per event to send and to decode.
        `event_types`: only events of those types, in every form (`audit loops` looks at a
        few)."""
        if not isinstance(position, int) or position < 0:
            raise ValidationFailed("position must be an integer >= 0", {"position": ["invalid"]})
        if not isinstance(limit, int) or not 1 <= limit <= MAX_EVENTS_PER_CALL:
            raise ValidationFailed(
                f"limit must be 1..{MAX_EVENTS_PER_CALL}", {"limit": ["out of range"]}
            )
        if event_types is not None and (not isinstance(event_types, list) or not all(
                isinstance(kind, str) for kind in event_types)):
            raise ValidationFailed("event_types must be a list of event types",
                                   {"event_types": ["invalid"]})
        kinds = tuple(event_types or ())
        if packed:
            return self._page_since(position, limit, kinds)
        with self.db.reader() as conn:
            found = map(Envelope._make, self.db.store.rows_since(conn, position, limit, kinds))
            if raw:
                return [e._asdict() for e in found]
            return [e.to_dict() for e in found]

    def _page_since(self, position: int, limit: int, event_types: tuple[str, ...]) -> dict:
        # the page as the database joins it; as rows, packed here, when it cannot vouch for
        # it. A page is some 10^5 objects that live for one call: the collector's passes over
        # the service's whole heap meanwhile would free nothing (~a third of the work)
        with collector_paused():
            with self.db.reader() as conn:
                built = self.db.store.page_since(conn, position, limit, event_types)
                if built is None:
                    return pack_page(self.db.store.rows_since(conn, position, limit,
                                                              event_types))
            return page_from_text(*built)

    @rpc
    @retried_read
    def stream(self, stream_id: str) -> list[dict]:
        if not isinstance(stream_id, str) or not stream_id:
            raise ValidationFailed("stream_id must be a string", {"stream_id": ["invalid"]})
        with self.db.reader() as conn:
            return [e.to_dict() for e in self.db.store.stream(conn, stream_id)]

    @rpc
    @retried_read
    def events_for(self, correlation_id: str) -> list[dict]:
        """Every event of one order (its correlation id) in this log, in log order."""
        if not isinstance(correlation_id, str) or not correlation_id:
            raise ValidationFailed("correlation_id must be a string",
                                   {"correlation_id": ["invalid"]})
        with self.db.reader() as conn:
            return [e.to_dict() for e in self.db.store.by_correlation(conn, correlation_id)]

    @rpc
    def rebuild_read_models(self) -> dict:
        """Drop this service's read models, fold its whole log into them again, and compare
        a checksum per table with what was there."""
        from serviceloop.projections import rebuild_telling_progress
        from serviceloop.services import service_projector

        projector = service_projector(self.name)
        with self.db.transaction() as conn:
            before = projector.checksums(conn)
            count = rebuild_telling_progress(self.name, projector, conn, self.db.store)
            after = projector.checksums(conn)
        return {"service": self.name, "events": count,
                "tables": {name: {"before": before[name], "after": after[name],
                                  "equal": before[name] == after[name]} for name in before}}

    @rpc
    def rebuild_progress(self) -> dict:
        """`{"running", "events", "total"}`: how far this process's rebuild of the read
        models is (for `audit rebuild`'s bar, asked while rebuild_read_models runs)."""
        from serviceloop.projections import rebuild_progress

        return rebuild_progress(self.name)

    @rpc
    @retried_read
    def log_head(self) -> dict:
        with self.db.reader() as conn:
            position, digest = self.db.store.head(conn)
        return {"position": position, "hash": digest}
