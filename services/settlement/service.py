"""The settlement service: audited partner claims, period statements and reconciliation.

Finance reaches it over nameko RPC (`serviceloop settlement …`). It follows orders
(`order_created`: warranty, product, where), dispatch (`order_completed`: the claim) and
callback (verified, disputed, unverified: the evidence that releases or rejects it). Every
decision is a `claim_decided` event on the claim's stream `claim-<completion event id>`, taken
again whenever new evidence arrives; a closed period is a `period_closed` event per partner
and never changes: later evidence becomes an adjustment line in the next period.
"""

from __future__ import annotations

import calendar
import json
import os
import uuid
from datetime import date

from nameko.extensions import DependencyProvider
from nameko.rpc import rpc
from sqlalchemy import and_, case, func, or_, select

from contracts import settlement as contract
from contracts.errors import ConcurrencyConflict, NotFound, ValidationFailed
from contracts.registry import load
from serviceloop.catchup import CatchUp
from serviceloop.consumer import ParkedMessagesRpc, RetryLater, consumes
from serviceloop.eventstore import Envelope, NewEvent
from serviceloop.nameko_deps import ClockProvider, Database, EventLogRpc, transactional
from serviceloop.observability import Observable
from services.settlement import csvfiles, ratecard, reports, rules
from services.settlement.projections import (
    claim_parts,
    claims,
    metadata,
    order_facts,
    part_returns,
    projector,
    rate_cards,
    settled,
    sla_breaches,
    statements,
)

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


class SettlementService(EventLogRpc, ParkedMessagesRpc, CatchUp, Observable):
    name = "settlement"

    db = Database("settlement", metadata)
    clock = ClockProvider()
    settings = SettlementSettings()

    def service_metrics(self, metrics, conn) -> None:  # noqa: ANN001 - for /metrics
        """Claims with any line in each decision, and the cents decided each way."""
        c = claims.c
        row = conn.execute(select(
            func.count(), func.sum(case((c.cut_cents > 0, 1), else_=0)),
            func.sum(case((c.held_cents > 0, 1), else_=0)),
            func.sum(case((c.rejected_cents > 0, 1), else_=0)),
            func.sum(case((c.payable_cents > 0, 1), else_=0)),
            func.sum(c.payable_cents), func.sum(c.cut_cents), func.sum(c.held_cents),
            func.sum(c.rejected_cents))).one()
        total, cut, held, rejected, approved = (int(v or 0) for v in row[:5])
        metrics.add("serviceloop_settlement_claims_total", "counter", "Claims opened", total)
        for decision, n in (("approved", approved), ("cut", cut), ("held", held),
                            ("rejected", rejected)):
            metrics.add("serviceloop_settlement_claims", "gauge",
                        "Claims with at least one line so decided", n, decision=decision)
        for decision, cents in zip(("approved", "cut", "held", "rejected"), row[5:],
                                   strict=True):
            metrics.add("serviceloop_settlement_cents", "gauge",
                        "Claimed cents by decision (approved: payable by the manufacturer)",
                        int(cents or 0), decision=decision)

    # -- evidence from the other services ------------------------------------------------------

    @consumes("orders", "order_created")
    def on_order_created(self, envelope: Envelope) -> None:
        p = envelope.payload
        if self.db.conn.execute(select(order_facts.c.order_id)
                                .where(order_facts.c.order_id == p["order_id"])).first():
            return
        self._append(f"order-{p['order_id']}", 0, [NewEvent("order_facts_recorded", {
            "order_id": p["order_id"], "order_type": p["order_type"],
            "category": p["category"], "product_id": p["product_id"], "serial": p["serial"],
            "province": p["address"]["province"], "lat": p["address"].get("lat"),
            "lon": p["address"].get("lon"), "warranty": p["warranty"]})],
            p["order_id"], envelope.event_id)

    @consumes("dispatch", "order_completed")
    def on_order_completed(self, envelope: Envelope) -> None:
        p = envelope.payload
        conn = self.db.conn
        if conn.execute(select(claims.c.claim_id)
                        .where(claims.c.claim_id == envelope.event_id)).first():
            return
        if self._facts(conn, p["order_id"]) is None:
            raise RetryLater(f"order {p['order_id']} not known to settlement yet")
        lines = [{"line_id": "labour", "kind": "labour", "part_code": None, "old_serial": None,
                  "new_serial": None, "charged_to": "manufacturer",
                  "claimed_cents": p["labour_fee_cents"]},
                 {"line_id": "travel", "kind": "travel", "part_code": None, "old_serial": None,
                  "new_serial": None, "charged_to": "manufacturer",
                  "claimed_cents": p["travel_fee_cents"]}]
        for n, part in enumerate(p["parts"], start=1):
            lines.append({"line_id": f"part-{n}", "kind": "part", "part_code": part["part_code"],
                          "old_serial": part["old_serial"], "new_serial": part["new_serial"],
                          "charged_to": part["charged_to"], "quantity": part["quantity"],
                          "claimed_cents": part["fee_cents"] * part["quantity"]})
        claim = {
            "claim_id": envelope.event_id, "order_id": p["order_id"],
            "partner_id": p["partner_id"], "completed_on": envelope.occurred_at[:10],
            "serial": p["serial"], "order_type": p["order_type"], "callback": "pending",
            "customer_paid_cents": p["customer_paid_cents"], "customer_paid_confirmed": None,
            "installation_barcode": p["installation_barcode"], "satisfaction": None,
            "lines": lines, "version": 0,
            "evidence": {"fault_code": p["fault_code"], "category": p["category"],
                         "arrival_lat": p["arrival_lat"], "arrival_lon": p["arrival_lon"],
                         "travel_distance_km": p["travel_distance_km"]},
        }
        self._decide(conn, claim, "completion", envelope.event_id)

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
        p = envelope.payload
        if self.db.conn.execute(select(sla_breaches.c.breach_id)
                                .where(sla_breaches.c.breach_id == envelope.event_id)).first():
            return
        self._append(f"sla-{envelope.event_id}", 0, [NewEvent("sla_breach_recorded", {
            "breach_id": envelope.event_id, "order_id": p["order_id"],
            "partner_id": p["partner_id"], "kind": p["kind"], "due_at": p["due_at"]})],
            p["order_id"], envelope.event_id)

    def _callback_outcome(self, envelope: Envelope, state: str) -> None:
        p = envelope.payload
        if p["task_id"].startswith("review-"):
            return  # a quality re-check of an automatic verification: the claim has its answer
        conn = self.db.conn
        claim = self._claim(conn, p["task_id"])
        if claim is None:
            raise RetryLater(f"claim {p['task_id']} not opened yet")
        if claim["callback"] == "disputed":
            return  # a rejection after a dispute stands
        claim["callback"] = state
        if p.get("customer_paid_cents") is not None:
            claim["customer_paid_confirmed"] = p["customer_paid_cents"]
        if p.get("satisfaction") is not None:
            claim["satisfaction"] = p["satisfaction"]
        self._decide(conn, claim, f"callback_{state}", envelope.event_id)
        if state == "disputed":  # a re-visit's claim that looked like a duplicate is not one
            later = conn.execute(select(claims.c.claim_id).where(
                claims.c.order_id == claim["order_id"], claims.c.claim_id != claim["claim_id"])
            ).scalars().all()
            for claim_id in later:
                self._decide(conn, self._claim(conn, claim_id), "dispute_of_earlier_visit",
                             envelope.event_id)
    # -- finance -------------------------------------------------------------------------------

    @rpc
    @transactional
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
        # for its lines that no card priced (see _cards)
        conn = self.db.conn
        waiting = conn.execute(select(claims.c.claim_id).outerjoin(
            settled, settled.c.claim_id == claims.c.claim_id).where(
            claims.c.completed_on >= data["effective_from"],
            or_(settled.c.claim_id.is_(None), claims.c.lines.contains("no_rate_in_force"),
                claims.c.lines.contains("part_not_on_price_list")))
            .order_by(claims.c.opened_position)).scalars().all()
        for claim_id in waiting:
            self._decide(conn, self._claim(conn, claim_id), "rates_loaded", loaded.event_id)
        return {"card_id": card_id, "kind": kind, "effective_from": data["effective_from"],
                "rows": len(data.get("parts", [])) + len(data.get("labour", []))
                + len(data.get("travel", []))}

    @rpc
    def current_rates(self, on: str | None = None) -> dict:
        day = on or self.clock.now().date().isoformat()
        with self.db.reader() as conn:
            return {"on": day, "rates": _card_in_force(conn, "rates", day)[1],
                    "parts": _card_in_force(conn, "parts", day)[1]}

    @rpc
    @transactional
    def record_part_return(self, payload: dict, agent_id: str = "finance") -> dict:
        """An old part back at a parts centre, or its return waived by a named person; the
        claims holding for it are decided again."""
        data = load(_PART_RETURN, payload)
        if bool(data["parts_centre"]) == bool(data["waived_by"]):
            raise ValidationFailed("give the parts centre it was returned to, or who waived it",
                                   {"parts_centre": ["one of parts_centre, waived_by"]})
        conn = self.db.conn
        if conn.execute(select(part_returns.c.serial)
                        .where(part_returns.c.serial == data["serial"])).first():
            return {"serial": data["serial"], "already_recorded": True, "claims": []}
        kind = "returned" if data["parts_centre"] else "waived"
        (envelope,) = self._append(f"part-{data['serial']}", 0, [NewEvent(
            "part_return_recorded", {"serial": data["serial"], "kind": kind,
                                     "parts_centre": data["parts_centre"],
                                     "waived_by": data["waived_by"], "note": data["note"]})],
            data["serial"], f"cmd-{uuid.uuid4()}", actor=f"finance:{agent_id}")
        claim_ids = conn.execute(select(claim_parts.c.claim_id).where(
            claim_parts.c.old_serial == data["serial"])).scalars().all()
        for claim_id in claim_ids:
            self._decide(conn, self._claim(conn, claim_id), "part_returned", envelope.event_id)
        return {"serial": data["serial"], "kind": kind, "waived_by": data["waived_by"],
                "claims": list(claim_ids)}

    @rpc
    def claims_for_order(self, order_id: str) -> list[dict]:
        with self.db.reader() as conn:
            rows = conn.execute(select(claims).where(claims.c.order_id == str(order_id))
                                .order_by(claims.c.opened_position)).mappings().all()
        return [_claim_view(dict(r)) for r in rows]

    @rpc
    def partners_to_close(self, period: str) -> list[str]:
        """The partners `run(period)` closes: every one with a claim up to the period's end."""
        _, end = _month(period)
        with self.db.reader() as conn:
            return list(conn.execute(select(claims.c.partner_id).distinct()
                                     .where(claims.c.completed_on <= end)
                                     .order_by(claims.c.partner_id)).scalars().all())

    @rpc
    def run(self, period: str, partner_id: str | None = None) -> list[dict]:
        """Close `period` (YYYY-MM) for every partner with claims (or only `partner_id`); a
        closed one is answered as it was closed. Returns the statements."""
        start, end = _month(period)
        partners = self.partners_to_close(period)
        if partner_id is not None:
            partners = [p for p in partners if p == str(partner_id)]
        result = []
        for partner_id in partners:
            try:
                result.append(self._close(period, partner_id, start, end))
            except ConcurrencyConflict:  # another run closed it first: the same statement
                self.db.rollback()
                result.append(self.statement(period, partner_id))
        return result

    @transactional
    def _close(self, period: str, partner_id: str, start: str, end: str) -> dict:
        conn = self.db.conn
        stored = conn.execute(select(statements.c.body).where(
            statements.c.period == period, statements.c.partner_id == partner_id)).scalar()
        if stored:
            return json.loads(stored)
        body = _statement(conn, period, partner_id, end)
        self._append(f"period-{period}-{partner_id}", 0, [NewEvent("period_closed", body)],
                     f"period-{period}", f"run-{period}", actor="finance:run")
        return json.loads(json.dumps(body, default=str))

    @rpc
    def preview(self, period: str, partner_id: str) -> dict:
        """The statement `run(period, partner_id)` would close now, closing nothing (a closed
        period answers its closed statement)."""
        _, end = _month(period)
        with self.db.reader() as conn:
            stored = conn.execute(select(statements.c.body).where(
                statements.c.period == period, statements.c.partner_id == partner_id)).scalar()
            body = json.loads(stored) if stored else _statement(conn, period, partner_id, end)
        return json.loads(json.dumps(body, default=str))

    @rpc
    def statement(self, period: str, partner_id: str) -> dict:
        _month(period)
        with self.db.reader() as conn:
            body = conn.execute(select(statements.c.body).where(
                statements.c.period == period, statements.c.partner_id == partner_id)).scalar()
        if body is None:
            raise NotFound(f"no closed statement for {partner_id} in {period}",
                           {"period": ["not closed for this partner"]},
                           code="statement_not_found")
        return json.loads(body)

    @rpc
    def reconcile(self, period: str, partner_id: str, csv_text: str) -> dict:
        """Match a partner's own statement (CSV: order_id,line_id,claimed_cents) with ours."""
        start, end = _month(period)
        theirs = csvfiles.parse_partner_statement(csv_text)
        with self.db.reader() as conn:
            rows = conn.execute(select(claims).where(claims.c.partner_id == partner_id)) \
                .mappings().all()
        return reports.reconcile(period, partner_id, start, end, [dict(r) for r in rows],
                                 theirs)

    @rpc
    def scorecard(self, period: str) -> list[dict]:
        """Per partner: completed, first-visit fix rate, repeat repairs, disputes,
        satisfaction, SLA breaches and the share of claimed value rejected."""
        start, end = _month(period)
        with self.db.reader() as conn:
            rows = conn.execute(select(claims).where(and_(claims.c.completed_on >= start,
                                                          claims.c.completed_on <= end))
                                .order_by(claims.c.opened_position)).mappings().all()
            breaches: dict[str, int] = {}
            for partner_id, due_at in conn.execute(
                    select(sla_breaches.c.partner_id, sla_breaches.c.due_at)).tuples():
                if start <= due_at[:10] <= end:
                    breaches[partner_id] = breaches.get(partner_id, 0) + 1
        return reports.scorecards([dict(r) for r in rows], breaches)

    # -- deciding ------------------------------------------------------------------------------

    def _decide(self, conn, claim: dict, cause: str, causation_id: str) -> None:  # noqa: ANN001
        """Run the rules on `claim` with the evidence as it stands; append if anything moved."""
        decided = rules.decide(self._context(conn, claim))
        lines = []
        for result, line in zip(decided, claim["lines"], strict=True):
            lines.append({**{k: line[k] for k in ("line_id", "kind", "part_code", "old_serial",
                                                  "new_serial", "charged_to", "claimed_cents")},
                          "quantity": line.get("quantity", 1),
                          "decision": result.decision, "reasons": result.reasons,
                          "approved_cents": result.approved_cents,
                          "manufacturer_cents": result.manufacturer_cents,
                          "customer_cents": result.customer_cents})
        keys = ("callback", "customer_paid_confirmed", "satisfaction")
        if claim["version"] and lines == claim["lines"] and all(
                claim[k] == claim.get(f"_stored_{k}", claim[k]) for k in keys):
            return
        payload = {k: claim[k] for k in (
            "claim_id", "order_id", "partner_id", "completed_on", "serial", "order_type",
            "callback", "customer_paid_cents", "customer_paid_confirmed",
            "installation_barcode", "evidence", "satisfaction")}
        self._append(f"claim-{claim['claim_id']}", claim["version"], [NewEvent(
            "claim_decided", {**payload, "lines": lines, "cause": cause})],
            claim["order_id"], causation_id)

    def _context(self, conn, claim: dict) -> rules.Claim:  # noqa: ANN001
        facts = self._facts(conn, claim["order_id"])
        evidence = claim["evidence"]
        day = claim["completed_on"]
        (card_id, card), (list_id, price_list) = self._cards(conn, claim)
        # the decision says which cards priced it: a settled claim keeps them
        evidence["rate_card_id"], evidence["price_list_id"] = card_id, list_id
        prices = {p["part_code"]: p["cents"] for p in (price_list or [])}
        region = facts["province"]
        others = self._other_claims(conn, claim)
        new_serials = [line["new_serial"] for line in claim["lines"] if line.get("new_serial")]
        serials = set(conn.execute(self._earlier_serials(claim, new_serials)).scalars()) \
            if new_serials else set()
        old_serials = [line["old_serial"] for line in claim["lines"] if line.get("old_serial")]
        returned = set(conn.execute(select(part_returns.c.serial).where(
            part_returns.c.serial.in_(old_serials))).scalars()) if old_serials else set()
        repeat = [(date.fromisoformat(day) - date.fromisoformat(o["completed_on"])).days
                  for o in others if o["serial"] == claim["serial"]
                  and o["partner_id"] == claim["partner_id"] and o["order_type"] == "repair"
                  and o["order_id"] != claim["order_id"] and o["completed_on"] <= day]
        checkin = None
        if None not in (evidence["arrival_lat"], evidence["arrival_lon"], facts["lat"],
                        facts["lon"]):
            checkin = rules.distance_km(evidence["arrival_lat"], evidence["arrival_lon"],
                                        float(facts["lat"]), float(facts["lon"]))
        return rules.Claim(
            claim_id=claim["claim_id"], order_id=claim["order_id"],
            partner_id=claim["partner_id"], order_type=claim["order_type"],
            category=evidence["category"], serial=claim["serial"],
            completed_on=date.fromisoformat(day), fault_code=evidence["fault_code"],
            installation_barcode=claim["installation_barcode"],
            lines=tuple(rules.Line(
                line_id=line["line_id"], kind=line["kind"],
                claimed_cents=line["claimed_cents"], charged_to=line["charged_to"],
                part_code=line.get("part_code"), old_serial=line.get("old_serial"),
                new_serial=line.get("new_serial"), quantity=line.get("quantity", 1))
                for line in claim["lines"]),
            callback=claim["callback"],
            warranty={w["component"]: w for w in json.loads(facts["warranty"])},
            labour_rate_cents=ratecard.labour_rate(card, claim["order_type"],
                                                   evidence["category"], region),
            travel_rate_cents=ratecard.travel_rate(card, evidence["travel_distance_km"],
                                                   region),
            part_prices=prices, customer_paid_cents=claim["customer_paid_cents"],
            customer_paid_confirmed=claim["customer_paid_confirmed"], checkin_km=checkin,
            max_checkin_km=self.settings.max_checkin_km,
            serials_claimed_elsewhere=frozenset(serials),
            barcodes_claimed_elsewhere=frozenset(o["installation_barcode"] for o in others
                                                 if o["installation_barcode"]),
            # a re-visit after a dispute is a new claim for the same order, not a duplicate
            order_paid_elsewhere=any(o["order_id"] == claim["order_id"]
                                     and o["callback"] != "disputed" for o in others),
            same_partner_repair_days_ago=min(repeat) if repeat else None,
            returned_serials=frozenset(returned))

    def _cards(self, conn, claim: dict) -> tuple[tuple, tuple]:  # noqa: ANN001
        """The rate card and price list that price `claim`: those in force on its completion
        day, except for a claim already in a closed statement, which keeps the ones it was
        priced with then (a card loaded or back-dated later does not reprice a closed period;
        evidence arriving later is paid at the same rates, as an adjustment). Where the kept
        card left a line unpriced (no rate, part not listed), the card now in force prices it."""
        day, evidence = claim["completed_on"], claim["evidence"]
        cards = []
        settled_already = claim["version"] and conn.execute(select(settled.c.claim_id).where(
            settled.c.claim_id == claim["claim_id"])).first()
        reasons = {r for line in claim["lines"] for r in line.get("reasons", ())}
        for key, kind, unpriced in (("rate_card_id", "rates", "no_rate_in_force"),
                                    ("price_list_id", "parts", "part_not_on_price_list")):
            kept = _card(conn, evidence[key]) if settled_already and evidence.get(key) \
                and unpriced not in reasons else (None, None)
            cards.append(kept if kept[0] else _card_in_force(conn, kind, day))
        return cards[0], cards[1]

    def _other_claims(self, conn, claim: dict) -> list[dict]:  # noqa: ANN001
        """The claims that arrived before this one (a duplicate is the later of two) and
        share its order, product serial or installation barcode: the only ones a rule
        compares with, found through indexes, so deciding does not grow with the log."""
        c = claims.c
        related = [c.order_id == claim["order_id"], c.serial == claim["serial"]]
        if claim["installation_barcode"]:
            related.append(c.installation_barcode == claim["installation_barcode"])
        query = select(c.claim_id, c.order_id, c.partner_id, c.serial, c.order_type,
                       c.completed_on, c.callback, c.installation_barcode).where(
            or_(*related), c.claim_id != claim["claim_id"])
        if claim["version"]:
            query = query.where(c.opened_position < self._position(claim))
        return [dict(r) for r in conn.execute(query).mappings()]

    def _earlier_serials(self, claim: dict, serials: list[str]):  # noqa: ANN202
        """Which of `serials` an earlier claim already claimed (through the serial's index)."""
        query = select(claim_parts.c.new_serial).join(
            claims, claims.c.claim_id == claim_parts.c.claim_id).where(
            claim_parts.c.new_serial.in_(serials), claims.c.claim_id != claim["claim_id"])
        if claim["version"]:
            query = query.where(claims.c.opened_position < self._position(claim))
        return query

    @staticmethod
    def _position(claim: dict):  # noqa: ANN205
        return select(claims.c.opened_position).where(
            claims.c.claim_id == claim["claim_id"]).scalar_subquery()

    # -- reading and writing -------------------------------------------------------------------

    def _facts(self, conn, order_id: str) -> dict | None:  # noqa: ANN001
        row = conn.execute(select(order_facts).where(order_facts.c.order_id == order_id)) \
            .mappings().first()
        return dict(row) if row else None

    def _claim(self, conn, claim_id: str) -> dict | None:  # noqa: ANN001
        row = conn.execute(select(claims).where(claims.c.claim_id == claim_id)).mappings() \
            .first()
        if row is None:
            return None
        claim = dict(row)
        claim["lines"] = json.loads(claim["lines"])
        claim["evidence"] = json.loads(claim["evidence"])
        for key in ("callback", "customer_paid_confirmed", "satisfaction"):
            claim[f"_stored_{key}"] = claim[key]
        return claim

    def _append(self, stream_id: str, expected_version: int, events: list[NewEvent],
                correlation_id: str, causation_id: str, actor: str = "system") -> list[Envelope]:
        return self.db.store.append(
            self.db.conn, stream_id, expected_version, events, occurred_at=self.clock.now(),
            correlation_id=correlation_id, causation_id=causation_id, actor=actor,
            project=projector.apply)


def _month(period: str) -> tuple[str, str]:
    try:
        year, month = (int(x) for x in str(period).split("-"))
        last = calendar.monthrange(year, month)[1]
        if len(str(period)) != 7:
            raise ValueError
    except ValueError:
        raise ValidationFailed(f"{period!r} is not a month (YYYY-MM)",
                               {"period": ["YYYY-MM"]}) from None
    return f"{year:04d}-{month:02d}-01", f"{year:04d}-{month:02d}-{last:02d}"


def _card_in_force(conn, kind: str, day: str) -> tuple[str | None, object]:  # noqa: ANN001
    """(card id, body) of the card of `kind` in force on `day`: the latest effective date on
    or before it, the later loaded of two with the same date."""
    row = conn.execute(select(rate_cards.c.card_id, rate_cards.c.body).where(
        rate_cards.c.kind == kind, rate_cards.c.effective_from <= day)
        .order_by(rate_cards.c.effective_from.desc(), rate_cards.c.loaded_at.desc())
        .limit(1)).first()
    return (row[0], json.loads(row[1])) if row else (None, None)


def _card(conn, card_id: str) -> tuple[str | None, object]:  # noqa: ANN001
    body = conn.execute(select(rate_cards.c.body).where(rate_cards.c.card_id == card_id)) \
        .scalar()
    return (card_id, json.loads(body)) if body else (None, None)


def _statement(conn, period: str, partner_id: str, end: str) -> dict:  # noqa: ANN001
    rows = conn.execute(select(claims, settled.c.settled_cents).outerjoin(
        settled, settled.c.claim_id == claims.c.claim_id).where(
        claims.c.partner_id == partner_id, claims.c.completed_on <= end)
        .order_by(claims.c.completed_on, claims.c.claim_id)).mappings().all()
    return reports.statement(period, partner_id, [dict(r) for r in rows])


def _claim_view(row: dict) -> dict:
    view = dict(row)
    view["lines"] = json.loads(view["lines"])
    view["evidence"] = json.loads(view["evidence"])
    return view

