"""Closing a month: a partner's statement of its claims, and adjustments for earlier ones.

A closed period is a `period_closed` event per partner and never changes: evidence arriving
later becomes an adjustment line in the next period (`reports.statement`).
"""

from __future__ import annotations

import calendar
import json

from sqlalchemy import Connection

from contracts.errors import ValidationFailed
from serviceloop.eventstore import NewEvent
from services.settlement import queries, reports


def month(period: str) -> tuple[str, str]:
    """The first and last day of `period` (YYYY-MM)."""
    try:
        year, month = (int(x) for x in str(period).split("-"))
        last = calendar.monthrange(year, month)[1]
        if len(str(period)) != 7:
            raise ValueError
    except ValueError:
        raise ValidationFailed(f"{period!r} is not a month (YYYY-MM)",
                               {"period": ["YYYY-MM"]}) from None
    return f"{year:04d}-{month:02d}-01", f"{year:04d}-{month:02d}-{last:02d}"


def statement(conn: Connection, period: str, partner_id: str,
              end: str) -> tuple[dict, NewEvent | None]:
    """The partner's statement for `period` (ending on `end`): the one it was closed with,
    else the one closing it now would write, with the `period_closed` event that closes it."""
    closed = queries.closed_statement(conn, period, partner_id)
    if closed is not None:
        return closed, None
    body = reports.statement(period, partner_id, queries.claims_to_settle(conn, partner_id, end))
    return body, NewEvent("period_closed", body)


def as_sent(body: dict) -> dict:
    """`body` as JSON carries it (dates as text)."""
    return json.loads(json.dumps(body, default=str))
