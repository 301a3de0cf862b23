"""The dispatch service: partners, assignment, SLA timers and the signed partner gateway.

Head office and support reach it over nameko RPC (`serviceloop partner …`); partners' systems
over HTTP JSON at /api/v1 (contracts/gateway.py), signed per partner. It follows orders'
events (created, fault recorded, cancelled) and every decision it takes is an event in its
own log, on the stream `order-<order_id>` or `partner-<partner_id>`.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable
from datetime import timedelta

from nameko.extensions import DependencyProvider
from nameko.timer import timer
from sqlalchemy import insert, update
from sqlalchemy.exc import IntegrityError
from werkzeug.wrappers import Request, Response

from contracts import dispatch as contract
from contracts.errors import ConcurrencyConflict, Conflict, NotFound
from contracts.registry import load
from contracts.signing import new_secret, secret_fingerprint
from serviceloop.answers import AnswersKept, answered_once
from serviceloop.catchup import CatchUp
from serviceloop.clock import isoformat
from serviceloop.consumer import ParkedMessagesRpc, RetryLater, consumes
from serviceloop.entrypoints import http, rpc
from serviceloop.eventstore import Envelope, NewEvent
from serviceloop.nameko_deps import (
    ClockProvider,
    Database,
    EventLogRpc,
    retried_read,
    transactional,
)
from serviceloop.observability import Observable
from services.dispatch import domain, gateway, idempotency, queries
from services.dispatch.assignment import choose_partner
from services.dispatch.gateway import partner_endpoint
from services.dispatch.projections import (
    metadata,
    order_changes,
    partner_credentials,
    projector,
)

log = logging.getLogger(__name__)

TIMER_INTERVAL = float(os.environ.get("DISPATCH_TIMER_INTERVAL", "5"))

_REGISTER = contract.RegisterPartner()
_UPDATE = contract.UpdatePartner()
_ASSIGN = contract.AssignOrder()
_LIST = contract.ListDispatchOrders()


class DispatchSettings(DependencyProvider):
    """Timer lengths from config: ACCEPT_WITHIN_MINUTES (120), SCHEDULE_WITHIN_MINUTES (1440)."""

    def setup(self) -> None:
        config = self.container.config
        self.timers = domain.Timers(
            accept_within=timedelta(minutes=float(config.get("ACCEPT_WITHIN_MINUTES", 120))),
            schedule_within=timedelta(minutes=float(config.get("SCHEDULE_WITHIN_MINUTES",
                                                               1440))))

    def get_dependency(self, worker_ctx) -> domain.Timers:  # noqa: ANN001
        return self.timers


class DispatchService(EventLogRpc, ParkedMessagesRpc, CatchUp, AnswersKept, Observable):
    name = "dispatch"

    db = Database("dispatch", metadata)
    clock = ClockProvider()
    timers = DispatchSettings()
    gateway = gateway.GatewaySettings()
    # the gateway's answers to partners' Idempotency-Keys go when the RPC answers do
    ANSWERS_ALSO_KEPT = {"idempotency_keys": "created_at"}

    # -- following orders ----------------------------------------------------------------------

    @consumes("orders", "order_created")
    def on_order_created(self, envelope: Envelope) -> None:
        payload = envelope.payload
        if queries.order_record(self.db.conn, payload["order_id"]) is not None:
            return
        received = domain.receive(payload)
        events = [received]
        if received.payload["status"] == "ready":
            order = domain.DispatchOrder.from_row(_pending_row(received.payload))
            events.append(self._placement(order))
        self._append_order(payload["order_id"], 0, events, envelope.event_id, "system")

    @consumes("orders", "order_fault_recorded")
    def on_order_fault_recorded(self, envelope: Envelope) -> None:
        order = self._known_order(envelope)
        event = domain.fault_code_received(order, envelope.payload["fault_code"])
        if event is None:
            return
        ready = domain.with_fault(order, envelope.payload["fault_code"])
        self._append_order(order.order_id, order.version, [event, self._placement(ready)],
                           envelope.event_id, "system")

    @consumes("orders", "order_cancelled")
    def on_order_cancelled(self, envelope: Envelope) -> None:
        order = self._known_order(envelope)
        event = domain.withdraw(order, f"cancelled in orders: {envelope.payload['reason']}")
        if event is not None:
            self._append_order(order.order_id, order.version, [event], envelope.event_id,
                               "system")

    @consumes("callback", "order_disputed")
    def on_order_disputed(self, envelope: Envelope) -> None:
        order = self._known_order(envelope)
        reopened = domain.reopen(order, envelope.payload)
        if reopened is not None:
            event, ready = reopened
            self._append_order(order.order_id, order.version, [event, self._placement(ready)],
                               envelope.event_id, "system")

    def _known_order(self, envelope: Envelope) -> domain.DispatchOrder:
        order = queries.order(self.db.conn, envelope.payload["order_id"])
        if order is None:  # overtook its order_created (another queue): try again shortly
            raise RetryLater(f"order {envelope.payload['order_id']} not received yet")
        return order

    def _placement(self, order: domain.DispatchOrder, assigned_by: str = "system") -> NewEvent:
        """Choose a partner now (under the assignment lock) and say so in an event."""
        now = self.clock.now()
        profiles, load = queries.placement_facts(self.db.conn, now.date().isoformat())
        choice = choose_partner(order.to_place(), profiles, load)
        return domain.placement(order, choice, now, self.timers, assigned_by)

    # -- head office: partners -----------------------------------------------------------------

    def _secret_again(self, answer: dict) -> str:
        """The secret of a lost answer, asked for again with its request id: kept once only,
        with the partner's credentials, so it can be shown only until it is rotated."""
        partner = answer.get("partner", answer)
        secret = queries.secret_of(self.db.conn, partner["partner_id"],
                                   partner["secret_fingerprint"])
        if secret is None:
            raise Conflict(
                f"the secret this request was answered with has been rotated since: rotate "
                f"partner {partner['partner_id']}'s secret again to get a new one",
                {"request_id": ["its secret was rotated since"]}, code="secret_rotated")
        return secret

    @rpc
    @transactional
    @answered_once(withheld="secret", restore=_secret_again)
    def register_partner(self, payload: dict) -> dict:
        """A new partner, and its secret: shown in this answer and never again."""
        data = load(_REGISTER, payload)
        partner_id = f"p-{uuid.uuid4().hex[:12]}"
        secret = new_secret()
        now = self.clock.now()
        event = NewEvent("partner_registered", {
            "partner_id": partner_id, "name": data["name"].strip(), "regions": data["regions"],
            "categories": sorted(set(data["categories"])),
            "daily_capacity": data["daily_capacity"], "rating": data["rating"],
            "secret_fingerprint": secret_fingerprint(secret)})
        self._append(f"partner-{partner_id}", 0, [event], partner_id,
                     _actor(data["agent_id"]))
        self.db.conn.execute(insert(partner_credentials).values(
            partner_id=partner_id, secret=secret, fingerprint=secret_fingerprint(secret),
            rotated_at=isoformat(now)))
        view = queries.partner_view(self.db.conn, partner_id, now.date().isoformat())
        return {"partner": view, "secret": secret}

    @rpc
    @transactional
    @answered_once
    def update_partner(self, payload: dict) -> dict:
        data = load(_UPDATE, payload)
        today = self.clock.now().date().isoformat()
        current = queries.partner_view(self.db.conn, data["partner_id"], today)
        profile = {key: data.get(key, current[key]) for key in
                   ("name", "regions", "categories", "daily_capacity", "rating", "active")}
        profile["categories"] = sorted(set(profile["categories"]))
        event = NewEvent("partner_updated", {"partner_id": current["partner_id"], **profile})
        self._append(f"partner-{current['partner_id']}", current["version"], [event],
                     current["partner_id"], _actor(data["agent_id"]))
        return queries.partner_view(self.db.conn, current["partner_id"], today)

    @rpc
    @transactional
    @answered_once(withheld="secret", restore=_secret_again)
    def rotate_secret(self, partner_id: str, agent_id: str = "system") -> dict:
        """A new secret replaces the old one at once; the answer is the only place it shows."""
        today = self.clock.now().date().isoformat()
        current = queries.partner_view(self.db.conn, str(partner_id), today)
        secret = new_secret()
        fingerprint = secret_fingerprint(secret)
        self._append(f"partner-{current['partner_id']}", current["version"],
                     [NewEvent("partner_secret_rotated", {
                         "partner_id": current["partner_id"], "secret_fingerprint": fingerprint})],
                     current["partner_id"], _actor(agent_id))
        self.db.conn.execute(update(partner_credentials)
                             .where(partner_credentials.c.partner_id == current["partner_id"])
                             .values(secret=secret, fingerprint=fingerprint,
                                     rotated_at=isoformat(self.clock.now())))
        return {"partner_id": current["partner_id"], "secret": secret,
                "secret_fingerprint": fingerprint}

    @rpc
    @retried_read
    def get_partner(self, partner_id: str) -> dict:
        with self.db.reader() as conn:
            return queries.partner_view(conn, str(partner_id),
                                        self.clock.now().date().isoformat())

    @rpc
    @retried_read
    def list_partners(self) -> list[dict]:
        with self.db.reader() as conn:
            return queries.partner_views(conn, self.clock.now().date().isoformat())

    # -- head office: orders -------------------------------------------------------------------

    @rpc
    @transactional
    @answered_once
    def assign(self, payload: dict) -> dict:
        """A person assigns an order (escalated: nobody qualified was left) to a partner."""
        data = load(_ASSIGN, payload)
        conn = self.db.conn
        order = self._order_or_404(conn, data["order_id"])
        queries.lock_assignments(conn)
        partner = queries.partner_profile(conn, data["partner_id"])
        now = self.clock.now()
        load_today = queries.load_on(conn, now.date().isoformat()).get(partner.partner_id, 0)
        event = domain.assign_by_person(order, partner, load_today, now, self.timers,
                                        data["agent_id"])
        self._append_order(order.order_id, order.version, [event], f"cmd-{uuid.uuid4()}",
                           _actor(data["agent_id"]))
        return queries.support_view(queries.order_record(conn, order.order_id))

    @rpc
    @retried_read
    def get_order(self, order_id: str) -> dict:
        with self.db.reader() as conn:
            row = queries.order_record(conn, str(order_id))
        if row is None:
            raise NotFound(f"dispatch has no order {order_id}", {"order_id": ["unknown"]},
                           code="order_not_found")
        return queries.support_view(row)

    @rpc
    @retried_read
    def list_orders(self, filters: dict | None = None) -> dict:
        data = load(_LIST, filters or {})
        with self.db.reader() as conn:
            return queries.list_support(conn, data["status"], data["partner_id"], data["page"],
                                        data["page_size"])

    @rpc
    @retried_read
    def escalations(self) -> list[dict]:
        with self.db.reader() as conn:
            return queries.list_support(conn, "escalated", None, 1, 500)["items"]

    @rpc
    @retried_read
    def order_history(self, order_id: str) -> list[dict]:
        with self.db.reader() as conn:
            return [e.to_dict() for e in self.db.store.stream(conn, f"order-{order_id}")]

    # -- timers --------------------------------------------------------------------------------

    @timer(interval=TIMER_INTERVAL)
    def check_deadlines(self) -> None:
        try:
            self.run_timers()
        except Exception as error:  # noqa: BLE001 - the next tick tries again
            log.warning("dispatch timers failed: %s", error)

    @rpc
    def run_timers(self) -> dict:
        """End every assignment whose deadline passed and re-dispatch it; returns counts.

        Each order is its own transaction and append with its expected version: two replicas
        running the same pass cannot both act (the second gets a concurrency conflict).
        """
        now = self.clock.now()
        with self.db.reader() as conn:
            due = queries.due_orders(conn, isoformat(now))
        counts = {"timed_out": 0, "sla_breached": 0, "escalated": 0, "skipped": 0}
        for order_id in due:
            try:
                outcome = self._expire(order_id)
            except (ConcurrencyConflict, IntegrityError):
                self.db.rollback()
                outcome = None
            if outcome is None:
                counts["skipped"] += 1
                continue
            counts["sla_breached" if outcome[0] == "sla_breached" else "timed_out"] += 1
            counts["escalated"] += outcome[1] == "order_escalated"
        self._forget_old_signatures()
        return counts

    @transactional
    def _expire(self, order_id: str) -> tuple[str, str] | None:
        order = queries.order(self.db.conn, order_id)
        if order is None:
            return None
        ended = domain.overdue(order, self.clock.now())
        if ended is None:
            return None
        placed = self._placement(domain.ended(order))
        self._append_order(order_id, order.version, [ended, placed], f"timer-{uuid.uuid4()}",
                           "system")
        return ended.event_type, placed.event_type

    @transactional
    def _forget_old_signatures(self) -> None:
        idempotency.forget_old_signatures(self.db.conn)

    # -- the partner gateway -------------------------------------------------------------------

    @http("GET", "/api/v1/openapi.json")
    def openapi(self, request: Request) -> Response:
        from contracts.openapi import openapi_document

        return gateway.json_response(200, openapi_document(), str(uuid.uuid4()))

    @http("GET,POST,PUT,PATCH,DELETE", "/api/v1/<path:rest>")
    def no_such_route(self, request: Request, rest: str) -> Response:
        return gateway.error_response(
            NotFound(f"no {request.method} /api/v1/{rest}", {"path": ["no such route"]},
                     code="no_such_route"), str(uuid.uuid4()))

    @partner_endpoint("list_orders")
    def _list_orders(self, asked: gateway.Asked, query: dict) -> dict:
        with self.db.reader() as conn:
            return queries.partner_orders(conn, asked.partner_id, query["status"],
                                          query["page"], query["page_size"])

    @partner_endpoint("get_order")
    def _get_order(self, asked: gateway.Asked, query: dict, order_id: str) -> dict:
        # a read shows only what the partner holds now: an order it once held is 404 too
        row = asked.order
        if row is None or row["partner_id"] != asked.partner_id or \
                row["status"] not in domain.HELD:
            domain.check_owner(None, asked.partner_id, order_id, ever_assigned=False)
        return queries.partner_order_view(row)

    @partner_endpoint("accept")
    def _accept(self, asked: gateway.Asked, data: dict, order_id: str) -> dict:
        order = self._owned(asked, order_id)
        return self._act(asked, order,
                         domain.accept(order, self.clock.now(), self.timers))

    @partner_endpoint("reject")
    def _reject(self, asked: gateway.Asked, data: dict, order_id: str) -> dict:
        order = self._owned(asked, order_id)
        rejected = domain.reject(order, data["reason_code"], data["note"])
        placed = self._placement(domain.ended(order))
        return self._act(asked, order, rejected, placed)

    @partner_endpoint("schedule")
    def _schedule(self, asked: gateway.Asked, data: dict, order_id: str) -> dict:
        order = self._owned(asked, order_id)
        return self._act(asked, order, domain.schedule(
            order, data["window_start"], data["window_end"], self.clock.now()))

    @partner_endpoint("cancel_appointment")
    def _cancel_appointment(self, asked: gateway.Asked, data: dict, order_id: str) -> dict:
        order = self._owned(asked, order_id)
        return self._act(asked, order, domain.cancel_appointment(
            order, data["reason_code"], data["note"], self.clock.now(), self.timers))

    @partner_endpoint("arrive")
    def _arrive(self, asked: gateway.Asked, data: dict, order_id: str) -> dict:
        order = self._owned(asked, order_id)
        return self._act(asked, order,
                         domain.arrive(order, data["coordinates"], self.clock.now()))

    @partner_endpoint("complete")
    def _complete(self, asked: gateway.Asked, data: dict, order_id: str) -> dict:
        order = self._owned(asked, order_id)
        return self._act(asked, order, domain.complete(order, data))

    def _owned(self, asked: gateway.Asked, order_id: str) -> domain.DispatchOrder:
        """The order as read at admission, if it is the asking partner's; else 409 (it had
        been theirs) or 404. An action on a stale read fails at append (expected version)."""
        row, partner_id = asked.order, asked.partner_id
        order = domain.DispatchOrder.from_row(row) if row else None
        if order is not None and order.partner_id == partner_id:
            return domain.check_owner(order, partner_id, order_id, True)
        if order is None:
            return domain.check_owner(None, partner_id, order_id, False)
        # not this partner's now: had it ever been (409), or never (404)?
        with self.db.reader() as conn:
            ever = queries.ever_assigned(conn, order_id, partner_id)
        return domain.check_owner(order, partner_id, order_id, ever)

    def _act(self, asked: gateway.Asked, order: domain.DispatchOrder,
             *events: NewEvent) -> dict:
        """Append the partner's events; the answer is the order as it then is: its row as
        read at admission (the append succeeds only at that version) with what the read
        models wrote. The answer is recorded with the read models, before the append takes
        the log's lock (held to commit), so the lock waits for nothing else. The action's
        writes start at the gateway's savepoint: if they fail, the signature recorded at
        admission in the same transaction is still committed."""
        answer: list[dict] = []

        def project(conn, drafts: list[Envelope]) -> None:  # noqa: ANN001
            if asked.begin_action is not None:
                asked.begin_action(conn)
            with order_changes(conn) as changes:
                projector.apply(conn, drafts)
            row = {**asked.order, **changes.get(order.order_id, {})}
            if row["partner_id"] != asked.partner_id:  # rejected: no longer this partner's
                row["status"] = "released"
            answer.append(queries.partner_order_view(row))
            if asked.record_answer is not None:
                asked.record_answer(answer[0])

        self._append_order(order.order_id, order.version, list(events),
                           f"http-{asked.request_id}", f"partner:{asked.partner_id}", project,
                           commit=True)
        return answer[0]

    # -- the one way events are written --------------------------------------------------------

    def _order_or_404(self, conn, order_id: str) -> domain.DispatchOrder:  # noqa: ANN001
        order = queries.order(conn, order_id)
        if order is None:
            raise NotFound(f"dispatch has no order {order_id}", {"order_id": ["unknown"]},
                           code="order_not_found")
        return order

    def _append_order(self, order_id: str, expected_version: int, events: list[NewEvent],
                      causation_id: str, actor: str, project: Callable = projector.apply,
                      commit: bool = False) -> list[Envelope]:
        return self._append(f"order-{order_id}", expected_version, events, order_id, actor,
                            causation_id, project, commit)

    def _append(self, stream_id: str, expected_version: int, events: list[NewEvent],
                correlation_id: str, actor: str, causation_id: str | None = None,
                project: Callable = projector.apply, commit: bool = False) -> list[Envelope]:
        """`project` writes the read models (projector.apply, and whatever must happen in the
        transaction before the log's append lock is taken). `commit`: the append is the unit
        of work's last write; on PostgreSQL its COMMIT goes in the append's round trip, so
        the log's lock is released at once, not after a green-thread switch and a round trip."""
        return self.db.append(
            stream_id, expected_version, events, occurred_at=self.clock.now(),
            correlation_id=correlation_id, causation_id=causation_id or f"cmd-{uuid.uuid4()}",
            actor=actor, project=project, commit=commit)


def _actor(agent_id: str) -> str:
    return "system" if agent_id == "system" else f"agent:{agent_id}"


def _pending_row(received: dict) -> dict:
    """The row `order_received` makes, before it is written (to choose a partner with)."""
    address = received["address"]
    return {
        "order_id": received["order_id"], "order_type": received["order_type"],
        "status": "ready", "category": received["category"], "model": received["model"],
        "serial": received["serial"], "phone": received["phone"],
        "province": address["province"], "city": address["city"],
        "district": address["district"], "fault_code": received["fault_code"],
        "in_warranty": received["in_warranty"],
        "confirmation_code": received["confirmation_code"], "partner_id": None, "attempt": 0,
        "excluded": "[]", "accept_by": None, "schedule_by": None, "window_start": None,
        "window_end": None, "arrived_at": None, "arrival_lat": None, "arrival_lon": None,
        "version": 1,
    }
