"""Typed errors every service raises and every client gets back as the same type.

Each carries a machine-readable `code`, a message and field errors. They are
registered with nameko so an RPC caller receives an instance, not a RemoteError.
"""

from __future__ import annotations

from nameko.exceptions import deserialize_to_instance


class ServiceError(Exception):
    code = "error"
    http_status = 400

    def __init__(self, message: str, fields: dict | None = None, code: str | None = None) -> None:
        super().__init__(message, fields or {}, code or self.code)
        self.message = message
        self.fields = fields or {}
        self.code = code or self.code

    def __str__(self) -> str:
        if self.fields:
            return f"{self.code}: {self.message} {self.fields}"
        return f"{self.code}: {self.message}"

    def as_dict(self) -> dict:
        return {"code": self.code, "message": self.message, "fields": self.fields}


@deserialize_to_instance
class ValidationFailed(ServiceError):
    code = "invalid_input"
    http_status = 422


@deserialize_to_instance
class NotFound(ServiceError):
    code = "not_found"
    http_status = 404


@deserialize_to_instance
class Conflict(ServiceError):
    """A request that is well-formed but not allowed in the current state."""

    code = "conflict"
    http_status = 409


@deserialize_to_instance
class ConcurrencyConflict(Conflict):
    """Another writer appended to the stream first: reload and decide again."""

    code = "concurrency_conflict"


@deserialize_to_instance
class ContractViolation(ServiceError):
    """An event payload that does not match its schema in contracts/: never appended."""

    code = "contract_violation"
    http_status = 500


@deserialize_to_instance
class ServiceUnavailable(ServiceError):
    code = "unavailable"
    http_status = 503


@deserialize_to_instance
class BadRequest(ServiceError):
    """The request could not be read at all (not JSON, wrong content type)."""

    code = "bad_request"
    http_status = 400


@deserialize_to_instance
class Forbidden(ServiceError):
    code = "forbidden"
    http_status = 403


@deserialize_to_instance
class PayloadTooLarge(ServiceError):
    code = "payload_too_large"
    http_status = 413


@deserialize_to_instance
class RateLimited(ServiceError):
    code = "rate_limited"
    http_status = 429
