"""A fast yes for an event payload as stored: its canonical JSON text (UTF-8), not decoded.

An auditor checks every payload of every log against its contract; decoding each one costs
more than the check itself. `compile_text_check` turns a marshmallow schema into one regular
expression over canonical JSON (keys sorted, no spaces; UTF-8, well-formed: the caller makes
sure) that matches only texts whose decoded payload marshmallow accepts: exactly the schema's
keys (the required ones present), strings without escapes (Length: bytes bound the characters
from above; a lower bound above 1 is counted in ASCII characters), OneOf as the
choices' own JSON, integers and decimals small enough that Range holds for every one of them,
ISO dates and times of a shape `fromisoformat` always takes, nested schemas and lists, and
any JSON object of bounded depth for a Dict field. Anything else does not match, and the
caller decodes the payload and asks marshmallow (contracts/registry.py `payload_check`). A
schema with something this cannot mirror (hooks, other validators and fields) gets None.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable

from marshmallow import RAISE, Schema, fields, validate

from contracts.fastcheck import _compilable

TextCheck = Callable[[bytes], object]  # a match (truthy) or None

# the text is well-formed UTF-8 (the caller makes sure: an encoded str always is), so a
# string's bytes are its characters' and no more than that needs checking byte by byte
_ASCII = rb"[\x20\x21\x23-\x5b\x5d-\x7f]"  # printable, less '"' and '\\', as JSON has them
_UNESCAPED = rb'[^"\\\x00-\x1f]'  # a byte of a character JSON writes as it is
_PLAIN_STRING = rb'"' + _UNESCAPED + rb'*+"'
_ANY_STRING = rb'"(?:' + _UNESCAPED + rb'++|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*+"'
_ANY_NUMBER = rb"-?(?:0|[1-9]\d{0,50})(?:\.\d{1,50})?(?:[eE][+-]?\d{1,4})?"
_DAY = (rb"(?:(?:0[13578]|1[02])-(?:0[1-9]|[12]\d|3[01])|(?:0[469]|11)-(?:0[1-9]|[12]\d|30)"
        rb"|02-(?:0[1-9]|1\d|2[0-8]))")  # 29 February: marshmallow decides
_DATE = rb"(?:19|20)\d\d-" + _DAY
_CLOCK = rb"(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d(?:\.\d{6}|\.\d{3})?"
_OFFSET = rb"(?:Z|[+-](?:[01]\d|2[0-3]):[0-5]\d)"
_DICT_DEPTH = 0  # a Dict field's values: scalars on the fast path (deeper: decoded)
_SIGNIFICANT = 15  # digits of an integer part: below 2**53, so a Float field takes it as is


class _Unsupported(Exception):
    """Something only marshmallow can decide."""


def compile_text_check(schema: Schema) -> TextCheck | None:
    """`fullmatch` of the schema's regular expression, or None when it cannot have one."""
    try:
        return re.compile(_object(schema)).fullmatch
    except _Unsupported:
        return None


def _object(schema: Schema) -> bytes:
    if not _compilable(schema):
        raise _Unsupported
    present = sorted((field.data_key or name, field) for name, field in schema.fields.items()
                     if not field.dump_only)  # a dump-only key in the input: unknown
    items = [(re.escape(_json(key)) + rb":" + _value(field), field.required)
             for key, field in present]
    return rb"\{" + _members(items) + rb"\}"


def _members(items: list[tuple[bytes, bool]]) -> bytes:
    """The members of an object, in key order, the required ones present, with a comma
    between two members: the first present one, then each later one after a comma."""
    if not items:
        return b""
    (first, required), rest = items[0], items[1:]
    after = b"".join(rb"," + item if needed else rb"(?:," + item + rb")?"
                     for item, needed in rest)
    if required:
        return first + after
    return rb"(?:" + first + after + rb"|" + _members(rest) + rb")"


def _value(field: fields.Field) -> bytes:
    kind, rules = type(field), field.validators
    if kind is fields.String:
        pattern = _string(rules)
    elif kind is fields.Integer:
        pattern = _integer(rules)
    elif kind is fields.Float and not getattr(field, "allow_nan", False):
        pattern = _float(rules)
    elif kind is fields.Boolean and not rules:
        pattern = rb"(?:true|false)"
    elif kind in (fields.DateTime, fields.AwareDateTime, fields.Date) and not rules and \
            (field.format or kind.DEFAULT_FORMAT) in ("iso", "iso8601"):
        if kind is fields.Date:
            pattern = rb'"' + _DATE + rb'"'
        else:  # an aware time always, so AwareDateTime takes it too
            pattern = rb'"' + _DATE + rb"T" + _CLOCK + (
                _OFFSET if kind is fields.AwareDateTime else _OFFSET + rb"?") + rb'"'
    elif kind is fields.Nested and not (field.only or field.exclude) and \
            getattr(field, "unknown", None) in (None, RAISE):
        pattern = _object(field.schema)
        if field.many:
            pattern = _list(pattern, rules)
        elif rules:
            raise _Unsupported
    elif kind is fields.List:
        pattern = _list(_value(field.inner), rules)
    elif kind is fields.Dict and field.key_field is None and field.value_field is None \
            and not rules:
        pattern = _any_object(_DICT_DEPTH)
    else:
        raise _Unsupported
    return rb"(?:" + pattern + rb"|null)" if field.allow_none else pattern


def _string(rules: list) -> bytes:
    low, high, choices = 0, None, None
    for rule in rules:
        if type(rule) is validate.Length:
            least = rule.equal if rule.equal is not None else rule.min
            most = rule.equal if rule.equal is not None else rule.max
            low = max(low, least or 0)
            high = most if high is None else high if most is None else min(high, most)
        elif type(rule) is validate.OneOf and all(type(c) is str for c in rule.choices):
            allowed = set(rule.choices)
            choices = allowed if choices is None else choices & allowed
        else:
            raise _Unsupported
    if choices is not None:
        fitting = sorted(c for c in choices
                         if len(c) >= low and (high is None or len(c) <= high))
        return rb"(?:" + b"|".join(re.escape(_json(c)) for c in fitting) + rb")" \
            if fitting else rb"(?!)"
    if low == 0 and high is None:
        return _PLAIN_STRING
    count = b"{%d,%s}+" % (low, b"" if high is None else b"%d" % high)
    if low <= 1:  # as many bytes as characters, or more: at most `high` bytes is enough
        return rb'"' + _UNESCAPED + count + rb'"'
    return rb'"' + _ASCII + count + rb'"'  # at least `low` characters: counted in ASCII


def _bounds(rules: list) -> tuple[float | None, bool, float | None, bool]:
    """The tightest (lower, lower inclusive, upper, upper inclusive) of the Range rules."""
    low, low_in, high, high_in = None, True, None, True
    for rule in rules:
        if type(rule) is not validate.Range:
            raise _Unsupported
        if rule.min is not None and (low is None or rule.min >= low):
            low, low_in = rule.min, rule.min_inclusive and not (rule.min == low and not low_in)
        if rule.max is not None and (high is None or rule.max <= high):
            high, high_in = rule.max, rule.max_inclusive and not (
                rule.max == high and not high_in)
    return low, low_in, high, high_in


def _integer(rules: list) -> bytes:
    low, low_in, high, high_in = _bounds(rules)
    least = None if low is None else (int(low) if low_in and low == int(low)
                                      else math.floor(low) + 1)
    most = None if high is None else (int(high) if high_in and high == int(high)
                                      else math.ceil(high) - 1)
    if least is not None and most is not None and least > most:
        return rb"(?!)"
    if least is not None and least > 0:
        if least == 1:  # a canonical integer starting 1-9 is 1 or more
            return rb"(?=[1-9])" + _up_to(most)
        if most is not None and most - least <= 100:
            return rb"(?:" + b"|".join(b"%d" % n for n in range(least, most + 1)) + rb")"
        return rb"(?!)"
    if most is not None and most < 0:
        return rb"(?!)"
    negative = rb"|-" + _up_to(None if least is None else -least) if least != 0 else b""
    return rb"(?:" + _up_to(most) + negative + rb")"


def _float(rules: list) -> bytes:
    """Decimals with an integer part of at most 15 digits (so ints are below 2**53) whose
    every value, rounded to a float, is within the Range rules."""
    low, low_in, high, high_in = _bounds(rules)
    largest = 10 ** _SIGNIFICANT - 1

    def integer_part(bound: float | None, inclusive: bool) -> int:
        """The largest integer part m such that m + 1 (where rounding may take x < m + 1)
        is still within `bound`."""
        if bound is None:
            return largest
        return min(largest, math.floor(bound) - 1 if inclusive else math.ceil(bound) - 2)

    top = integer_part(high, high_in)
    if top < 0 or (low is not None and (low > 0 or (low == 0 and not low_in))):
        return rb"(?!)"
    fraction = rb"(?:\.\d{1,17})?"
    positive = _up_to(top) + fraction
    bottom = integer_part(None if low is None else -low, low_in)
    return rb"(?:" + positive + (rb"|-" + _up_to(bottom) + fraction if bottom >= 0 else b"") \
        + rb")"


def _up_to(most: int | None) -> bytes:
    """Canonical integers 0 … `most` (any, if None), exactly."""
    if most is None:
        return rb"(?:0|[1-9]\d{0,17}+)"
    digits = str(most)
    # every shorter number at once (possessive: a longer one is not taken apart), then those as
    # long as `most` and not above it
    shorter = [] if len(digits) == 1 else [
        rb"0|[1-9]\d{0,%d}+" % (len(digits) - 2) if len(digits) > 2 else rb"\d"]
    same = []
    for at, digit in enumerate(map(int, digits)):
        lowest = 1 if at == 0 and len(digits) > 1 else 0
        prefix = digits[:at].encode()
        if at == len(digits) - 1:
            same.append(prefix + b"[%d-%d]" % (lowest, digit))
        elif digit > lowest:
            same.append(prefix + b"[%d-%d]\\d{%d}" % (lowest, digit - 1, len(digits) - 1 - at))
    return rb"(?:" + b"|".join(shorter + same) + rb")"


def _list(item: bytes, rules: list) -> bytes:
    low, high = 0, None
    for rule in rules:
        if type(rule) is not validate.Length or rule.equal is not None:
            raise _Unsupported
        low = max(low, rule.min or 0)
        high = rule.max if high is None else high if rule.max is None else min(high, rule.max)
    if high is not None and high < max(low, 1):
        return rb"\[\]" if low == 0 and high == 0 else rb"(?!)"
    more = rb"(?:," + item + rb")" + (
        b"{%d,%s}+" % (max(low - 1, 0), b"" if high is None else b"%d" % (high - 1)))
    return rb"\[" + item + more + rb"\]" if low else rb"\[(?:" + item + more + rb")?\]"


def _any_object(depth: int) -> bytes:
    """Any JSON object (as json.loads reads it) whose values nest at most `depth` deep."""
    value = _any_value(depth)
    member = _ANY_STRING + rb":" + value
    return rb"\{(?:" + member + rb"(?:," + member + rb")*+)?\}"


def _any_value(depth: int) -> bytes:
    scalar = rb"(?:" + _ANY_STRING + rb"|" + _ANY_NUMBER + rb"|true|false|null)"
    if not depth:
        return scalar
    inner = _any_value(depth - 1)
    return (rb"(?:" + scalar + rb"|\[(?:" + inner + rb"(?:," + inner + rb")*+)?\]|"
            + _any_object(depth - 1) + rb")")


def _json(value: str) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()
