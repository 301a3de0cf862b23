"""The partner gateway's OpenAPI 3.0.3 document, generated from contracts.gateway.ROUTES and
the marshmallow schemas in contracts.dispatch, so the document cannot drift from what the
gateway loads and answers.

    python -m contracts.openapi [OUT]     # JSON to OUT, or to stdout
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from marshmallow import Schema, fields, validate

from contracts import dispatch as d
from contracts.gateway import IDEMPOTENCY_HEADER, MAX_BODY_BYTES, ROUTES, Route
from contracts.signing import (
    MAX_SKEW_SECONDS,
    PARTNER_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
)

OPENAPI_VERSION = "3.0.3"
API_VERSION = "1.0.0"
MAX_IDEMPOTENCY_KEY = 128  # as services/dispatch/gateway.py enforces it

SECURITY_SCHEMES = {
    "PartnerId": (PARTNER_ID_HEADER, "The partner id given at registration."),
    "Timestamp": (TIMESTAMP_HEADER, f"Unix seconds when signed; more than {MAX_SKEW_SECONDS} s "
                                    "from the server's clock is refused."),
    "Signature": (SIGNATURE_HEADER, "Hex HMAC-SHA256 with the partner's secret over "
                                    "timestamp + \"\\n\" + METHOD + \"\\n\" + path_with_query + "
                                    "\"\\n\" + hex_sha256(body). Good for one request only."),
}

ERROR_DESCRIPTIONS = {
    400: "Malformed JSON, not JSON, a missing or invalid Idempotency-Key, or a repeated or "
         "unexpected query parameter.",
    401: "Missing, wrong, stale (more than 300 s off) or replayed signature.",
    403: "Not allowed for this partner.",
    404: "The order is not assigned to you, or unknown.",
    409: "The order's state does not allow this (code says why), or the Idempotency-Key was "
         "already used with another body.",
    413: f"The body is over {MAX_BODY_BYTES} bytes.",
    422: "Field errors: unknown, missing or invalid fields, listed in error.fields.",
    429: "Rate limited: retry after the Retry-After header's seconds.",
}

_HEADER_SCHEMAS = {
    429: {"Retry-After": {"description": "Seconds to wait before retrying.",
                          "schema": {"type": "integer", "minimum": 0}}},
    401: {"WWW-Authenticate": {"description": "The signing scheme.",
                               "schema": {"type": "string"}}},
}

_WERKZEUG_PARAM = re.compile(r"<(?:[a-z_]+:)?([A-Za-z_][A-Za-z0-9_]*)>")


def component_name(schema: type[Schema] | Schema) -> str:
    cls = schema if isinstance(schema, type) else type(schema)
    name = cls.__name__
    return name[: -len("Schema")] if name.endswith("Schema") and name != "Schema" else name


class _Converter:
    """marshmallow schemas → OpenAPI schema objects, collecting components as it goes.

    Schemas reached from a request body refuse unknown properties, as marshmallow does (RAISE).
    """

    def __init__(self) -> None:
        self.components: dict[str, dict] = {}

    def ref(self, schema: type[Schema] | Schema, closed: bool) -> dict:
        name = component_name(schema)
        if name not in self.components:
            self.components[name] = {}  # placeholder: stops recursion on cycles
            self.components[name] = self.object_schema(schema, closed)
        elif closed and self.components[name].get("additionalProperties") is not False:
            self.components[name] = self.object_schema(schema, closed)  # and what it nests
        return {"$ref": f"#/components/schemas/{name}"}

    def object_schema(self, schema: type[Schema] | Schema, closed: bool) -> dict:
        instance = schema() if isinstance(schema, type) else schema
        properties: dict[str, dict] = {}
        required: list[str] = []
        for name, field in instance.fields.items():
            if field.dump_only:
                continue
            key = field.data_key or name
            properties[key] = self.field(field, closed)
            if field.required:
                required.append(key)
        out: dict[str, Any] = {"type": "object", "properties": properties}
        if required:
            out["required"] = required
        doc = (type(instance).__doc__ or "").strip()
        if doc:
            out["description"] = " ".join(doc.split())
        if closed:
            out["additionalProperties"] = False
        return out

    def field(self, field: fields.Field, closed: bool) -> dict:
        out = self._base(field, closed)
        if "$ref" in out:
            if field.allow_none:
                out = {"allOf": [out], "nullable": True}
        else:
            for validator in _validators(field):
                _apply(validator, field, out)
            if field.allow_none:
                out["nullable"] = True
                if "enum" in out and None not in out["enum"]:
                    out["enum"].append(None)
        description = field.metadata.get("description")
        if description:
            out["description"] = description
        return out

    def _base(self, field: fields.Field, closed: bool) -> dict:
        # subclasses before their bases (Integer < Number, Email < String)
        if isinstance(field, fields.Nested):
            target = field.nested
            if callable(target) and not isinstance(target, type) \
                    and not isinstance(target, Schema):
                target = target()
            ref = self.ref(target, closed)
            return {"type": "array", "items": ref} if field.many else ref
        if isinstance(field, fields.List):
            return {"type": "array", "items": self.field(field.inner, closed)}
        if isinstance(field, fields.Dict):
            out: dict[str, Any] = {"type": "object"}
            if field.value_field is not None:
                out["additionalProperties"] = self.field(field.value_field, closed)
            return out
        if isinstance(field, fields.Date):
            return {"type": "string", "format": "date"}
        if isinstance(field, fields.DateTime):  # and AwareDateTime, NaiveDateTime
            return {"type": "string", "format": "date-time"}
        if isinstance(field, fields.Boolean):
            return {"type": "boolean"}
        if isinstance(field, fields.Integer):
            return {"type": "integer"}
        if isinstance(field, fields.Number):
            return {"type": "number"}
        if isinstance(field, fields.UUID):
            return {"type": "string", "format": "uuid"}
        if isinstance(field, fields.String):
            return {"type": "string"}
        return {}


def _validators(field: fields.Field) -> list:
    found = list(field.validators)
    # marshmallow 4 folds `validate=` into `validators`; older versions keep it apart
    extra = getattr(field, "validate", None)
    if extra is not None and not callable(extra):
        found += [v for v in extra if v not in found]
    elif extra is not None and extra not in found:
        found.append(extra)
    return found


def _apply(validator: object, field: fields.Field, out: dict) -> None:
    if isinstance(validator, validate.Length):
        array = out.get("type") == "array"
        if validator.equal is not None:
            low = high = validator.equal
        else:
            low, high = validator.min, validator.max
        if low is not None:
            out["minItems" if array else "minLength"] = low
        if high is not None:
            out["maxItems" if array else "maxLength"] = high
    elif isinstance(validator, validate.Range):
        if validator.min is not None:
            out["minimum"] = validator.min
            if not validator.min_inclusive:
                out["exclusiveMinimum"] = True
        if validator.max is not None:
            out["maximum"] = validator.max
            if not validator.max_inclusive:
                out["exclusiveMaximum"] = True
    elif isinstance(validator, validate.OneOf):
        out["enum"] = list(validator.choices)
    elif isinstance(validator, validate.Regexp):
        out["pattern"] = validator.regex.pattern


# -- the document ---------------------------------------------------------------------------


def openapi_path(rule: str) -> str:
    """A werkzeug rule as an OpenAPI path: `<order_id>` → `{order_id}`."""
    return _WERKZEUG_PARAM.sub(r"{\1}", rule)


def _parameters(route: Route, converter: _Converter) -> list[dict]:
    params = [{"name": name, "in": "path", "required": True,
               "schema": {"type": "string", "minLength": 1}}
              for name in _WERKZEUG_PARAM.findall(route.path)]
    if route.query is not None:
        for name, field in route.query().fields.items():
            if field.dump_only:
                continue
            schema = converter.field(field, closed=False)
            # a query string cannot carry null: absent is how it says "none"
            if schema.pop("nullable", False) and "enum" in schema:
                schema["enum"] = [v for v in schema["enum"] if v is not None]
            param = {"name": field.data_key or name, "in": "query",
                     "required": bool(field.required), "schema": schema}
            if "description" in schema:
                param["description"] = schema.pop("description")
            params.append(param)
    if route.method == "POST":
        params.append({
            "name": IDEMPOTENCY_HEADER, "in": "header", "required": True,
            "description": "Unique per intended action: a retry with the same key and body "
                           "gets the first answer again; another body is 409.",
            "schema": {"type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY,
                       "pattern": "^[ -~]*[!-~][ -~]*$"},
        })
    return params


def _operation(route: Route, converter: _Converter) -> dict:
    responses: dict[str, dict] = {
        "200": {"description": "OK",
                "content": {"application/json": {
                    "schema": converter.ref(route.response, closed=False)}}},
    }
    for status in route.errors:
        answer: dict[str, Any] = {
            "description": ERROR_DESCRIPTIONS.get(status, "Error."),
            "content": {"application/json": {
                "schema": converter.ref(d.ErrorResponse, closed=False)}},
        }
        if status in _HEADER_SCHEMAS:
            answer["headers"] = _HEADER_SCHEMAS[status]
        responses[str(status)] = answer
    operation: dict[str, Any] = {
        "operationId": route.operation,
        "summary": route.summary,
        "tags": ["orders"],
        "security": [{name: [] for name in SECURITY_SCHEMES}],
        "parameters": _parameters(route, converter),
        "responses": responses,
    }
    if route.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": converter.ref(route.body, closed=True)}},
        }
    return operation


def openapi_document() -> dict:
    converter = _Converter()
    paths: dict[str, dict] = {}
    for route in ROUTES:
        paths.setdefault(openapi_path(route.path), {})[route.method.lower()] = \
            _operation(route, converter)
    converter.ref(d.ErrorResponse, closed=False)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "serviceloop partner gateway",
            "version": API_VERSION,
            "description": "Service partners see and act on the orders assigned to them. "
                           "Every request is signed (X-Partner-Id, X-Timestamp, X-Signature); "
                           "every POST carries an Idempotency-Key. JSON only.",
        },
        "tags": [{"name": "orders", "description": "Orders assigned to the calling partner."}],
        "security": [{name: [] for name in SECURITY_SCHEMES}],
        "paths": paths,
        "components": {
            "schemas": dict(sorted(converter.components.items())),
            "securitySchemes": {
                name: {"type": "apiKey", "in": "header", "name": header,
                       "description": description}
                for name, (header, description) in SECURITY_SCHEMES.items()
            },
        },
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    text = json.dumps(openapi_document(), ensure_ascii=False, indent=2, sort_keys=True) + "\n"
    if args:
        with open(args[0], "w", encoding="utf-8") as out:
            out.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
