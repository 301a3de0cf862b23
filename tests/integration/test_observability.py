"""Health, readiness and metrics of the running services, and their JSON log lines.

The services run as `serviceloop up` does it (real processes, PostgreSQL, RabbitMQ); their
broker traffic goes through a small TCP proxy the test can cut, so readiness is seen to fail
and recover without touching the shared broker.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import urlparse

import pytest
import requests
from nameko.standalone.rpc import ClusterRpcProxy
from sqlalchemy import create_engine, text

from serviceloop.clock import isoformat
from serviceloop.observability import JsonFormatter, Metrics, log_context
from tests.conftest import POSTGRES_ADMIN_URL
from tests.helpers import wait_until
from tests.integration.dispatch_system import DispatchSystem, free_port
from tests.tcp_proxy import TcpProxy

CLI = [sys.executable, "-m", "serviceloop.cli"]
SERVICES = ("orders", "dispatch", "callback", "settlement")
RATES = """effective_from,kind,order_type,category,region,up_to_km,cents
2026-01-01,labour,repair,water_heater,*,,6000
2026-01-01,travel,,,*,20,1500
"""
DECISIONS = ("approved", "cut", "held", "rejected")
VISIT = ("accept", "schedule", "arrive", "complete")


@pytest.fixture
def running(tmp_path, own_broker_uri, database_for):
    # a virtual host of its own: events other tests left in durable queues would move the
    # figures this test counts from zero (a completion left there opened callback tasks)
    broker_uri = own_broker_uri
    parsed = urlparse(broker_uri)
    proxy = TcpProxy((parsed.hostname, parsed.port or 5672))
    ports = {s: free_port() for s in SERVICES}
    urls = {s: database_for(s, "postgres") for s in SERVICES}
    env = {**os.environ, "AMQP_URI": broker_uri, "SERVICELOOP_VAR": str(tmp_path),
           **{f"DATABASE_URL_{s.upper()}": urls[s] for s in SERVICES},
           "ORDERS_PORT": str(ports["orders"]), "GATEWAY_PORT": str(ports["dispatch"]),
           "CALLBACK_PORT": str(ports["callback"]), "SETTLEMENT_PORT": str(ports["settlement"]),
           "PROVIDER_PORT": str(free_port()), "LOG_FORMAT": "json",
           "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    subprocess.run([*CLI, "migrate"], env=env, check=True, capture_output=True, timeout=120)
    output = open(tmp_path / "up.log", "w")  # noqa: SIM115 - closed below
    up = subprocess.Popen([*CLI, "up"], env={**env, "AMQP_URI": proxy.uri(broker_uri)},
                          stdout=output, stderr=subprocess.STDOUT, start_new_session=True)

    def get(service: str, path: str) -> requests.Response:
        return requests.get(f"http://127.0.0.1:{ports[service]}{path}", timeout=10)

    def answers() -> bool:
        try:
            return all(get(s, "/health/ready").status_code == 200 for s in SERVICES)
        except requests.RequestException:
            return False

    wait_until(answers, timeout=90, interval=0.5, message="every service to be ready")
    yield get, env, urls, proxy, tmp_path / "up.log", f"http://127.0.0.1:{ports['dispatch']}"
    os.killpg(up.pid, signal.SIGTERM)
    up.wait(30)
    proxy.close()
    output.close()


def metric(body: str, name: str, **labels: str) -> float | None:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in body.splitlines():
        if line.startswith(f"{name}{{{wanted}}} ") or (not labels and
                                                       line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    return None


def figures(get) -> dict:  # noqa: ANN001
    """The figures the issue names, read from each running service's /metrics."""
    bodies = {s: get(s, "/metrics").text for s in SERVICES}
    found = {f"{kind}:{s}": metric(bodies[s], f"serviceloop_events_{kind}_total", service=s)
             for s in SERVICES for kind in ("appended", "published")}
    found.update({f"lag:{s}": metric(bodies[s], "serviceloop_relay_lag_events", service=s)
                  for s in SERVICES})
    found.update({f"gateway:{op}": metric(bodies["dispatch"],
                                          "serviceloop_gateway_requests_total", code="200",
                                          operation=op) or 0 for op in VISIT})
    found.update({f"claims:{d}": metric(bodies["settlement"], "serviceloop_settlement_claims",
                                        decision=d) for d in DECISIONS})
    found["orders_created"] = metric(bodies["orders"], "serviceloop_orders_created_total")
    found["callback_queue"] = metric(bodies["callback"], "serviceloop_callback_queue_depth")
    found["claims"] = metric(bodies["settlement"], "serviceloop_settlement_claims_total")
    return found


def head(service_rpc) -> int:  # noqa: ANN001
    position = 0
    while batch := service_rpc.events_since(position, 500):
        position = batch[-1]["global_position"]
    return position


def json_lines(log_file) -> list[dict]:  # noqa: ANN001
    return [json.loads(line) for line in log_file.read_text().splitlines()
            if line.startswith("{")]


def test_probes_and_metrics_follow_what_the_services_do(running):
    get, env, urls, proxy, log_file, gateway_url = running
    for service in SERVICES:
        assert get(service, "/health/ready").json() == {"status": "ready", "service": service}
        body = get(service, "/metrics").text
        assert f'serviceloop_events_appended_total{{service="{service}"}}' in body

    subprocess.run([*CLI, "orders", "register", "--name", "周杰", "--phone", "139 1111 2222",
                    "--province", "浙江省", "--city", "杭州市", "--district", "西湖区",
                    "--street", "文三路100号", "--model", "WH-E60A", "--serial", "WH-OBS-1",
                    "--purchased", "2026-01-05", "--installed", "2026-01-06"],
                   env=env, check=True, capture_output=True, timeout=60)
    wait_until(lambda: metric(get("orders", "/metrics").text, "serviceloop_events_appended_total",
                              service="orders") == 2, timeout=60,
               message="the registration in the log")

    def published() -> bool:
        body = get("orders", "/metrics").text
        return metric(body, "serviceloop_relay_lag_events", service="orders") == 0 and \
            metric(body, "serviceloop_events_published_total", service="orders") == 2

    wait_until(published, timeout=60, message="the relay to publish and record it")
    assert metric(get("orders", "/metrics").text, "serviceloop_orders_created_total") == 0

    unsigned = requests.get(f"{gateway_url}/api/v1/orders", timeout=10)
    assert unsigned.status_code == 401
    body = get("dispatch", "/metrics").text
    assert metric(body, "serviceloop_gateway_requests_total", code="401",
                  operation="list_orders") == 1
    assert metric(get("settlement", "/metrics").text, "serviceloop_consumer_lag_messages",
                  queue="evt-dispatch-order_completed--settlement.on_order_completed",
                  service="settlement") == 0

    # one repair through the whole loop: every figure moves by what the order did
    with ClusterRpcProxy({"AMQP_URI": env["AMQP_URI"]}, timeout=30,
                         context_data={"actor": "agent:a7"}) as rpc:
        rpc.settlement.load_rates(RATES)
        loop = DispatchSystem(rpc.orders, rpc.dispatch, gateway_url, clock=None)
        partner = loop.register_partner()
        wait_until(lambda: all(figures(get)[f"lag:{s}"] == 0 for s in SERVICES),
                   timeout=60, message="every relay to catch up before counting")
        before = figures(get)
        heads = {s: head(getattr(rpc, s)) for s in SERVICES}
        assert (before["orders_created"], before["callback_queue"], before["claims"]) == (0, 0, 0)
        assert [before[f"claims:{d}"] for d in DECISIONS] == [0, 0, 0, 0]
        assert [before[f"gateway:{op}"] for op in VISIT] == [0, 0, 0, 0]

        order_id = loop.repair("13500000001")
        wait_until(lambda: figures(get)["orders_created"] == 1, message="the order counted")
        wait_until(lambda: (loop.dispatch_status(order_id) == "assigned"
                            and rpc.dispatch.get_order(order_id)["partner_id"]
                            == partner.partner_id), timeout=60, message="the assignment")
        now = datetime.now(UTC)
        for action, body in zip(VISIT, ({}, {"window_start": isoformat(now),
                                            "window_end": isoformat(now + timedelta(hours=2))},
                                        {"coordinates": {"lat": 23.13, "lon": 113.33}},
                                        {"work_done": "换加热管", "fault_code": "WH-E1",
                                         "labour_fee_cents": 8000, "travel_fee_cents": 1000,
                                         "travel_distance_km": 12}), strict=True):
            answer = loop.signed(partner, "POST", f"/api/v1/orders/{order_id}/{action}", body,
                                 key=str(uuid.uuid4()))
            assert answer.status_code == 200, answer.text
        held = wait_until(lambda: [f for f in [figures(get)]
                                   if f["claims"] == 1 and f["callback_queue"] == 1],
                          timeout=60, message="a verification task and a claim")[0]
        assert [held[f"gateway:{op}"] for op in VISIT] == [1, 1, 1, 1]
        assert {d: held[f"claims:{d}"] for d in DECISIONS} == {
            "approved": 0, "cut": 0, "held": 1, "rejected": 0}  # not verified yet

        task = rpc.callback.next_task("a7")
        assert task["order_id"] == order_id
        rpc.callback.record_outcome({"task_id": task["task_id"], "agent_id": "a7",
                                     "outcome": "verified", "satisfaction": 5})
        def settled() -> tuple[dict, dict] | None:
            if rpc.orders.get_order(order_id)["status"] != "verified":
                return None
            found = figures(get)
            added = {s: getattr(rpc, s).events_since(heads[s], 1000) for s in SERVICES}
            if found["claims:held"] == 0 and all(
                    found[f"{kind}:{s}"] - before[f"{kind}:{s}"] == len(added[s])
                    for s in SERVICES for kind in ("appended", "published")):
                return found, added
            return None

        # appended and published each grew by exactly the events the logs grew by
        after, added = wait_until(settled, timeout=60,
                                  message="the claim decided and every log published")
        assert after["callback_queue"] == 0
        # labour claimed above the card is cut; travel within it is payable
        assert {d: after[f"claims:{d}"] for d in DECISIONS} == {
            "approved": 1, "cut": 1, "held": 0, "rejected": 0}
        assert (after["orders_created"], after["claims"]) == (1, 1)
        about = {s: [e["event_type"] for e in added[s] if e["correlation_id"] == order_id]
                 for s in SERVICES}
        assert {"order_assigned", "order_accepted", "appointment_scheduled", "partner_arrived",
                "order_completed"} <= set(about["dispatch"])
        assert "order_verified" in about["callback"] and about["settlement"]
        created = [e for e in added["orders"] if e["event_type"] == "order_created"]
        assert [e["correlation_id"] for e in created] == [order_id]
        completed = next(e for e in rpc.dispatch.order_history(order_id)
                         if e["event_type"] == "order_completed")

    # the services' JSON log lines name the order, what caused the work and who asked
    def line(logger_message: str) -> dict | None:
        return next((entry for entry in json_lines(log_file)
                     if entry.get("message") == logger_message
                     and entry.get("correlation_id") == order_id), None)

    claim_line = wait_until(lambda: line("settlement.on_order_completed handled "
                                         "dispatch.order_completed"),
                            message="settlement's log line for the completion")
    assert claim_line["causation_id"] == completed["event_id"]
    assert claim_line["actor"] == "consumer:settlement.on_order_completed"
    intake_line = wait_until(lambda: line("orders.create_order handled rpc"),
                             message="orders' log line for the agent's call")
    assert intake_line["actor"] == "agent:a7" and intake_line["causation_id"]
    completion_line = wait_until(lambda: line("dispatch._complete handled a partner request"),
                                 message="the gateway's log line for the completion")
    assert completion_line["actor"] == f"partner:{partner.partner_id}"
    assert completion_line["causation_id"]  # the request's own id, which 5xx bodies carry
    assert all(entry["level"] for entry in json_lines(log_file))


def test_readiness_fails_while_the_database_or_the_broker_is_away(running):
    get, env, urls, proxy, _, _ = running
    database = urls["orders"].rsplit("/", 1)[1]
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false'))
        conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = :d"), {"d": database})
    try:
        (answer,) = wait_until(lambda: [r for r in [get("orders", "/health/ready")]
                                        if r.status_code == 503],
                               message="orders to say it is not ready")
        assert set(answer.json()["failed"]) == {"database"}
        assert get("orders", "/health/live").status_code == 200
        assert get("dispatch", "/health/ready").status_code == 200
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true'))
        admin.dispose()
    wait_until(lambda: get("orders", "/health/ready").status_code == 200,
               message="orders to be ready again")

    proxy.cut()
    (answer,) = wait_until(lambda: [r for r in [get("callback", "/health/ready")]
                                    if r.status_code == 503],
                           message="callback to notice the broker is away")
    assert set(answer.json()["failed"]) == {"broker"}
    proxy.restore()
    wait_until(lambda: all(get(s, "/health/ready").status_code == 200 for s in SERVICES),
               timeout=60, message="every service ready once the broker is back")


def test_a_json_log_line_carries_what_the_green_thread_works_on():
    record = logging.LogRecord("serviceloop.test", logging.WARNING, __file__, 1,
                               "claim %s held", ("c-1",), None)
    log_context("order-1", "event-9", "consumer:settlement.on_order_completed")
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "claim c-1 held" and line["level"] == "WARNING"
    assert (line["correlation_id"], line["causation_id"], line["actor"]) == (
        "order-1", "event-9", "consumer:settlement.on_order_completed")
    assert line["time"].endswith("Z")


def test_metrics_are_prometheus_text():
    metrics = Metrics()
    metrics.add("serviceloop_x_total", "counter", "things", 3, service='a"b')
    metrics.add("serviceloop_x_total", "counter", "things", 4, service="c")
    assert metrics.text() == ('# HELP serviceloop_x_total things\n'
                              '# TYPE serviceloop_x_total counter\n'
                              'serviceloop_x_total{service="a\\"b"} 3\n'
                              'serviceloop_x_total{service="c"} 4\n')
