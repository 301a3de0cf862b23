"""The partner gateway's routes: one table read by the service, the OpenAPI document and the SDK.

Paths are werkzeug rules relative to nothing: `/api/v1/orders/<order_id>/accept`.
"""

from __future__ import annotations

from typing import NamedTuple

from marshmallow import Schema

from contracts import dispatch as d

API_PREFIX = "/api/v1"
MAX_BODY_BYTES = 64 * 1024
IDEMPOTENCY_HEADER = "Idempotency-Key"


class Route(NamedTuple):
    operation: str  # operationId, and the SDK's method name
    method: str
    path: str
    summary: str
    query: type[Schema] | None
    body: type[Schema] | None
    response: type[Schema]
    errors: tuple[int, ...]


_READ_ERRORS = (400, 401, 404, 422, 429)
_WRITE_ERRORS = (400, 401, 404, 409, 413, 422, 429)

ROUTES: tuple[Route, ...] = (
    Route("list_orders", "GET", f"{API_PREFIX}/orders",
          "The orders currently assigned to the calling partner, newest first, paged.",
          d.ListQuery, None, d.PartnerOrderPage, _READ_ERRORS),
    Route("get_order", "GET", f"{API_PREFIX}/orders/<order_id>",
          "One order assigned to the calling partner.",
          d.NonceQuery, None, d.PartnerOrderView, _READ_ERRORS),
    Route("accept", "POST", f"{API_PREFIX}/orders/<order_id>/accept",
          "Accept an assigned order; it must then be scheduled within the schedule deadline.",
          None, d.AcceptRequest, d.PartnerOrderView, _WRITE_ERRORS),
    Route("reject", "POST", f"{API_PREFIX}/orders/<order_id>/reject",
          "Hand an assigned order back with a reason; it goes to the next partner.",
          None, d.RejectRequest, d.PartnerOrderView, _WRITE_ERRORS),
    Route("schedule", "POST", f"{API_PREFIX}/orders/<order_id>/schedule",
          "Book (or move) the appointment window agreed with the customer.",
          None, d.ScheduleRequest, d.PartnerOrderView, _WRITE_ERRORS),
    Route("cancel_appointment", "POST", f"{API_PREFIX}/orders/<order_id>/cancel-appointment",
          "Cancel the booked appointment; a new one must be scheduled.",
          None, d.CancelAppointmentRequest, d.PartnerOrderView, _WRITE_ERRORS),
    Route("arrive", "POST", f"{API_PREFIX}/orders/<order_id>/arrive",
          "Report arrival at the customer's home, optionally with the device's coordinates.",
          None, d.ArriveRequest, d.PartnerOrderView, _WRITE_ERRORS),
    Route("complete", "POST", f"{API_PREFIX}/orders/<order_id>/complete",
          "Report the work done, parts replaced and fees claimed.",
          None, d.CompleteRequest, d.PartnerOrderView, _WRITE_ERRORS),
)

ROUTES_BY_OPERATION = {route.operation: route for route in ROUTES}


def path_for(operation: str, **params: str) -> str:
    """The concrete path of an operation: path_for('accept', order_id='…')."""
    path = ROUTES_BY_OPERATION[operation].path
    for name, value in params.items():
        path = path.replace(f"<{name}>", value)
    return path
