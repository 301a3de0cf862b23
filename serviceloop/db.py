"""Engines for a service's own database: SQLite files by default, PostgreSQL when configured."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine, event

SQLITE_BUSY_TIMEOUT_MS = 30_000


def is_sqlite(engine_or_url: Engine | str) -> bool:
    url = str(getattr(engine_or_url, "url", engine_or_url))
    return url.startswith("sqlite")


def make_engine(url: str, *, pool_size: int = 12) -> Engine:
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):  # SQLAlchemy 2.1 would pick psycopg 3, which blocks eventlet
            url = "postgresql+psycopg2://" + url[len(prefix):]
    if is_sqlite(url):
        return _sqlite_engine(url, pool_size)
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=4,
        # No pre-ping (a round trip per checkout): a connection found dead is invalidated
        # by SQLAlchemy, and `transactional` runs the entrypoint again on a fresh one.
        pool_recycle=1800,
    )


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


def sql(conn, statement: str, params: tuple | list = ()):  # noqa: ANN001, ANN201
    """Run driver SQL written with `?` markers on SQLite or PostgreSQL alike.

    For hot paths: no SQL compilation, one statement (or several, `;`-separated, on
    PostgreSQL) in one round trip.
    """
    return conn.exec_driver_sql(for_driver(conn, statement), params)


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


def save_position(conn, table: str, key: str, position: int, now: str) -> None:  # noqa: ANN001
    column = _POSITION_KEYS[table]
    if not sql(conn, f"UPDATE {table} SET position = ?, updated_at = ? WHERE {column} = ?",
               (position, now, key)).rowcount:
        sql(conn, f"INSERT INTO {table} ({column}, position, updated_at) VALUES (?, ?, ?)",
            (key, position, now))
