"""Auditors over the four running services' RPC: replay, verify, tampering, loops, rebuild."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from serviceloop import audit
from serviceloop.audit.wire import pack_page, page_from_text, unpack_page
from serviceloop.cli import main
from serviceloop.clock import isoformat
from serviceloop.db import make_engine
from serviceloop.eventstore import Envelope, EventStore, NewEvent
from serviceloop.services import IMPLEMENTED
from services.orders.projections import events as orders_events
from tests.helpers import wait_until
from tests.integration.test_settlement import (
    complete,
    latest,
    loop,  # noqa: F401 - the fixture
    verify,
)

ELSEWHERE = {"province": "浙江省", "city": "杭州市", "district": "西湖区", "street": "文三路1号",
             "lat": None, "lon": None}


def logs_of(system) -> dict[str, list[dict]]:  # noqa: ANN001
    return {service: audit.read_log(_rpc(system), service) for service in IMPLEMENTED}


class _rpc:  # the fixture's proxies, as the audit module reaches services
    def __init__(self, system) -> None:  # noqa: ANN001
        self.orders, self.dispatch = system.orders, system.dispatch
        self.callback, self.settlement = system.callback, system.settlement


def test_a_whole_loop_replays_in_causal_order_verifies_clean_and_closes(
        loop, broker_uri, monkeypatch, capsys):  # noqa: F811
    partner = loop.register_partner()
    order_id = loop.repair("13500000001")
    complete(loop, partner, order_id, labour_fee_cents=6000)
    wait_until(lambda: loop.orders.get_order(order_id)["status"] == "completed"
               and loop.callback.tasks_for_order(order_id), message="the completion followed")
    completed_at = loop.clock.now()
    loop.clock.advance(hours=1)  # the customer is called back an hour later
    verify(loop, order_id)
    latest(loop, order_id, 2)
    loop.settlement.run(loop.clock.now().strftime("%Y-%m"))
    wait_until(lambda: loop.orders.get_order(order_id)["status"] == "closed",
               message="orders to close the settled order")
    stranded = loop.orders.register_customer({
        "name": "远客", "phone": "13500000002", "agent_id": "a7", "address": ELSEWHERE,
        "products": [{"model": "WH-E60A", "serial": "WH-FAR", "purchase_date": "2026-03-01",
                      "installation_date": "2026-03-05"}]})
    lonely = loop.orders.create_order({
        "product_id": stranded["products"][0]["product_id"], "order_type": "repair",
        "channel": "phone", "fault_code": "WH-E1", "agent_id": "a7"})["order_id"]
    wait_until(lambda: loop.dispatch_status(lonely) == "escalated", message="escalation")
    # and orders has followed it: the logs read next are the loop's whole record
    wait_until(lambda: loop.orders.get_order(lonely)["status"] == "escalated",
               message="orders to follow the escalation")

    events = [{**e, "source": s} for s in IMPLEMENTED
              for e in getattr(_rpc(loop), s).events_for(order_id)]
    ordered = audit.causal_order(events)
    kinds = [(e["source"], e["event_type"]) for e in ordered]
    assert kinds[0] == ("orders", "order_created")
    assert kinds.index(("dispatch", "order_received")) < kinds.index(
        ("dispatch", "order_completed")) < kinds.index(("callback", "verification_task_created"))
    assert kinds.index(("callback", "order_verified")) < len(kinds)
    assert ("settlement", "claim_decided") in kinds
    then = audit.state_as_of(ordered, loop.clock.now() - timedelta(days=365))
    assert set(then.values()) == {None}

    # the auditor's command: each service's state half an hour after the completion
    monkeypatch.setenv("AMQP_URI", broker_uri)
    moment = isoformat(completed_at + timedelta(minutes=30))
    assert main(["audit", "replay", order_id, "--as-of", moment, "--json"]) == 0
    state = json.loads(capsys.readouterr().out)
    assert (state["order_id"], state["as_of"]) == (order_id, moment)
    services = state["services"]
    assert (services["orders"]["status"], services["orders"]["partner_id"]) == (
        "completed", partner.partner_id)
    assert (services["dispatch"]["status"], services["dispatch"]["visits"]) == ("completed", 1)
    assert (services["callback"]["task_status"], services["callback"]["outcome"]) == (
        "open", None)
    assert (services["settlement"]["callback"], services["settlement"]["approved_cents"]) == (
        "pending", 0)
    now = audit.state_as_of(ordered, loop.clock.now())
    assert (now["orders"]["status"], now["callback"]["outcome"]) == ("closed", "verified")

    logs = logs_of(loop)
    assert audit.verify(logs) == []
    verified = audit.verify_over_rpc(_rpc(loop), IMPLEMENTED)
    assert (verified.breaks, verified.events) == ([], {s: len(log) for s, log in logs.items()})
    loops = {row["order_id"]: row["missing"]
             for row in audit.open_loops(logs, loop.clock.now())}
    assert loops == {lonely: "never_dispatched"}
    # `audit loops` reads only the kinds of event it looks at, and each log's newest event
    few = audit.read_logs(_rpc(loop), IMPLEMENTED, event_types=audit.LOOP_EVENT_TYPES)
    assert sum(map(len, few.values())) < sum(map(len, logs.values()))
    assert {s: log[-1] for s, log in few.items()} == {s: log[-1] for s, log in logs.items()}
    assert audit.open_loops(few, loop.clock.now()) == audit.open_loops(logs, loop.clock.now())
    assert audit.loops_now(few, loop.clock.now()) == audit.loops_now(logs, loop.clock.now())

    for service in IMPLEMENTED:
        result = getattr(_rpc(loop), service).rebuild_read_models()
        assert all(t["equal"] for t in result["tables"].values()), (service, result)


def test_an_edited_row_and_a_rewritten_log_are_both_found(loop):  # noqa: F811
    partner = loop.register_partner()
    order_id = loop.repair("13500000003")
    complete(loop, partner, order_id, labour_fee_cents=6000)
    logs = logs_of(loop)
    point = audit.checkpoint(logs, "now")
    assert audit.verify_against(logs, point) == []

    target = loop.dispatch  # tamper with dispatch's log behind the system's back
    engine = make_engine(loop.service_urls["dispatch"])
    with engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            conn.execute(text("DROP TRIGGER events_no_update"))
        else:
            conn.execute(text("DROP TRIGGER events_no_update_delete ON events"))
        conn.execute(text("UPDATE events SET payload = replace(payload, '6000', '9000') "
                          "WHERE event_type = 'order_completed'"))
    engine.dispose()
    tampered = logs_of(loop)
    breaks = audit.verify(tampered)
    assert [(b["service"], b["kind"]) for b in breaks] == [("dispatch", "hash")]
    # `audit verify`, checking packed pages as they come, finds the same at the same position
    assert audit.verify_over_rpc(_rpc(loop), IMPLEMENTED).breaks == breaks
    assert audit.verify_against(tampered, point) == []  # the leaves are the stored hashes…

    # …so rewrite the whole log with recomputed hashes: the chain verifies, the checkpoint not
    rewritten = _recompute(tampered["dispatch"])
    assert audit.verify({**tampered, "dispatch": rewritten}) == []
    kinds = {b["kind"] for b in audit.verify_against({**tampered, "dispatch": rewritten}, point)}
    assert kinds == {"head", "merkle"}
    assert target.log_head()["position"] == len(rewritten)


def _recompute(log: list[dict]) -> list[dict]:
    from serviceloop.eventstore import GENESIS_HASH, Envelope

    out, prev = [], GENESIS_HASH
    for body in log:
        envelope = Envelope.from_dict({**body, "prev_hash": prev})
        digest = envelope.computed_hash()
        out.append({**envelope.to_dict(), "hash": digest})
        prev = digest
    return out


# -- the page the database builds for auditors (EventStore.page_since) ----------------------

PAGE_WHEN = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def _registered(store: EventStore, engine, n: int, name: str = "客户") -> None:  # noqa: ANN001
    with engine.begin() as conn:
        store.append(conn, f"customer-{n}", 0, [NewEvent("customer_registered", {
            "customer_id": f"c{n}", "name": name, "phone": f"138{n:08d}",
            "address": ELSEWHERE})], occurred_at=PAGE_WHEN, correlation_id=f"c{n}",
            causation_id=f"cmd-{n}", actor="agent:a7")


def _pages_agree(store: EventStore, engine) -> list:  # noqa: ANN001
    """Windows of the log read both ways: the page the database built (when it vouches for
    it) is the page packed from the rows, and unpacks to exactly the stored rows. The windows
    the database did not vouch for (an empty page never is)."""
    refused = []
    with engine.connect() as conn:
        head = store.head(conn)[0]
        for position, limit in [(0, 10_000), (0, 1), (1, 2), (2, 3), (head - 1, 5), (head, 5)]:
            rows = store.rows_since(conn, position, limit)
            packed = pack_page(rows)
            stored = [list(column) for column in zip(*rows, strict=True)] or [[]] * 13
            assert unpack_page(packed) == dict(zip(Envelope._fields, stored, strict=True))
            built = store.page_since(conn, position, limit)
            if built is None:
                refused += [(position, limit)] if rows else []
            else:
                assert page_from_text(*built) == packed
    return refused


def test_the_page_the_database_builds_is_the_page_packed_from_its_rows(orders_engine):
    store = EventStore(orders_events)
    for n, name in enumerate(["客户", "Zoë \"the fixer\"", "tab\there", "∑ \\ /", "x" * 60]):
        _registered(store, orders_engine, n, name)
    assert _pages_agree(store, orders_engine) == []


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=4))
def test_any_text_comes_back_exactly_whichever_way_the_page_is_built(orders_engine, names):
    store = EventStore(orders_events)
    with orders_engine.connect() as conn:
        start = store.head(conn)[0]
    for n, name in enumerate(names, start):
        _registered(store, orders_engine, n, name)
    refused = _pages_agree(store, orders_engine)
    with orders_engine.connect() as conn:
        rows = store.rows_since(conn, 0, 10_000)
    if not any(mark in value for row in rows for value in row[1:11:1]
               if isinstance(value, str) for mark in "\x1e\x1f"):
        assert refused == []  # nothing in the way: the database vouches for every page


def test_a_row_the_database_cannot_vouch_for_is_read_as_rows_and_comes_back_exactly(
        orders_engine):
    store = EventStore(orders_events)
    for n in range(6):
        _registered(store, orders_engine, n)
    with orders_engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            conn.execute(text("DROP TRIGGER events_no_update"))
        else:
            conn.execute(text("DROP TRIGGER events_no_update_delete ON events"))
        conn.execute(text("UPDATE events SET prev_hash = 'f' WHERE global_position = 2"))
        conn.execute(text("UPDATE events SET event_id = 'e' || char(31) || 'vil' "
                          "WHERE global_position = 4" if conn.dialect.name == "sqlite" else
                          "UPDATE events SET event_id = 'e' || chr(31) || 'vil' "
                          "WHERE global_position = 4"))
    # a chain break is sent as it is (not elided); a separator in a value: rows
    assert set(_pages_agree(store, orders_engine)) == {(0, 10_000), (2, 3)}
    with orders_engine.begin() as conn:
        conn.execute(text("UPDATE events SET prev_hash = '' WHERE global_position = 1"))
        if conn.dialect.name == "sqlite":  # SQLite keeps a value of any type in any column
            conn.execute(text("UPDATE events SET actor = x'41' WHERE global_position = 6"))
            conn.execute(text("UPDATE events SET stream_version = 'one' "
                              "WHERE global_position = 5"))
            conn.execute(text("UPDATE events SET schema_version = 1.5 "
                              "WHERE global_position = 3"))
    refused = set(_pages_agree(store, orders_engine))
    assert {(0, 10_000), (0, 1), (2, 3)} <= refused
    with orders_engine.connect() as conn:
        page = pack_page(store.rows_since(conn, 0, 10))
        assert page["elided"] is False  # an empty prev_hash is not taken for an elided one
        if conn.dialect.name == "sqlite":
            assert {"actor", "stream_version", "schema_version"} <= set(page["columns"])
