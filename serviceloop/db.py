"""Engines for a service's own database: SQLite files by default, PostgreSQL when configured."""

from __future__ import annotations

import functools
import itertools
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import DBAPIError, InvalidatePoolError

SQLITE_BUSY_TIMEOUT_MS = 30_000

# keys in a pooled connection's `info` (PostgreSQL units of work, see begin_with_first_statement)
_BEGIN_PENDING = "serviceloop.begin_pending"
_OWN_TRANSACTION = "serviceloop.own_transaction"
_DEFERRED = "serviceloop.deferred"
_PREPARED = "serviceloop.prepared"  # Prepared's key -> its name on this connection
_PREPARING = "serviceloop.preparing"  # keys whose PREPARE was handed out, not yet run
_AHEAD = "serviceloop.ahead"  # [(statement, params)] to go in front of the next round trip
_HOLDING = "serviceloop.holding"  # this unit of work's writes may wait for its next round trip
_COMMIT_HELD = "serviceloop.commit_held"  # no statement may end with COMMIT (see commit_held)


def is_sqlite(engine_or_url: Engine | str) -> bool:
    url = str(getattr(engine_or_url, "url", engine_or_url))
    return url.startswith("sqlite")


def make_engine(url: str, *, pool_size: int = 12, connect_args: dict | None = None) -> Engine:
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):  # SQLAlchemy 2.1 would pick psycopg 3, which blocks eventlet
            url = "postgresql+psycopg2://" + url[len(prefix):]
    if is_sqlite(url):
        return _sqlite_engine(url, pool_size)
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=4,
        # the most recently returned connection first: under light load the same few
        # circulate and the rest lie idle, for IdleConnections to close
        pool_use_lifo=True,
        # No pre-ping (a round trip per checkout): a connection the database dropped while
        # it lay in the pool is found at checkout without one (`_dropped_while_pooled`); one
        # dropped while in use is invalidated by SQLAlchemy, and `transactional` runs the
        # entrypoint again on a fresh one.
        pool_recycle=1800,
        connect_args=connect_args or {},
    )
    event.listen(engine, "checkout", _dropped_while_pooled)

    @event.listens_for(engine, "before_cursor_execute", retval=True)
    def _begin_with_first(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001, ANN202
        info = conn.info
        ahead = _take_ahead(info)
        if ahead is not None:  # held-back writes go first, in a round trip of their own here
            begin = "BEGIN; " if info.get(_BEGIN_PENDING) else ""
            info[_BEGIN_PENDING] = False
            try:
                cursor.execute(begin + ahead[0], ahead[1])
            except Exception:
                _forget_unconfirmed(info)
                raise
            info.pop(_PREPARING, None)
        if info.get(_BEGIN_PENDING):
            info[_BEGIN_PENDING] = False
            if executemany:
                cursor.execute("BEGIN")
            else:
                statement = "BEGIN; " + statement
        return statement, parameters

    return engine


@functools.cache
def _plain_select_module():  # noqa: ANN202 - the `select` module
    """`select` as the system has it: where eventlet is loaded (the services), its original,
    since the green one switches to the hub even with no wait (and removes `poll`); elsewhere
    (the relays run without eventlet) the standard library's, without loading eventlet."""
    if "eventlet" in sys.modules:
        from eventlet.patcher import original

        return original("select")
    import select

    return select


def _has_unread(fd: int) -> bool:
    """Whether the socket has something to read (or its end): `poll` with no wait (`select`
    would refuse a descriptor over 1023, which a busy service may well have)."""
    select = _plain_select_module()
    looking = select.poll()
    looking.register(fd, select.POLLIN)
    return bool(looking.poll(0))


def _dropped_while_pooled(dbapi_connection, _record, _proxy) -> None:  # noqa: ANN001
    """At checkout: a pooled connection the server has written to while it lay idle was
    most likely dropped (`pg_terminate_backend`, a restart: the server's last words and the
    end of the stream are waiting on its socket). Only then is it asked a round trip (any
    other unread bytes would be harmless); if that fails, every connection pooled before
    now is replaced (SQLAlchemy's InvalidatePoolError), so no caller meets a dead one.
    A healthy idle connection has nothing to read: the look costs one `poll`, no round
    trip."""
    try:
        unread = _has_unread(dbapi_connection.fileno())
    except Exception as error:  # noqa: BLE001 - its socket is already closed
        raise InvalidatePoolError(f"a pooled connection is closed: {error}") from error
    if not unread:
        return
    try:
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        if not dbapi_connection.autocommit:
            dbapi_connection.rollback()  # the driver opened a transaction for the look
    except Exception as error:  # noqa: BLE001 - whatever the driver says, it is gone
        raise InvalidatePoolError(f"a pooled connection was dropped: {error}") from error


class IdleConnections:
    """A pool's connections nobody is using, and since when (`make_engine`'s pool hands out
    its most recently returned connection first, so the ones not needed lately lie idle).

    `close(idle_seconds, keep)` closes those idle that long, beyond the `keep` most recently
    returned: a service keeps a burst's connections only while bursts go on, not for its
    life. A closed connection keeps its place in the pool and connects again when a burst
    needs it (its prepared statements with it: the connection's `info` starts afresh).
    Runs in the services' green threads: nothing is checked out or in during a pass."""

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._since: dict = {}  # ConnectionPoolEntry -> when it was returned (clock())
        event.listen(engine.pool, "checkin", self._returned)
        event.listen(engine.pool, "checkout", self._taken)
        event.listen(engine.pool, "close", self._closed)  # an overflow one returned, say

    def _returned(self, dbapi_connection, record) -> None:  # noqa: ANN001
        if dbapi_connection is not None:  # else it was invalidated: nothing left to close
            self._since[record] = self.clock()

    def _taken(self, _dbapi_connection, record, _proxy) -> None:  # noqa: ANN001
        self._since.pop(record, None)

    def _closed(self, _dbapi_connection, record) -> None:  # noqa: ANN001
        self._since.pop(record, None)

    def idle(self) -> int:
        """How many open connections lie in the pool unused."""
        return len(self._since)

    def close(self, idle_seconds: float, keep: int) -> int:
        """Close the connections returned `idle_seconds` ago or earlier, but for the `keep`
        most recently returned; how many were closed."""
        oldest_first = sorted(self._since.items(), key=lambda item: item[1])
        cutoff = self.clock() - idle_seconds
        closed = 0
        for record, since in oldest_first[:max(0, len(oldest_first) - keep)]:
            if since > cutoff:
                break
            record.close()  # fires "close": forgotten here
            self._since.pop(record, None)
            closed += 1
        return closed


# -- PostgreSQL: a unit of work's BEGIN and COMMIT without round trips of their own ------------
#
# psycopg2 sends BEGIN as a round trip of its own before a transaction's first statement, and
# COMMIT is another; under eventlet each costs about as much CPU as a statement. A unit of work
# instead runs its connection in autocommit mode and sends BEGIN in front of its first
# statement; the event store may send COMMIT behind its append (`EventStore.append(commit=)`).

_IDLE, _IN_ERROR = 0, 3  # psycopg2.extensions.TRANSACTION_STATUS_*


def begin_with_first_statement(conn: Connection) -> None:
    """Make `conn` (PostgreSQL, just checked out) open its transaction with its first statement.

    `end_transaction` must close it: the pool's own reset does nothing in autocommit mode.
    """
    conn.connection.driver_connection.autocommit = True
    conn.info[_BEGIN_PENDING] = True
    conn.info[_OWN_TRANSACTION] = True
    conn.info[_HOLDING] = False
    conn.info.pop(_AHEAD, None)


def transaction_failed(conn: Connection) -> bool:
    """Whether `conn`'s (PostgreSQL) transaction is open and failed: only ROLLBACK (to a
    savepoint) is taken until it ends."""
    return conn.connection.driver_connection.info.transaction_status == _IN_ERROR


def owns_transaction(conn: Connection) -> bool:
    """Whether `conn` is a unit of work's, so that a statement may end with COMMIT."""
    info = conn.info
    return info.get(_OWN_TRANSACTION, False) and not info.get(_COMMIT_HELD, False)


@contextmanager
def commit_held(conn: Connection) -> Iterator[None]:
    """Inside the block no statement on `conn` ends with COMMIT (`owns_transaction` is
    false): the caller writes more in the same transaction after the block."""
    conn.info[_COMMIT_HELD] = True
    try:
        yield
    finally:
        conn.info[_COMMIT_HELD] = False


def end_transaction(conn: Connection, command: str) -> None:
    """Send COMMIT or ROLLBACK if a transaction is open (none is after a COMMIT sent with
    a statement), and give the connection back its driver's ordinary mode."""
    driver = conn.connection.driver_connection
    info = conn.info
    info[_HOLDING] = False
    if command == "COMMIT" and info.get(_AHEAD):
        fetch_rows(conn, "COMMIT")  # held-back writes go with it
    elif info.pop(_AHEAD, None):
        _forget_unconfirmed(info)  # never sent: their PREPAREs did not run
    info[_BEGIN_PENDING] = False
    info[_OWN_TRANSACTION] = False
    status = driver.info.transaction_status
    if command == "COMMIT" and status == _IN_ERROR:
        conn.exec_driver_sql("ROLLBACK")
        raise RuntimeError("commit of a transaction that had failed: it was rolled back")
    if status != _IDLE:
        conn.exec_driver_sql(command)
    driver.autocommit = False


@contextmanager
def statements_on_their_own(conn: Connection) -> Iterator[Connection]:
    """`conn` (PostgreSQL) in autocommit mode for the block: reads without BEGIN/ROLLBACK."""
    driver = conn.connection.driver_connection
    driver.autocommit = True
    try:
        yield conn
    finally:
        try:
            driver.autocommit = False
        except Exception:  # noqa: BLE001 - a dead connection is not given back to the pool
            conn.invalidate()


@contextmanager
def deferring(conn: Connection) -> Iterator[list[tuple[str, tuple]]]:
    """Collect the statements `sql()` is given on `conn` instead of running them, so that the
    caller sends them in one round trip with its own (PostgreSQL only; they must not read)."""
    collected: list[tuple[str, tuple]] = []
    conn.info[_DEFERRED] = collected
    try:
        yield collected
    finally:
        conn.info[_DEFERRED] = None


def _sqlite_engine(url: str, pool_size: int) -> Engine:
    # pooled: opening a SQLite connection and setting its pragmas costs more than the work
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=4,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
    )

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection, _record):  # noqa: ANN001
        # Python's driver begins transactions late, so a read-then-write is not atomic;
        # we take control of BEGIN ourselves (see _begin).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection):  # noqa: ANN001
        # Writers take the write lock at the start; readers marked read_only do not.
        if connection.get_execution_options().get("read_only"):
            connection.exec_driver_sql("BEGIN")
        else:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def sql(conn, statement: str | Prepared, params: tuple | list = ()):  # noqa: ANN001, ANN201
    """Run driver SQL written with `?` markers on SQLite or PostgreSQL alike.

    For hot paths: no SQL compilation, one statement (or several, `;`-separated, on
    PostgreSQL) in one round trip. Inside `deferring(conn)` the statement is collected and
    None is returned.

    A `Prepared` statement (a read model's hot write) is prepared once per PostgreSQL
    connection, whether collected or run at once (then on the driver's cursor, so its
    PREPARE is known to have run). It returns None: for writes, not reads.
    """
    collected = conn.info.get(_DEFERRED)
    many = bool(params) and isinstance(params[0], (tuple, list))
    if isinstance(statement, Prepared):
        if conn.dialect.name != "postgresql" or many:
            conn.exec_driver_sql(for_driver(conn, statement.statement), params)
        elif collected is not None:
            collected.append((statement.text(conn), tuple(params)))
        else:
            fetch_rows(conn, statement.text(conn), tuple(params))
        return None
    if collected is not None and not many:
        collected.append((statement, tuple(params)))
        return None
    return conn.exec_driver_sql(for_driver(conn, statement), params)


def ended_by_database(error: DBAPIError) -> bool:
    """PostgreSQL rolled this transaction back to end a deadlock (SQLSTATE 40P01) or a
    serialization failure (40001): nothing of it was kept, and run again it will most
    likely succeed."""
    return getattr(error.orig, "pgcode", None) in ("40P01", "40001")


def fetch_rows(conn: Connection, statement: str, params: tuple = ()) -> list[tuple]:
    """Run driver SQL written with `?` markers (or several statements, on PostgreSQL) and
    return the last one's rows as tuples, straight on the driver's cursor.

    For the hottest paths, where SQLAlchemy's layer costs as much CPU as the round trip: its
    errors are still SQLAlchemy's (IntegrityError, DBAPIError with `connection_invalidated`),
    and a unit of work's BEGIN still goes with its first statement.
    """
    statement = for_driver(conn, statement)
    info = conn.info
    ahead = _take_ahead(info)
    if ahead is not None:
        statement = f"{ahead[0]}; {statement}"
        params = (*ahead[1], *params)
    if info.get(_BEGIN_PENDING):
        info[_BEGIN_PENDING] = False
        statement = "BEGIN; " + statement
    driver = conn.connection.driver_connection
    cursor = driver.cursor()
    try:
        cursor.execute(statement, params)
        info.pop(_PREPARING, None)  # every PREPARE handed out ran: they exist from now on
        return cursor.fetchall() if cursor.description else []
    except conn.dialect.loaded_dbapi.Error as error:
        _forget_unconfirmed(info)
        invalidated = conn.dialect.is_disconnect(error, driver, cursor)
        if invalidated:
            conn.invalidate(error)
        raise DBAPIError.instance(statement, params, error, conn.dialect.loaded_dbapi.Error,
                                  connection_invalidated=invalidated) from None
    finally:
        cursor.close()


@contextmanager
def with_next_statement(conn: Connection, statement: str, params: tuple) -> Iterator[None]:
    """Inside the block, `statement` (PostgreSQL; `?` markers) goes in front of the next
    statement `fetch_rows` runs on `conn`, in the same round trip; whatever that one answers
    is the answer. It is dropped if no fetch_rows ran by the block's end."""
    hold_back(conn, statement, params)
    try:
        yield
    finally:
        conn.info.pop(_AHEAD, None)


# -- PostgreSQL: writes held back to the unit of work's next round trip --------------------
#
# A consumer's handler appends, and the inbox record and COMMIT follow: sent on its own, the
# append would cost a round trip and hold the log's append lock across the time its green
# thread waits to be scheduled again. `hold_writes` lets a unit of work's writes (statements
# whose answers nobody reads) wait and go in front of its next statement instead; an error of
# theirs is then raised by that statement (the COMMIT at the latest), so only a caller that
# handles every error alike (a consumer's delivery: roll back and retry) may turn it on.


def hold_writes(conn: Connection) -> None:
    """Let `conn`'s unit of work (PostgreSQL) hold writes back until its transaction ends."""
    if owns_transaction(conn):
        conn.info[_HOLDING] = True


def holds_writes(conn: Connection) -> bool:
    return conn.info.get(_HOLDING, False)


def hold_back(conn: Connection, statement: str, params: tuple) -> None:
    """`statement` (writes, `?` markers) goes in front of the next one run on `conn`."""
    conn.info.setdefault(_AHEAD, []).append((for_driver(conn, statement), tuple(params)))


def _take_ahead(info: dict) -> tuple[str, tuple] | None:
    """What was held back on a connection (its `info`), as one statement text and its
    parameters, and no longer held; None if nothing was."""
    ahead = info.pop(_AHEAD, None)
    if not ahead:
        return None
    return "; ".join(s for s, _ in ahead), tuple(p for _, values in ahead for p in values)


class Prepared:
    """A statement PostgreSQL parses and plans once per connection, then only executes.

    On the hottest statements (an append's INSERT, an intake's read) parsing and planning
    cost PostgreSQL more CPU than running them. `text(conn)` is what to send through
    `fetch_rows` in the statement's place, with the same `?` markers and parameters:
    `EXECUTE name(?, …)`, preceded by its `PREPARE` the first time on each connection. A
    prepared statement outlives a rolled-back transaction, not its connection (pooled
    connections keep theirs; a replaced one starts again). A round trip that fails after a
    PREPARE was handed out leaves it unknown whether it ran, so it is prepared again under
    a new name (a stray one costs its connection a little memory, nothing else). SQLite
    gets the statement itself.
    """

    _numbers = itertools.count(1)

    def __init__(self, statement: str) -> None:
        self.statement = statement
        self.key = f"sl_{next(self._numbers)}"
        pieces = statement.split("?")
        self._body = pieces[0] + "".join(f"${n}{piece}" for n, piece in
                                         enumerate(pieces[1:], start=1))
        self._arguments = f"({', '.join(['?'] * (len(pieces) - 1))})" if len(pieces) > 1 else ""

    def text(self, conn: Connection, times: int = 1) -> str:
        """`times`: the statement that many times over in one round trip, prepared once."""
        if conn.dialect.name != "postgresql":
            return "; ".join([self.statement] * times)
        info = conn.info
        names = info.get(_PREPARED)
        if names is None:
            names = info[_PREPARED] = {}
        preparing = info.get(_PREPARING)
        name = names.get(self.key)
        prepared = name is not None and not (preparing and self.key in preparing)
        if not prepared:
            name = names[self.key] = f"{self.key}_{next(self._numbers)}"
            info.setdefault(_PREPARING, set()).add(self.key)
        executions = "; ".join([f"EXECUTE {name}{self._arguments}"] * times)
        return executions if prepared else f"PREPARE {name} AS {self._body}; {executions}"


@functools.cache
def prepared_insert(table: str, columns: tuple[str, ...]) -> Prepared:
    """`INSERT INTO table (columns) VALUES (?, …)`, one Prepared per table and columns."""
    return Prepared(f"INSERT INTO {table} ({', '.join(columns)}) "
                    f"VALUES ({', '.join(['?'] * len(columns))})")


@functools.cache
def prepared_update(table: str, columns: tuple[str, ...], key: str) -> Prepared:
    """`UPDATE table SET column = ?, … WHERE key = ?`, one Prepared per table, columns and
    key (parameters: the columns' values, then the key's)."""
    return Prepared(f"UPDATE {table} SET {', '.join(f'{column} = ?' for column in columns)} "
                    f"WHERE {key} = ?")


def _forget_unconfirmed(info: dict) -> None:
    for key in info.pop(_PREPARING, ()):
        info.get(_PREPARED, {}).pop(key, None)


_PG_CACHE: dict[str, str] = {}


def for_driver(conn, statement: str) -> str:  # noqa: ANN001
    """`statement` with its `?` markers in the connection's driver's own style."""
    if conn.dialect.name == "sqlite":
        return statement
    converted = _PG_CACHE.get(statement)
    if converted is None:
        converted = _PG_CACHE[statement] = statement.replace("%", "%%").replace("?", "%s")
    return converted


_POSITION_KEYS = {"relay_positions": "relay", "consumer_positions": "source"}


def read_position(conn, table: str, key: str) -> int:  # noqa: ANN001
    """How far a relay (`relay_positions`) or a consumer (`consumer_positions`) got."""
    column = _POSITION_KEYS[table]
    value = sql(conn, f"SELECT position FROM {table} WHERE {column} = ?", (key,)).scalar()
    return value or 0


def _upsert_position(table: str) -> str:
    column = _POSITION_KEYS[table]
    return (f"INSERT INTO {table} ({column}, position, updated_at) VALUES (?, ?, ?) "
            f"ON CONFLICT ({column}) DO UPDATE SET position = excluded.position, "
            "updated_at = excluded.updated_at")


def save_position(conn, table: str, key: str, position: int, now: str) -> None:  # noqa: ANN001
    """Record how far a relay or a consumer got (one statement, inside the caller's
    transaction)."""
    sql(conn, _upsert_position(table), (key, position, now))


def save_relay_position(engine: Engine, relay: str, position: int, now: str) -> None:
    """A relay's position, committed on its own. On PostgreSQL one round trip and no wait
    for the WAL flush (synchronous_commit off for this transaction only): a position lost
    in a crash is an older one, from which the relay publishes a window again, which the
    consumers' inboxes already make harmless (at least once, never lost)."""
    if is_sqlite(engine):
        with engine.begin() as conn:
            save_position(conn, "relay_positions", relay, position, now)
        return
    with engine.connect() as conn, statements_on_their_own(conn):
        fetch_rows(conn, *relay_position_write(relay, position, now))


def relay_position_write(relay: str, position: int, now: str) -> tuple[str, tuple]:
    """PostgreSQL: the statements (a transaction of their own) and parameters that save a
    relay's position, as `save_relay_position` sends them; for `with_next_statement`."""
    return ("BEGIN; SET LOCAL synchronous_commit TO OFF; "
            f"{_upsert_position('relay_positions')}; COMMIT", (relay, position, now))
