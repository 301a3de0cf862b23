"""`audit verify` while the logs are read: each page checked as it arrives, while the services
read their next (serviceloop/audit/read.py), keeping of each event only its position and hash.

A page is first checked in bulk, on the bytes as they came: positions, the chain, each
event's hash over its canonical document (assembled straight from the stored texts when none
needs escaping, exactly as `compute_hash` assembles it) and each payload against its contract
(`contracts.registry.payload_check`). Only a page that does not pass is checked event by event
(`verify.event_breaks`, what `verify` does), so every break is named as `verify` names it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from operator import call, methodcaller

from contracts.errors import ContractViolation
from contracts.registry import event_schema, payload_check
from contracts.textcheck import compile_text_check
from serviceloop.audit.read import read_pages
from serviceloop.audit.verify import COMMAND_PREFIXES, NOT_JSON, causation_break, event_breaks
from serviceloop.audit.wire import (
    FIELDS,
    INTEGERS,
    VALUE_SEPARATOR,
    collector_paused,
    packed_columns,
    unpack_page,
)
from serviceloop.eventstore import GENESIS_HASH, Envelope

# compute_hash's document, for fields that json.dumps would write as they are
_DOCUMENT = (b'{"actor":"%s","causation_id":"%s","correlation_id":"%s","event_id":"%s",'
             b'"event_type":"%s","global_position":%s,"occurred_at":"%s","payload":%s,'
             b'"prev_hash":"%s","schema_version":%s,"stream_id":"%s","stream_version":%s}')
_ORDER = ("actor", "causation_id", "correlation_id", "event_id", "event_type",
          "global_position", "occurred_at", "payload_json", "prev_hash", "schema_version",
          "stream_id", "stream_version")
# what json.dumps escapes (ensure_ascii=False; with ensure_ascii, DEL and all not ASCII too),
# but the separator between values
_ESCAPED = bytes(range(0x1f)) + b'"\\'
_ESCAPED_ASCII = _ESCAPED + b"\x7f"
_hexdigest = methodcaller("hexdigest")
_is_command = methodcaller("startswith", COMMAND_PREFIXES)
_ALL = list(FIELDS)
_UNESCAPED = ("payload_json", *INTEGERS)  # canonical JSON already; decimal digits
_CAUSATION = 99  # a causation break comes after the event's other breaks


@dataclass
class Verified:
    """What `audit verify` found: events per log, the breaks, and each event's position and
    hash (what checkpoints are made of)."""

    events: dict[str, int]
    breaks: list[dict]
    positions: dict[str, list[int]]
    hashes: dict[str, list[str]]

    def chains(self) -> dict[str, list[dict]]:
        """Each log as checkpoints read it: `{"global_position", "hash"}` per event."""
        return {service: [{"global_position": at, "hash": digest} for at, digest in
                          zip(self.positions[service], self.hashes[service], strict=True)]
                for service in self.events}


def verify_over_rpc(rpc, services: Iterable[str],  # noqa: ANN001
                    progress: Callable[[str, int], None] | None = None) -> Verified:
    """Every break in every log, read through the services' events_since: the same breaks,
    in the same order, as `verify(read_logs(rpc, services))`."""
    checks = {service: _LogCheck(service) for service in services}
    seen: set[str] = set()
    with collector_paused():  # what lives on is strings and a few lists
        for service, page in read_pages(rpc, checks):
            check = checks[service]
            check.page(page, seen)
            if progress:
                progress(service, len(check.positions))
    breaks = []
    for check in checks.values():
        check.found += [(seq, _CAUSATION, causation_break(check.service, at, cause))
                        for seq, at, cause in check.unknown_causes if cause not in seen]
        breaks += [found for _, _, found in sorted(check.found, key=lambda f: f[:2])]
    return Verified({s: len(c.positions) for s, c in checks.items()}, breaks,
                    {s: c.positions for s, c in checks.items()},
                    {s: c.hashes for s, c in checks.items()})


class _LogCheck:
    """One log's check, page after page: where the chain is, and what was found."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.prev_hash, self.expected = GENESIS_HASH, 1
        self.positions: list[int] = []
        self.hashes: list[str] = []
        self.found: list[tuple[int, int, dict]] = []  # (event's index, order, break)
        self.unknown_causes: list[tuple[int, int, str]] = []  # (index, position, cause)

    def page(self, page: dict, seen: set[str]) -> None:
        if not page["count"]:  # the log ended at the previous page
            return
        first = len(self.positions)
        passed = _passes(page, self.expected, self.prev_hash)
        if passed is None:
            positions, event_ids, causes, hashes = self._event_by_event(unpack_page(page), first)
        else:
            positions, event_ids, causes, hashes = passed
        if positions:
            self.prev_hash, self.expected = hashes[-1], positions[-1] + 1
        self.positions += positions
        self.hashes += hashes
        seen.update(event_ids)
        unknown = set(causes).difference(seen)
        try:  # a command's id, not an event's (C all the way: most causes of some pages)
            unknown.difference_update(list(filter(_is_command, unknown)))
        except (AttributeError, TypeError):  # a cause that is not text (a value sent plain)
            unknown = {c for c in unknown
                       if not (type(c) is str and c.startswith(COMMAND_PREFIXES))}
        if unknown:  # perhaps in a page not read yet: looked up again once all are
            self.unknown_causes += [(first + n, positions[n], cause)
                                    for n, cause in enumerate(causes) if cause in unknown]

    def _event_by_event(self, page: dict[str, list], first: int) -> tuple[list, ...]:
        envelopes = list(map(Envelope._make, zip(*(page[name] for name in FIELDS),
                                                 strict=True)))
        for n, envelope in enumerate(envelopes, first):
            try:
                payload = json.loads(envelope.payload_json)
            except (TypeError, ValueError):
                payload = NOT_JSON
            found = event_breaks(self.service, envelope, payload, self.expected, self.prev_hash)
            self.found += [(n, order, f) for order, f in enumerate(found)]
            self.prev_hash, self.expected = envelope.hash, envelope.global_position + 1
        return (page["global_position"], page["event_id"], page["causation_id"], page["hash"])


def _passes(page: dict, expected: int, prev_hash: str) -> tuple[list, ...] | None:
    """(positions, event ids, causation ids, hashes) if the whole page is intact, following
    on from `expected` and `prev_hash`; None if any event in it may not be."""
    count = page["count"]
    if not count or page["packed"] != _ALL or not page["elided"] or type(prev_hash) is not str:
        return None
    texts = packed_columns(page)
    for name, joined in texts.items():
        if name in ("prev_hash", "hash"):
            if not joined.isascii() or len(joined.translate(None, _ESCAPED_ASCII)) != len(joined):
                return None
        elif name not in _UNESCAPED and len(joined.translate(None, _ESCAPED)) != len(joined):
            return None
    # each event's prev_hash elided: the hash of the one before it (the first: where the
    # chain stood)
    if texts["prev_hash"] != prev_hash.encode() + VALUE_SEPARATOR * (count - 1):
        return None
    columns = {name: joined.split(VALUE_SEPARATOR) for name, joined in texts.items()}
    if any(len(column) != count for column in columns.values()):
        return None
    try:
        positions = list(map(int, columns["global_position"]))
    except ValueError:
        return None
    if positions != list(range(expected, expected + count)):
        return None
    stored = columns["hash"]
    columns["prev_hash"] = [columns["prev_hash"][0], *stored[:-1]]
    documents = map(_DOCUMENT.__mod__, zip(*(columns[name] for name in _ORDER), strict=True))
    hashes = texts["hash"].decode("ascii").split("\x1f")
    if list(map(_hexdigest, map(hashlib.sha256, documents))) != hashes:
        return None
    # each payload's text check (a compiled regex: C all the way, on text known to be UTF-8);
    # those it is not sure of, and the event types without one, decoded and validated
    try:
        texts["payload_json"].decode("utf-8")
    except UnicodeDecodeError:
        return None
    kinds = list(zip(columns["event_type"], columns["schema_version"], strict=True))
    payloads = columns["payload_json"]
    for kind in set(kinds).difference(_TEXT_CHECKS):
        _text_check(kind)
    matched = list(map(call, map(_TEXT_CHECKS.__getitem__, kinds), payloads))
    if not all(matched) and not all(_payload_valid(kinds[n], payloads[n])
                                    for n, match in enumerate(matched) if match is None):
        return None
    return (positions, texts["event_id"].decode("utf-8").split("\x1f"),
            texts["causation_id"].decode("utf-8").split("\x1f"), hashes)


_TEXT_CHECKS: dict[tuple[bytes, bytes], Callable[[bytes], object]] = {}
_CHECKS: dict[tuple[bytes, bytes], Callable[[bytes], bool]] = {}


def _text_check(kind: tuple[bytes, bytes]) -> Callable[[bytes], object]:
    """The event type's regex over its payload text (a match, or None: not sure); `kind`:
    the type and schema version as the page has them."""
    check = _TEXT_CHECKS.get(kind)
    if check is None:
        try:
            schema = event_schema(kind[0].decode("utf-8"), int(kind[1]))
        except (ContractViolation, UnicodeDecodeError, ValueError):
            schema = None
        check = _TEXT_CHECKS[kind] = (schema is not None and compile_text_check(schema)) or \
            _not_sure
    return check


def _not_sure(text: bytes) -> None:
    return None


def _payload_valid(kind: tuple[bytes, bytes], payload: bytes) -> bool:
    check = _CHECKS.get(kind)
    if check is None:
        check = _CHECKS[kind] = payload_check(kind[0].decode("utf-8"), int(kind[1]))
    return check(payload)
