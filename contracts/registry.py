"""Every event type, its schema version and its payload schema, in one place."""

from __future__ import annotations

import json
import weakref
from collections.abc import Callable

from marshmallow import Schema, ValidationError

from contracts.errors import ContractViolation, ValidationFailed
from contracts.fastcheck import Loader, compile_loader, compile_schema
from contracts.textcheck import compile_text_check

_EVENT_SCHEMAS: dict[tuple[str, int], Schema] = {}
_EVENT_SOURCES: dict[str, str] = {}


def event(source: str, event_type: str, version: int = 1):
    """Class decorator: register a marshmallow schema as the payload of `event_type`."""

    def register(schema_class: type[Schema]) -> type[Schema]:
        _EVENT_SCHEMAS[(event_type, version)] = schema_class()
        _EVENT_SOURCES[event_type] = source
        schema_class.event_type = event_type
        return schema_class

    return register


_loaded = False


def _load_all() -> None:
    """Import every contracts module once (importing one registers its schemas): a service
    that imported only its own contracts still knows every event it may receive."""
    global _loaded
    if not _loaded:
        from contracts import callback, dispatch, orders, settlement  # noqa: F401

        _loaded = True


def event_schema(event_type: str, version: int = 1) -> Schema:
    _load_all()
    try:
        return _EVENT_SCHEMAS[(event_type, version)]
    except KeyError:
        raise ContractViolation(
            f"unknown event type {event_type!r} version {version}",
            {"event_type": [f"not in contracts: {event_type} v{version}"]},
        ) from None


def event_types(source: str | None = None) -> list[str]:
    _load_all()
    return sorted(t for t, s in _EVENT_SOURCES.items() if source is None or s == source)


_FAST_CHECKS: dict[tuple[str, int], object] = {}


def validate_event(event_type: str, version: int, payload: dict) -> None:
    """Raise ContractViolation unless `payload` is a valid `event_type` payload.

    The schema's compiled check (contracts/fastcheck.py) says yes to most valid payloads in
    a fraction of marshmallow's time; anything else is marshmallow's to decide."""
    schema = event_schema(event_type, version)
    key = (event_type, version)
    check = _FAST_CHECKS.get(key, _FAST_CHECKS)
    if check is _FAST_CHECKS:
        check = _FAST_CHECKS[key] = compile_schema(schema)
    if check is not None:
        try:
            if check(payload):
                return
        except Exception:  # noqa: BLE001 - not sure: marshmallow decides
            pass
    errors = schema.validate(payload)
    if errors:
        raise ContractViolation(f"payload of {event_type} breaks its contract", errors)


def payload_check(event_type: str, version: int = 1) -> Callable[[bytes], bool]:
    """A test of a payload as stored (its canonical JSON text, UTF-8) against `event_type`'s
    contract: True only where `validate_event` on the decoded text passes, False where it
    fails (the caller asks `validate_event` for the errors).

    The schema's text check (contracts/textcheck.py) says yes to most valid payloads without
    decoding them; anything else is decoded and validated as `validate_event` does."""
    try:
        fast = compile_text_check(event_schema(event_type, version))
    except ContractViolation:  # an unknown event type: never valid
        fast = None

    def check(text: bytes) -> bool:
        if fast is not None and fast(text) is not None and (text.isascii() or _utf8(text)):
            return True
        try:
            validate_event(event_type, version, json.loads(text))
        except (ContractViolation, TypeError, ValueError):
            return False
        return True

    return check


def _utf8(text: bytes) -> bool:
    try:
        text.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def load(schema: Schema, data: object) -> dict:
    """Load an RPC/HTTP payload, turning marshmallow's errors into ValidationFailed.

    The schema's compiled loader (contracts/fastcheck.py) gives marshmallow's dict for most
    valid payloads in a fraction of its time; anything else, and every refusal with its
    field errors, is marshmallow's."""
    if not isinstance(data, dict):
        raise ValidationFailed("payload must be an object", {"_schema": ["expected an object"]})
    fast = compiled_loader(schema)
    if fast is not None:
        loaded = fast(data)
        if loaded is not None:
            return loaded
    try:
        return schema.load(data)
    except ValidationError as error:
        raise ValidationFailed("invalid input", error.normalized_messages()) from None


_LOADER = "_contracts_compiled_loader"


def compiled_loader(schema: Schema) -> Loader | None:
    """`schema`'s compiled loader, or None where it has none; compiled once per instance.

    Kept on the instance, so it lives and dies with it (a schema made per call is not held
    by a cache); with a reference back to its owner, since a copy of the instance (as a
    Nested field makes before setting its own `only`) copies the attribute too."""
    cached = schema.__dict__.get(_LOADER)
    if cached is None or cached[0]() is not schema:
        cached = (weakref.ref(schema), compile_loader(schema))
        setattr(schema, _LOADER, cached)
    return cached[1]
