"""`audit rebuild` on a running service: the rebuild tells how far it is while it runs."""

from __future__ import annotations

from datetime import UTC, datetime

import eventlet
from nameko.standalone.rpc import ServiceRpcProxy

from serviceloop.cli import main
from serviceloop.db import make_engine
from serviceloop.eventstore import EventStore, NewEvent
from serviceloop.projections import REPORT_EVERY
from services.orders.projections import events as orders_events
from services.orders.projections import projector
from services.orders.service import OrdersService

CUSTOMERS = 30 * REPORT_EVERY  # events in the log: thirty reports
WHEN = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
ADDRESS = {"province": "浙江省", "city": "杭州市", "district": "西湖区", "street": "文三路1号",
           "lat": None, "lon": None}


def _log_of_customers(url: str) -> None:
    """CUSTOMERS customers registered, each folded into the read models as the service
    folds it, so the rebuild must come out equal."""
    engine = make_engine(url)
    store = EventStore(orders_events)
    with engine.begin() as conn:
        for n in range(CUSTOMERS):
            projector.apply(conn, store.append(
                conn, f"customer-r{n}", 0, [NewEvent("customer_registered", {
                    "customer_id": f"r{n}", "name": "客户", "phone": f"139{n:08d}",
                    "address": ADDRESS})], occurred_at=WHEN, correlation_id=f"r{n}",
                causation_id=f"cmd-r{n}", actor="agent:a7"))
    engine.dispose()


def test_a_rebuild_on_a_running_service_reports_increasing_counts_up_to_the_total(
        container_factory, service_config, database_for, backend, broker_uri, monkeypatch,
        capsys):
    url = database_for("orders", backend)
    _log_of_customers(url)
    config = service_config(orders=url)
    container_factory(OrdersService, config).start()
    with ServiceRpcProxy("orders", config, timeout=120) as rebuilding, \
            ServiceRpcProxy("orders", config, timeout=30) as asking:
        total = asking.log_head()["position"]
        assert asking.rebuild_progress()["running"] is False
        rebuild = eventlet.spawn(rebuilding.rebuild_read_models)
        states = []
        while not rebuild.dead:  # each answer a round trip: the rebuild runs in between
            states.append(asking.rebuild_progress())
        result = rebuild.wait()
        assert result["events"] == total == CUSTOMERS
        assert all(table["equal"] for table in result["tables"].values()), result
        running = [state for state in states if state["running"]]
        counts = [state["events"] for state in running]
        assert {state["total"] for state in running} == {total}
        # the last report (every event folded) can come before the checksums end the run
        assert counts == sorted(counts) and all(0 <= n <= total for n in counts)
        assert len(set(counts) - {0}) >= 2, states  # seen moving, not only started
        assert asking.rebuild_progress() == {"running": False, "events": total,
                                             "total": total}

    # the auditor's command shows the count against the log's head, to the end
    monkeypatch.setenv("AMQP_URI", broker_uri)
    assert main(["audit", "rebuild", "orders"]) == 0
    captured = capsys.readouterr()
    assert f"{total:,}/{total:<9,} 100%" in captured.err.splitlines()[-1]
    assert f"replayed {total} events" in captured.out
