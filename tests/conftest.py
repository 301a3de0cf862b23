"""Real parts for the tests: SQLite and PostgreSQL databases migrated by alembic,
and a RabbitMQ virtual host of their own that is removed afterwards."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

import pytest
from sqlalchemy import create_engine, text

from serviceloop.clock import ManualClock
from serviceloop.db import make_engine
from serviceloop.migrate import upgrade
from serviceloop.services import IMPLEMENTED

POSTGRES_ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
BROKER = os.environ.get("TEST_AMQP_HOST", "guest:guest@127.0.0.1:5672")
RUN_ID = uuid.uuid4().hex[:8]


def _admin():
    return create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")


def _pg_url(database: str) -> str:
    return POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + "/" + database


@pytest.fixture(scope="session")
def migrated_templates(tmp_path_factory):
    """One migrated database per service and backend, copied for each test."""
    templates = {}
    admin = _admin()
    created = []
    folder = tmp_path_factory.mktemp("templates")
    for service in IMPLEMENTED:
        sqlite_path = folder / f"{service}.db"
        upgrade(service, f"sqlite:///{sqlite_path}")
        name = f"sl_tpl_{service}_{RUN_ID}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        created.append(name)
        upgrade(service, _pg_url(name))
        templates[service] = {"sqlite": sqlite_path, "postgres": name}
    yield templates
    with admin.connect() as conn:
        for name in created:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def database_for(migrated_templates, tmp_path):
    """`database_for(service, backend)` -> URL of a fresh migrated database, dropped after."""
    admin = _admin()
    created = []

    def make(service: str, backend: str) -> str:
        template = migrated_templates[service][backend]
        if backend == "sqlite":
            path = tmp_path / f"{service}-{uuid.uuid4().hex[:6]}.db"
            shutil.copy(template, path)
            return f"sqlite:///{path}"
        name = f"sl_t_{service}_{uuid.uuid4().hex[:10]}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
        created.append(name)
        return _pg_url(name)

    yield make
    with admin.connect() as conn:
        for name in created:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request) -> str:
    return request.param


@pytest.fixture
def orders_url(database_for, backend) -> str:
    return database_for("orders", backend)


@pytest.fixture
def orders_engine(orders_url):
    engine = make_engine(orders_url)
    yield engine
    engine.dispose()


@contextmanager
def own_vhost(vhost: str) -> Iterator[str]:
    """The AMQP URI of a RabbitMQ virtual host made for the caller, deleted afterwards."""
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], check=True, capture_output=True)
    try:
        subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*",
                        ".*", ".*"], check=True, capture_output=True)
        yield f"amqp://{BROKER}/{quote(vhost, safe='')}"
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True)


@pytest.fixture(scope="session")
def broker_uri():
    """A RabbitMQ virtual host for this test run only."""
    with own_vhost(f"sl-test-{RUN_ID}") as uri:
        yield uri


@pytest.fixture
def own_broker_uri():
    """A virtual host for one test whose processes may leave messages in durable queues
    (a whole `serviceloop up` stopped mid-flight): nothing reaches the next test."""
    with own_vhost(f"sl-own-{uuid.uuid4().hex[:8]}") as uri:
        yield uri


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def service_config(broker_uri, clock):
    """`service_config(**database_urls)`: a nameko config dict for containers under test."""

    def make(**urls: str) -> dict:
        config = {"AMQP_URI": broker_uri, "max_workers": 16, "CLOCK": clock,
                  "HEARTBEAT": 10}
        config.update({f"DATABASE_URL_{k.upper()}": v for k, v in urls.items()})
        return config

    return make
