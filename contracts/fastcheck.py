"""A fast yes for the common case of validating an event payload against its schema.

marshmallow spends ~60 µs on a typical payload, mostly in its schema machinery; every append
and every event an auditor verifies pays it. `compile_schema` turns a marshmallow schema
into a plain function that answers True only for payloads marshmallow would also accept:
exact types (str, int, bool, float, dict, list, ISO dates and times parsed by the function
the field itself uses), required keys, no unknown keys, None only where the field allows
it, and the Length, OneOf, Range and Regexp validators. Anything it
does not know it hands to the field's own `deserialize` (dates, UUIDs, other validators), and
a schema with schema-level hooks it does not compile at all. False means "not sure":
the caller then asks marshmallow, which gives the real answer and the field errors.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from marshmallow import RAISE, Schema, ValidationError, fields, validate

Check = Callable[[object], bool]
FLOAT_INTS = 2**53  # ints a Float field turns into the same float


def compile_schema(schema: Schema) -> Check | None:
    """A checker for `schema`'s load, or None when only marshmallow itself can decide."""
    if getattr(schema, "unknown", RAISE) != RAISE or any(schema._hooks.values()):
        return None
    if schema.only or schema.exclude or schema.partial:
        return None
    checks: list[tuple[str, bool, Check]] = []
    allowed = set()
    for name, field in schema.fields.items():
        key = field.data_key or name
        if field.dump_only:
            continue  # present in the input: unknown, so the fast path says "not sure"
        allowed.add(key)
        checks.append((key, bool(field.required), _compile_field(field)))
    allowed_keys = frozenset(allowed)

    def check(value: object) -> bool:
        if type(value) is not dict or not allowed_keys.issuperset(value):
            return False
        for key, required, field_check in checks:
            if key in value:
                if not field_check(value[key]):
                    return False
            elif required:
                return False
        return True

    return check


def _compile_field(field: fields.Field) -> Check:
    exact = _exact_check(field)
    allow_none = field.allow_none
    if exact is None:
        def by_marshmallow(value: object) -> bool:  # the field's own rules, exactly
            if value is None:
                return allow_none
            try:
                field.deserialize(value)
            except (ValidationError, TypeError, ValueError):
                return False
            return True

        return by_marshmallow

    def check(value: object) -> bool:
        if value is None:
            return allow_none
        return exact(value)

    return check


def _exact_check(field: fields.Field) -> Check | None:
    """The field's check on a non-None value, or None if it is not one we can mirror."""
    validators = _validators(field.validators)
    if validators is None:
        return None
    kind = type(field)
    if kind is fields.String:
        return _all(lambda v: type(v) is str, validators)
    if kind is fields.Integer:
        return _all(lambda v: type(v) is int, validators)
    if kind is fields.Boolean:
        return _all(lambda v: type(v) is bool, validators)
    if kind is fields.Float and not getattr(field, "allow_nan", False):
        return _all(lambda v: (type(v) is float and math.isfinite(v))
                    or (type(v) is int and -FLOAT_INTS < v < FLOAT_INTS), validators)
    if kind is fields.Dict and field.key_field is None and field.value_field is None:
        return _all(lambda v: type(v) is dict, validators)
    if kind is fields.Nested and not (field.only or field.exclude) and \
            getattr(field, "unknown", None) in (None, RAISE):
        inner = compile_schema(field.schema)
        if inner is None:
            return None
        if field.many:
            return _all(lambda v: type(v) is list and all(inner(item) for item in v),
                        validators)
        return _all(inner, validators)
    if kind in (fields.DateTime, fields.Date) and not validators and \
            (field.format or kind.DEFAULT_FORMAT) in ("iso", "iso8601"):
        parse = kind.DESERIALIZATION_FUNCS["iso"]  # what the field itself calls

        def temporal(value: object) -> bool:
            if type(value) is not str:
                return False
            try:
                parse(value)
            except ValueError:
                return False
            return True

        return temporal
    if kind is fields.List:
        item = _compile_field(field.inner)
        return _all(lambda v: type(v) is list and all(item(x) for x in v), validators)
    return None


def _validators(found: list) -> list[Check] | None:
    """Plain checks for the validators we can mirror exactly; None if there is another."""
    checks: list[Check] = []
    for validator in found:
        kind = type(validator)
        if kind is validate.Length:
            checks.append(_length(validator))
        elif kind is validate.OneOf:
            choices = validator.choices
            checks.append(lambda v, choices=choices: v in choices)
        elif kind is validate.Range:
            checks.append(_range(validator))
        elif kind is validate.Regexp:
            checks.append(lambda v, regex=validator.regex: regex.match(v) is not None)
        else:
            return None
    return checks


def _length(rule: validate.Length) -> Check:
    equal, low, high = rule.equal, rule.min, rule.max
    if equal is not None:
        return lambda v: len(v) == equal
    return lambda v: (low is None or len(v) >= low) and (high is None or len(v) <= high)


def _range(rule: validate.Range) -> Check:
    low, high = rule.min, rule.max
    low_ok = (lambda v: v >= low) if rule.min_inclusive else (lambda v: v > low)
    high_ok = (lambda v: v <= high) if rule.max_inclusive else (lambda v: v < high)
    return lambda v: (low is None or low_ok(v)) and (high is None or high_ok(v))


def _all(type_check: Check, validators: list[Check]) -> Check:
    if not validators:
        return type_check
    return lambda v: type_check(v) and all(rule(v) for rule in validators)
