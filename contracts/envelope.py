"""The envelope every event travels in: the same fields in the log, on the broker and over RPC."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

HASH = validate.Regexp(r"^[0-9a-f]{64}$")


class EnvelopeSchema(Schema):
    global_position = fields.Integer(required=True, strict=True, validate=validate.Range(min=1))
    event_id = fields.String(required=True, validate=validate.Length(equal=36))
    stream_id = fields.String(required=True, validate=validate.Length(min=1, max=120))
    stream_version = fields.Integer(required=True, strict=True, validate=validate.Range(min=1))
    event_type = fields.String(required=True, validate=validate.Length(min=1, max=80))
    schema_version = fields.Integer(required=True, strict=True, validate=validate.Range(min=1))
    occurred_at = fields.String(required=True)
    correlation_id = fields.String(required=True, validate=validate.Length(min=1, max=120))
    causation_id = fields.String(required=True, validate=validate.Length(min=1, max=120))
    actor = fields.String(
        required=True,
        validate=validate.Regexp(r"^(agent|partner|system|auditor|supervisor|finance|customer)(:.+)?$"),
    )
    payload = fields.Dict(required=True)
    source = fields.String(load_default=None)
    prev_hash = fields.String(required=True, validate=HASH)
    hash = fields.String(required=True, validate=HASH)


ENVELOPE = EnvelopeSchema()
