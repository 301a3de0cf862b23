"""Finance's CSV files: rate cards, parts price lists, partners' own statements.

Every file is checked whole before anything is loaded: wrong columns, bad numbers and duplicate
rows are refused with their line numbers (ValidationFailed, fields keyed "line N").
"""

from __future__ import annotations

import csv
import io
from datetime import date

from contracts.errors import ValidationFailed
from contracts.orders import ORDER_TYPES

RATE_COLUMNS = ["effective_from", "kind", "order_type", "category", "region", "up_to_km",
                "cents"]
PARTS_COLUMNS = ["effective_from", "part_code", "cents"]
PARTNER_COLUMNS = ["order_id", "line_id", "claimed_cents"]


def _rows(text: str, expected: list[str], what: str) -> list[tuple[int, dict]]:
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    header = [h.strip() for h in (reader.fieldnames or [])]
    if header != expected:
        raise ValidationFailed(f"a {what} has the columns {','.join(expected)}",
                               {"line 1": [f"columns are {','.join(header) or '(none)'}"]},
                               code="wrong_columns")
    rows = []
    for number, row in enumerate(reader, start=2):
        if None in row or any(v is None for v in row.values()):
            raise ValidationFailed(f"line {number} has the wrong number of fields",
                                   {f"line {number}": ["wrong number of fields"]},
                                   code="bad_csv")
        rows.append((number, {k.strip(): (v or "").strip() for k, v in row.items()}))
    if not rows:
        raise ValidationFailed(f"the {what} has no rows", {"line 2": ["no rows"]},
                               code="bad_csv")
    return rows


def _cents(value: str) -> int:
    if not value.isdigit():
        raise ValueError(f"{value!r} is not a whole number of cents")
    return int(value)


def _date(value: str) -> str:
    return date.fromisoformat(value).isoformat()


def parse_rates(text: str) -> dict:
    """{"effective_from", "labour": [...], "travel": [...]} from a rate card CSV."""
    errors: dict[str, list[str]] = {}
    labour, travel, seen, effective = [], [], set(), set()
    for number, row in _rows(text, RATE_COLUMNS, "rate card"):
        try:
            effective.add(_date(row["effective_from"]))
            cents = _cents(row["cents"])
            region = row["region"] or "*"
            if row["kind"] == "labour":
                if row["order_type"] not in ORDER_TYPES:
                    raise ValueError(f"order_type {row['order_type']!r} unknown")
                key = ("labour", row["order_type"], row["category"] or "*", region)
                labour.append({"order_type": row["order_type"], "category": key[2],
                               "region": region, "cents": cents})
            elif row["kind"] == "travel":
                key = ("travel", _cents(row["up_to_km"]), region)
                travel.append({"up_to_km": key[1], "region": region, "cents": cents})
            else:
                raise ValueError(f"kind {row['kind']!r} is neither labour nor travel")
            if key in seen:
                raise ValueError("duplicate row")
            seen.add(key)
        except ValueError as error:
            errors[f"line {number}"] = [str(error)]
    if len(effective) > 1:
        errors["effective_from"] = ["one card, one effective date"]
    if errors:
        raise ValidationFailed("the rate card was not loaded", errors, code="bad_csv")
    return {"effective_from": effective.pop(), "labour": labour, "travel": travel}


def parse_parts(text: str) -> dict:
    errors: dict[str, list[str]] = {}
    parts, seen, effective = [], set(), set()
    for number, row in _rows(text, PARTS_COLUMNS, "parts price list"):
        try:
            effective.add(_date(row["effective_from"]))
            if not row["part_code"]:
                raise ValueError("part_code is empty")
            if row["part_code"] in seen:
                raise ValueError("duplicate row")
            seen.add(row["part_code"])
            parts.append({"part_code": row["part_code"], "cents": _cents(row["cents"])})
        except ValueError as error:
            errors[f"line {number}"] = [str(error)]
    if len(effective) > 1:
        errors["effective_from"] = ["one list, one effective date"]
    if errors:
        raise ValidationFailed("the price list was not loaded", errors, code="bad_csv")
    return {"effective_from": effective.pop(), "parts": parts}


def parse_partner_statement(text: str) -> list[dict]:
    errors: dict[str, list[str]] = {}
    rows, seen = [], set()
    for number, row in _rows(text, PARTNER_COLUMNS, "partner statement"):
        try:
            key = (row["order_id"], row["line_id"])
            if not all(key):
                raise ValueError("order_id and line_id are required")
            if key in seen:
                raise ValueError("duplicate row")
            seen.add(key)
            rows.append({"order_id": key[0], "line_id": key[1],
                         "claimed_cents": _cents(row["claimed_cents"])})
        except ValueError as error:
            errors[f"line {number}"] = [str(error)]
    if errors:
        raise ValidationFailed("the partner statement was not read", errors, code="bad_csv")
    return rows


def detect(text: str) -> str:
    """'rates' or 'parts', from the header."""
    first = text.lstrip("\ufeff").splitlines()[0] if text.strip() else ""
    header = [h.strip() for h in first.split(",")]
    if header == RATE_COLUMNS:
        return "rates"
    if header == PARTS_COLUMNS:
        return "parts"
    raise ValidationFailed("not a rate card nor a parts price list",
                           {"line 1": [f"expected {','.join(RATE_COLUMNS)} or "
                                       f"{','.join(PARTS_COLUMNS)}"]}, code="wrong_columns")
