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
from urllib.parse import urlparse

import pytest
import requests
from sqlalchemy import create_engine, text

from serviceloop.observability import JsonFormatter, Metrics, log_context
from tests.conftest import POSTGRES_ADMIN_URL
from tests.helpers import wait_until
from tests.integration.dispatch_system import free_port
from tests.tcp_proxy import TcpProxy

CLI = [sys.executable, "-m", "serviceloop.cli"]
SERVICES = ("orders", "dispatch", "callback", "settlement")


@pytest.fixture
def running(tmp_path, broker_uri, database_for):
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
    yield get, env, urls, proxy, tmp_path / "up.log"
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


def test_probes_and_metrics_follow_what_the_services_do(running):
    get, env, urls, proxy, log_file = running
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

    unsigned = requests.get(f"http://127.0.0.1:{urlparse(get('dispatch', '/').url).port}"
                            "/api/v1/orders", timeout=10)
    assert unsigned.status_code == 401
    body = get("dispatch", "/metrics").text
    assert metric(body, "serviceloop_gateway_requests_total", code="401",
                  operation="list_orders") == 1
    assert metric(get("callback", "/metrics").text, "serviceloop_callback_queue_depth") == 0
    assert metric(get("settlement", "/metrics").text, "serviceloop_settlement_claims_total") == 0
    assert metric(get("settlement", "/metrics").text, "serviceloop_consumer_lag_messages",
                  queue="evt-dispatch-order_completed--settlement.on_order_completed",
                  service="settlement") == 0

    lines = [line for line in log_file.read_text().splitlines() if line.startswith("{")]
    assert lines and all(json.loads(line)["level"] for line in lines)


def test_readiness_fails_while_the_database_or_the_broker_is_away(running):
    get, env, urls, proxy, _ = running
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
