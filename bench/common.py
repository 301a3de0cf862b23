"""What every benchmark needs: fresh databases and vhosts, timing and statistics."""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from urllib.parse import quote

from sqlalchemy import create_engine, text

from serviceloop.migrate import upgrade

POSTGRES_ADMIN_URL = os.environ.get(
    "BENCH_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
BROKER = os.environ.get("BENCH_AMQP_HOST", "guest:guest@127.0.0.1:5672")
BACKENDS = ("sqlite", "postgres")


def _pg_url(database: str) -> str:
    return POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + "/" + database


@contextlib.contextmanager
def fresh_database(backend: str, *, service: str = "orders",
                   migrate: bool = True) -> Iterator[str]:
    """The URL of a new `service` database (alembic head unless `migrate=False`), removed after."""
    if backend == "sqlite":
        folder = tempfile.mkdtemp(prefix=f"bench_{service}_")
        url = f"sqlite:///{folder}/{service}.db"
        try:
            if migrate:
                upgrade(service, url)
            yield url
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    name = f"bench_{service}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = _pg_url(name)
        if migrate:
            upgrade(service, url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _rabbitmqctl(*args: str, check: bool = True) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=check, capture_output=True)


@contextlib.contextmanager
def fresh_vhost() -> Iterator[str]:
    """The AMQP URI of a RabbitMQ virtual host of our own, deleted after."""
    vhost = f"bench-{uuid.uuid4().hex[:8]}"
    _rabbitmqctl("add_vhost", vhost)
    try:
        _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield f"amqp://{BROKER}/{quote(vhost, safe='')}"
    finally:
        _rabbitmqctl("delete_vhost", vhost, check=False)


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def timed(action: Callable[[], object]) -> float:
    """Seconds `action()` took."""
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100) of `values`."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values: list[float]) -> float:
    return statistics.median(values)


def side_by_side(measure: Callable[[], float], baseline: Callable[[], float],
                 repetitions: int) -> dict:
    """Alternate `measure` and `baseline` (rates) `repetitions` times; medians and their ratio."""
    ours, theirs = [], []
    for _ in range(repetitions):
        ours.append(measure())
        theirs.append(baseline())
    return {"value": median(ours), "baseline": median(theirs),
            "ratio": median(ours) / median(theirs), "runs": ours, "baseline_runs": theirs}
