"""The compiled payload check never says yes where marshmallow says no."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.fastcheck import compile_schema
from contracts.registry import event_schema, event_types, validate_event

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


def agrees(event_type: str, payload: object) -> None:
    schema = event_schema(event_type)
    check = compile_schema(schema)
    if check is None:
        return
    try:
        fast = check(payload)
    except Exception:  # noqa: BLE001 - the registry treats this as "not sure"
        return
    if fast:
        assert schema.validate(payload) == {}, (event_type, payload)


def paths(value: object, prefix: tuple = ()) -> list[tuple]:
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


def test_every_captured_payload_takes_the_fast_path_and_is_valid():
    for event in CAPTURED:
        check = compile_schema(event_schema(event["event_type"]))
        assert check is not None and check(event["payload"]), event["event_type"]
        validate_event(event["event_type"], 1, event["payload"])


@pytest.mark.parametrize("event", CAPTURED, ids=lambda e: e["event_type"])
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_a_changed_field_is_never_waved_through(event, data):
    payload = event["payload"]
    path = data.draw(st.sampled_from(paths(payload)))
    agrees(event["event_type"], replaced(payload, path, data.draw(values)))


@pytest.mark.parametrize("event", CAPTURED[:12], ids=lambda e: e["event_type"])
def test_a_missing_or_unknown_key_is_never_waved_through(event):
    payload = event["payload"]
    for key in payload:
        agrees(event["event_type"], {k: v for k, v in payload.items() if k != key})
    agrees(event["event_type"], {**payload, "status": "closed"})


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_payload_for_any_event_type(data):
    event_type = data.draw(st.sampled_from(event_types()))
    names = list(event_schema(event_type).fields)
    payload = data.draw(st.dictionaries(st.sampled_from(names), values, max_size=len(names)))
    agrees(event_type, payload)
