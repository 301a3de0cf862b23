"""`serviceloop partner …`: head office manages service partners over RPC to dispatch; a
partner works its orders over HTTP through the gateway with the partner SDK."""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime, timedelta
from pathlib import Path

from contracts.dispatch import (
    APPOINTMENT_CANCEL_REASONS,
    CHARGED_TO,
    PARTNER_STATUSES,
    REJECT_REASONS,
)
from contracts.errors import ValidationFailed
from serviceloop.cli.output import add_request_id, emit, table
from serviceloop.client import cluster
from serviceloop.partner_sdk import PartnerClient

PARTNER_COLUMNS = ["partner_id", "name", "regions", "categories", "daily_capacity",
                   "load_today", "rating", "active", "secret_fingerprint"]
SUPPORT_COLUMNS = ["order_id", "order_type", "status", "category", "model", "province", "city",
                   "district", "partner_id", "attempt", "updated_at"]
PARTNER_ORDER_COLUMNS = ["order_id", "status", "order_type", "category", "model", "fault_code",
                         "accept_by", "schedule_by", "window"]
PART_FORMAT = "PART_CODE:OLD_SERIAL:NEW_SERIAL:FEE_CENTS[:customer]"


def register(commands: argparse._SubParsersAction) -> None:
    group = commands.add_parser("partner",
                                help="head office: service partners; partners: their orders")
    sub = group.add_subparsers(dest="action", required=True, metavar="ACTION")

    def add(name: str, run, help_: str) -> argparse.ArgumentParser:  # noqa: ANN001
        parser = sub.add_parser(name, help=help_)
        parser.add_argument("--json", action="store_true", help="print JSON")
        parser.set_defaults(run=run)
        return parser

    def as_partner(name: str, run, help_: str) -> argparse.ArgumentParser:  # noqa: ANN001
        parser = add(name, run, f"partners: {help_}")
        parser.add_argument("--credentials", metavar="FILE",
                            help="credentials file from `partner register --save` (default: "
                                 "SERVICELOOP_PARTNER_ID and SERVICELOOP_PARTNER_SECRET)")
        parser.add_argument("--gateway", metavar="URL", help="gateway URL (default: the "
                            "credentials file's, else SERVICELOOP_GATEWAY, else "
                            "http://127.0.0.1:${GATEWAY_PORT:-8080})")
        return parser

    def posting(name: str, run, help_: str) -> argparse.ArgumentParser:  # noqa: ANN001
        parser = as_partner(name, run, help_)
        parser.add_argument("order_id")
        parser.add_argument("--idempotency-key", help="retrying with the same key is safe "
                                                      "(default: a new one)")
        return parser

    # -- head office, over RPC --------------------------------------------------------------

    p = add("register", _register, "head office: register a partner (its secret shows once)")
    p.add_argument("--name", required=True)
    p.add_argument("--region", action="append", required=True, type=parse_region,
                   dest="regions", metavar="PROVINCE/CITY/DISTRICT",
                   help="covered area, repeatable; * for all cities or districts")
    p.add_argument("--category", action="append", required=True, dest="categories",
                   help="product category it repairs (repeatable)")
    p.add_argument("--capacity", type=int, required=True, help="orders a day")
    p.add_argument("--rating", type=float, help="0..5 (default 3)")
    _saving(p)
    p.add_argument("--agent", default="cli", help="agent id recorded as the actor")
    add_request_id(p)

    add("list", _list, "head office: partners, their areas, skills, capacity and load today")

    p = add("update", _update, "head office: change a partner's profile")
    p.add_argument("partner_id")
    p.add_argument("--name")
    p.add_argument("--capacity", type=int, dest="daily_capacity")
    p.add_argument("--rating", type=float)
    active = p.add_mutually_exclusive_group()
    active.add_argument("--active", action="store_true", dest="active", default=None)
    active.add_argument("--inactive", action="store_false", dest="active", default=None)
    p.add_argument("--region", action="append", type=parse_region, dest="regions",
                   metavar="PROVINCE/CITY/DISTRICT", help="replaces all regions (repeatable)")
    p.add_argument("--category", action="append", dest="categories",
                   help="replaces all categories (repeatable)")
    p.add_argument("--agent", default="cli", help="agent id recorded as the actor")
    add_request_id(p)

    p = add("rotate-secret", _rotate_secret, "head office: a new secret replaces the old one")
    p.add_argument("partner_id")
    _saving(p)
    p.add_argument("--agent", default="cli", help="agent id recorded as the actor")
    add_request_id(p)

    p = add("assign", _assign, "supervisors: assign an (escalated) order to a partner")
    p.add_argument("order_id")
    p.add_argument("partner_id")
    p.add_argument("--agent", required=True, help="who assigns it")
    add_request_id(p)

    add("escalations", _escalations, "supervisors: orders nobody qualified was left for")

    p = add("dispatch-status", _dispatch_status, "support: dispatch's own view of an order")
    p.add_argument("order_id")

    # -- partners, over HTTP ----------------------------------------------------------------

    p = as_partner("orders", _orders, "the orders assigned to you, newest first")
    p.add_argument("--status", choices=PARTNER_STATUSES)
    p.add_argument("--page", type=int, default=1)
    p.add_argument("--page-size", type=int, default=20)

    p = as_partner("show", _show, "one of your orders")
    p.add_argument("order_id")

    p = posting("accept", _accept, "accept an order assigned to you")
    p.add_argument("--note", default="")

    p = posting("reject", _reject, "hand an order back; it goes to the next partner")
    p.add_argument("--reason", required=True, choices=REJECT_REASONS)
    p.add_argument("--note", default="")

    p = posting("schedule", _schedule, "book (or move) the appointment window")
    p.add_argument("--start", help="ISO 8601 window start (local time if no offset)")
    p.add_argument("--end", help="ISO 8601 window end")
    p.add_argument("--in-hours", type=float, help="or: the window starts this many hours "
                                                  "from now …")
    p.add_argument("--hours", type=float, default=2.0, help="… and lasts this long (2)")

    p = posting("cancel-appointment", _cancel_appointment, "cancel the booked appointment")
    p.add_argument("--reason", required=True, choices=APPOINTMENT_CANCEL_REASONS)
    p.add_argument("--note", default="")

    p = posting("arrive", _arrive, "report arrival at the customer's home")
    p.add_argument("--lat", type=float)
    p.add_argument("--lon", type=float)
    p.add_argument("--accuracy", type=int, help="metres")

    p = posting("complete", _complete, "report the work done, parts and fees")
    p.add_argument("--work", required=True, help="what was done")
    p.add_argument("--fault", help="catalogue fault code found")
    p.add_argument("--part", action="append", default=[], type=parse_part, dest="parts",
                   metavar=PART_FORMAT, help="a part replaced (repeatable); OLD_SERIAL may be "
                                             "empty; :customer when the customer pays for it")
    p.add_argument("--barcode", help="installation barcode")
    p.add_argument("--labour", type=int, required=True, help="labour fee in cents")
    p.add_argument("--travel", type=int, help="travel fee in cents")
    p.add_argument("--distance", type=int, help="travel distance in km")
    p.add_argument("--customer-paid", type=int, help="cents the customer paid on site")
    p.add_argument("--confirmation-code", help="the code the customer read out")


def _saving(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--save", metavar="FILE",
                        help="write {partner_id, secret, gateway} to FILE (mode 0600)")
    parser.add_argument("--gateway", metavar="URL", help="gateway URL written with --save")


# -- parsing ------------------------------------------------------------------------------


def parse_region(text: str) -> dict:
    """`广东省/广州市/天河区`; `*` for the city or district covers all of them."""
    parts = [part.strip() for part in text.split("/")]
    if len(parts) != 3 or not all(parts):
        raise argparse.ArgumentTypeError(f"{text!r}: expected PROVINCE/CITY/DISTRICT")
    province, city, district = parts
    if province == "*":
        raise argparse.ArgumentTypeError(f"{text!r}: the province cannot be *")
    if city == "*" and district != "*":
        raise argparse.ArgumentTypeError(f"{text!r}: a district needs its city")
    return {"province": province, "city": city, "district": district}


def parse_part(text: str) -> dict:
    """`PART_CODE:OLD_SERIAL:NEW_SERIAL:FEE_CENTS[:customer]` → a CompleteRequest part line."""
    fields = text.split(":")
    if len(fields) not in (4, 5):
        raise argparse.ArgumentTypeError(f"{text!r}: expected {PART_FORMAT}")
    code, old_serial, new_serial, fee = (f.strip() for f in fields[:4])
    charged_to = fields[4].strip() if len(fields) == 5 else "manufacturer"
    if not code or not new_serial:
        raise argparse.ArgumentTypeError(f"{text!r}: PART_CODE and NEW_SERIAL are required")
    if not fee.isascii() or not fee.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: FEE_CENTS must be whole cents")
    if charged_to not in CHARGED_TO:
        raise argparse.ArgumentTypeError(
            f"{text!r}: the last field is one of {', '.join(CHARGED_TO)}")
    return {"part_code": code, "old_serial": old_serial or None, "new_serial": new_serial,
            "fee_cents": int(fee), "charged_to": charged_to}


def schedule_window(args: argparse.Namespace, now: datetime | None = None) -> tuple[str, str]:
    """The window from --start/--end, or from --in-hours/--hours; ISO strings with an offset."""
    if args.start or args.end:
        if not (args.start and args.end) or args.in_hours is not None:
            raise _usage("give --start and --end, or --in-hours (and --hours)", "window")
        return _aware(args.start), _aware(args.end)
    if args.in_hours is None:
        raise _usage("give --start and --end, or --in-hours (and --hours)", "window")
    now = (now or datetime.now().astimezone()).replace(microsecond=0)
    start = now + timedelta(hours=args.in_hours)
    return start.isoformat(), (start + timedelta(hours=args.hours)).isoformat()


def _aware(text: str) -> str:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise _usage(f"{text!r} is not an ISO 8601 time", "window") from None
    return (moment if moment.tzinfo else moment.astimezone()).isoformat()


def _usage(message: str, field: str) -> ValidationFailed:
    return ValidationFailed(message, {field: [message]}, code="invalid_arguments")


def completion(args: argparse.Namespace) -> dict:
    """The CompleteRequest body; optional fields only when given (the gateway has defaults)."""
    body = {"work_done": args.work, "labour_fee_cents": args.labour, "parts": args.parts}
    optional = {"fault_code": args.fault, "installation_barcode": args.barcode,
                "travel_fee_cents": args.travel, "travel_distance_km": args.distance,
                "customer_paid_cents": args.customer_paid,
                "confirmation_code": args.confirmation_code}
    body.update({name: value for name, value in optional.items() if value is not None})
    return body


def save_credentials(path: str, partner_id: str, secret: str, gateway: str) -> None:
    """Readable by its owner only, since the secret is shown nowhere else."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)  # an existing file keeps its mode through O_CREAT
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        json.dump({"partner_id": partner_id, "secret": secret, "gateway": gateway}, file,
                  ensure_ascii=False, indent=2)
        file.write("\n")


# -- head office ----------------------------------------------------------------------------


def _register(args: argparse.Namespace) -> None:
    payload = {"name": args.name, "regions": args.regions,
               "categories": args.categories, "daily_capacity": args.capacity,
               "agent_id": args.agent}
    if args.rating is not None:
        payload["rating"] = args.rating
    with cluster() as rpc:
        answer = rpc.dispatch.register_partner(payload, request_id=args.request_id)
    partner = answer["partner"]
    _secret_shown(args, partner["partner_id"], answer["secret"], answer)


def _rotate_secret(args: argparse.Namespace) -> None:
    with cluster() as rpc:
        answer = rpc.dispatch.rotate_secret(args.partner_id, agent_id=args.agent,
                                            request_id=args.request_id)
    _secret_shown(args, answer["partner_id"], answer["secret"], answer)


def _secret_shown(args: argparse.Namespace, partner_id: str, secret: str, answer: dict) -> None:
    if args.save:
        save_credentials(args.save, partner_id, secret, args.gateway or _saved_gateway(args.save))
    emit(answer, args.json, lambda _: f"partner  {partner_id}\nsecret   {secret}")
    where = f" (saved to {args.save})" if args.save else ""
    print(f"warning: the secret is shown this once and never again{where}; keep it safe",
          file=sys.stderr)


def _saved_gateway(path: str) -> str:
    """A rotated secret keeps the gateway its credentials file already names."""
    try:
        gateway = json.loads(Path(path).read_text(encoding="utf-8")).get("gateway")
    except (OSError, ValueError, AttributeError):
        gateway = None
    return gateway or PartnerClient.default_gateway()


def _list(args: argparse.Namespace) -> None:
    with cluster() as rpc:
        emit(rpc.dispatch.list_partners(), args.json, _render_partners)


def _update(args: argparse.Namespace) -> None:
    payload = {"partner_id": args.partner_id, "agent_id": args.agent}
    for name in ("name", "daily_capacity", "rating", "active", "regions", "categories"):
        if getattr(args, name) is not None:
            payload[name] = getattr(args, name)
    with cluster() as rpc:
        emit(rpc.dispatch.update_partner(payload, request_id=args.request_id), args.json,
             lambda partner: _render_partners([partner]))


def _assign(args: argparse.Namespace) -> None:
    with cluster() as rpc:
        emit(rpc.dispatch.assign({"order_id": args.order_id, "partner_id": args.partner_id,
                                  "agent_id": args.agent}, request_id=args.request_id),
             args.json, _render_fields)


def _escalations(args: argparse.Namespace) -> None:
    with cluster() as rpc:
        emit(rpc.dispatch.escalations(), args.json, lambda rows: table(rows, SUPPORT_COLUMNS))


def _dispatch_status(args: argparse.Namespace) -> None:
    with cluster() as rpc:
        emit(rpc.dispatch.get_order(args.order_id), args.json, _render_fields)


# -- partners -------------------------------------------------------------------------------


def partner_client(args: argparse.Namespace) -> PartnerClient:
    if args.credentials:
        return PartnerClient.from_file(args.credentials, base_url=args.gateway)
    return PartnerClient.from_env(base_url=args.gateway)


def _orders(args: argparse.Namespace) -> None:
    with partner_client(args) as client:
        emit(client.list_orders(args.status, args.page, args.page_size), args.json,
             _render_page)


def _show(args: argparse.Namespace) -> None:
    with partner_client(args) as client:
        emit(client.get_order(args.order_id), args.json, _render_fields)


def _accept(args: argparse.Namespace) -> None:
    with partner_client(args) as client:
        emit(client.accept(args.order_id, args.note, idempotency_key=args.idempotency_key),
             args.json, _render_fields)


def _reject(args: argparse.Namespace) -> None:
    with partner_client(args) as client:
        emit(client.reject(args.order_id, args.reason, args.note,
                           idempotency_key=args.idempotency_key), args.json, _render_fields)


def _schedule(args: argparse.Namespace) -> None:
    start, end = schedule_window(args)
    with partner_client(args) as client:
        emit(client.schedule(args.order_id, start, end, idempotency_key=args.idempotency_key),
             args.json, _render_fields)


def _cancel_appointment(args: argparse.Namespace) -> None:
    with partner_client(args) as client:
        emit(client.cancel_appointment(args.order_id, args.reason, args.note,
                                       idempotency_key=args.idempotency_key),
             args.json, _render_fields)


def _arrive(args: argparse.Namespace) -> None:
    if (args.lat is None) != (args.lon is None):
        raise _usage("give both --lat and --lon, or neither", "coordinates")
    with partner_client(args) as client:
        emit(client.arrive(args.order_id, args.lat, args.lon, args.accuracy,
                           idempotency_key=args.idempotency_key), args.json, _render_fields)


def _complete(args: argparse.Namespace) -> None:
    with partner_client(args) as client:
        emit(client.complete(args.order_id, idempotency_key=args.idempotency_key,
                             **completion(args)), args.json, _render_fields)


# -- rendering ------------------------------------------------------------------------------


def _render_partners(partners: list[dict]) -> str:
    rows = [{**p, "regions": ", ".join(f"{r['province']}/{r['city']}/{r['district']}"
                                       for r in p.get("regions", [])),
             "categories": ", ".join(p.get("categories", []))} for p in partners]
    return table(rows, PARTNER_COLUMNS)


def _render_fields(record: dict) -> str:
    def show(value: object) -> str:
        if isinstance(value, dict | list):
            return json.dumps(value, ensure_ascii=False)
        return "-" if value is None else str(value)

    return "\n".join(f"{key:19} {show(value)}" for key, value in record.items())


def _render_page(page: dict) -> str:
    rows = [{**order, "window": (f"{order['appointment']['window_start']} – "
                                 f"{order['appointment']['window_end']}"
                                 if order.get("appointment") else None)}
            for order in page["items"]]
    return (f"{table(rows, PARTNER_ORDER_COLUMNS)}\n"
            f"page {page['page']} · {len(page['items'])} of {page['total']}")
