"""Payloads near valid ones, for holding a compiled fast path to marshmallow's answer: the
payloads the running services wrote, any JSON value, and a payload with one value changed or
one key missing or added."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path

from hypothesis import strategies as st

from contracts.registry import event_schema, event_types

ROOT = Path(__file__).resolve().parents[2]
# real payloads of every service, captured from the running system (bench/data)
CAPTURED = [e for log in json.loads(
    (ROOT / "bench" / "data" / "audit_template.json").read_text())["logs"].values()
    for e in log]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**60), max_value=2**60),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=80),
    st.sampled_from(["", "2026-11-02", "2026-11-02T09:00:00.000000Z", "not-a-date",
                     "WH-E1", "repair", "verified", "x" * 300, "13500000001",
                     "1025b584-927e-4b05-a2c2-612a5d24a4f9"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=12), inner, max_size=3)),
    max_leaves=6)


def paths(value: object, prefix: tuple = ()) -> list[tuple]:
    """The path (keys and indexes) to every value inside `value`."""
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, inner in value.items():
            found += paths(inner, (*prefix, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            found += paths(inner, (*prefix, index))
    return found


def replaced(payload: dict, path: tuple, new: object) -> dict:
    result = copy.deepcopy(payload)
    target = result
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = new
    return result


def one_value_changed(payload: dict, new: st.SearchStrategy = values) -> st.SearchStrategy:
    """`payload` with one value anywhere inside it (a field, a list item…) drawn from `new`."""
    return st.sampled_from(paths(payload)).flatmap(
        lambda path: new.map(lambda value: replaced(payload, path, value)))


def any_payload_of_any_event_type(new: st.SearchStrategy = values) \
        -> st.SearchStrategy[tuple[str, dict]]:
    """(event type, a dict of some of its fields' names to values drawn from `new`)."""
    def payloads(event_type: str) -> st.SearchStrategy:
        names = list(event_schema(event_type).fields)
        return st.tuples(st.just(event_type), st.dictionaries(
            st.sampled_from(names), new, max_size=len(names)))

    return st.sampled_from(event_types()).flatmap(payloads)


def a_key_missing_or_unknown(payload: dict, *unknown: tuple[str, object]) -> Iterator[dict]:
    """`payload` without each of its keys in turn, then with `status` (a key of many
    payloads, not of every one) and each of `unknown` set."""
    for key in payload:
        yield {k: v for k, v in payload.items() if k != key}
    for key, value in (("status", "closed"), *unknown):
        yield {**payload, key: value}
