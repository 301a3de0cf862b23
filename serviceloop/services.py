"""Where each service's database metadata and projector live (for relay, migrate, rebuild)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from serviceloop.config import SERVICES

if TYPE_CHECKING:  # the command line imports this module; SQLAlchemy only when it is used
    from sqlalchemy import MetaData

IMPLEMENTED = ("orders", "dispatch", "callback", "settlement")
SERVICE_CLASSES = {  # for `nameko run`
    "orders": "services.orders.service:OrdersService",
    "dispatch": "services.dispatch.service:DispatchService",
    "callback": "services.callback.service:CallbackService",
    "settlement": "services.settlement.service:SettlementService",
}


def _projections(service: str):  # noqa: ANN202
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}; one of {', '.join(SERVICES)}")
    if service not in IMPLEMENTED:
        raise ValueError(f"the {service} service is not built yet")
    return importlib.import_module(f"services.{service}.projections")


def service_metadata(service: str) -> MetaData:
    return _projections(service).metadata


def service_projector(service: str):  # noqa: ANN201
    return _projections(service).projector
