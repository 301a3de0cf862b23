"""`serviceloop demo` against a running system: what it prints is what the system holds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from nameko.standalone.rpc import ClusterRpcProxy

from serviceloop.demo import render
from tests.helpers import wait_until
from tests.integration.dispatch_system import free_port

CLI = [sys.executable, "-m", "serviceloop.cli"]


@pytest.fixture
def running_system(tmp_path, own_broker_uri, database_for):
    """`serviceloop up` on PostgreSQL with ports of its own; the CLI against it."""
    broker_uri = own_broker_uri  # its queues may hold messages when it stops: not shared
    port = free_port()
    env = {**os.environ, "AMQP_URI": broker_uri, "SERVICELOOP_VAR": str(tmp_path),
           **{f"DATABASE_URL_{s.upper()}": database_for(s, "postgres")
              for s in ("orders", "dispatch", "callback", "settlement")},
           "GATEWAY_PORT": str(port), "SERVICELOOP_GATEWAY": f"http://127.0.0.1:{port}",
           "CALLBACK_PORT": str(free_port()), "PROVIDER_PORT": str(free_port()),
           "ORDERS_PORT": str(free_port()), "SETTLEMENT_PORT": str(free_port()),
           "PYTHONWARNINGS": "ignore::DeprecationWarning",
           # each service's pool holds max_workers + 2 connections once a burst has opened
           # them: with 16 workers the demo's four (beside the package's system and the other
           # half of `make test`) took PostgreSQL to its 100 connections on a fast machine
           "MAX_WORKERS": "4"}
    env.pop("SERVICELOOP_CLOCK", None)  # up gives the services the demo's movable clock
    subprocess.run([*CLI, "migrate"], env=env, check=True, capture_output=True, timeout=120)

    def cli(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True,
                              timeout=timeout, check=check)

    refused = cli("demo", "--orders", "10", check=False)
    assert refused.returncode == 2 and "make run" in refused.stderr  # nothing running yet
    up = subprocess.Popen([*CLI, "up"], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        for group in ("orders catalog", "partner list", "callback supervise",
                      "settlement rates show"):
            wait_until(lambda g=group: cli(*g.split(), "--json", check=False).returncode == 0,
                       timeout=60, interval=0.5, message=f"`{group}` to answer")
        with ClusterRpcProxy({"AMQP_URI": broker_uri}, timeout=30) as rpc:
            yield cli, rpc
    finally:
        os.killpg(up.pid, signal.SIGTERM)
        up.wait(30)


def test_the_demo_drives_every_kind_of_loop_and_its_audit_is_what_the_logs_say(
        running_system):
    cli, rpc = running_system
    result = cli("demo", "--orders", "30", "--json", timeout=150)
    report = json.loads(result.stdout)
    assert "settlement run" in result.stderr  # progress goes to stderr
    assert report["orders"] == 30
    assert set(report["plans"]) == {"normal", "partner_rejects", "accept_timeout", "disputed",
                                    "unreachable", "duplicate_serial"}
    assert report["clock_offset_hours"] > 8  # time moved past the timeouts and retries

    # the planted bad claim: rejected for the part serial another claim already had
    (bad,) = report["bad_claim"]
    claim = rpc.settlement.claims_for_order(bad["order_id"])[-1]
    line = next(line for line in claim["lines"] if line["line_id"] == bad["line_id"])
    assert line["decision"] == "rejected" == bad["decision"]
    assert line["reasons"] == bad["reasons"] and "part_serial_already_claimed" in line["reasons"]

    # the unreachable customer's order is unverified, held, and listed open by the auditor
    loops = {row["order_id"]: row
             for row in json.loads(cli("audit", "loops", "--json").stdout)}
    (unreachable,) = [loop for loop in report["loops_open"] if loop["plan"] == "unreachable"]
    assert loops[unreachable["order_id"]]["missing"] == "unverified_held"
    assert rpc.orders.get_order(unreachable["order_id"])["status"] == "unverified"
    # every other open loop the demo printed is one the auditor lists too, and none of them
    # is a dispute whose re-visit the customer has verified
    for loop in report["loops_open"]:
        assert loops[loop["order_id"]]["missing"] == loop["missing"]
        assert loop["plan"] == "unreachable" or loop["outcome"] != "verified"
    assert report["loops_closed"] == 30 - len(report["loops_open"]) >= 25

    # the timed-out and the disputed orders went to another partner, who completed them
    for item in report["redispatched_after_timeout"]:
        assert item["completed_by"] and item["completed_by"][0] not in item["ignored_by"]
        assert rpc.orders.get_order(item["order_id"])["status"] == "closed"
    for item in report["disputed_revisits"]:
        assert len(item["visits"]) == 2 and item["visits"][0] != item["visits"][1]

    # each statement's totals are its claims' approved lines, as settlement decided them
    for printed in report["statements"]:
        statement = rpc.settlement.statement(printed["period"], printed["partner_id"])
        assert {k: statement[k] for k in ("payable_cents", "held_cents", "rejected_cents")} \
            == {k: printed[k] for k in ("payable_cents", "held_cents", "rejected_cents")}
        approved = 0
        for order_id in {line["order_id"] for line in statement["lines"]}:
            for claim in rpc.settlement.claims_for_order(order_id):
                if claim["claim_id"] in {line["claim_id"] for line in statement["lines"]}:
                    approved += sum(line["manufacturer_cents"] for line in claim["lines"]
                                    if line["decision"] in ("approved", "cut"))
        assert statement["payable_cents"] == approved

    # and the same report for people names each of them
    text = render(report)
    assert f"LOOPS CLOSED: {report['loops_closed']} of 30" in text
    assert bad["order_id"] in text and unreachable["order_id"] in text

    verified = cli("audit", "verify", "--json", check=False)
    assert verified.returncode == 0 and json.loads(verified.stdout)["breaks"] == []
