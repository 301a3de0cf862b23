"""Printing answers for people (tables) or machines (--json)."""

from __future__ import annotations

import json


def add_request_id(parser) -> None:  # noqa: ANN001 - an argparse parser
    """`--request-id`: the command run again with the same id answers what it answered the
    first time and changes nothing (for a command whose answer was lost, e.g. timed out)."""
    parser.add_argument("--request-id", help="idempotency key: running the command again "
                        "with it answers the first result and changes nothing")


def emit(value: object, as_json: bool, render=None) -> None:  # noqa: ANN001
    if as_json or render is None:
        print(json.dumps(value, ensure_ascii=False, indent=2, default=str))
    else:
        print(render(value))


def table(rows: list[dict], columns: list[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[str(row.get(c, "") if row.get(c) is not None else "-") for c in columns]
             for row in rows]
    widths = [max(_width(c), *(_width(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(_pad(c, w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(_pad(v, w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def _width(text: str) -> int:
    # CJK characters take two columns in a terminal
    return sum(2 if ord(ch) > 0x2E80 else 1 for ch in text)


def _pad(text: str, width: int) -> str:
    return text + " " * (width - _width(text))
