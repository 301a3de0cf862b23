"""The migration initContainer's check (deploy/k8s/base/wait_for_schema.py), run as the pod
runs it, against real SQLite and PostgreSQL databases: done at once on a migrated database,
waiting while the schema is missing or behind and done once the migration has run, giving up
after `--timeout`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, text

from serviceloop.config import PROJECT_ROOT
from serviceloop.migrate import alembic_config, upgrade
from tests.conftest import POSTGRES_ADMIN_URL

SCRIPT = PROJECT_ROOT / "deploy" / "k8s" / "base" / "wait_for_schema.py"
SCRIPTS = ScriptDirectory.from_config(alembic_config("orders", "sqlite://"))
(HEAD,) = SCRIPTS.get_heads()
BEHIND = SCRIPTS.get_revision(HEAD).down_revision  # what an older image migrated to


@pytest.fixture
def empty_orders_database(backend, tmp_path):
    """The URL of an orders database nothing has migrated yet."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'orders-empty.db'}"
        return
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"sl_t_empty_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def wait_for_schema(url: str, *options: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(SCRIPT), "orders", *options],
                            env={**os.environ, "DATABASE_URL_ORDERS": url,
                                 "PYTHONPATH": str(PROJECT_ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_migrated_database_lets_the_pod_start_at_once(database_for, backend):
    done = wait_for_schema(database_for("orders", backend), "--timeout", "20")
    out, _ = done.communicate(timeout=30)
    assert done.returncode == 0, out
    assert out.splitlines()[-1] == f"orders schema at head ['{HEAD}']"
    assert "waiting" not in out


def test_the_pod_waits_for_the_migration_then_starts(empty_orders_database):
    waiting = wait_for_schema(empty_orders_database, "--timeout", "60", "--interval", "0.2")
    try:
        first = waiting.stdout.readline()  # blocks until the first check has answered
        assert "not at head" in first and "waiting" in first, first
        assert waiting.poll() is None  # still waiting: nothing has migrated the database
        upgrade("orders", empty_orders_database)  # what the migration Job does
        out, _ = waiting.communicate(timeout=30)
    finally:
        if waiting.poll() is None:
            waiting.kill()
    assert waiting.returncode == 0, first + out
    assert out.splitlines()[-1] == f"orders schema at head ['{HEAD}']"


def test_a_schema_left_behind_makes_it_give_up_after_the_timeout(empty_orders_database):
    upgrade("orders", empty_orders_database, BEHIND)
    started = time.monotonic()
    waiting = wait_for_schema(empty_orders_database, "--timeout", "1", "--interval", "0.2")
    out, _ = waiting.communicate(timeout=30)
    assert waiting.returncode == 1, out
    assert f"at ['{BEHIND}']" in out and out.splitlines()[-1].endswith("giving up")
    assert out.count("waiting") >= 2  # it checked again rather than failing at once
    assert time.monotonic() - started < 15


def test_an_unreachable_database_is_waited_for_not_a_crash():
    waiting = wait_for_schema("postgresql+psycopg2://postgres@127.0.0.1:1/none",
                              "--timeout", "0.5", "--interval", "0.1")
    out, _ = waiting.communicate(timeout=30)
    assert waiting.returncode == 1, out
    assert "OperationalError" in out and "Traceback" not in out
    assert out.splitlines()[-1].endswith("giving up")
