"""The settlement service: audited partner claims, period statements and reconciliation.

Finance reaches it over nameko RPC (`serviceloop settlement …`). It follows orders
(`order_created`: warranty, product, where), dispatch (`order_completed`: the claim) and
callback (verified, disputed, unverified: the evidence that releases or rejects it). Every
decision is a `claim_decided` event on the claim's stream `claim-<completion event id>`, taken
again whenever new evidence arrives; a closed period is a `period_closed` event per partner
and never changes: later evidence becomes an adjustment line in the next period.
"""

from __future__ import annotations

import os
import uuid

from nameko.extensions import DependencyProvider
from sqlalchemy import Connection

from contracts import settlement as contract
from contracts.errors import ConcurrencyConflict, NotFound, ValidationFailed
from contracts.registry import load
from serviceloop.answers import AnswersKept, answered_once
from serviceloop.catchup import CatchUp
from serviceloop.consumer import ParkedMessagesRpc, RetryLater, consumes
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
from services.settlement import claims, csvfiles, evidence, periods, queries, reports
from services.settlement.projections import metadata, projector

_PART_RETURN = contract.PartReturn()
DEFAULT_MAX_CHECKIN_KM = 2.0


def _max_checkin_km(value: object) -> float:
    try:
        km = float(value)
    except (TypeError, ValueError):
        km = -1.0
    if not km > 0:
        raise ValueError(f"SETTLEMENT_MAX_CHECKIN_KM must be a positive number, not {value!r}")
    return km


class SettlementSettings(DependencyProvider):
    """Config: SETTLEMENT_MAX_CHECKIN_KM (2.0), how far from the customer's address an
    arrival may check in before the claim is held; the nameko config key, else the
    environment variable of the same name."""

    def __init__(self) -> None:
        # read here too, so the class built without nameko (bench, tests) has it
        self.max_checkin_km = _max_checkin_km(
            os.environ.get("SETTLEMENT_MAX_CHECKIN_KM", DEFAULT_MAX_CHECKIN_KM))

    def setup(self) -> None:
        self.max_checkin_km = _max_checkin_km(self.container.config.get(
            "SETTLEMENT_MAX_CHECKIN_KM",
            os.environ.get("SETTLEMENT_MAX_CHECKIN_KM", DEFAULT_MAX_CHECKIN_KM)))

    def get_dependency(self, worker_ctx):  # noqa: ANN001, ANN201
        return self


class SettlementService(EventLogRpc, ParkedMessagesRpc, CatchUp, AnswersKept, Observable):
    name = "settlement"

    db = Database("settlement", metadata)
    clock = ClockProvider()
    settings = SettlementSettings()

    def service_metrics(self, metrics, conn) -> None:  # noqa: ANN001 - for /metrics
        """Claims with any line in each decision, and the cents decided each way."""
        total, claims_by_decision, cents_by_decision = queries.decision_totals(conn)
        metrics.add("serviceloop_settlement_claims_total", "counter", "Claims opened", total)
        for decision, n in claims_by_decision.items():
            metrics.add("serviceloop_settlement_claims", "gauge",
                        "Claims with at least one line so decided", n, decision=decision)
        for decision, cents in cents_by_decision.items():
            metrics.add("serviceloop_settlement_cents", "gauge",
                        "Claimed cents by decision (approved: payable by the manufacturer)",
                        cents, decision=decision)

    # -- evidence from the other services ------------------------------------------------------

    @consumes("orders", "order_created")
    def on_order_created(self, envelope: Envelope) -> None:
        order_id = envelope.payload["order_id"]
        if queries.order_known(self.db.conn, order_id):
            return
        self._append(f"order-{order_id}", 0, [evidence.order_facts_recorded(envelope)],
                     order_id, envelope.event_id)

    @consumes("dispatch", "order_completed")
    def on_order_completed(self, envelope: Envelope) -> None:
        conn = self.db.conn
        if queries.claim_opened(conn, envelope.event_id):
            return
        self._decide(conn, claims.opened(envelope), "completion", envelope.event_id)

    @consumes("callback", "order_verified")
    def on_order_verified(self, envelope: Envelope) -> None:
        self._callback_outcome(envelope, "verified")

    @consumes("callback", "order_disputed")
    def on_order_disputed(self, envelope: Envelope) -> None:
        self._callback_outcome(envelope, "disputed")

    @consumes("callback", "order_unverified")
    def on_order_unverified(self, envelope: Envelope) -> None:
        self._callback_outcome(envelope, "unverified")

    @consumes("dispatch", "sla_breached")
    def on_sla_breached(self, envelope: Envelope) -> None:
        if queries.breach_recorded(self.db.conn, envelope.event_id):
            return
        order_id = envelope.payload["order_id"]
        self._append(f"sla-{envelope.event_id}", 0, [evidence.sla_breach_recorded(envelope)],
                     order_id, envelope.event_id)

    def _callback_outcome(self, envelope: Envelope, state: str) -> None:
        p = envelope.payload
        if p["task_id"].startswith("review-"):
            return  # a quality re-check of an automatic verification: the claim has its answer
        conn = self.db.conn
        claim = queries.claim(conn, p["task_id"])
        if claim is None:
            raise RetryLater(f"claim {p['task_id']} not opened yet")
        if claim["callback"] == "disputed":
            return  # a rejection after a dispute stands
        claims.record_callback(claim, state, p)
        self._decide(conn, claim, f"callback_{state}", envelope.event_id)
        if state == "disputed":  # a re-visit's claim that looked like a duplicate is not one
            self._decide_again(conn, queries.other_visits(conn, claim),
                               "dispute_of_earlier_visit", envelope.event_id)

    # -- finance -------------------------------------------------------------------------------

    @rpc
    @transactional
    @answered_once
    def load_rates(self, csv_text: str, agent_id: str = "finance") -> dict:
        """A rate card or a parts price list from CSV (the header says which)."""
        if not isinstance(csv_text, str):
            raise ValidationFailed("send the CSV text", {"csv_text": ["expected text"]})
        kind = csvfiles.detect(csv_text)
        card_id = f"{kind}-{uuid.uuid4().hex[:10]}"
        if kind == "rates":
            data = csvfiles.parse_rates(csv_text)
            event = NewEvent("rate_card_loaded", {"card_id": card_id, **data})
        else:
            data = csvfiles.parse_parts(csv_text)
            event = NewEvent("price_list_loaded", {"list_id": card_id, **data})
        (loaded,) = self._append(f"rates-{card_id}", 0, [event], card_id, f"cmd-{uuid.uuid4()}",
                                 actor=f"finance:{agent_id}")
        # every open claim on or after the card's date is priced again with the card now in
        # force on its completion day (held for want of a rate, or priced with an older card);
        # a claim already in a closed statement keeps the card it was settled with, except
        # for its lines that no card priced (see evidence._cards)
        conn = self.db.conn
        self._decide_again(conn, queries.claims_awaiting_card(conn, data["effective_from"]),
                           "rates_loaded", loaded.event_id)
        return {"card_id": card_id, "kind": kind, "effective_from": data["effective_from"],
                "rows": len(data.get("parts", [])) + len(data.get("labour", []))
                + len(data.get("travel", []))}

    @rpc
    @retried_read
    def current_rates(self, on: str | None = None) -> dict:
        day = on or self.clock.now().date().isoformat()
        with self.db.reader() as conn:
            cards = queries.cards_in_force(conn, day)
        return {"on": day, "rates": cards["rates"][1], "parts": cards["parts"][1]}

    @rpc
    @transactional
    @answered_once
    def record_part_return(self, payload: dict, agent_id: str = "finance") -> dict:
        """An old part back at a parts centre, or its return waived by a named person; the
        claims holding for it are decided again."""
        data = load(_PART_RETURN, payload)
        if bool(data["parts_centre"]) == bool(data["waived_by"]):
            raise ValidationFailed("give the parts centre it was returned to, or who waived it",
                                   {"parts_centre": ["one of parts_centre, waived_by"]})
        conn = self.db.conn
        if queries.part_return_recorded(conn, data["serial"]):
            return {"serial": data["serial"], "already_recorded": True, "claims": []}
        kind = "returned" if data["parts_centre"] else "waived"
        (envelope,) = self._append(f"part-{data['serial']}", 0, [NewEvent(
            "part_return_recorded", {"serial": data["serial"], "kind": kind,
                                     "parts_centre": data["parts_centre"],
                                     "waived_by": data["waived_by"], "note": data["note"]})],
            data["serial"], f"cmd-{uuid.uuid4()}", actor=f"finance:{agent_id}")
        claim_ids = queries.claims_with_old_part(conn, data["serial"])
        self._decide_again(conn, claim_ids, "part_returned", envelope.event_id)
        return {"serial": data["serial"], "kind": kind, "waived_by": data["waived_by"],
                "claims": claim_ids}

    @rpc
    @retried_read
    def claims_for_order(self, order_id: str) -> list[dict]:
        with self.db.reader() as conn:
            return queries.claims_of_order(conn, str(order_id))

    @rpc
    @retried_read
    def partners_to_close(self, period: str) -> list[str]:
        """The partners `run(period)` closes: every one with a claim up to the period's end."""
        _, end = periods.month(period)
        with self.db.reader() as conn:
            return queries.partners_with_claims(conn, end)

    @rpc
    def run(self, period: str, partner_id: str | None = None) -> list[dict]:
        """Close `period` (YYYY-MM) for every partner with claims (or only `partner_id`); a
        closed one is answered as it was closed. Returns the statements."""
        _, end = periods.month(period)
        partners = self.partners_to_close(period)
        if partner_id is not None:
            partners = [p for p in partners if p == str(partner_id)]
        result = []
        for partner_id in partners:
            try:
                result.append(self._close(period, partner_id, end))
            except ConcurrencyConflict:  # another run closed it first: the same statement
                self.db.rollback()
                result.append(self.statement(period, partner_id))
        return result

    @transactional
    def _close(self, period: str, partner_id: str, end: str) -> dict:
        body, closing = periods.statement(self.db.conn, period, partner_id, end)
        if closing is not None:
            self._append(f"period-{period}-{partner_id}", 0, [closing], f"period-{period}",
                         f"run-{period}", actor="finance:run")
        return periods.as_sent(body)

    @rpc
    @retried_read
    def preview(self, period: str, partner_id: str) -> dict:
        """The statement `run(period, partner_id)` would close now, closing nothing (a closed
        period answers its closed statement)."""
        _, end = periods.month(period)
        with self.db.reader() as conn:
            body, _ = periods.statement(conn, period, partner_id, end)
        return periods.as_sent(body)

    @rpc
    @retried_read
    def statement(self, period: str, partner_id: str) -> dict:
        periods.month(period)
        with self.db.reader() as conn:
            body = queries.closed_statement(conn, period, partner_id)
        if body is None:
            raise NotFound(f"no closed statement for {partner_id} in {period}",
                           {"period": ["not closed for this partner"]},
                           code="statement_not_found")
        return body

    @rpc
    @retried_read
    def reconcile(self, period: str, partner_id: str, csv_text: str) -> dict:
        """Match a partner's own statement (CSV: order_id,line_id,claimed_cents) with ours."""
        start, end = periods.month(period)
        theirs = csvfiles.parse_partner_statement(csv_text)
        with self.db.reader() as conn:
            rows = queries.claims_of_partner(conn, partner_id)
        return reports.reconcile(period, partner_id, start, end, rows, theirs)

    @rpc
    @retried_read
    def scorecard(self, period: str) -> list[dict]:
        """Per partner: completed, first-visit fix rate, repeat repairs, disputes,
        satisfaction, SLA breaches and the share of claimed value rejected."""
        start, end = periods.month(period)
        with self.db.reader() as conn:
            rows = queries.claims_completed(conn, start, end)
            breaches = queries.sla_breaches_by_partner(conn, start, end)
        return reports.scorecards(rows, breaches)

    # -- deciding and writing ------------------------------------------------------------------

    def _decide(self, conn: Connection, claim: dict, cause: str, causation_id: str) -> None:
        """Decide `claim` again with the evidence as it stands; append if anything moved.
        Not before settlement has its order's facts (a completion can come first)."""
        found = queries.evidence(conn, claim)
        if found.facts is None:
            raise RetryLater(f"order {claim['order_id']} not known to settlement yet")
        decided = claims.decide(conn, claim, cause, self.settings.max_checkin_km, found)
        if decided is not None:
            self._append(f"claim-{claim['claim_id']}", claim["version"], [decided],
                         claim["order_id"], causation_id)

    def _decide_again(self, conn: Connection, claim_ids: list[str], cause: str,
                      causation_id: str) -> None:
        for claim_id in sorted(claim_ids):  # locked in one order by every transaction
            self._decide(conn, queries.claim(conn, claim_id), cause, causation_id)

    def _append(self, stream_id: str, expected_version: int, events: list[NewEvent],
                correlation_id: str, causation_id: str, actor: str = "system") -> list[Envelope]:
        return self.db.append(
            stream_id, expected_version, events, occurred_at=self.clock.now(),
            correlation_id=correlation_id, causation_id=causation_id, actor=actor,
            project=projector.apply)
