"""A page of a log as `events_since(..., packed=True)` sends it to auditors, and back.

A dict per event costs more to send than the log costs to read: its 13 keys repeated, each
payload JSON-escaped, and nameko encodes every reply twice (once to check it can). A packed
page is column by column: each column's values as text (integers in decimal, the payload as
the stored canonical text) joined with control characters no stored value holds, the columns
joined too, compressed (raw deflate, level 1: no zlib header nor Adler-32 checksum, whose
sums cost both ends ~0.7 us an event) into one base64 string. `prev_hash` is left empty
where it is the hash of the row before it in the page (`elided`): 64 hex characters zlib
cannot find 600 KB back in the hash column.

The database builds these bytes itself (`EventStore.page_since`: one string per page, not 13
objects per row); `pack_page` builds the same from rows, for a page the database could not
(a value not of its column's type or holding a separator, a prev_hash that is empty) and
for tests. Lossless either way: what cannot be joined and split back exactly is sent as a
plain list.
"""

from __future__ import annotations

import base64
import gc
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from serviceloop.eventstore import Envelope


@contextmanager
def collector_paused() -> Iterator[None]:
    """No garbage-collector passes for the block (restored as it was after): for work that
    makes many objects which all live on, or all die together, where each pass would walk
    the whole heap and free nothing."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()

FIELDS = Envelope._fields
INTEGERS = ("global_position", "stream_version", "schema_version")
TEXTS = tuple(name for name in FIELDS if name not in INTEGERS)
_VALUE, _COLUMN = "\x1f", "\x1e"  # between values, between columns
VALUE_SEPARATOR, COLUMN_SEPARATOR = _VALUE.encode(), _COLUMN.encode()
_PREV_HASH, _HASH = FIELDS.index("prev_hash"), FIELDS.index("hash")


def pack_page(rows: Sequence[tuple]) -> dict:
    """`{"count": n, "last": last position, "columns": {name: [value, …]} (those sent plain),
    "packed": [name, …], "elided": bool, "text": …}`."""
    columns = dict(zip(FIELDS, map(list, zip(*rows, strict=True)), strict=True)) if rows \
        else dict.fromkeys(FIELDS, [])
    page = {"count": len(rows), "last": rows[-1][0] if rows else None, "columns": {},
            "packed": [], "elided": False, "codec": CODEC, "text": ""}
    joined = []
    for name in FIELDS:
        values = columns[name]
        if name == "prev_hash":
            elided = _elided(values, columns["hash"])
            if elided is not None:
                values, page["elided"] = elided, True
        text = _joined(values, name in INTEGERS)
        if text is None:
            page["columns"][name] = columns[name]
        else:
            page["packed"].append(name)
            joined.append(text)
    if joined:
        try:
            blob = _COLUMN.join(joined).encode("utf-8")
        except UnicodeEncodeError:  # no stored text holds one; if it did: plain lists
            page.update(columns=columns, packed=[], elided=False)
        else:
            page["text"] = _compressed(blob)
    return page


def page_from_text(count: int, last: int, blob: bytes) -> dict:
    """The page of `count` events up to position `last` whose every column, prev_hash elided,
    is joined in `blob` as `pack_page` would have joined them."""
    return {"count": count, "last": last, "columns": {}, "packed": list(FIELDS),
            "elided": True, "codec": CODEC, "text": _compressed(blob)}


def text_splits_back(count: int, blob: bytes) -> bool:
    """Whether `blob`, said to hold `count` events' columns, splits back into exactly them."""
    return count > 0 and blob.count(COLUMN_SEPARATOR) == len(FIELDS) - 1 and \
        blob.count(VALUE_SEPARATOR) == len(FIELDS) * (count - 1)


CODEC = "deflate"  # raw deflate; a page without "codec" (older services) is zlib's format
_WBITS = {"deflate": -zlib.MAX_WBITS, None: zlib.MAX_WBITS}


def _compressed(blob: bytes) -> str:
    deflate = zlib.compressobj(1, zlib.DEFLATED, _WBITS[CODEC])
    return base64.b64encode(deflate.compress(blob) + deflate.flush()).decode("ascii")


def _elided(prev_hashes: list, hashes: list) -> list | None:
    """prev_hash with '' wherever it is the hash of the row before; None when a stored one
    is itself empty (or not text), which '' would misrepresent."""
    if not all(type(value) is str and value for value in prev_hashes):
        return None
    return prev_hashes[:1] + ["" if prev == before else prev
                              for prev, before in zip(prev_hashes[1:], hashes, strict=False)]


def _joined(column: Sequence, integers: bool) -> str | None:
    """The column's values joined, if they can be split back exactly."""
    if not column:
        return None
    if integers:
        if any(type(value) is not int for value in column):
            return None
        return _VALUE.join(map(str, column))
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
        values = joined.decode("utf-8").split(_VALUE)
        columns[name] = list(map(int, values)) if name in INTEGERS else values
    if page.get("elided"):
        prev_hashes, hashes = columns["prev_hash"], columns["hash"]
        columns["prev_hash"] = [prev or hashes[n - 1] if n else prev
                                for n, prev in enumerate(prev_hashes)]
    return columns


def packed_columns(page: dict) -> dict[str, bytes]:
    """The packed columns as they were joined, UTF-8: `VALUE_SEPARATOR` between values."""
    if not page["packed"]:
        return {}
    text = zlib.decompress(base64.b64decode(page["text"]), _WBITS[page.get("codec")])
    return dict(zip(page["packed"], text.split(COLUMN_SEPARATOR), strict=True))
