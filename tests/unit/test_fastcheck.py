"""The compiled payload check never says yes where marshmallow says no."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.fastcheck import compile_schema
from contracts.registry import event_schema, validate_event
from tests.unit.payload_strategies import (
    CAPTURED,
    a_key_missing_or_unknown,
    any_payload_of_any_event_type,
    one_value_changed,
)


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


def test_every_captured_payload_takes_the_fast_path_and_is_valid():
    for event in CAPTURED:
        check = compile_schema(event_schema(event["event_type"]))
        assert check is not None and check(event["payload"]), event["event_type"]
        validate_event(event["event_type"], 1, event["payload"])


@pytest.mark.parametrize("event", CAPTURED, ids=lambda e: e["event_type"])
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_a_changed_field_is_never_waved_through(event, data):
    agrees(event["event_type"], data.draw(one_value_changed(event["payload"])))


@pytest.mark.parametrize("event", CAPTURED[:12], ids=lambda e: e["event_type"])
def test_a_missing_or_unknown_key_is_never_waved_through(event):
    for payload in a_key_missing_or_unknown(event["payload"]):
        agrees(event["event_type"], payload)


@settings(max_examples=300, deadline=None)
@given(typed=any_payload_of_any_event_type())
def test_any_payload_for_any_event_type(typed):
    agrees(*typed)
