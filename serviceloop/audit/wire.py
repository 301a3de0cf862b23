"""A page of a log as `events_since(..., packed=True)` sends it to auditors, and back.

A dict per event costs more to send than the log costs to read: its 13 keys repeated, each
payload JSON-escaped, and nameko encodes every reply twice (once to check it can). A packed
page is column by column: the integer columns as JSON lists, the text columns (payload as the
stored canonical text) joined with control characters no stored value holds and compressed
(zlib, level 1; ~6x on a log's repetitive text) into one base64 string. Lossless: a page
whose text could not be split back exactly is sent with plain lists instead.
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Sequence

from serviceloop.eventstore import Envelope

FIELDS = Envelope._fields
INTEGERS = ("global_position", "stream_version", "schema_version")
TEXTS = tuple(name for name in FIELDS if name not in INTEGERS)
_VALUE, _COLUMN = "\x1f", "\x1e"  # between values, between columns


def pack_page(envelopes: Sequence[tuple]) -> dict:
    """`{"count": n, "columns": {name: [value, …]}, "packed": [name, …], "text": …}`."""
    columns = dict(zip(FIELDS, zip(*envelopes, strict=True), strict=True)) if envelopes \
        else dict.fromkeys(FIELDS, ())
    page = {"count": len(envelopes), "columns": {}, "packed": [], "text": ""}
    joined = []
    for name in TEXTS:
        text = _joined(columns[name])
        if text is None:
            page["columns"][name] = columns[name]
        else:
            page["packed"].append(name)
            joined.append(text)
    for name in INTEGERS:
        page["columns"][name] = columns[name]
    if joined:
        try:
            blob = _COLUMN.join(joined).encode("utf-8")
        except UnicodeEncodeError:  # no stored text holds one; if it did: plain lists
            page["columns"].update((name, columns[name]) for name in page["packed"])
            page["packed"] = []
        else:
            page["text"] = base64.b64encode(zlib.compress(blob, 1)).decode("ascii")
    return page


def _joined(column: Sequence) -> str | None:
    """The column's values joined, if they are all text and can be split back exactly."""
    if not column:
        return None
    try:
        text = _VALUE.join(column)
    except TypeError:  # a value that is not text
        return None
    if text.count(_VALUE) != len(column) - 1 or _COLUMN in text:
        return None
    return text


def unpack_page(page: dict) -> dict[str, list]:
    """`{name: [value of each event]}` for every field, as the store holds them."""
    columns = {name: list(values) for name, values in page["columns"].items()}
    for name, joined in packed_columns(page).items():
        columns[name] = joined.decode("utf-8").split(_VALUE)
    return columns


def packed_columns(page: dict) -> dict[str, bytes]:
    """The packed text columns as they were joined, UTF-8: `VALUE_SEPARATOR` between values."""
    if not page["packed"]:
        return {}
    text = zlib.decompress(base64.b64decode(page["text"]))
    return dict(zip(page["packed"], text.split(_COLUMN.encode()), strict=True))


VALUE_SEPARATOR = _VALUE.encode()
