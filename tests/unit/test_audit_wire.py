"""The packed page's compression: raw deflate now, zlib's format from services before it."""

from __future__ import annotations

import base64
import zlib

from serviceloop.audit.wire import CODEC, FIELDS, page_from_text, unpack_page


def _joined(count: int) -> bytes:
    values = [[str(n) if name in ("global_position", "stream_version", "schema_version")
               else f"{name}-{n}" for n in range(1, count + 1)] for name in FIELDS]
    values[FIELDS.index("prev_hash")][1:] = [""] * (count - 1)
    return b"\x1e".join("\x1f".join(column).encode() for column in values)


def test_a_page_is_sent_as_raw_deflate_and_reads_back():
    page = page_from_text(3, 3, _joined(3))
    assert page["codec"] == CODEC == "deflate"
    raw = base64.b64decode(page["text"])
    assert zlib.decompress(raw, -zlib.MAX_WBITS) == _joined(3)
    assert unpack_page(page)["event_id"] == ["event_id-1", "event_id-2", "event_id-3"]


def test_a_page_in_zlib_s_format_from_an_older_service_still_reads_back():
    page = page_from_text(3, 3, _joined(3))
    del page["codec"]
    page["text"] = base64.b64encode(zlib.compress(_joined(3), 1)).decode("ascii")
    columns = unpack_page(page)
    assert columns["global_position"] == [1, 2, 3]
    assert columns["prev_hash"] == ["prev_hash-1", "hash-1", "hash-2"]
