"""A read on a connection PostgreSQL dropped says "try again" as a typed error, once."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text

from contracts.errors import ServiceUnavailable
from serviceloop.db import make_engine
from serviceloop.unit_of_work import read_only
from tests.conftest import POSTGRES_ADMIN_URL


def test_a_read_on_a_dropped_connection_is_unavailable_once_then_reads_again(database_for):
    url = database_for("orders", "postgres")
    engine = make_engine(url, pool_size=2)
    with read_only(engine) as conn:  # a pooled connection, then the database drops it
        assert conn.execute(text("SELECT COUNT(*) FROM events")).scalar() == 0
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        dropped = conn.execute(text("SELECT COUNT(pg_terminate_backend(pid)) FROM "
                                    "pg_stat_activity WHERE datname = :d"),
                               {"d": url.rsplit("/", 1)[1]}).scalar()
    admin.dispose()
    assert dropped >= 1
    with pytest.raises(ServiceUnavailable) as unavailable:
        with read_only(engine) as conn:
            conn.execute(text("SELECT COUNT(*) FROM events"))
    assert unavailable.value.code == "unavailable"
    assert "terminat" not in str(unavailable.value)  # not the driver's text
    with read_only(engine) as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM events")).scalar() == 0
    engine.dispose()
