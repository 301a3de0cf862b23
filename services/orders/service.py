"""The orders service: what call-centre agents and the CRM desktop reach over nameko RPC.

It follows dispatch's events for each order, so the call centre sees the order's live
status, partner and appointment (`order_progressed`).
"""

from __future__ import annotations

import uuid

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from contracts import dispatch as _dispatch_events  # noqa: F401 - registers what orders follows
from contracts import orders as contract
from contracts.errors import Conflict, NotFound
from contracts.registry import load
from serviceloop.answers import AnswersKept, answered_once
from serviceloop.catchup import CatchUp
from serviceloop.consumer import ParkedMessagesRpc, RetryLater, already_handled, consumes
from serviceloop.entrypoints import rpc
from serviceloop.eventstore import Envelope, NewEvent
from serviceloop.nameko_deps import (
    ClockProvider,
    Database,
    EventLogRpc,
    retried_read,
    transactional,
)
from serviceloop.observability import Observable
from services.orders import domain, queries
from services.orders.catalog import CATALOG, catalog_as_dict
from services.orders.projections import metadata, order_row, projector

# marshmallow schemas are built once: instantiating one per call costs more than loading
_REGISTER_CUSTOMER = contract.RegisterCustomer()
_REGISTER_PRODUCT = contract.RegisterProduct()
_CREATE_ORDER = contract.CreateOrder()
_FILE_COMPLAINT = contract.FileComplaint()
_RECORD_FAULT = contract.RecordFault()
_CANCEL_ORDER = contract.CancelOrder()
_LIST_ORDERS = contract.ListOrders()


class OrdersService(EventLogRpc, ParkedMessagesRpc, CatchUp, AnswersKept, Observable):
    name = "orders"

    db = Database("orders", metadata)
    clock = ClockProvider()

    def service_metrics(self, metrics, conn) -> None:  # noqa: ANN001 - for /metrics
        by_status = dict(conn.execute(text("SELECT status, COUNT(*) FROM orders "
                                           "GROUP BY status")).tuples().all())
        metrics.add("serviceloop_orders_created_total", "counter", "Orders created",
                    sum(by_status.values()))
        for status, n in sorted(by_status.items()):
            metrics.add("serviceloop_orders", "gauge", "Orders by current status", n,
                        status=status)

    # -- customers and products ----------------------------------------------------------------

    @rpc
    @transactional
    @answered_once
    def register_customer(self, payload: dict) -> dict:
        data = load(_REGISTER_CUSTOMER, payload)
        phone = domain.normalise_phone(data["phone"])
        existing = queries.customer_by_phone(self.db.conn, phone)
        if existing:
            raise Conflict(f"a customer with phone {phone} exists: {existing['customer_id']}",
                           {"phone": [existing["customer_id"]]}, code="customer_exists")
        customer_id = str(uuid.uuid4())
        today = self.clock.now().date()
        events = [domain.register_customer(customer_id, data["name"], phone, data["address"])]
        events += [domain.register_product(CATALOG, customer_id, str(uuid.uuid4()), p, today)
                   for p in data["products"]]
        self._append(f"customer-{customer_id}", 0, events, customer_id, data["agent_id"])
        return self._lookup(self.db.conn, phone)

    @rpc
    @transactional
    @answered_once
    def register_product(self, payload: dict) -> dict:
        data = load(_REGISTER_PRODUCT, payload)
        customer = queries.customer(self.db.conn, data["customer_id"])
        today = self.clock.now().date()
        product_id = str(uuid.uuid4())
        event = domain.register_product(CATALOG, customer["customer_id"], product_id, data,
                                        today)
        new = event.payload
        known = queries.owned_product(self.db.conn, new["customer_id"], new["model"],
                                      new["serial"])
        if known is not None:  # asked again (a retry, a second click): one appliance, once
            if (known["purchase_date"], known["installation_date"]) != (
                    new["purchase_date"], new["installation_date"]):
                raise Conflict(
                    f"{new['model']} {new['serial']} is registered to this customer already, "
                    f"with other dates: {known['product_id']}",
                    {"serial": [known["product_id"]]}, code="product_exists")
            return queries.product_view(known, today)
        stream = f"customer-{customer['customer_id']}"
        version = self.db.store.stream_version(self.db.conn, stream)
        self._append(stream, version, [event], customer["customer_id"], data["agent_id"])
        return queries.product_view(queries.product(self.db.conn, product_id), today)

    @rpc
    @retried_read
    def lookup(self, phone: str) -> dict:
        """The caller in one answer: customer, address, products with warranty, orders."""
        normalised = domain.normalise_phone(phone if isinstance(phone, str) else "")
        with self.db.reader() as conn:
            return self._lookup(conn, normalised)

    def _lookup(self, conn, phone: str) -> dict:  # noqa: ANN001
        customer = queries.customer_by_phone(conn, phone)
        if customer is None:
            raise NotFound(f"no customer with phone {phone}", {"phone": ["unknown caller"]},
                           code="customer_not_found")
        today = self.clock.now().date()
        return {
            "customer": customer,
            "products": queries.products_of(conn, customer["customer_id"], today),
            "orders": queries.orders_of_customer(conn, customer["customer_id"]),
        }

    # -- orders --------------------------------------------------------------------------------

    @rpc
    def create_order(self, payload: dict) -> dict:
        data = load(_CREATE_ORDER, payload)
        domain.check_intake(data)
        try:
            return self._create_order(data)
        except IntegrityError:
            # a concurrent retry with the same request id won the race: answer as it did
            self.db.rollback()
            with self.db.reader() as conn:
                existing = queries.order_for_request(conn, data["request_id"] or "")
                if existing is None:
                    raise
                return {**queries.order_row(conn, existing), "created": False}

    @transactional
    def _create_order(self, data: dict) -> dict:
        return self._open_order(data, last_write=True)

    def _open_order(self, data: dict, last_write: bool = False) -> dict:
        """Intake inside the caller's transaction (an RPC, or a consumer's inbox);
        `last_write`: the caller writes nothing after it, so it may commit with the append."""
        conn = self.db.conn
        # a retried request id is caught by order_requests' key (see create_order)
        product, owner, duplicate = queries.intake_facts(
            conn, data["product_id"], data["order_type"], data["related_order_id"])
        if duplicate:
            return {**queries.order_row(conn, duplicate), "created": False}
        related = None
        if data["related_order_id"]:
            related = _maybe(lambda: queries.as_aggregate(
                queries.order_row(conn, data["related_order_id"])))
        order_id = str(uuid.uuid4())
        event = domain.create_order(CATALOG, order_id, data, owner, product,
                                    self.clock.now().date(), related)
        (envelope,) = self._append(f"order-{order_id}", 0, [event], order_id,
                                   data["agent_id"],
                                   causation_id=f"req-{data['request_id']}"
                                   if data["request_id"] else None, commit=last_write)
        return {**order_row(envelope, event.payload), "warranty": event.payload["warranty"],
                "created": True}

    @rpc
    def file_complaint(self, payload: dict) -> dict:
        data = load(_FILE_COMPLAINT, payload)
        with self.db.reader() as conn:
            earlier = queries.order_row(conn, data["order_id"])
        return self.create_order({
            "request_id": data["request_id"], "product_id": earlier["product_id"],
            "order_type": "complaint", "channel": data["channel"],
            "description": data["description"], "related_order_id": earlier["order_id"],
            "agent_id": data["agent_id"],
        })

    @rpc
    @transactional
    @answered_once
    def record_fault(self, payload: dict) -> dict:
        data = load(_RECORD_FAULT, payload)
        view = queries.order_row(self.db.conn, data["order_id"])
        event = domain.record_fault(CATALOG, queries.as_aggregate(view), data["fault_code"],
                                    view["model"])
        self._append(f"order-{view['order_id']}", view["version"], [event], view["order_id"],
                     data["agent_id"])
        return queries.order_row(self.db.conn, view["order_id"])

    @rpc
    @transactional
    @answered_once
    def cancel_order(self, payload: dict) -> dict:
        data = load(_CANCEL_ORDER, payload)
        view = queries.order_row(self.db.conn, data["order_id"])
        event = domain.cancel_order(queries.as_aggregate(view), data["reason"], data["note"])
        self._append(f"order-{view['order_id']}", view["version"], [event], view["order_id"],
                     data["agent_id"])
        return queries.order_row(self.db.conn, view["order_id"])

    @rpc
    @retried_read
    def get_order(self, order_id: str) -> dict:
        with self.db.reader() as conn:
            return queries.order_row(conn, str(order_id))

    @rpc
    @retried_read
    def list_orders(self, filters: dict | None = None) -> dict:
        data = load(_LIST_ORDERS, filters or {})
        if data["phone"]:
            data["phone"] = domain.normalise_phone(data["phone"])
        with self.db.reader() as conn:
            return queries.list_orders(conn, data)

    @rpc
    @retried_read
    def order_history(self, order_id: str) -> list[dict]:
        with self.db.reader() as conn:
            queries.order_row(conn, str(order_id))
            return [e.to_dict() for e in self.db.store.stream(conn, f"order-{order_id}")]

    @rpc
    def catalog(self) -> dict:
        return catalog_as_dict(CATALOG)

    # -- following dispatch (see domain.DISPATCH_PROGRESS) --------------------------------------

    @consumes("dispatch", "order_assigned")
    def on_order_assigned(self, envelope: Envelope) -> None:
        self._follow_dispatch(envelope)

    @consumes("dispatch", "order_accepted")
    def on_order_accepted(self, envelope: Envelope) -> None:
        self._follow_dispatch(envelope)

    @consumes("dispatch", "appointment_scheduled")
    def on_appointment_scheduled(self, envelope: Envelope) -> None:
        self._follow_dispatch(envelope)

    @consumes("dispatch", "appointment_cancelled")
    def on_appointment_cancelled(self, envelope: Envelope) -> None:
        self._follow_dispatch(envelope)

    @consumes("dispatch", "partner_arrived")
    def on_partner_arrived(self, envelope: Envelope) -> None:
        self._follow_dispatch(envelope)

    @consumes("dispatch", "order_completed")
    def on_order_completed(self, envelope: Envelope) -> None:
        self._follow_dispatch(envelope)

    @consumes("dispatch", "order_rejected")
    def on_order_rejected(self, envelope: Envelope) -> None:
        self._follow_dispatch(envelope)

    @consumes("dispatch", "assignment_timed_out")
    def on_assignment_timed_out(self, envelope: Envelope) -> None:
        self._follow_dispatch(envelope)

    @consumes("dispatch", "sla_breached")
    def on_sla_breached(self, envelope: Envelope) -> None:
        self._follow_dispatch(envelope)

    @consumes("dispatch", "order_escalated")
    def on_order_escalated(self, envelope: Envelope) -> None:
        self._follow_dispatch(envelope)

    @consumes("dispatch", "order_reopened")
    def on_order_reopened(self, envelope: Envelope) -> None:
        self._follow_dispatch(envelope)

    # -- following the callback -----------------------------------------------------------------

    @consumes("callback", "order_verified")
    def on_order_verified(self, envelope: Envelope) -> None:
        self._follow_callback(envelope)

    @consumes("callback", "order_disputed")
    def on_order_disputed(self, envelope: Envelope) -> None:
        self._follow_callback(envelope)

    @consumes("callback", "order_unverified")
    def on_order_unverified(self, envelope: Envelope) -> None:
        self._follow_callback(envelope)

    @consumes("callback", "unverified_closed")
    def on_unverified_closed(self, envelope: Envelope) -> None:
        self._follow_callback(envelope)

    @consumes("callback", "task_returned")
    def on_task_returned(self, envelope: Envelope) -> None:
        self._follow_callback(envelope)

    # a paid order still `completed` here waits for its verification: parked after a few
    # tries, handed back when that order's verification is applied
    @consumes("settlement", "period_closed")
    def on_period_closed(self, envelope: Envelope) -> None:
        """A verified order settled in a closed period is closed: its loop is complete.

        Settled means paid there, or decided there for good with nothing owed to the partner
        (the customer paid, or the claim was rejected); a line still held and paying nothing
        leaves the order open until a later period settles it."""
        p = envelope.payload
        settled: dict[str, int] = {}
        for line in p["lines"]:
            if line["payable_cents"] > 0 or line["held_cents"] == 0:
                order_id = line["order_id"]
                settled[order_id] = settled.get(order_id, 0) + line["payable_cents"]
        found = queries.orders_to_follow(self.db.conn, sorted(settled))
        for order_id, cents in sorted(settled.items()):
            order = found.get(order_id)
            if order is not None and order.status == "completed" and cents > 0:
                # paid, so verified at the callback: that outcome is still on its way here
                raise RetryLater(f"order {order_id} paid in {p['period']} before orders "
                                 "saw it verified", waiting_for=order_id)
            if order is None or order.status != "verified":
                continue
            self._append(f"order-{order_id}", order.version, [NewEvent("order_settled", {
                "order_id": order_id, "period": p["period"], "partner_id": p["partner_id"],
                "payable_cents": cents})], order_id, "system", causation_id=envelope.event_id)

    def _follow_callback(self, envelope: Envelope) -> None:
        p = envelope.payload
        order = queries.order_to_follow(self.db.conn, p["order_id"])
        if order is None:
            raise RetryLater(f"order {p['order_id']} not known to orders")
        complaint_id = None
        if envelope.event_type == "order_disputed" and p["complaint_requested"]:
            # the customer asked for a complaint: its own order, linked, for the complaint
            # group (request id from the dispute, so a redelivery opens no second one)
            view = queries.order_row(self.db.conn, order.order_id)
            data = load(_CREATE_ORDER, {
                "request_id": f"dispute-{envelope.event_id}", "product_id": view["product_id"],
                "order_type": "complaint", "channel": "phone",
                "description": f"disputed at the callback: {', '.join(p['reasons'])}. "
                               f"{p['notes']}"[:2000],
                "related_order_id": order.order_id, "agent_id": "system"})
            complaint_id = self._open_order(data)["order_id"]
            order = queries.order_to_follow(self.db.conn, p["order_id"])
        event = domain.verification(order, envelope.event_type, p, complaint_id)
        if event is None and domain.awaits_completion(order, envelope.event_type, p) \
                and not already_handled(self.db.conn, "orders.on_order_completed",
                                        p["task_id"]):
            # the outcome overtook dispatch's completion of that visit: wait for it (handed
            # back as soon as an event of this order is applied, if parked meanwhile)
            raise RetryLater(f"order {order.order_id}: the completion {p['task_id']} "
                             "is not followed yet")
        if event is None:  # about a visit the order has moved past (dispatch reopened it)
            return
        self._append(f"order-{order.order_id}", order.version, [event], order.order_id,
                     "system", causation_id=envelope.event_id)

    def _follow_dispatch(self, envelope: Envelope) -> None:
        order_id = envelope.payload["order_id"]
        order = queries.order_to_follow(self.db.conn, order_id)
        if order is None:  # dispatch only knows orders from this log: not expected
            raise RetryLater(f"order {order_id} not known to orders")
        event = domain.progress(order, envelope.event_type, envelope.event_id,
                                envelope.stream_version, envelope.payload)
        if event is not None:
            self._append(f"order-{order_id}", order.version, [event], order_id, "system",
                         causation_id=envelope.event_id)

    # -- the one way events are written --------------------------------------------------------

    def _append(self, stream_id: str, expected_version: int, events: list[NewEvent],
                correlation_id: str, agent_id: str,
                causation_id: str | None = None, commit: bool = False) -> list[Envelope]:
        envelopes = self.db.append(
            stream_id, expected_version, events,
            occurred_at=self.clock.now(), correlation_id=correlation_id,
            causation_id=causation_id or f"cmd-{uuid.uuid4()}", actor=_actor(agent_id),
            project=projector.apply, commit=commit)
        return envelopes


def _actor(agent_id: str) -> str:
    return "system" if agent_id == "system" else f"agent:{agent_id}"


def _maybe(read):  # noqa: ANN001, ANN202
    try:
        return read()
    except NotFound:
        return None

