"""Orders follows dispatch: the call centre sees each order's live status, partner and
appointment, whatever order dispatch's events arrive in.

Dispatch's events are real hashed envelopes from a scratch copy of dispatch's log
(`DispatchLog`), published to the broker as dispatch's relay would, or read by orders'
catch-up through a stand-in that serves that log's `events_since`.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pika
import pytest
from nameko.standalone.rpc import ServiceRpcProxy
from sqlalchemy import MetaData

from contracts.envelope import ENVELOPE
from contracts.registry import validate_event
from serviceloop.clock import isoformat
from serviceloop.consumer import queue_name
from serviceloop.db import make_engine
from serviceloop.eventstore import EventStore, NewEvent, define_log_tables
from serviceloop.nameko_deps import Database, EventLogRpc
from serviceloop.relay import event_exchange, message_properties
from services.orders.projections import events as orders_events
from services.orders.projections import projector
from services.orders.service import OrdersService
from tests.helpers import queue_counts, queue_drained, wait_until

ADDRESS = {"province": "浙江省", "city": "杭州市", "district": "西湖区", "street": "文三路9号",
           "lat": 30.27, "lon": 120.13}
PARTNER = "p-west-lake"
START = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
WINDOW = (isoformat(START + timedelta(hours=3)), isoformat(START + timedelta(hours=5)))

dispatch_metadata = MetaData()
define_log_tables(dispatch_metadata)


class DispatchLog:
    """A scratch copy of dispatch's log: each order's events on its `order-<id>` stream."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        dispatch_metadata.create_all(self.engine)
        self.store = EventStore(dispatch_metadata.tables["events"])

    def append(self, order_id: str, event_type: str, **payload: object) -> dict:
        stream = f"order-{order_id}"
        with self.engine.begin() as conn:
            version = self.store.stream_version(conn, stream)
            (envelope,) = self.store.append(
                conn, stream, version, [NewEvent(event_type, {"order_id": order_id, **payload})],
                occurred_at=START + timedelta(minutes=version), correlation_id=order_id,
                causation_id=f"cmd-{uuid.uuid4()}", actor="system")
        body = envelope.to_dict()
        ENVELOPE.load(body)  # what orders' consumer checks first
        validate_event(body["event_type"], body["schema_version"], body["payload"])
        return body


# contract-valid payloads of dispatch's events, by type
def received(order_id: str) -> dict:
    return dict(order_type="repair", status="ready", category="water_heater", model="WH-E60A",
                serial="WH0000000001", description="不出热水", fault_code="WH-E1",
                phone="13900000001", address=ADDRESS, in_warranty=True, related_order_id=None,
                confirmation_code="4321")


ASSIGNED = dict(partner_id=PARTNER, attempt=1, assigned_by="system", reason="best_rated",
                explanation="西湖家电 is the best rated partner with capacity left",
                considered=[], day="2026-11-02", accept_by=isoformat(START + timedelta(hours=2)))
ACCEPTED = dict(partner_id=PARTNER, schedule_by=isoformat(START + timedelta(hours=4)))
SCHEDULED = dict(partner_id=PARTNER, window_start=WINDOW[0], window_end=WINDOW[1])
ARRIVED = dict(partner_id=PARTNER, lat=30.27, lon=120.13, accuracy_m=20, within_window=True)
COMPLETED = dict(partner_id=PARTNER, order_type="repair", category="water_heater",
                 model="WH-E60A", serial="WH0000000001", phone="13900000001", in_warranty=True,
                 fault_code="WH-E1", work_done="换加热管", parts=[], installation_barcode=None,
                 labour_fee_cents=8000, travel_fee_cents=1500, travel_distance_km=12,
                 parts_fee_cents=0, customer_paid_cents=0, confirmation_matched=True,
                 arrived_at=isoformat(START + timedelta(hours=3)), arrival_lat=30.27,
                 arrival_lon=120.13)
REJECTED = dict(partner_id=PARTNER, reason_code="no_capacity", note="全员外出")
ESCALATED = dict(reason="no_candidate", explanation="nobody qualified is left in 西湖区",
                 considered=[])


def publish(broker_uri: str, *bodies: dict, source: str = "dispatch") -> None:
    """As the source's relay does: its exchange, routing key the event type."""
    connection = pika.BlockingConnection(pika.URLParameters(broker_uri))
    channel = connection.channel()
    channel.confirm_delivery()
    for body in bodies:
        channel.basic_publish(event_exchange(source), body["event_type"],
                              json.dumps(body).encode(), message_properties(body))
    connection.close()


def drained(broker_uri: str, *event_types: str) -> None:
    for event_type in event_types:
        queue = queue_name("dispatch", event_type, "orders", f"on_{event_type}")
        wait_until(lambda q=queue: queue_drained(broker_uri, q), message=f"{queue} to drain")


class Desk:
    """The orders service as the call centre reaches it, and one open repair order."""

    def __init__(self, rpc, url: str) -> None:  # noqa: ANN001
        self.rpc = rpc
        self.url = url

    def open_repair(self, phone: str) -> str:
        registered = self.rpc.register_customer({
            "name": "李雷", "phone": phone, "agent_id": "a7", "address": ADDRESS,
            "products": [{"model": "WH-E60A", "serial": f"WH{phone}",
                          "purchase_date": "2026-06-01", "installation_date": "2026-06-02"}]})
        return self.rpc.create_order({
            "product_id": registered["products"][0]["product_id"], "order_type": "repair",
            "channel": "phone", "fault_code": "WH-E1", "description": "不出热水",
            "agent_id": "a7"})["order_id"]

    def status(self, order_id: str) -> str:
        return self.rpc.get_order(order_id)["status"]

    def shows(self, order_id: str, status: str) -> None:
        wait_until(lambda: self.status(order_id) == status, message=f"orders to show {status}")

    def progressed(self, order_id: str) -> list[dict]:
        return [e for e in self.rpc.order_history(order_id)
                if e["event_type"] == "order_progressed"]


@pytest.fixture
def desk(container_factory, service_config, database_for, backend):
    url = database_for("orders", backend)
    container = container_factory(OrdersService, service_config(orders=url))
    container.start()
    with ServiceRpcProxy("orders", container.config, timeout=20) as rpc:
        yield Desk(rpc, url)


@pytest.fixture
def dispatch_log(tmp_path) -> DispatchLog:
    log = DispatchLog(f"sqlite:///{tmp_path / 'dispatch-log.db'}")
    yield log
    log.engine.dispose()


def test_the_call_centre_sees_each_step_dispatch_takes(desk, dispatch_log, broker_uri):
    order_id = desk.open_repair("13900000001")
    dispatch_log.append(order_id, "order_received", **received(order_id))  # nothing to show
    steps = [("order_assigned", ASSIGNED, "assigned"), ("order_accepted", ACCEPTED, "accepted"),
             ("appointment_scheduled", SCHEDULED, "scheduled"),
             ("partner_arrived", ARRIVED, "on_site"), ("order_completed", COMPLETED, "completed")]
    published = []
    for event_type, payload, status in steps:
        published.append(dispatch_log.append(order_id, event_type, **payload))
        publish(broker_uri, published[-1])
        desk.shows(order_id, status)
        if status == "assigned":
            assert desk.rpc.get_order(order_id)["window_start"] is None
        if status == "scheduled":
            assert desk.rpc.get_order(order_id)["window_start"] == WINDOW[0]

    order = desk.rpc.get_order(order_id)
    assert order["partner_id"] == PARTNER
    # completion does not speak of the window: the appointment agreed stays on show
    assert (order["window_start"], order["window_end"]) == WINDOW
    assert order["dispatch_version"] == published[-1]["stream_version"] == 6
    progressed = desk.progressed(order_id)
    assert [e["payload"]["status"] for e in progressed] == [s for _, _, s in steps]
    for event, dispatched in zip(progressed, published, strict=True):
        assert event["causation_id"] == dispatched["event_id"]
        assert event["correlation_id"] == order_id and event["actor"] == "system"
        assert event["payload"]["dispatch_event_id"] == dispatched["event_id"]
        assert event["payload"]["dispatch_event_type"] == dispatched["event_type"]
        assert event["payload"]["dispatch_version"] == dispatched["stream_version"]
    assert desk.rpc.parked_messages() == []

    # the read model is a fold of the log: dropped and rebuilt, it comes out the same
    engine = make_engine(desk.url)
    with engine.begin() as conn:
        before = projector.checksums(conn)
        projector.rebuild(conn, EventStore(orders_events))
        assert projector.checksums(conn) == before
    engine.dispose()


def test_a_duplicate_delivery_changes_nothing(desk, dispatch_log, broker_uri):
    order_id = desk.open_repair("13900000002")
    dispatch_log.append(order_id, "order_received", **received(order_id))
    assigned = dispatch_log.append(order_id, "order_assigned", **ASSIGNED)
    publish(broker_uri, assigned)
    desk.shows(order_id, "assigned")
    history = desk.rpc.order_history(order_id)
    publish(broker_uri, assigned, assigned)
    drained(broker_uri, "order_assigned")
    assert desk.rpc.order_history(order_id) == history
    assert len(desk.progressed(order_id)) == 1


def test_a_completion_that_overtakes_the_appointment_still_ends_completed(desk, dispatch_log,
                                                                          broker_uri):
    order_id = desk.open_repair("13900000003")
    dispatch_log.append(order_id, "order_received", **received(order_id))
    assigned = dispatch_log.append(order_id, "order_assigned", **ASSIGNED)
    accepted = dispatch_log.append(order_id, "order_accepted", **ACCEPTED)
    scheduled = dispatch_log.append(order_id, "appointment_scheduled", **SCHEDULED)
    arrived = dispatch_log.append(order_id, "partner_arrived", **ARRIVED)
    completed = dispatch_log.append(order_id, "order_completed", **COMPLETED)
    # one at a time: each type has its own queue, so an acceptance published beside its
    # assignment may be handled first, and the older assignment is then rightly skipped
    for event, status in ((assigned, "assigned"), (accepted, "accepted")):
        publish(broker_uri, event)
        desk.shows(order_id, status)
    publish(broker_uri, completed)
    desk.shows(order_id, "completed")
    publish(broker_uri, scheduled, arrived)  # late: older than what orders has seen
    drained(broker_uri, "appointment_scheduled", "partner_arrived")
    order = desk.rpc.get_order(order_id)
    assert order["status"] == "completed" and order["partner_id"] == PARTNER
    assert order["dispatch_version"] == completed["stream_version"]
    assert [e["payload"]["dispatch_event_type"] for e in desk.progressed(order_id)] == [
        "order_assigned", "order_accepted", "order_completed"]


def test_a_verification_that_overtakes_its_completion_waits_for_it(desk, dispatch_log,
                                                                   broker_uri, tmp_path):
    order_id = desk.open_repair("13900000007")
    dispatch_log.append(order_id, "order_received", **received(order_id))
    publish(broker_uri, *[dispatch_log.append(order_id, t, **p) for t, p in (
        ("order_assigned", ASSIGNED), ("order_accepted", ACCEPTED),
        ("appointment_scheduled", SCHEDULED), ("partner_arrived", ARRIVED))])
    desk.shows(order_id, "on_site")
    completed = dispatch_log.append(order_id, "order_completed", **COMPLETED)
    callback_log = DispatchLog(f"sqlite:///{tmp_path / 'callback-log.db'}")
    verified = callback_log.append(order_id, "order_verified", task_id=completed["event_id"],
                                   partner_id=PARTNER, channel="agent", satisfaction=5,
                                   customer_paid_cents=0, notes="", visit=1)
    callback_log.engine.dispose()
    # the callback's outcome arrives first (its own queue): it must not be dropped
    publish(broker_uri, verified, source="callback")
    queue = queue_name("callback", "order_verified", "orders", "on_order_verified")
    wait_until(lambda: queue_drained(broker_uri, queue), timeout=60,
               message="the early verification to be tried and put aside")
    assert desk.status(order_id) == "on_site"
    publish(broker_uri, completed)
    desk.shows(order_id, "verified")
    assert [e["payload"]["status"] for e in desk.rpc.order_history(order_id)
            if e["event_type"] == "order_verification_recorded"] == ["verified"]
    assert desk.rpc.parked_messages() == []


def test_a_period_that_pays_an_order_before_orders_saw_it_verified_still_closes_it(
        desk, dispatch_log, broker_uri, tmp_path):
    order_id = desk.open_repair("13900000008")
    dispatch_log.append(order_id, "order_received", **received(order_id))
    visit = [dispatch_log.append(order_id, t, **p) for t, p in (
        ("order_assigned", ASSIGNED), ("order_accepted", ACCEPTED),
        ("appointment_scheduled", SCHEDULED), ("partner_arrived", ARRIVED),
        ("order_completed", COMPLETED))]
    publish(broker_uri, *visit)
    desk.shows(order_id, "completed")
    other_logs = DispatchLog(f"sqlite:///{tmp_path / 'other-logs.db'}")
    verified = other_logs.append(order_id, "order_verified", task_id=visit[-1]["event_id"],
                                 partner_id=PARTNER, channel="agent", satisfaction=5,
                                 customer_paid_cents=0, notes="", visit=1)
    line = dict(claim_id=visit[-1]["event_id"], order_id=order_id, completed_on="2026-11-02",
                kind="claim", claimed_cents=9500, payable_cents=9000, cut_cents=500,
                held_cents=0, rejected_cents=0, reasons=["labour_above_rate_card"])
    with other_logs.engine.begin() as conn:
        (closed,) = other_logs.store.append(
            conn, f"statement-2026-11-{PARTNER}", 0, [NewEvent("period_closed", {
                "period": "2026-11", "partner_id": PARTNER, "lines": [line],
                "payable_cents": 9000, "cut_cents": 500, "held_cents": 0,
                "rejected_cents": 0, "adjustments_cents": 0})],
            occurred_at=START + timedelta(days=29), correlation_id=f"period-2026-11-{PARTNER}",
            causation_id="period-2026-11", actor="system")
    other_logs.engine.dispose()
    # settlement (verified there) closes the month before orders has the verification
    publish(broker_uri, closed.to_dict(), source="settlement")
    queue = queue_name("settlement", "period_closed", "orders", "on_period_closed")
    wait_until(lambda: queue_counts(broker_uri, "messages_ready").get(queue) == 0,
               message="orders to take the close")
    # after a few tries the close is parked, waiting for that order's verification: the
    # verification (another order's event than the close's own) hands it back
    wait_until(lambda: [m["event_type"] for m in desk.rpc.parked_messages()] == ["period_closed"],
               message="the close to be parked")
    publish(broker_uri, verified, source="callback")
    desk.shows(order_id, "closed")
    settled = [e for e in desk.rpc.order_history(order_id) if e["event_type"] == "order_settled"]
    assert [(e["payload"]["period"], e["payload"]["payable_cents"]) for e in settled] == [
        ("2026-11", 9000)]
    assert desk.rpc.parked_messages() == []


def test_a_rejection_shows_until_the_next_assignment_and_an_escalation_has_no_partner(
        desk, dispatch_log, broker_uri):
    order_id = desk.open_repair("13900000004")
    dispatch_log.append(order_id, "order_received", **received(order_id))
    assigned = dispatch_log.append(order_id, "order_assigned", **ASSIGNED)
    rejected = dispatch_log.append(order_id, "order_rejected", **REJECTED)
    escalated = dispatch_log.append(order_id, "order_escalated", **ESCALATED)
    publish(broker_uri, assigned)
    desk.shows(order_id, "assigned")
    publish(broker_uri, rejected)
    desk.shows(order_id, "rejected")
    order = desk.rpc.get_order(order_id)
    assert order["dispatch_detail"] == "no_capacity: 全员外出"
    assert order["partner_id"] == PARTNER
    publish(broker_uri, escalated)
    desk.shows(order_id, "escalated")
    order = desk.rpc.get_order(order_id)
    assert order["partner_id"] is None and order["dispatch_detail"] == ESCALATED["explanation"]
    # a rejected or escalated order may still be cancelled by the call centre
    cancelled = desk.rpc.cancel_order({"order_id": order_id, "reason": "customer_request",
                                       "agent_id": "a7"})
    assert cancelled["status"] == "cancelled"


def test_a_cancelled_order_ignores_dispatch(desk, dispatch_log, broker_uri):
    order_id = desk.open_repair("13900000005")
    desk.rpc.cancel_order({"order_id": order_id, "reason": "customer_request",
                           "agent_id": "a7"})
    dispatch_log.append(order_id, "order_received", **received(order_id))
    # dispatch assigned it before it heard of the cancellation
    publish(broker_uri, dispatch_log.append(order_id, "order_assigned", **ASSIGNED))
    drained(broker_uri, "order_assigned")
    order = desk.rpc.get_order(order_id)
    assert order["status"] == "cancelled" and order["partner_id"] is None
    assert desk.progressed(order_id) == []
    assert desk.rpc.parked_messages() == []


def test_an_event_for_an_order_orders_never_took_is_retried_then_parked(desk, dispatch_log,
                                                                        broker_uri):
    stranger = str(uuid.uuid4())
    publish(broker_uri, dispatch_log.append(stranger, "order_assigned", **ASSIGNED))
    parked = wait_until(lambda: [p for p in desk.rpc.parked_messages()
                                 if p["consumer"] == "orders.on_order_assigned"],
                        message="the assignment to be parked")
    assert "RetryLater" in parked[0]["error"] and parked[0]["attempts"] > 1


class DispatchLogOnly(EventLogRpc):
    """Stands in for dispatch: serves its log to consumers catching up, nothing else."""

    name = "dispatch"
    db = Database("dispatch", dispatch_metadata)


def test_events_dispatch_logged_before_orders_listened_arrive_through_catch_up(
        desk, dispatch_log, container_factory, service_config):
    order_id = desk.open_repair("13900000006")
    dispatch_log.append(order_id, "order_received", **received(order_id))
    for event_type, payload in (("order_assigned", ASSIGNED), ("order_accepted", ACCEPTED),
                                ("appointment_scheduled", SCHEDULED)):
        dispatch_log.append(order_id, event_type, **payload)  # logged, never published
    producer = container_factory(DispatchLogOnly, service_config(dispatch=dispatch_log.url))
    producer.start()
    desk.shows(order_id, "scheduled")
    order = desk.rpc.get_order(order_id)
    assert (order["partner_id"], order["window_start"]) == (PARTNER, WINDOW[0])
    assert len(desk.progressed(order_id)) == 3
