"""The text check on a payload's stored JSON never says yes where marshmallow says no, and says
yes to the payloads the running services wrote."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from marshmallow import validate

from contracts.registry import event_schema, payload_check, validate_event
from contracts.textcheck import _float, _integer, _up_to, compile_text_check
from serviceloop.eventstore import canonical_json
from tests.unit.payload_strategies import (
    CAPTURED,
    a_key_missing_or_unknown,
    any_payload_of_any_event_type,
    one_value_changed,
    values,
)

texts = st.one_of(st.text(max_size=80), st.sampled_from([
    "", "a\"b", "back\\slash", "tab\there", "杭州市", "😀" * 3, "x" * 65, "\u2028", "\x7f"]))
dates = st.sampled_from([
    "2026-11-02", "2026-02-29", "2024-02-29", "2026-02-30", "2026-04-31", "2026-13-01",
    "0000-01-01", "2026-11-02T09:00:00", "2026-11-02T09:00:00Z", "2026-11-02T24:00:00+00:00",
    "2026-11-02T09:00:00.123+08:00", "2026-11-02T09:00:00.1234567+00:00",
    "2026-11-02T09:00:00+24:00", "2026-11-02 09:00:00+00:00", "2026-11-02T09:60:00Z"])
numbers = st.one_of(st.integers(min_value=-(10**20), max_value=10**20), st.floats(),
                    st.sampled_from([0, -0.0, 1, 20, 21, 90, 90.0, 90.00000000000001, -90.5,
                                     179.99999999999999999, 2**53, 10**15, 10_000_000]))
anything = st.one_of(values, texts, dates, numbers)


def agrees(event_type: str, payload: object) -> None:
    check = compile_text_check(event_schema(event_type))
    text = canonical_json(payload).encode()
    if check is not None and check(text) is not None:
        assert event_schema(event_type).validate(json.loads(text)) == {}, (event_type, text)


def test_every_captured_payload_passes_the_text_check():
    for event in CAPTURED:
        if event["event_type"] == "period_closed":  # a Regexp: marshmallow decides
            continue
        check = compile_text_check(event_schema(event["event_type"]))
        assert check is not None, event["event_type"]
        assert check(canonical_json(event["payload"]).encode()), event["event_type"]


def test_payload_check_answers_as_validate_event_does():
    for event in CAPTURED:
        check = payload_check(event["event_type"])
        assert check(canonical_json(event["payload"]).encode())
        broken = {**event["payload"], "not_in_the_contract": 1}
        assert not check(canonical_json(broken).encode())
    assert not payload_check("no_such_event")(b"{}")
    assert not payload_check("order_settled")(b"{not json")


@pytest.mark.parametrize("event", CAPTURED, ids=lambda e: e["event_type"])
@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_a_changed_field_is_never_waved_through(event, data):
    agrees(event["event_type"], data.draw(one_value_changed(event["payload"], anything)))


@pytest.mark.parametrize("event", CAPTURED, ids=lambda e: e["event_type"])
def test_a_missing_or_unknown_key_is_never_waved_through(event):
    for payload in a_key_missing_or_unknown(event["payload"], ("zzz", None)):
        agrees(event["event_type"], payload)


@settings(max_examples=400, deadline=None)
@given(typed=any_payload_of_any_event_type(anything))
def test_any_payload_for_any_event_type(typed):
    agrees(*typed)


@pytest.mark.parametrize("most", [0, 5, 9, 10, 19, 20, 90, 99, 100, 179, 1000, 123456])
def test_up_to_is_exactly_the_canonical_integers_up_to_most(most):
    pattern = re.compile(_up_to(most))
    assert [n for n in range(0, 2 * most + 20) if pattern.fullmatch(b"%d" % n)] == list(
        range(most + 1))
    assert not pattern.fullmatch(b"01")


@pytest.mark.parametrize("rule", [
    validate.Range(1, 20), validate.Range(0, 10_000_000), validate.Range(-5, 7),
    validate.Range(3, 500), validate.Range(min=0), validate.Range(1, 20, max_inclusive=False),
    validate.Range(0, 5, min_inclusive=False)])
def test_an_integer_range_holds_for_every_integer_matched(rule):
    pattern = re.compile(_integer([rule]))
    for n in range(-1000, 1000):
        if pattern.fullmatch(b"%d" % n):
            assert rule(n) == n


@pytest.mark.parametrize("rule", [validate.Range(-90, 90), validate.Range(-180, 180),
                                  validate.Range(0, 1), validate.Range(0, 10, max_inclusive=False)])
@settings(max_examples=200, deadline=None)
@given(value=st.floats(allow_nan=False, allow_infinity=False, min_value=-1000, max_value=1000))
def test_a_float_range_holds_for_every_decimal_matched(rule, value):
    text = json.dumps(value)
    if re.fullmatch(_float([rule]), text.encode()):
        assert rule(json.loads(text)) is not None


def test_validate_event_still_names_the_errors():
    with pytest.raises(Exception) as raised:
        validate_event("order_settled", 1, {"order_id": ""})
    assert "order_id" in str(getattr(raised.value, "fields", raised.value))
