"""The README's path for an agent: `serviceloop up`, then `serviceloop orders …` against it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from tests.helpers import wait_until

CLI = [sys.executable, "-m", "serviceloop.cli"]


@pytest.fixture
def running_system(tmp_path, broker_uri, database_for):
    env = {**os.environ, "AMQP_URI": broker_uri, "SERVICELOOP_VAR": str(tmp_path),
           "DATABASE_URL_ORDERS": database_for("orders", "postgres"),
           "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    subprocess.run([*CLI, "migrate"], env=env, check=True, capture_output=True, timeout=120)
    up = subprocess.Popen([*CLI, "up"], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, start_new_session=True)

    def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True,
                              timeout=60, check=check)

    wait_until(lambda: cli("orders", "catalog", "--json", check=False).returncode == 0,
               timeout=60, interval=0.5, message="the orders service to answer")
    yield cli
    os.killpg(up.pid, signal.SIGTERM)
    up.wait(30)


def as_json(result: subprocess.CompletedProcess) -> dict:
    return json.loads(result.stdout)


def test_an_agent_registers_looks_up_creates_and_cancels_from_the_command_line(running_system):
    cli = running_system
    cli("orders", "register", "--name", "周杰", "--phone", "139 1111 2222", "--province",
        "浙江省", "--city", "杭州市", "--district", "西湖区", "--street", "文三路100号",
        "--model", "GH-2B40", "--serial", "GH00001", "--purchased", "2026-01-05",
        "--installed", "2026-01-06")
    found = as_json(cli("orders", "lookup", "13911112222", "--json"))
    product_id = found["products"][0]["product_id"]
    order = as_json(cli("orders", "create", "--product", product_id, "--type", "repair",
                        "--description", "打不着火", "--json"))
    assert order["status"] == "awaiting_fault"
    fault = next(f["code"] for f in as_json(cli("orders", "catalog", "--json"))["faults"]
                 if f["category"] == "gas_hob")
    assert as_json(cli("orders", "fault", order["order_id"], fault, "--json"))["status"] == \
        "created"
    listed = as_json(cli("orders", "list", "--phone", "13911112222", "--json"))
    assert [o["order_id"] for o in listed["items"]] == [order["order_id"]]
    cancelled = as_json(cli("orders", "cancel", order["order_id"], "--reason",
                            "resolved_by_phone", "--json"))
    assert cancelled["status"] == "cancelled"
    history = as_json(cli("orders", "history", order["order_id"], "--json"))
    assert [e["event_type"] for e in history] == ["order_created", "order_fault_recorded",
                                                  "order_cancelled"]
    table = cli("orders", "lookup", "13911112222").stdout
    assert "周杰" in table and "cancelled" in table


def test_a_bad_command_prints_a_coded_error_and_exits_2(running_system):
    result = running_system("orders", "lookup", "13900009999", check=False)
    assert result.returncode == 2
    assert json.loads(result.stderr)["error"]["code"] == "customer_not_found"
