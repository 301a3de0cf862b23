"""Callback verification end to end: orders, dispatch and callback on a real broker and
database, partners over the gateway, agents over RPC, the automatic channel through the
stand-in provider over real HTTP."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import pika
import pytest
from nameko.standalone.rpc import ServiceRpcProxy
from sqlalchemy import text

from contracts.errors import Conflict, ValidationFailed
from serviceloop.clock import isoformat, parse_time
from serviceloop.db import make_engine
from serviceloop.relay import event_exchange, message_properties
from serviceloop.standin_provider import StandInProvider
from services.callback.service import CallbackService
from services.dispatch.service import DispatchService
from services.orders.service import OrdersService
from tests.helpers import queue_drained, wait_until
from tests.integration.dispatch_system import (
    DispatchSystem,
    declare,
    dispatch_config,
    free_port,
    start_relay,
)


@pytest.fixture
def loop(container_factory, service_config, database_for, backend, broker_uri, clock):
    declare(broker_uri)
    urls = {s: database_for(s, backend) for s in ("orders", "dispatch", "callback")}
    provider = StandInProvider().start()
    callback_port = free_port()
    orders = container_factory(OrdersService, service_config(orders=urls["orders"]))
    port = free_port()
    dispatch = container_factory(DispatchService,
                                 dispatch_config(service_config, urls["dispatch"], port))
    callback_config = service_config(callback=urls["callback"])
    callback_config.update({
        "WEB_SERVER_ADDRESS": f"127.0.0.1:{callback_port}", "PROVIDER_URL": provider.url,
        "CALLBACK_PUBLIC_URL": f"http://127.0.0.1:{callback_port}", "REVIEW_SHARE": 1.0,
        "CALLBACK_RETRY_MINUTES": "60,180"})
    callback = container_factory(CallbackService, callback_config)
    for container in (orders, dispatch, callback):
        container.start()
    relays = [start_relay(s, broker_uri, urls[s]) for s in ("orders", "dispatch", "callback")]
    with ServiceRpcProxy("orders", orders.config, timeout=20) as orders_rpc, \
            ServiceRpcProxy("dispatch", dispatch.config, timeout=20) as dispatch_rpc, \
            ServiceRpcProxy("callback", callback.config, timeout=20) as callback_rpc:
        system = DispatchSystem(orders_rpc, dispatch_rpc, f"http://127.0.0.1:{port}", clock,
                                relays)
        system.callback = callback_rpc
        system.callback_url = urls["callback"]
        system.provider = provider
        system.broker_uri = broker_uri
        yield system
        system.close()
    provider.stop()


def post(system, partner, order_id, action, body=None):  # noqa: ANN001, ANN201
    answer = system.signed(partner, "POST", f"/api/v1/orders/{order_id}/{action}", body or {},
                           key=str(uuid.uuid4()))
    assert answer.status_code == 200, answer.text
    return answer.json()


def complete_visit(system, partner, order_id, **report):  # noqa: ANN001
    """Take an assigned order through accept, schedule, arrive and complete."""
    wait_until(lambda: (system.dispatch_status(order_id) == "assigned"
                        and system.dispatch.get_order(order_id)["partner_id"]
                        == partner.partner_id), message="the assignment")
    post(system, partner, order_id, "accept")
    now = system.clock.now()
    post(system, partner, order_id, "schedule", {
        "window_start": isoformat(now), "window_end": isoformat(now + timedelta(hours=2))})
    post(system, partner, order_id, "arrive")
    post(system, partner, order_id, "complete", {"work_done": "换加热管", "fault_code": "WH-E1",
                                                 "labour_fee_cents": 8000, **report})


def one_task(system, order_id: str, visit: int = 1) -> dict:  # noqa: ANN001
    def found():  # noqa: ANN202
        tasks = [t for t in system.callback.tasks_for_order(order_id)
                 if t["visit"] == visit and t["review_of"] is None]
        return tasks[0] if tasks else None

    return wait_until(found, message=f"the verification task of visit {visit}")


def test_a_completion_delivered_twice_makes_one_task_that_an_agent_verifies(loop):
    partner = loop.register_partner()
    order_id = loop.repair("13700000001")
    complete_visit(loop, partner, order_id, parts=[
        {"part_code": "WH-P-ELEMENT", "old_serial": "O1", "new_serial": "N1",
         "fee_cents": 12000}])
    task = one_task(loop, order_id)
    assert task["priority"] == 1 and task["channel"] == "agent"
    assert task["report"]["parts"][0]["part_code"] == "WH-P-ELEMENT"
    completion = next(e for e in loop.dispatch.order_history(order_id)
                      if e["event_type"] == "order_completed")
    _publish(loop.broker_uri, "dispatch", completion)  # the broker delivers it again
    wait_until(lambda: queue_drained(loop.broker_uri, "evt-dispatch-order_completed--callback."
                                                      "on_order_completed"),
               message="the duplicate to be consumed")
    assert len(loop.callback.tasks_for_order(order_id)) == 1

    leased = loop.callback.next_task("a1")
    assert leased["task_id"] == task["task_id"] and leased["leased_by"] == "a1"
    assert loop.callback.next_task("a1")["task_id"] == task["task_id"]  # still yours
    assert loop.callback.next_task("a2") is None  # one agent at a time
    done = loop.callback.record_outcome({"task_id": task["task_id"], "agent_id": "a1",
                                         "outcome": "verified", "satisfaction": 5,
                                         "notes": "很满意"})
    assert done["status"] == "verified"
    wait_until(lambda: loop.orders.get_order(order_id)["status"] == "verified",
               message="orders to show verified")
    verified = [e for e in loop.callback.stream(f"task-{task['task_id']}")
                if e["event_type"] == "order_verified"]
    assert verified[0]["causation_id"] and verified[0]["correlation_id"] == order_id


def leased_task(loop, phone: str, agent_id: str) -> dict:  # noqa: ANN001
    """A repair completed by a new partner; its verification task, leased to `agent_id`."""
    partner = loop.register_partner()
    order_id = loop.repair(phone)
    complete_visit(loop, partner, order_id)
    task = one_task(loop, order_id)
    assert loop.callback.next_task(agent_id)["task_id"] == task["task_id"]
    return task


def test_an_outcome_asked_again_with_its_request_id_is_recorded_once(loop):
    task = leased_task(loop, "13700000009", "a1")
    outcome = {"task_id": task["task_id"], "agent_id": "a1", "outcome": "verified",
               "satisfaction": 4}
    first = loop.callback.record_outcome(outcome, request_id="desk-a1-0001")
    assert first["status"] == "verified"
    assert loop.callback.record_outcome(outcome, request_id="desk-a1-0001") == first
    with pytest.raises(Conflict) as without_id:  # without it, a second outcome is refused
        loop.callback.record_outcome(outcome)
    assert without_id.value.code == "task_not_leased_to_you"
    verified = [e for e in loop.callback.stream(f"task-{task['task_id']}")
                if e["event_type"] == "order_verified"]
    assert len(verified) == 1


def test_an_agents_answers_are_the_task_as_stored(loop):
    """A lease and an outcome answer with the task as their events left it (computed from
    the row read before and the events appended, not read back after the commit)."""
    partner = loop.register_partner()
    order_id = loop.repair("13700000031")
    complete_visit(loop, partner, order_id)
    task = one_task(loop, order_id)
    leased = loop.callback.next_task("a1")
    assert leased == loop.callback.get_task(task["task_id"])
    assert (leased["status"], leased["leased_by"], leased["version"]) == \
        ("leased", "a1", task["version"] + 1)
    unanswered = loop.callback.record_outcome({"task_id": task["task_id"], "agent_id": "a1",
                                               "outcome": "no_answer"})
    assert unanswered == loop.callback.get_task(task["task_id"])
    assert (unanswered["status"], unanswered["attempts"], unanswered["leased_by"]) == \
        ("open", 1, None)
    loop.clock.advance(minutes=61)  # the next attempt is due
    assert loop.callback.next_task("a2") == loop.callback.get_task(task["task_id"])
    verified = loop.callback.record_outcome({"task_id": task["task_id"], "agent_id": "a2",
                                             "outcome": "verified", "satisfaction": 4,
                                             "notes": "好"})
    assert verified == loop.callback.get_task(task["task_id"])
    assert (verified["status"], verified["outcome_detail"]["satisfaction"]) == ("verified", 4)


def test_tasks_are_due_in_48_hours_and_handed_out_repairs_with_parts_first(loop):
    partner = loop.register_partner(capacity=20)
    maintenance = loop.orders.create_order({
        "product_id": loop.customer_with_heater("13700000011"), "order_type": "maintenance",
        "channel": "phone", "agent_id": "a7"})["order_id"]
    plain_repair = loop.repair("13700000012")
    parts_repair = loop.repair("13700000013")
    # completed in the opposite order of how they are to be called
    complete_visit(loop, partner, maintenance)
    complete_visit(loop, partner, plain_repair)
    complete_visit(loop, partner, parts_repair, parts=[
        {"part_code": "WH-P-ELEMENT", "old_serial": "O9", "new_serial": "N9",
         "fee_cents": 12000}])
    created = {o: one_task(loop, o) for o in (maintenance, plain_repair, parts_repair)}
    for task in created.values():
        assert parse_time(task["due_at"]) - parse_time(task["created_at"]) == \
            timedelta(hours=48)  # the default: CALLBACK_DUE_HOURS is not set
    assert [created[o]["priority"] for o in (parts_repair, plain_repair, maintenance)] == \
        [1, 2, 3]
    handed = [loop.callback.next_task(agent)["order_id"] for agent in ("a1", "a2", "a3")]
    assert handed == [parts_repair, plain_repair, maintenance]
    assert loop.callback.next_task("a4") is None


def test_a_lease_that_runs_out_returns_the_task_to_the_queue(loop):
    task = leased_task(loop, "13700000002", "a1")
    loop.clock.advance(minutes=16)
    assert loop.callback.next_task("a2")["task_id"] == task["task_id"]
    with pytest.raises(Conflict) as late:
        loop.callback.record_outcome({"task_id": task["task_id"], "agent_id": "a1",
                                      "outcome": "verified"})
    assert late.value.code == "task_not_leased_to_you"


@pytest.mark.parametrize("backend", ["postgres"])
def test_an_agent_is_given_the_next_task_while_another_is_being_leased(loop):
    partner = loop.register_partner()
    first, second = loop.repair("13700000021"), loop.repair("13700000022")
    complete_visit(loop, partner, first)
    complete_visit(loop, partner, second)
    tasks = {one_task(loop, first)["task_id"], one_task(loop, second)["task_id"]}
    taken = loop.callback.next_task("a1")["task_id"]  # the first in the agents' queue
    (other,) = tasks - {taken}
    loop.clock.advance(minutes=16)  # a1's lease ran out: both tasks are free again
    engine = make_engine(loop.callback_url)
    try:
        with engine.begin() as conn:  # an agent's lease of the first, not yet committed
            conn.execute(text("SELECT 1 FROM tasks WHERE task_id = :t FOR UPDATE"),
                         {"t": taken})
            asked = time.monotonic()
            assert loop.callback.next_task("a2")["task_id"] == other
            assert time.monotonic() - asked < 5  # not waiting for the first one's row
    finally:
        engine.dispose()
    assert loop.callback.next_task("a3")["task_id"] == taken  # free once nobody holds it


def no_answer_until_unverified(loop, task_id: str, agent_id: str) -> dict:  # noqa: ANN001
    """Three calls without an answer, the clock moved to each next attempt."""
    for attempt, wait_minutes in ((1, 60), (2, 180), (3, None)):
        assert loop.callback.next_task(agent_id)["task_id"] == task_id
        answer = loop.callback.record_outcome({"task_id": task_id, "agent_id": agent_id,
                                               "outcome": "no_answer"})
        assert answer["attempts"] == attempt
        if wait_minutes:
            assert loop.callback.next_task(agent_id) is None  # not before the next attempt
            loop.clock.advance(minutes=wait_minutes)
    return answer


def orders_status_becomes(loop, order_id: str, status: str) -> dict:  # noqa: ANN001
    return wait_until(lambda: (loop.orders.get_order(order_id)["status"] == status
                               and loop.orders.get_order(order_id)),
                      message=f"orders to show {status}")


def test_no_answer_three_times_makes_the_order_unverified_for_a_supervisor_to_decide(loop):
    partner = loop.register_partner()
    order_id = loop.repair("13700000003")
    complete_visit(loop, partner, order_id)
    task_id = one_task(loop, order_id)["task_id"]
    assert no_answer_until_unverified(loop, task_id, "a1")["status"] == "unverified"
    orders_status_becomes(loop, order_id, "unverified")
    view = loop.callback.supervisor_view()
    assert [t["task_id"] for t in view["unverified"]] == [task_id]

    # sent back: the queue tries again, three attempts afresh
    decision = {"task_id": task_id, "supervisor_id": "s1", "decision": "send_back",
                "note": "try evenings"}
    back = loop.callback.supervise(decision, request_id="sup-1")
    assert (back["status"], back["attempts"]) == ("open", 0)
    # the answer lost, asked again: the same answer, not a refusal (the task is not unverified)
    assert loop.callback.supervise(decision, request_id="sup-1") == back
    orders_status_becomes(loop, order_id, "completed")
    assert no_answer_until_unverified(loop, task_id, "a2")["status"] == "unverified"
    orders_status_becomes(loop, order_id, "unverified")

    # closed: held no more, and orders closes it as unverified
    closed = loop.callback.supervise({"task_id": task_id, "supervisor_id": "s1",
                                      "decision": "close", "note": "customer moved away"})
    assert closed["status"] == "closed"
    assert loop.callback.supervisor_view()["unverified"] == []
    orders_status_becomes(loop, order_id, "closed")
    recorded = [e["payload"] for e in loop.orders.order_history(order_id)
                if e["event_type"] == "order_verification_recorded"]
    assert [(r["outcome"], r["status"]) for r in recorded] == [
        ("unverified", "unverified"), ("sent_back", "completed"),
        ("unverified", "unverified"), ("closed_unverified", "closed")]
    assert recorded[-1]["detail"] == "customer moved away"
    with pytest.raises(Conflict) as again:
        loop.callback.supervise({"task_id": task_id, "supervisor_id": "s2",
                                 "decision": "send_back"})
    assert again.value.code == "not_unverified"


def test_a_dispute_about_the_partner_reopens_and_redispatches_to_another(loop):
    first = loop.register_partner("甲", rating=5.0)
    second = loop.register_partner("乙", rating=3.0)
    order_id = loop.repair("13700000004")
    complete_visit(loop, first, order_id)
    task_id = one_task(loop, order_id)["task_id"]
    loop.callback.next_task("a1")
    loop.callback.record_outcome({"task_id": task_id, "agent_id": "a1", "outcome": "disputed",
                                  "dispute_reasons": ["no_visit"], "complaint_requested": True,
                                  "satisfaction": 1})
    wait_until(lambda: loop.dispatch_status(order_id) == "assigned", message="re-dispatch")
    view = loop.dispatch.get_order(order_id)
    assert view["partner_id"] == second.partner_id and first.partner_id in view["excluded"]
    reopened = next(e for e in loop.dispatch.order_history(order_id)
                    if e["event_type"] == "order_reopened")
    assert reopened["payload"]["partner_excluded"] is True
    shown = wait_until(lambda: (loop.orders.get_order(order_id)["status"] == "assigned"
                                and loop.orders.get_order(order_id)), message="orders reopened")
    assert shown["partner_id"] == second.partner_id
    recorded = wait_until(lambda: [e for e in loop.orders.order_history(order_id)
                                   if e["event_type"] == "order_verification_recorded"],
                          message="the dispute in orders")
    complaint_id = recorded[0]["payload"]["complaint_order_id"]
    complaint = loop.orders.get_order(complaint_id)
    assert (complaint["order_type"], complaint["related_order_id"]) == ("complaint", order_id)
    complete_visit(loop, second, order_id)
    assert one_task(loop, order_id, visit=2)["partner_id"] == second.partner_id


def test_installations_are_confirmed_through_the_provider_and_a_sample_goes_to_a_person(loop):
    partner = loop.register_partner()
    product_id = loop.customer_with_heater("13700000005")
    order_id = loop.orders.create_order({"product_id": product_id, "order_type": "install",
                                         "channel": "phone", "agent_id": "a7"})["order_id"]
    complete_visit(loop, partner, order_id, installation_barcode="BAR-0001")
    task = one_task(loop, order_id)
    assert task["channel"] == "auto"
    assert loop.callback.next_task("a1") is None  # the channel's, not the agents'
    loop.callback.run_timers()
    sent = wait_until(lambda: loop.provider.sent(), message="the SMS")
    assert sent[0]["to"] == "13700000005" and sent[0]["reference"] == task["task_id"]
    wrong = _reply(loop, sent[0]["message_id"], "maybe")
    assert wrong["callback"]["status"] == "open" and wrong["callback"]["attempts"] == 1
    loop.clock.advance(minutes=61)
    loop.callback.run_timers()
    again = wait_until(lambda: len(loop.provider.sent()) == 2 and loop.provider.sent())
    confirmed = _reply(loop, again[1]["message_id"], "1")
    assert confirmed["callback"]["status"] == "verified"
    review = next(t for t in loop.callback.tasks_for_order(order_id) if t["review_of"])
    assert review["review_of"] == task["task_id"] and review["channel"] == "agent"


def test_an_automatic_confirmation_without_a_reply_counts_as_no_answer(loop):
    partner = loop.register_partner()
    product_id = loop.customer_with_heater("13700000006")
    order_id = loop.orders.create_order({"product_id": product_id, "order_type": "install",
                                         "channel": "phone", "agent_id": "a7"})["order_id"]
    complete_visit(loop, partner, order_id, installation_barcode="BAR-0002")
    task_id = one_task(loop, order_id)["task_id"]
    loop.callback.run_timers()
    assert loop.callback.get_task(task_id)["status"] == "awaiting_reply"
    loop.clock.advance(hours=13)
    loop.callback.run_timers()
    task = loop.callback.get_task(task_id)
    assert (task["status"], task["attempts"]) == ("open", 1)


def test_bad_outcomes_are_refused_with_field_errors_and_change_nothing(loop):
    partner = loop.register_partner()
    order_id = loop.repair("13700000007")
    complete_visit(loop, partner, order_id)
    task_id = one_task(loop, order_id)["task_id"]
    loop.callback.next_task("a1")
    before = len(loop.callback.stream(f"task-{task_id}"))
    bad = [
        ({"outcome": "maybe"}, "outcome"),
        ({"outcome": "disputed"}, "dispute_reasons"),
        ({"outcome": "disputed", "dispute_reasons": ["smelly"]}, "dispute_reasons"),
        ({"outcome": "verified", "satisfaction": 9}, "satisfaction"),
        ({"outcome": "verified", "surprise": 1}, "surprise"),
    ]
    for extra, field in bad:
        with pytest.raises(ValidationFailed) as refused:
            loop.callback.record_outcome({"task_id": task_id, "agent_id": "a1", **extra})
        assert field in refused.value.fields
    assert len(loop.callback.stream(f"task-{task_id}")) == before


def _reply(loop, message_id: str, text: str) -> dict:  # noqa: ANN001
    status, body = loop.provider.reply(message_id, text)
    assert status == 200, body
    return body


def _publish(broker_uri: str, source: str, body: dict) -> None:
    import json

    connection = pika.BlockingConnection(pika.URLParameters(broker_uri))
    channel = connection.channel()
    channel.basic_publish(event_exchange(source), body["event_type"],
                          json.dumps(body).encode(), message_properties(body))
    connection.close()


def test_a_dispute_not_about_the_partner_reopens_without_excluding_it_or_a_complaint(loop):
    partner = loop.register_partner("甲", rating=5.0)
    order_id = loop.repair("13700000008")
    complete_visit(loop, partner, order_id)
    task_id = one_task(loop, order_id)["task_id"]
    loop.callback.next_task("a1")
    loop.callback.record_outcome({"task_id": task_id, "agent_id": "a1", "outcome": "disputed",
                                  "dispute_reasons": ["not_fixed"]})
    reopened = wait_until(lambda: next((e for e in loop.dispatch.order_history(order_id)
                                        if e["event_type"] == "order_reopened"), None),
                          message="dispatch to reopen the order")
    assert reopened["payload"]["partner_excluded"] is False
    view = wait_until(lambda: loop.dispatch_status(order_id) == "assigned"
                      and loop.dispatch.get_order(order_id), message="re-dispatch")
    assert view["partner_id"] == partner.partner_id  # still the best one: not excluded
    recorded = wait_until(lambda: [e for e in loop.orders.order_history(order_id)
                                   if e["event_type"] == "order_verification_recorded"],
                          message="the dispute in orders")
    assert recorded[0]["payload"]["outcome"] == "disputed"
    assert recorded[0]["payload"]["complaint_order_id"] is None
    wait_until(lambda: loop.orders.get_order(order_id)["status"] == "assigned",
               message="orders to follow the re-dispatch")


@pytest.mark.parametrize(("reasons", "complaint"), [
    (["overcharged", "part_not_replaced", "rude"], False),  # about the partner, no complaint
    (["other"], True),  # not about the partner, and the customer asks for a complaint
])
def test_every_dispute_path_reopens_the_order_in_dispatch_and_orders(loop, reasons,
                                                                     complaint):
    about_partner = reasons != ["other"]
    first = loop.register_partner("甲", rating=5.0)
    second = loop.register_partner("乙", rating=3.0)
    phone = "13700000009" if complaint else "13700000010"
    order_id = loop.repair(phone)
    complete_visit(loop, first, order_id)
    task_id = one_task(loop, order_id)["task_id"]
    loop.callback.next_task("a1")
    disputed = loop.callback.record_outcome({
        "task_id": task_id, "agent_id": "a1", "outcome": "disputed",
        "dispute_reasons": reasons, "complaint_requested": complaint, "notes": "还是不行"})
    assert disputed["status"] == "disputed"
    assert disputed["outcome_detail"]["reasons"] == sorted(reasons)

    # dispatch reopens it, and sends it to another partner only when the dispute is theirs
    reopened = wait_until(lambda: next((e for e in loop.dispatch.order_history(order_id)
                                        if e["event_type"] == "order_reopened"), None),
                          message="dispatch to reopen the order")
    assert reopened["payload"]["partner_excluded"] is about_partner
    revisit_by = second if about_partner else first
    wait_until(lambda: (loop.dispatch_status(order_id) == "assigned"
                        and loop.dispatch.get_order(order_id)["partner_id"]
                        == revisit_by.partner_id), message="the re-dispatch")

    # orders shows it reopened, assigned again, and the complaint only when asked for
    # (orders may still be behind, showing the first assignment: wait for the second)
    wait_until(lambda: [o for o in [loop.orders.get_order(order_id)]
                        if o["status"] == "assigned" and o["partner_id"] == revisit_by.partner_id],
               message="orders to show the re-assignment")
    history = loop.orders.order_history(order_id)
    progressed = [e["payload"]["status"] for e in history
                  if e["event_type"] == "order_progressed"]
    # the reopening and the re-assignment travel on queues of their own: orders skips the
    # reopening when the assignment overtook it
    assert progressed[progressed.index("completed") + 1:] in (["reopened", "assigned"],
                                                              ["assigned"])
    recorded = wait_until(lambda: [e["payload"] for e in loop.orders.order_history(order_id)
                                   if e["event_type"] == "order_verification_recorded"],
                          message="the dispute in orders")
    assert (recorded[0]["outcome"], recorded[0]["detail"]) == ("disputed",
                                                               ", ".join(sorted(reasons)))
    others = [o for o in loop.orders.lookup(phone)["orders"] if o["order_id"] != order_id]
    if complaint:
        complaint_id = recorded[0]["complaint_order_id"]
        linked = loop.orders.get_order(complaint_id)
        assert (linked["order_type"], linked["related_order_id"]) == ("complaint", order_id)
        assert [o["order_id"] for o in others] == [complaint_id]
    else:
        assert recorded[0]["complaint_order_id"] is None and others == []

    # the loop closes only with the new visit verified
    complete_visit(loop, revisit_by, order_id)
    revisit = one_task(loop, order_id, visit=2)
    assert loop.callback.next_task("a2")["task_id"] == revisit["task_id"]
    loop.callback.record_outcome({"task_id": revisit["task_id"], "agent_id": "a2",
                                  "outcome": "verified", "satisfaction": 4})
    orders_status_becomes(loop, order_id, "verified")


def install(loop, phone: str, barcode: str) -> tuple[str, str]:  # noqa: ANN001
    """An installation completed: its order id and its (automatic) task id."""
    partner = loop.register_partner()
    product_id = loop.customer_with_heater(phone)
    order_id = loop.orders.create_order({"product_id": product_id, "order_type": "install",
                                         "channel": "phone", "agent_id": "a7"})["order_id"]
    complete_visit(loop, partner, order_id, installation_barcode=barcode)
    return order_id, one_task(loop, order_id)["task_id"]


def sent_and_recorded(loop, task_id: str) -> list[dict]:  # noqa: ANN001
    """Send what is due (a timer tick may be doing it too) and wait until it is recorded."""
    loop.callback.run_timers()
    wait_until(lambda: loop.callback.get_task(task_id)["status"] == "awaiting_reply",
               message="the SMS to be sent and recorded")
    return loop.provider.sent()


def test_a_reply_reporting_a_problem_puts_the_task_first_in_the_agents_queue(loop):
    order_id, task_id = install(loop, "13700000014", "BAR-0003")
    [message] = sent_and_recorded(loop, task_id)
    assert "确认请回复1" in message["text"] and "有问题请回复2，客服将致电您" in message["text"]
    problem = _reply(loop, message["message_id"], "2")["callback"]
    assert (problem["status"], problem["channel"], problem["priority"], problem["attempts"]) \
        == ("open", "agent", 1, 0)
    assert loop.callback.stream(f"task-{task_id}")[-1]["event_type"] == "problem_reported"
    status, _ = loop.provider.reply(message["message_id"], "1")
    assert status == 409  # answered already: a person calls now
    loop.callback.run_timers()
    called = loop.callback.next_task("a1")
    assert called["task_id"] == task_id
    loop.callback.record_outcome({"task_id": task_id, "agent_id": "a1", "outcome": "verified",
                                  "satisfaction": 3, "notes": "漏水已自行处理好"})
    orders_status_becomes(loop, order_id, "verified")
    assert [t["review_of"] for t in loop.callback.tasks_for_order(order_id)] == [None]
    assert len(loop.provider.received()) == 1  # no second SMS


def test_a_send_the_provider_did_not_take_is_tried_again_with_the_same_key(loop):
    _, task_id = install(loop, "13700000015", "BAR-0004")
    loop.provider.unavailable = True
    loop.callback.run_timers()
    wait_until(lambda: loop.provider.received(), message="the first try")
    assert loop.callback.get_task(task_id)["status"] == "sending"
    loop.callback.run_timers()
    assert len(loop.provider.received()) == 1  # the claim has not run out: nobody resends
    loop.provider.unavailable = False
    loop.clock.advance(minutes=6)  # CALLBACK_SEND_RETRY_MINUTES: 5
    assert len(sent_and_recorded(loop, task_id)) == 1
    keys = [r["idempotency_key"] for r in loop.provider.received()]
    assert len(keys) == 2 and keys[0] == keys[1]
    kinds = [e["event_type"] for e in loop.callback.stream(f"task-{task_id}")]
    assert kinds[1:] == ["confirmation_send_started", "confirmation_send_started",
                         "confirmation_requested"]
