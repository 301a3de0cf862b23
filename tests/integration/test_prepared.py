"""serviceloop.db.Prepared: a hot statement parsed and planned once per PostgreSQL connection,
and prepared again whenever it cannot be sure the connection has it."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from contracts.errors import ServiceUnavailable
from serviceloop.db import (
    Prepared,
    deferring,
    fetch_rows,
    make_engine,
    prepared_insert,
    prepared_update,
    sql,
)
from serviceloop.unit_of_work import read_only

LOOKUP = Prepared("SELECT customer_id, phone FROM customers WHERE phone = ? OR customer_id = ?")
PARAMS = ("13800000001", "nobody")


def _prepared_names(conn) -> set[str]:  # noqa: ANN001
    return {row[0] for row in fetch_rows(conn, "SELECT name FROM pg_prepared_statements")}


def _add_customer(engine) -> None:  # noqa: ANN001
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO customers (customer_id, name, phone, province, city, district, street,"
            " registered_at) VALUES ('c1', '客户', '13800000001', '广东省', '广州市', '天河区',"
            " '中山路1号', '2026-11-02T09:00:00Z')"))


@pytest.fixture
def engine(orders_url):
    engine = make_engine(orders_url, pool_size=2)
    _add_customer(engine)
    yield engine
    engine.dispose()


def test_the_same_rows_as_the_statement_itself(engine):
    with read_only(engine) as conn:
        plain = fetch_rows(conn, LOOKUP.statement, PARAMS)
        first = fetch_rows(conn, LOOKUP.text(conn), PARAMS)
        again = fetch_rows(conn, LOOKUP.text(conn), PARAMS)
    assert plain == first == again == [("c1", "13800000001")]


@pytest.mark.parametrize("backend", ["postgres"])
def test_prepared_once_per_connection_then_only_executed(engine):
    with read_only(engine) as conn:
        first = LOOKUP.text(conn)
        assert first.startswith("PREPARE ")
        fetch_rows(conn, first, PARAMS)
        second = LOOKUP.text(conn)
        assert second.startswith("EXECUTE ") and "PREPARE" not in second
        assert fetch_rows(conn, second, PARAMS) == [("c1", "13800000001")]
        assert len(_prepared_names(conn)) == 1
        with engine.connect() as other:  # another connection of the pool prepares its own
            assert LOOKUP.text(other).startswith("PREPARE ")


@pytest.mark.parametrize("backend", ["postgres"])
def test_a_round_trip_that_failed_after_its_prepare_prepares_again(engine):
    with read_only(engine) as conn:
        with pytest.raises(DBAPIError):
            fetch_rows(conn, f"BEGIN; {LOOKUP.text(conn)}; SELECT 1 / 0", PARAMS)
        fetch_rows(conn, "ROLLBACK")
        # the PREPARE ran (it outlives the failed transaction): the next use must not
        # prepare the same name again, nor execute a name that may not exist
        retried = LOOKUP.text(conn)
        assert retried.startswith("PREPARE ")
        assert fetch_rows(conn, retried, PARAMS) == [("c1", "13800000001")]
        assert fetch_rows(conn, LOOKUP.text(conn), PARAMS) == [("c1", "13800000001")]


@pytest.mark.parametrize("backend", ["postgres"])
def test_a_prepare_handed_out_but_never_sent_is_handed_out_again(engine):
    with read_only(engine) as conn:
        LOOKUP.text(conn)  # built, then the caller gave up before sending it
        assert LOOKUP.text(conn).startswith("PREPARE ")
        assert fetch_rows(conn, LOOKUP.text(conn), PARAMS) == [("c1", "13800000001")]


@pytest.mark.parametrize("backend", ["postgres"])
def test_a_replaced_connection_prepares_again(engine):
    with read_only(engine) as conn:
        fetch_rows(conn, LOOKUP.text(conn), PARAMS)
        backend_pid = fetch_rows(conn, "SELECT pg_backend_pid()")[0][0]
    killer = make_engine(str(engine.url.render_as_string(hide_password=False)), pool_size=1)
    with killer.connect() as other:
        other.execute(text(f"SELECT pg_terminate_backend({backend_pid})"))
        other.commit()
    killer.dispose()
    found = None
    for _ in range(3):  # the pool hands out the dead connection first: it is invalidated
        try:
            with read_only(engine) as conn:
                found = fetch_rows(conn, LOOKUP.text(conn), PARAMS)
                break
        except ServiceUnavailable:
            pass
    assert found == [("c1", "13800000001")]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_sqlite_gets_the_statement_itself(engine):
    with read_only(engine) as conn:
        assert LOOKUP.text(conn) == LOOKUP.statement


@pytest.mark.parametrize("backend", ["postgres"])
def test_several_times_in_one_round_trip_prepared_once(engine):
    with read_only(engine) as conn:
        twice = LOOKUP.text(conn, times=2)
        assert twice.count("PREPARE ") == 1 and twice.count("EXECUTE ") == 2
        assert fetch_rows(conn, twice, PARAMS * 2) == [("c1", "13800000001")]
        assert LOOKUP.text(conn, times=2).count("PREPARE ") == 0


RENAME = Prepared("UPDATE customers SET name = ?, street = ? WHERE customer_id = ?")


def _name_and_street(engine) -> tuple:  # noqa: ANN001
    with read_only(engine) as conn:
        return tuple(fetch_rows(conn, "SELECT name, street FROM customers "
                                      "WHERE customer_id = 'c1'")[0])


def test_sql_runs_a_prepared_write(engine):
    for name, street in (("一", "街1号"), ("二", "街2号")):  # the second time only executed
        with engine.begin() as conn:
            assert sql(conn, RENAME, (name, street, "c1")) is None
        assert _name_and_street(engine) == (name, street)


@pytest.mark.parametrize("backend", ["postgres"])
def test_sql_collects_a_prepared_write_for_the_round_trip_that_sends_it(engine):
    with engine.begin() as conn:
        with deferring(conn) as collected:
            sql(conn, RENAME, ("三", "街3号", "c1"))
        assert _name_and_street(engine) == ("客户", "中山路1号")  # collected, not run
        (statement, params), = collected
        assert statement.startswith("PREPARE ") and params == ("三", "街3号", "c1")
        fetch_rows(conn, statement, params)  # as the append sends it
        assert len(_prepared_names(conn)) == 1
        with deferring(conn) as collected:
            sql(conn, RENAME, ("四", "街4号", "c1"))
        assert collected[0][0].startswith("EXECUTE ")
        fetch_rows(conn, *collected[0])
    assert _name_and_street(engine) == ("四", "街4号")


def test_prepared_insert_and_update_are_made_once_per_shape():
    assert prepared_update("t", ("a", "b"), "k") is prepared_update("t", ("a", "b"), "k")
    assert prepared_update("t", ("a",), "k").statement == "UPDATE t SET a = ? WHERE k = ?"
    assert prepared_insert("t", ("a", "b")).statement == "INSERT INTO t (a, b) VALUES (?, ?)"
