"""The README's path for the callback desk: against `serviceloop up` (conftest.py's
`running_system`), an agent disputes a visit with `serviceloop callback record`, the order is
reopened and re-dispatched to another partner, and a supervisor decides on the new visit the
customer never answered for, with `serviceloop callback supervise` and `decide`."""

from __future__ import annotations

import json

from tests.e2e.test_cli import as_json
from tests.helpers import wait_until

PHONE = "13933334444"


def visit(cli, order_id: str, credentials: tuple[str, str], serial: str) -> None:  # noqa: ANN001
    """The partner's commands from accepting the order to completing it."""
    for args in (("accept", order_id), ("schedule", order_id, "--in-hours", "0", "--hours", "2"),
                 ("arrive", order_id, "--lat", "32.04", "--lon", "118.78"),
                 ("complete", order_id, "--work", "换温控器", "--fault", "WH-E1", "--part",
                  f"WH-P-HEATER-2KW:OLD-{serial}:NEW-{serial}:6000", "--labour", "8000")):
        cli("partner", *args, *credentials, "--json")


def test_a_dispute_reopens_and_redispatches_and_a_supervisor_closes_the_unanswered_revisit(
        running_system, tmp_path):
    cli = running_system
    credentials = {}
    for name in ("玄武家电服务部", "鼓楼家电服务部"):
        saved = tmp_path / f"{name}.json"
        cli("partner", "register", "--name", name, "--region", "江苏省/南京市/*", "--category",
            "water_heater", "--capacity", "5", "--save", str(saved))
        credentials[json.loads(saved.read_text())["partner_id"]] = ("--credentials", str(saved))
    cli("orders", "register", "--name", "韩梅梅", "--phone", PHONE, "--province", "江苏省",
        "--city", "南京市", "--district", "玄武区", "--street", "中山路1号", "--model",
        "WH-E60A", "--serial", "WH-E2E-CB1", "--purchased", "2026-06-01", "--installed",
        "2026-06-02")
    product_id = as_json(cli("orders", "lookup", PHONE, "--json"))["products"][0]["product_id"]
    order_id = as_json(cli("orders", "create", "--product", product_id, "--type", "repair",
                           "--fault", "WH-E1", "--description", "水不热",
                           "--json"))["order_id"]

    def order(status: str) -> dict:
        """The order as orders shows it, once it shows `status`."""
        def shown() -> dict | None:
            view = as_json(cli("orders", "get", order_id, "--json"))
            return view if view["status"] == status else None

        return wait_until(shown, timeout=30, interval=0.3, message=f"orders to show {status}")

    first = order("assigned")["partner_id"]
    [second] = set(credentials) - {first}
    visit(cli, order_id, credentials[first], "CB1")
    order("completed")

    # the agent reads out the visit; the customer says nobody came and was overcharged
    task = as_json(cli("callback", "next", "--agent", "cb1", "--json"))
    assert (task["order_id"], task["visit"]) == (order_id, 1)
    disputed = as_json(cli("callback", "record", task["task_id"], "--agent", "cb1",
                           "--outcome", "disputed", "--reason", "no_visit", "--reason",
                           "overcharged", "--complaint", "--notes", "师傅没来过还收了钱",
                           "--json"))
    assert disputed["status"] == "disputed"
    assert disputed["outcome_detail"]["reasons"] == ["no_visit", "overcharged"]

    # orders: reopened, and assigned to the other partner; the complaint opened and linked
    assert order("assigned")["partner_id"] == second
    history = as_json(cli("orders", "history", order_id, "--json"))
    progressed = [e["payload"]["status"] for e in history if e["event_type"] == "order_progressed"]
    # (dispatch's reopening and re-assignment travel on queues of their own: when the
    # assignment overtakes the reopening, orders goes from completed to assigned directly)
    assert progressed[progressed.index("completed") + 1:] in (["reopened", "assigned"],
                                                              ["assigned"])
    recorded = next(e["payload"] for e in history
                    if e["event_type"] == "order_verification_recorded")
    assert (recorded["outcome"], recorded["detail"]) == ("disputed", "no_visit, overcharged")
    complaint = as_json(cli("orders", "get", recorded["complaint_order_id"], "--json"))
    assert (complaint["order_type"], complaint["related_order_id"]) == ("complaint", order_id)
    assert as_json(cli("partner", "orders", *credentials[second], "--json"))["total"] == 1
    # the auditor's replay: the dispute, dispatch's reopening without the first partner
    replay = as_json(cli("audit", "replay", order_id, "--json"))
    kinds = [e["event_type"] for e in replay]
    reopened = replay[kinds.index("order_reopened")]["payload"]
    assert (reopened["partner_excluded"], reopened["reasons"]) == (
        True, ["no_visit", "overcharged"])
    assert kinds.index("order_disputed") < kinds.index("order_reopened") < \
        len(kinds) - 1 - kinds[::-1].index("order_assigned")

    # the other partner's visit; this time the customer never answers, three times over
    visit(cli, order_id, credentials[second], "CB2")
    order("completed")
    try:
        for hours in (2, 6, None):  # the README's retry spacing
            revisit = as_json(cli("callback", "next", "--agent", "cb2", "--json"))
            assert (revisit["order_id"], revisit["visit"]) == (order_id, 2)
            cli("callback", "record", revisit["task_id"], "--agent", "cb2", "--outcome",
                "no_answer")
            if hours:
                assert cli("callback", "next", "--agent", "cb2").stdout.strip() == \
                    "no task is due now"
                cli.clock.advance(hours * 60 + 1)
        order("unverified")

        # the supervisor sees it held and closes it; orders closes it unverified
        held = as_json(cli("callback", "supervise", "--json"))["unverified"]
        assert [t["task_id"] for t in held if t["order_id"] == order_id] == [revisit["task_id"]]
        assert revisit["task_id"] in cli("callback", "supervise").stdout.split("unverified:")[1]
        closed = as_json(cli("callback", "decide", revisit["task_id"], "--supervisor", "s1",
                             "--decision", "close", "--note", "客户联系不上", "--json"))
        assert closed["status"] == "closed"
        order("closed")
        tasks = as_json(cli("callback", "order", order_id, "--json"))
        assert [(t["visit"], t["status"]) for t in tasks] == [(1, "disputed"), (2, "closed")]
    finally:
        cli.clock.advance(-cli.clock.offset() / 60)  # the next test's time is today's again
