"""The gateway's fast body loader gives exactly marshmallow's load, or leaves it to marshmallow."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError

from contracts.fastcheck import compile_loader
from contracts.gateway import ROUTES
from tests.unit.test_fastcheck import paths, replaced, values

BODY_SCHEMAS = {route.operation: route.body() for route in ROUTES if route.body}
COMPLETION = {"work_done": "replaced the heating element", "fault_code": "WH-E1",
              "parts": [{"part_code": "HE-2000", "old_serial": "OLD-1", "new_serial": "NEW-1",
                         "quantity": 1, "fee_cents": 12000, "charged_to": "manufacturer"},
                        {"part_code": "TH-10", "new_serial": "NEW-2", "fee_cents": 900}],
              "installation_barcode": "BC-123456", "labour_fee_cents": 8000,
              "travel_fee_cents": 1500, "travel_distance_km": 12, "customer_paid_cents": 0,
              "confirmation_code": "1234"}
VALID = {"accept": {"note": "on my way"}, "reject": {"reason_code": "out_of_area"},
         "cancel_appointment": {"reason_code": "customer_request", "note": "moved"},
         "complete": COMPLETION}


def agrees(operation: str, body: object) -> None:
    """Never a dict where marshmallow refuses; where it gives one, marshmallow's own."""
    schema = BODY_SCHEMAS[operation]
    fast = compile_loader(schema)(body)
    try:
        loaded = schema.load(body)
    except ValidationError:
        assert fast is None, (operation, body)
        return
    assert fast is None or fast == loaded, (operation, body, fast, loaded)


def test_the_completion_body_and_the_other_simple_bodies_take_the_fast_path():
    assert sorted(VALID) == sorted(op for op, schema in BODY_SCHEMAS.items()
                                   if compile_loader(schema) is not None)
    for operation, body in VALID.items():
        assert compile_loader(BODY_SCHEMAS[operation])(body) == \
            BODY_SCHEMAS[operation].load(body)
    minimal = {"work_done": "x", "labour_fee_cents": 0}
    assert compile_loader(BODY_SCHEMAS["complete"])(minimal) == \
        BODY_SCHEMAS["complete"].load(minimal)


def test_a_schema_level_refusal_is_left_to_marshmallow():
    twice = {**COMPLETION, "parts": [COMPLETION["parts"][0], COMPLETION["parts"][0]]}
    assert compile_loader(BODY_SCHEMAS["complete"])(twice) is None
    with pytest.raises(ValidationError):
        BODY_SCHEMAS["complete"].load(twice)


@pytest.mark.parametrize("operation", sorted(VALID))
@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_a_changed_value_is_never_loaded_otherwise_than_by_marshmallow(operation, data):
    body = VALID[operation]
    path = data.draw(st.sampled_from(paths(body)))
    agrees(operation, replaced(body, path, data.draw(values)))


@pytest.mark.parametrize("operation", sorted(VALID))
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_any_body_is_never_loaded_otherwise_than_by_marshmallow(operation, data):
    names = [*BODY_SCHEMAS[operation].fields, "status", "parts"]
    body = data.draw(st.one_of(
        values, st.dictionaries(st.sampled_from(names), values, max_size=len(names))))
    agrees(operation, body)


@pytest.mark.parametrize("operation", sorted(VALID))
def test_a_missing_or_unknown_key_is_never_loaded_otherwise(operation):
    body = VALID[operation]
    for key in body:
        agrees(operation, {k: v for k, v in body.items() if k != key})
    agrees(operation, {**body, "status": "completed"})
    if operation == "complete":
        for index, line in enumerate(body["parts"]):
            for key in line:
                parts = [dict(p) for p in body["parts"]]
                del parts[index][key]
                agrees(operation, {**body, "parts": parts})
            agrees(operation, {**body, "parts": [{**line, "serial": "x"}]})
