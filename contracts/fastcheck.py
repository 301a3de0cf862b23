"""A fast yes for the common case of validating an event payload against its schema.

marshmallow spends ~60 µs on a typical payload, mostly in its schema machinery; every append
and every event an auditor verifies pays it. `compile_schema` turns a marshmallow schema
into one generated Python function that answers True only for payloads marshmallow would
also accept: exact types (str, int, bool, float, dict, list, ISO dates and times parsed by
the function the field itself uses), required keys, no unknown keys, None only where the
field allows it, and the Length, OneOf, Range and Regexp validators. Anything else it hands
to the field's own `deserialize`, and a schema with schema-level hooks it does not compile
at all. False (or an exception) means "not sure": the caller then asks marshmallow, which
gives the real answer and the field errors.
"""

from __future__ import annotations

from collections.abc import Callable

from marshmallow import RAISE, Schema, ValidationError, fields, missing, validate

Check = Callable[[object], bool]
FLOAT_INTS = 2**53  # ints a Float field turns into the same float


def compile_schema(schema: Schema, schema_validators_apart: bool = False) -> Check | None:
    """A checker for `schema`'s load, or None when only marshmallow itself can decide.
    `schema_validators_apart`: a schema whose only hooks are its own `validates_schema`
    is compiled too, the caller running them on the loaded data (see `compile_loader`)."""
    if schema.many or not _compilable(schema, schema_validators_apart):
        return None  # many: a list of payloads, which the generated function does not take
    source = _Source()
    entry = source.schema_function(schema)
    namespace = dict(source.constants)
    exec(compile("\n".join(source.lines), f"<fastcheck {type(schema).__name__}>", "exec"),
         namespace)
    return namespace[entry]


def _compilable(schema: Schema, schema_validators_apart: bool = False) -> bool:
    hooks = {tag for tag, found in schema._hooks.items() if found}
    if schema_validators_apart:
        hooks.discard("validates_schema")
    return (getattr(schema, "unknown", RAISE) == RAISE and not hooks
            and not (schema.only or schema.exclude or schema.partial))


# -- loading: the same dict as marshmallow's load, for the inputs the check says yes to --------

Loader = Callable[[object], "dict | None"]


def compile_loader(schema: Schema) -> Loader | None:
    """`schema.load` for the common case: a function giving the loaded dict where it is sure
    marshmallow gives the same, None where only marshmallow can say (the caller then loads
    through it, which gives the real answer or the field errors). None when the schema has a
    field whose loaded value is not the value sent (dates, floats, renamed keys…).

    The compiled check says the fields are valid; a valid String, Integer or Boolean loads as
    itself, so the loaded dict is the input with each missing field's load_default, nested
    schemas alike; then the schema's own `validates_schema` run on it, as marshmallow runs
    them (any error: None, and marshmallow answers)."""
    if not _loads_as_sent(schema, top=True):
        return None
    check = compile_schema(schema, schema_validators_apart=True)
    if check is None:
        return None
    fill = _filler(schema)
    validators = [getattr(schema, name) for name, _, _ in schema._hooks["validates_schema"]]

    def load(data: object) -> dict | None:
        try:
            if not check(data):
                return None
            loaded = fill(data)
            for validator in validators:
                validator(loaded, partial=schema.partial, many=False, unknown=schema.unknown)
        except Exception:  # noqa: BLE001 - not sure (or refused): marshmallow decides
            return None
        return loaded

    return load


_AS_SENT = (fields.String, fields.Integer, fields.Boolean)


def _loads_as_sent(schema: Schema, top: bool = False) -> bool:
    """Whether every field of `schema` loads a valid value as the value itself. Top level:
    schema validators only (not passed the original or the collection); nested: no hooks."""
    for tag, found in schema._hooks.items():
        if not found:
            continue
        if not top or tag != "validates_schema" or any(
                many or options.get("pass_original") for _, many, options in found):
            return False
    return all(field.dump_only or _field_as_sent(name, field)
               for name, field in schema.fields.items())


def _field_as_sent(name: str, field: fields.Field) -> bool:
    if field.data_key not in (None, name) or field.attribute not in (None, name):
        return False
    kind = type(field)
    if kind in _AS_SENT:
        return True
    if kind is fields.List:
        return _field_as_sent(name, field.inner)
    if kind is fields.Nested:
        return (not (field.only or field.exclude or field.many)
                and isinstance(field.nested, type | Schema) and _loads_as_sent(field.schema))
    return False


def _filler(schema: Schema) -> Callable[[dict], dict]:
    """The input with the load_default of each missing field, in marshmallow's key order."""
    steps = []
    for name, field in schema.fields.items():
        if field.dump_only:
            continue
        steps.append((name, field.load_default, _inner_filler(field)))

    def fill(data: dict) -> dict:
        loaded = {}
        for name, default, inner in steps:
            value = data.get(name, _MISSING_FIELD)
            if value is _MISSING_FIELD:
                if default is missing:
                    continue
                value = default() if callable(default) else default
            elif inner is not None and value is not None:
                value = inner(value)
            loaded[name] = value
        return loaded

    return fill


def _inner_filler(field: fields.Field) -> Callable[[object], object] | None:
    if type(field) is fields.Nested:
        return _filler(field.schema)
    if type(field) is fields.List:
        item = _inner_filler(field.inner)
        if item is not None:
            return lambda values: [None if v is None else item(v) for v in values]
        return list  # a new list, as marshmallow's: the loaded dict shares nothing with the input
    return None


_MISSING_FIELD = object()


class _Source:
    """The generated module: one function per schema, constants by name."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.constants: dict[str, object] = {"_ValidationError": ValidationError}
        self.count = 0

    def constant(self, value: object) -> str:
        name = f"_c{len(self.constants)}"
        self.constants[name] = value
        return name

    def schema_function(self, schema: Schema) -> str:
        self.count += 1
        name = f"_check{self.count}"
        body: list[str] = []
        allowed = []
        for field_name, field in schema.fields.items():
            if field.dump_only:
                continue  # present in the input: unknown, so the check says "not sure"
            key = field.data_key or field_name
            allowed.append(key)
            body.append(f"x = v.get({key!r}, _MISSING)")
            body.append("if x is _MISSING:")
            body.append("    return False" if field.required else "    pass")
            body += self.value_checks(field, "x", 0)
        self.constants.setdefault("_MISSING", object())
        keys = self.constant(frozenset(allowed))
        lines = [f"def {name}(v):",
                 "    if type(v) is not dict or not " + keys + ".issuperset(v):",
                 "        return False"]
        lines += ["    " + line for line in body]
        lines.append("    return True")
        self.lines += lines
        return name

    def value_checks(self, field: fields.Field, x: str, depth: int) -> list[str]:
        """Lines that `return False` unless the present value `x` is one marshmallow takes."""
        # a field's value follows `if x is _MISSING:` in its schema function; a list's item not
        lines = [f"{'elif' if x == 'x' else 'if'} {x} is None:"]
        lines.append("    " + ("pass" if field.allow_none else "return False"))
        lines.append("else:")
        exact = self.exact_checks(field, x, depth)
        if exact is None:
            fallback = self.constant(field.deserialize)
            exact = ["try:", f"    {fallback}({x})",
                     "except (_ValidationError, TypeError, ValueError):", "    return False"]
        lines += ["    " + line for line in exact]
        return lines

    def exact_checks(self, field: fields.Field, x: str, depth: int) -> list[str] | None:
        validators = self.validator_checks(field.validators, x)
        if validators is None:
            return None
        kind = type(field)
        if kind is fields.String:
            return [f"if type({x}) is not str:", "    return False", *validators]
        if kind is fields.Integer:
            return [f"if type({x}) is not int:", "    return False", *validators]
        if kind is fields.Boolean:
            return [f"if type({x}) is not bool:", "    return False", *validators]
        if kind is fields.Float and not getattr(field, "allow_nan", False):
            return [f"if not ((type({x}) is float and {x} - {x} == 0.0) or (type({x}) is int "
                    f"and -{FLOAT_INTS} < {x} < {FLOAT_INTS})):", "    return False",
                    *validators]
        if kind is fields.Dict and field.key_field is None and field.value_field is None:
            return [f"if type({x}) is not dict:", "    return False", *validators]
        if kind in (fields.DateTime, fields.Date) and not validators and \
                (field.format or kind.DEFAULT_FORMAT) in ("iso", "iso8601"):
            parse = self.constant(kind.DESERIALIZATION_FUNCS["iso"])  # the field's own
            return [f"if type({x}) is not str:", "    return False", "try:",
                    f"    {parse}({x})", "except ValueError:", "    return False"]
        if kind is fields.Nested and not (field.only or field.exclude) and \
                getattr(field, "unknown", None) in (None, RAISE) and _compilable(field.schema):
            inner = self.schema_function(field.schema)
            if field.many:
                item = f"i{depth}"
                return [f"if type({x}) is not list:", "    return False",
                        f"for {item} in {x}:", f"    if not {inner}({item}):",
                        "        return False", *validators]
            return [f"if not {inner}({x}):", "    return False", *validators]
        if kind is fields.List:
            item = f"i{depth}"
            inner = self.value_checks(field.inner, item, depth + 1)
            return [f"if type({x}) is not list:", "    return False", f"for {item} in {x}:",
                    *["    " + line for line in inner], *validators]
        return None

    def validator_checks(self, found: list, x: str) -> list[str] | None:
        """Lines for the validators we can mirror exactly; None if there is another."""
        lines: list[str] = []
        for rule in found:
            kind = type(rule)
            if kind is validate.Length:
                if rule.equal is not None:
                    lines += [f"if len({x}) != {rule.equal!r}:", "    return False"]
                    continue
                if rule.min is not None:
                    lines += [f"if len({x}) < {rule.min!r}:", "    return False"]
                if rule.max is not None:
                    lines += [f"if len({x}) > {rule.max!r}:", "    return False"]
            elif kind is validate.OneOf:
                lines += [f"if {x} not in {self.constant(rule.choices)}:", "    return False"]
            elif kind is validate.Range:
                if rule.min is not None:
                    op = "<" if rule.min_inclusive else "<="
                    lines += [f"if {x} {op} {self.constant(rule.min)}:", "    return False"]
                if rule.max is not None:
                    op = ">" if rule.max_inclusive else ">="
                    lines += [f"if {x} {op} {self.constant(rule.max)}:", "    return False"]
            elif kind is validate.Regexp:
                lines += [f"if {self.constant(rule.regex)}.match({x}) is None:",
                          "    return False"]
            else:
                return None
        return lines
