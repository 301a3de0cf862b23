"""An RPC or HTTP payload loads through its schema's compiled loader exactly as marshmallow loads
it (the same dict, or the same refusal with the same field errors), or is left to marshmallow."""

from __future__ import annotations

import copy
import gc
import weakref

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from marshmallow import Schema, ValidationError, fields, validate

from contracts import callback, dispatch, orders, registry, settlement
from contracts.errors import ValidationFailed
from contracts.gateway import ROUTES
from contracts.registry import compiled_loader, load
from tests.unit.payload_strategies import a_key_missing_or_unknown, one_value_changed, values

BODY_SCHEMAS = {route.operation: route.body() for route in ROUTES if route.body}
RPC_SCHEMAS = {"create_order": orders.CreateOrder(), "cancel_order": orders.CancelOrder(),
               "record_fault": orders.RecordFault(), "file_complaint": orders.FileComplaint()}
SCHEMAS = {**BODY_SCHEMAS, **RPC_SCHEMAS}
COMPLETION = {"work_done": "replaced the heating element", "fault_code": "WH-E1",
              "parts": [{"part_code": "HE-2000", "old_serial": "OLD-1", "new_serial": "NEW-1",
                         "quantity": 1, "fee_cents": 12000, "charged_to": "manufacturer"},
                        {"part_code": "TH-10", "new_serial": "NEW-2", "fee_cents": 900}],
              "installation_barcode": "BC-123456", "labour_fee_cents": 8000,
              "travel_fee_cents": 1500, "travel_distance_km": 12, "customer_paid_cents": 0,
              "confirmation_code": "1234"}
ORDER_ID = "1025b584-927e-4b05-a2c2-612a5d24a4f9"
VALID = {"accept": {"note": "on my way"}, "reject": {"reason_code": "out_of_area"},
         "cancel_appointment": {"reason_code": "customer_request", "note": "moved"},
         "complete": COMPLETION,
         "create_order": {"request_id": "5f0c7a1e9d2b4c38", "product_id": "p-1",
                          "order_type": "repair", "channel": "phone",
                          "description": "热水器不加热", "fault_code": "WH-E1", "agent_id": "a7"},
         "cancel_order": {"order_id": ORDER_ID, "reason": "duplicate", "agent_id": "a7"},
         "record_fault": {"order_id": ORDER_ID, "fault_code": "WH-E1", "agent_id": "a7"},
         "file_complaint": {"order_id": ORDER_ID, "channel": "sms", "agent_id": "a7",
                            "description": "the technician never came"}}


def agrees(operation: str, payload: object) -> None:
    """`load` gives marshmallow's dict or marshmallow's field errors; the compiled loader
    never a dict where marshmallow refuses, and where marshmallow gives one, the same."""
    schema = SCHEMAS[operation]
    fast = compiled_loader(schema)(payload)
    try:
        loaded = schema.load(payload)
    except ValidationError as error:
        assert fast is None, (operation, payload)
        with pytest.raises(ValidationFailed) as refused:
            load(schema, payload)
        if isinstance(payload, dict):
            assert refused.value.fields == error.normalized_messages(), (operation, payload)
        return
    assert fast is None or fast == loaded, (operation, payload, fast, loaded)
    assert load(schema, payload) == loaded, (operation, payload)


def _value(field: fields.Field) -> st.SearchStrategy:
    """Values `field` takes (its kinds and validators in these schemas)."""
    rules = {type(rule): rule for rule in field.validators}
    if validate.OneOf in rules:
        return st.sampled_from(list(rules[validate.OneOf].choices))
    length = rules.get(validate.Length)
    if type(field) is fields.String:
        if length is not None and length.equal is not None:
            return st.text(min_size=length.equal, max_size=length.equal)
        low = (length.min if length is not None else None) or 0
        high = length.max if length is not None and length.max is not None else 80
        return st.text(min_size=low, max_size=min(high, low + 80))
    if type(field) is fields.Integer:
        bounds = rules.get(validate.Range)
        return st.integers(bounds.min if bounds else None, bounds.max if bounds else None)
    if type(field) is fields.Boolean:
        return st.booleans()
    if type(field) is fields.Nested:
        return valid(field.schema)
    if type(field) is fields.List:
        return st.lists(_value(field.inner), max_size=min(length.max if length else 3, 3))
    raise NotImplementedError(type(field))


def valid(schema: Schema) -> st.SearchStrategy[dict]:
    """Payloads `schema` takes field by field: every required field, any of the others."""
    required, optional = {}, {}
    for name, field in schema.fields.items():
        value = _value(field)
        (required if field.required else optional)[name] = \
            st.none() | value if field.allow_none else value
    return st.fixed_dictionaries(required, optional=optional)


COMPILED = sorted(VALID.keys() & {name for name, schema in SCHEMAS.items()
                                   if compiled_loader(schema) is not None})


def test_the_orders_payloads_and_the_simple_bodies_have_a_compiled_loader():
    assert COMPILED == sorted(["accept", "reject", "cancel_appointment", "complete",
                               "create_order", "cancel_order", "record_fault", "file_complaint"])
    for operation in COMPILED:
        schema = SCHEMAS[operation]
        assert compiled_loader(schema)(VALID[operation]) == schema.load(VALID[operation])
    minimal = {"work_done": "x", "labour_fee_cents": 0}
    assert compiled_loader(BODY_SCHEMAS["complete"])(minimal) == \
        BODY_SCHEMAS["complete"].load(minimal)


@pytest.mark.parametrize("operation", COMPILED)
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_a_generated_valid_payload_loads_on_the_fast_path_as_marshmallow_loads_it(operation,
                                                                                   data):
    schema = SCHEMAS[operation]
    payload = data.draw(valid(schema))
    try:
        loaded = schema.load(payload)
    except ValidationError:  # a schema-level rule: a new serial given twice
        assert compiled_loader(schema)(payload) is None
        return
    assert compiled_loader(schema)(payload) == loaded
    assert load(schema, payload) == loaded


def _contract_schemas() -> dict[str, Schema]:
    """Every schema of contracts/ but the events': payloads, answers and their parts."""
    found = {}
    for module in (orders, dispatch, callback, settlement):
        for name, kind in vars(module).items():
            if isinstance(kind, type) and issubclass(kind, Schema) and \
                    kind.__module__ == module.__name__ and not hasattr(kind, "event_type"):
                found[f"{module.__name__}.{name}"] = kind()
    return found


CONTRACT_SCHEMAS = {name: schema for name, schema in _contract_schemas().items()
                    if compiled_loader(schema) is not None}


@pytest.mark.parametrize("name", sorted(CONTRACT_SCHEMAS))
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_every_contract_schema_with_a_compiled_loader_loads_as_marshmallow_loads(name, data):
    schema = CONTRACT_SCHEMAS[name]
    payload = data.draw(valid(schema))
    if payload and data.draw(st.booleans()):
        payload = data.draw(one_value_changed(payload))
    fast = compiled_loader(schema)(payload)
    try:
        loaded = schema.load(payload)
    except ValidationError:
        assert fast is None, payload
        return
    assert fast is None or fast == loaded, (payload, fast, loaded)


def test_a_schema_level_refusal_is_left_to_marshmallow():
    twice = {**COMPLETION, "parts": [COMPLETION["parts"][0], COMPLETION["parts"][0]]}
    assert compiled_loader(BODY_SCHEMAS["complete"])(twice) is None
    with pytest.raises(ValidationFailed) as refused:
        load(BODY_SCHEMAS["complete"], twice)
    assert refused.value.fields == {"parts": ["new serial NEW-1 appears twice"]}


@pytest.mark.parametrize("operation", COMPILED)
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_a_changed_value_is_never_loaded_otherwise_than_by_marshmallow(operation, data):
    agrees(operation, data.draw(one_value_changed(VALID[operation])))


@pytest.mark.parametrize("operation", COMPILED)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_any_payload_is_never_loaded_otherwise_than_by_marshmallow(operation, data):
    names = [*SCHEMAS[operation].fields, "status", "parts"]
    payload = data.draw(st.one_of(
        values, st.dictionaries(st.sampled_from(names), values, max_size=len(names))))
    agrees(operation, payload)


@pytest.mark.parametrize("operation", COMPILED)
def test_a_missing_or_unknown_key_is_never_loaded_otherwise(operation):
    payload = VALID[operation]
    for near in a_key_missing_or_unknown(payload):
        agrees(operation, near)
    if operation == "complete":
        for index, line in enumerate(payload["parts"]):
            for near in a_key_missing_or_unknown(line, ("serial", "x")):
                parts = [*payload["parts"][:index], near, *payload["parts"][index + 1:]]
                agrees(operation, {**payload, "parts": parts})


class Labels(Schema):
    labels = fields.List(fields.String(), required=True)


def test_the_loaded_dict_shares_no_list_or_object_with_the_payload():
    payload = copy.deepcopy(COMPLETION)
    loaded = load(BODY_SCHEMAS["complete"], payload)
    loaded["parts"][0]["quantity"] = 2
    loaded["parts"].append({})
    assert payload == COMPLETION
    labels = Labels()
    assert compiled_loader(labels) is not None
    payload = {"labels": ["a", "b"]}
    load(labels, payload)["labels"].append("c")
    assert payload == {"labels": ["a", "b"]}


def test_a_schema_for_many_payloads_is_left_to_marshmallow():
    with pytest.raises(ValidationFailed) as refused:
        load(orders.RecordFault(many=True), VALID["record_fault"])
    assert refused.value.fields == {"_schema": ["Invalid input type."]}


def test_a_schema_is_compiled_once_and_one_without_a_loader_is_remembered(monkeypatch):
    compiled = []
    monkeypatch.setattr(registry, "compile_loader",
                        lambda schema: compiled.append(schema) or None)
    schedule = type(BODY_SCHEMAS["schedule"])()  # dates: no compiled loader
    for _ in range(3):
        with pytest.raises(ValidationFailed):
            load(schedule, {})
    assert compiled == [schedule]


def test_a_copy_of_a_schema_gets_a_loader_of_its_own():
    schema = orders.CancelOrder()
    assert load(schema, VALID["cancel_order"])["note"] == ""
    narrowed = copy.copy(schema)  # as a Nested field copies a schema before narrowing it
    narrowed.exclude = {"note"}
    narrowed._init_fields()
    assert compiled_loader(narrowed) is not compiled_loader(schema)
    with pytest.raises(ValidationFailed) as refused:
        load(narrowed, VALID["cancel_order"] | {"note": "x"})
    assert refused.value.fields == {"note": ["Unknown field."]}


def test_a_schema_made_for_one_call_is_not_kept_by_the_cache():
    schema = orders.RecordFault()
    load(schema, VALID["record_fault"])
    gone = weakref.ref(schema)
    del schema
    gc.collect()
    assert gone() is None
