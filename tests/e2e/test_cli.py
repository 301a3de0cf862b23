"""The README's path for an agent: `serviceloop up` (conftest.py's `running_system`), then
`serviceloop orders …` against it."""

from __future__ import annotations

import json
import subprocess

from tests.helpers import wait_until


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
    cancel = ("orders", "cancel", order["order_id"], "--reason", "resolved_by_phone",
              "--request-id", f"cancel-{order['order_id']}", "--json")
    cancelled = as_json(cli(*cancel))
    assert cancelled["status"] == "cancelled"
    assert as_json(cli(*cancel)) == cancelled  # run again, as after a lost answer: no change
    history = as_json(cli("orders", "history", order["order_id"], "--json"))
    assert [e["event_type"] for e in history
            if e["event_type"] != "order_progressed"] == ["order_created",
                                                          "order_fault_recorded",
                                                          "order_cancelled"]
    table = cli("orders", "lookup", "13911112222").stdout
    assert "周杰" in table and "cancelled" in table


def test_a_bad_command_prints_a_coded_error_and_exits_2(running_system):
    result = running_system("orders", "lookup", "13900009999", check=False)
    assert result.returncode == 2
    assert json.loads(result.stderr)["error"]["code"] == "customer_not_found"


def test_an_order_is_assigned_and_taken_to_completed_with_the_partner_commands(running_system,
                                                                              tmp_path):
    cli = running_system
    credentials = tmp_path / "partner.json"
    cli("partner", "register", "--name", "西湖家电服务部", "--region", "浙江省/杭州市/*",
        "--category", "water_heater", "--capacity", "5", "--save", str(credentials))
    assert oct(credentials.stat().st_mode & 0o777) == "0o600"
    partner = json.loads(credentials.read_text())
    cli("orders", "register", "--name", "李雷", "--phone", "139 2222 3333", "--province",
        "浙江省", "--city", "杭州市", "--district", "西湖区", "--street", "文三路200号",
        "--model", "WH-E60A", "--serial", "WH-E2E-1", "--purchased", "2026-06-01",
        "--installed", "2026-06-02")
    product_id = as_json(cli("orders", "lookup", "13922223333", "--json"))["products"][0][
        "product_id"]
    order_id = as_json(cli("orders", "create", "--product", product_id, "--type", "repair",
                           "--fault", "WH-E1", "--description", "不出热水",
                           "--json"))["order_id"]
    as_partner = ("--credentials", str(credentials))

    def orders_status() -> str:
        return as_json(cli("orders", "get", order_id, "--json"))["status"]

    wait_until(lambda: as_json(cli("partner", "orders", *as_partner, "--json"))["total"] == 1,
               timeout=30, interval=0.3, message="the order to reach the partner")
    wait_until(lambda: orders_status() == "assigned", timeout=30, interval=0.3,
               message="orders to show the assignment")
    assert as_json(cli("orders", "get", order_id, "--json"))["partner_id"] == \
        partner["partner_id"]
    steps = [
        (("accept", order_id), "accepted"),
        (("schedule", order_id, "--in-hours", "0", "--hours", "2"), "scheduled"),
        (("arrive", order_id, "--lat", "30.27", "--lon", "120.13"), "on_site"),
        (("complete", order_id, "--work", "换加热管", "--fault", "WH-E1", "--part",
          "WH-P-HEATER-2KW:OLD-1:NEW-1:12000", "--labour", "8000", "--travel", "1500"),
         "completed"),
    ]
    for args, status in steps:
        answer = as_json(cli("partner", *args, *as_partner, "--json"))
        assert answer["status"] == status
        wait_until(lambda s=status: orders_status() == s, timeout=30, interval=0.3,
                   message=f"orders to show {status}")
    progressed = [e["payload"]["status"] for e in
                  as_json(cli("orders", "history", order_id, "--json"))
                  if e["event_type"] == "order_progressed"]
    assert progressed == ["assigned", "accepted", "scheduled", "on_site", "completed"]

    # the callback: an agent verifies, and orders shows it
    task = as_json(cli("callback", "next", "--agent", "a17", "--json"))
    assert task["order_id"] == order_id and task["report"]["parts"][0]["new_serial"] == "NEW-1"
    shown = cli("callback", "show", task["task_id"]).stdout
    assert "换加热管" in shown and "WH-P-HEATER-2KW" in shown
    cli("callback", "record", task["task_id"], "--agent", "a17", "--outcome", "verified",
        "--satisfaction", "5")
    wait_until(lambda: orders_status() == "verified", timeout=30, interval=0.3,
               message="orders to show verified")

    # finance: rates, the month's run, a statement, and a planted difference reconciled
    rates = tmp_path / "rates.csv"
    rates.write_text("effective_from,kind,order_type,category,region,up_to_km,cents\n"
                     "2026-01-01,labour,repair,*,*,,6000\n2026-01-01,travel,,,*,50,1500\n")
    cli("settlement", "rates", "load", str(rates))
    claims = wait_until(lambda: [c for c in as_json(cli("settlement", "claims", order_id,
                                                        "--json"))
                                 if c["callback"] == "verified"],
                        timeout=30, interval=0.3, message="the claim to be verified")
    labour = next(line for line in claims[-1]["lines"] if line["line_id"] == "labour")
    assert labour["decision"] == "cut" and labour["approved_cents"] == 6000
    period = claims[-1]["completed_on"][:7]
    printed = cli("settlement", "run", period).stdout
    assert partner["partner_id"] in printed and order_id in printed
    statement = cli("settlement", "statement", period, "--partner", partner["partner_id"],
                    "--csv").stdout
    assert statement.startswith("claim_id,order_id") and order_id in statement
    theirs = tmp_path / "theirs.csv"
    theirs.write_text(f"order_id,line_id,claimed_cents\n{order_id},labour,8000\n"
                      f"{order_id},travel,1500\n{order_id},part-1,12500\n")
    report = as_json(cli("settlement", "reconcile", period, "--partner",
                         partner["partner_id"], str(theirs), "--json"))
    assert [(d["line_id"], d["kind"]) for d in report["differences"]] == [
        ("part-1", "amount_differs")]

    # the auditor: the order's history across the four logs, intact, checkpointed, closed
    wait_until(lambda: orders_status() == "closed", timeout=30, interval=0.3,
               message="orders to close the paid order")
    replay = as_json(cli("audit", "replay", order_id, "--json"))
    assert {e["source"] for e in replay} == {"orders", "dispatch", "callback", "settlement"}
    kinds = [e["event_type"] for e in replay]
    assert kinds[0] == "order_created"
    assert kinds.index("order_completed") < kinds.index("order_verified") < \
        kinds.index("order_settled")
    checkpoint = tmp_path / "checkpoint.json"
    cli("audit", "checkpoint", str(checkpoint))
    verified = as_json(cli("audit", "verify", "--against", str(checkpoint), "--json"))
    assert verified["breaks"] == [] and all(verified["events"].values())
    loops = cli("audit", "loops", "--csv").stdout
    assert loops.startswith("order_id,") and order_id not in loops
    rebuilt = as_json(cli("audit", "rebuild", "orders", "--json"))
    assert rebuilt["tables"] and all(t["equal"] for t in rebuilt["tables"].values())
