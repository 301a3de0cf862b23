"""One transaction on a service's database, used by a nameko worker, a relay or a CLI."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from contracts.errors import ServiceUnavailable
from serviceloop.db import begin_with_first_statement, end_transaction, statements_on_their_own
from serviceloop.eventstore import in_the_log

# seconds before each try at reading whether a commit whose answer was lost is in the log: a
# terminated backend is behind at once, a database restarting within about two seconds
LOOKUP_WAITS = (0.0, 0.25, 0.5, 1.0)


class UnitOfWork:
    """Opens its transaction on first use; rolled back unless `commit()` is called.

    `write_gate` (an eventlet semaphore for SQLite) serialises writers inside one
    process: SQLite's busy wait would otherwise block the whole eventlet hub. On PostgreSQL
    BEGIN goes out with the first statement and COMMIT may go with the last (serviceloop.db).

    A COMMIT whose answer was lost with its connection (the database restarted, the backend
    was terminated, the network dropped) may have committed or not. Running the work again
    would do it twice if it had; so the first event the transaction appended (`appended`) is
    looked for on another connection: found, the commit stands; not found, nothing was kept.
    """

    pause: Callable[[float], None] = staticmethod(time.sleep)  # between look-ups (green)

    def __init__(self, engine: Engine, write_gate=None) -> None:  # noqa: ANN001
        self.engine = engine
        self._write_gate = write_gate
        self._conn: Connection | None = None
        self._postgres = False
        self._gate_held = False
        self._landmark: str | None = None  # the first event id appended in this transaction

    @property
    def conn(self) -> Connection:
        if self._conn is None:
            if self._write_gate is not None:
                self._write_gate.acquire()
                self._gate_held = True
            try:
                conn = self.engine.connect()
                try:
                    self._postgres = conn.dialect.name == "postgresql"
                    if self._postgres:
                        begin_with_first_statement(conn)
                    conn.begin()
                except BaseException:
                    conn.invalidate()
                    conn.close()
                    raise
                self._conn = conn
            except BaseException:
                self._release()
                raise
        return self._conn

    @property
    def active(self) -> bool:
        return self._conn is not None

    def appended(self, event_id: str) -> None:
        """An append went into this unit's transaction; the first one's event id is what
        tells whether a commit whose answer was lost was made (`committed`)."""
        if self._landmark is None:
            self._landmark = event_id

    def commit(self) -> None:
        if self._conn is not None:
            landmark = self._landmark
            try:
                if self._postgres:
                    end_transaction(self._conn, "COMMIT")
                self._conn.commit()
            except DBAPIError as error:
                self.rollback()
                lost = error.connection_invalidated and landmark is not None
                if lost and self.committed(landmark):
                    return  # it was: only its answer was lost
                raise
            except BaseException:
                self.rollback()
                raise
            self._close()

    def committed(self, event_id: str) -> bool:
        """Whether the transaction that appended `event_id` committed, after the connection
        that sent its COMMIT was lost: read on another connection (the pool renews the
        connections the database dropped with it), tried again after LOOKUP_WAITS;
        ServiceUnavailable if it cannot be read by then."""
        for wait in LOOKUP_WAITS:
            self.pause(wait)
            try:
                with read_only(self.engine) as conn:
                    return in_the_log(conn, event_id)
            except (ServiceUnavailable, DBAPIError):
                continue  # a pooled connection dropped with the first, or the database away
        raise ServiceUnavailable(
            "the database connection was lost while committing, and whether the change was "
            "made cannot be read yet: read it back before trying again", code="outcome_unknown")

    def rollback(self) -> None:
        if self._conn is not None:
            try:
                if self._postgres:
                    end_transaction(self._conn, "ROLLBACK")
                self._conn.rollback()
            except Exception:  # noqa: BLE001 - a dead connection cannot roll back; it is closed
                self._conn.invalidate()
            finally:
                self._close()

    def _close(self) -> None:
        try:
            if self._conn is not None:
                self._conn.close()
        finally:
            self._conn = None
            self._landmark = None
            self._release()

    def _release(self) -> None:
        if self._gate_held:
            self._gate_held = False
            self._write_gate.release()

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """Commit if the block ends normally, roll back if it raises."""
        try:
            yield self.conn
        except BaseException:
            self.rollback()
            raise
        self.commit()


@contextmanager
def read_only(engine: Engine) -> Iterator[Connection]:
    """A connection for reads that must not take SQLite's write lock.

    On PostgreSQL each read is a statement of its own (READ COMMITTED gives every statement
    its own snapshot anyway): no BEGIN and no ROLLBACK round trips around it.

    A connection the database dropped (restart, `pg_terminate_backend`) is found on use and
    the pool renews them all; the read that found it says "try again" as a typed error,
    rather than handing the caller the driver's text.
    """
    try:
        with engine.connect() as conn:
            conn = conn.execution_options(read_only=True)
            if conn.dialect.name == "postgresql":
                with statements_on_their_own(conn):
                    yield conn
                return
            with conn.begin():
                yield conn
    except DBAPIError as error:
        if not error.connection_invalidated:
            raise
        raise ServiceUnavailable("the database connection was dropped; try again") from error
