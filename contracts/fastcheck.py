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

from marshmallow import RAISE, Schema, ValidationError, fields, validate

Check = Callable[[object], bool]
FLOAT_INTS = 2**53  # ints a Float field turns into the same float


def compile_schema(schema: Schema) -> Check | None:
    """A checker for `schema`'s load, or None when only marshmallow itself can decide."""
    if not _compilable(schema):
        return None
    source = _Source()
    entry = source.schema_function(schema)
    namespace = dict(source.constants)
    exec(compile("\n".join(source.lines), f"<fastcheck {type(schema).__name__}>", "exec"),
         namespace)
    return namespace[entry]


def _compilable(schema: Schema) -> bool:
    return (getattr(schema, "unknown", RAISE) == RAISE and not any(schema._hooks.values())
            and not (schema.only or schema.exclude or schema.partial))


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
