"""What finance reads: a period's statement, a reconciliation, a partner's scorecard.

Plain functions over claim rows as the read model holds them (`lines` as JSON text or a list)
and the settled amounts: no I/O, no clock, so each figure can be checked with known numbers.
"""

from __future__ import annotations

import json

TOTALS = ("payable_cents", "cut_cents", "held_cents", "rejected_cents")
DIFFERENCE_KINDS = ("order_not_ours", "line_not_ours", "amount_differs", "line_rejected",
                    "order_forgotten")


def _lines(row: dict) -> list[dict]:
    lines = row["lines"]
    return json.loads(lines) if isinstance(lines, str) else lines


def line_decisions(lines: list[dict]) -> list[dict]:
    """Which claim line (labour, travel, part-N) was cut, held or rejected, and why."""
    return [{"line_id": line["line_id"], "decision": line["decision"],
             "reasons": list(line["reasons"]), "claimed_cents": line["claimed_cents"],
             "approved_cents": line["approved_cents"]}
            for line in lines if line["decision"] != "approved"]


def statement(period: str, partner_id: str, rows: list[dict]) -> dict:
    """A partner's statement from its claims up to the period's end, each row carrying
    `settled_cents` (None: never in a closed statement). A claim not settled yet is a claim
    line; a settled one whose payable amount moved since is an adjustment for the difference."""
    lines = []
    for row in rows:
        claim_lines = _lines(row)
        common = {"claim_id": row["claim_id"], "order_id": row["order_id"],
                  "completed_on": row["completed_on"],
                  "reasons": sorted({r for line in claim_lines for r in line["reasons"]}),
                  "decisions": line_decisions(claim_lines)}
        if row["settled_cents"] is None:
            lines.append({**common, "kind": "claim", "claimed_cents": row["claimed_cents"],
                          "payable_cents": row["payable_cents"], "cut_cents": row["cut_cents"],
                          "held_cents": row["held_cents"],
                          "rejected_cents": row["rejected_cents"]})
        elif row["payable_cents"] != row["settled_cents"]:
            lines.append({**common, "kind": "adjustment", "claimed_cents": 0,
                          "payable_cents": row["payable_cents"] - row["settled_cents"],
                          "cut_cents": 0, "held_cents": row["held_cents"],
                          "rejected_cents": row["rejected_cents"]})
    body = {"period": period, "partner_id": partner_id, "lines": lines,
            **{key: sum(line[key] for line in lines if line["kind"] == "claim")
               for key in TOTALS},
            "adjustments_cents": sum(line["payable_cents"] for line in lines
                                     if line["kind"] == "adjustment")}
    body["payable_cents"] += body["adjustments_cents"]
    return body


def reconcile(period: str, partner_id: str, start: str, end: str, rows: list[dict],
              theirs: list[dict]) -> dict:
    """A partner's own statement (order_id, line_id, claimed_cents) against our claims.

    Each difference says what they claimed, what we hold (`our_cents`: our claimed amount, or
    0 for a line we rejected) and `difference_cents` = theirs − ours; `totals` sums them by
    kind. Orders they forgot are our claims completed in the period that they did not list."""
    ours: dict[tuple[str, str], dict] = {}
    in_period: set[str] = set()
    for row in rows:
        for line in _lines(row):
            ours[(row["order_id"], line["line_id"])] = line
        if start <= row["completed_on"] <= end:
            in_period.add(row["order_id"])
    known_orders = {order for order, _ in ours}
    differences = []
    for row in theirs:
        line = ours.get((row["order_id"], row["line_id"]))
        if row["order_id"] not in known_orders:
            differences.append({**row, "kind": "order_not_ours", "our_cents": None})
        elif line is None:
            differences.append({**row, "kind": "line_not_ours", "our_cents": None})
        elif line["claimed_cents"] != row["claimed_cents"]:
            differences.append({**row, "kind": "amount_differs",
                                "our_cents": line["claimed_cents"]})
        elif line["decision"] == "rejected":
            differences.append({**row, "kind": "line_rejected", "our_cents": 0,
                                "reasons": line["reasons"]})
    listed = {row["order_id"] for row in theirs}
    for order_id in sorted(in_period - listed):
        claimed = sum(line["claimed_cents"] for (o, _), line in ours.items() if o == order_id)
        differences.append({"order_id": order_id, "line_id": "*", "claimed_cents": None,
                            "kind": "order_forgotten", "our_cents": claimed})
    totals = {kind: {"count": 0, "difference_cents": 0} for kind in DIFFERENCE_KINDS}
    for difference in differences:
        difference["difference_cents"] = ((difference["claimed_cents"] or 0)
                                          - (difference["our_cents"] or 0))
        totals[difference["kind"]]["count"] += 1
        totals[difference["kind"]]["difference_cents"] += difference["difference_cents"]
    their_total = sum(row["claimed_cents"] for row in theirs)
    our_total = sum(line["claimed_cents"] for (o, _), line in ours.items() if o in in_period)
    return {"period": period, "partner_id": partner_id, "differences": differences,
            "totals": totals, "their_claimed_cents": their_total,
            "our_claimed_cents": our_total, "difference_cents": their_total - our_total}


def scorecards(rows: list[dict], breaches: dict[str, int]) -> list[dict]:
    """Per partner, from the period's claims in order of arrival: completed, first-visit fix
    rate, repeat repairs within 30 days, dispute rate (of answered callbacks), mean
    satisfaction, SLA breaches and the share of claimed value rejected."""
    by_partner: dict[str, list[dict]] = {partner_id: [] for partner_id in breaches}
    for row in rows:
        by_partner.setdefault(row["partner_id"], []).append(row)
    cards = []
    for partner_id, own in sorted(by_partner.items()):
        answered = [c for c in own if c["callback"] in ("verified", "disputed")]
        seen: set[str] = set()
        first_visits = []
        for c in own:  # in arrival order: an order's first claim is its first visit
            if c["order_id"] not in seen:
                seen.add(c["order_id"])
                first_visits.append(c)
        scores = [c["satisfaction"] for c in own if c["satisfaction"] is not None]
        claimed = sum(c["claimed_cents"] for c in own)
        cards.append({
            "partner_id": partner_id, "completed": len(own),
            "first_visit_fix_rate": ratio(sum(c["callback"] == "verified"
                                              for c in first_visits), len(first_visits)),
            "repeat_repairs": sum(_repeat_repair(c) for c in own),
            "dispute_rate": ratio(sum(c["callback"] == "disputed" for c in answered),
                                  len(answered)),
            "mean_satisfaction": round(sum(scores) / len(scores), 2) if scores else None,
            "sla_breaches": breaches.get(partner_id, 0),
            "rejected_value_share": ratio(sum(c["rejected_cents"] for c in own), claimed),
        })
    return cards


def _repeat_repair(row: dict) -> bool:
    return any("repeat_repair_within_30_days" in line["reasons"] for line in _lines(row))


def ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None
