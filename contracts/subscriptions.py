"""Who consumes which event: the broker topology `serviceloop migrate` declares up front.

Each entry names the nameko method that handles it, so the queue declared here is
exactly the one nameko's service-pool `@event_handler` consumes from.
"""

from __future__ import annotations

from typing import NamedTuple


class Subscription(NamedTuple):
    source: str
    event_type: str
    consumer: str
    method: str


SUBSCRIPTIONS: list[Subscription] = [
    # dispatch follows the orders it may hand to partners
    Subscription("orders", "order_created", "dispatch", "on_order_created"),
    Subscription("orders", "order_fault_recorded", "dispatch", "on_order_fault_recorded"),
    Subscription("orders", "order_cancelled", "dispatch", "on_order_cancelled"),
    Subscription("callback", "order_disputed", "dispatch", "on_order_disputed"),
    # callback verifies every completed visit with the customer
    Subscription("dispatch", "order_completed", "callback", "on_order_completed"),
    # settlement audits every claim against the evidence of the other three
    Subscription("orders", "order_created", "settlement", "on_order_created"),
    Subscription("dispatch", "order_completed", "settlement", "on_order_completed"),
    Subscription("callback", "order_verified", "settlement", "on_order_verified"),
    Subscription("callback", "order_disputed", "settlement", "on_order_disputed"),
    Subscription("callback", "order_unverified", "settlement", "on_order_unverified"),
    Subscription("dispatch", "sla_breached", "settlement", "on_sla_breached"),
    # orders shows the call centre the live status of each order as dispatch works it
    Subscription("dispatch", "order_assigned", "orders", "on_order_assigned"),
    Subscription("dispatch", "order_accepted", "orders", "on_order_accepted"),
    Subscription("dispatch", "appointment_scheduled", "orders", "on_appointment_scheduled"),
    Subscription("dispatch", "appointment_cancelled", "orders", "on_appointment_cancelled"),
    Subscription("dispatch", "partner_arrived", "orders", "on_partner_arrived"),
    Subscription("dispatch", "order_completed", "orders", "on_order_completed"),
    Subscription("dispatch", "order_rejected", "orders", "on_order_rejected"),
    Subscription("dispatch", "assignment_timed_out", "orders", "on_assignment_timed_out"),
    Subscription("dispatch", "sla_breached", "orders", "on_sla_breached"),
    Subscription("dispatch", "order_escalated", "orders", "on_order_escalated"),
    Subscription("dispatch", "order_reopened", "orders", "on_order_reopened"),
    # orders shows the call centre the callback's outcome
    Subscription("callback", "order_verified", "orders", "on_order_verified"),
    Subscription("callback", "order_disputed", "orders", "on_order_disputed"),
    Subscription("callback", "order_unverified", "orders", "on_order_unverified"),
    Subscription("callback", "unverified_closed", "orders", "on_unverified_closed"),
    Subscription("callback", "task_returned", "orders", "on_task_returned"),
    # orders closes an order once its verified work is paid
    Subscription("settlement", "period_closed", "orders", "on_period_closed"),
]
