"""`serviceloop orders …`: what a call-centre agent does, over RPC to the orders service."""

from __future__ import annotations

import argparse

from contracts.orders import CANCEL_REASONS, CHANNELS, ORDER_STATUSES, ORDER_TYPES
from serviceloop.cli.output import add_request_id, emit, table
from serviceloop.client import cluster

ORDER_COLUMNS = ["order_id", "order_type", "status", "category", "model", "fault_code",
                 "in_warranty", "created_at"]


def register(commands: argparse._SubParsersAction) -> None:
    group = commands.add_parser("orders", help="call-centre agents: customers and orders")
    sub = group.add_subparsers(dest="action", required=True, metavar="ACTION")

    def add(name: str, run, help_: str) -> argparse.ArgumentParser:  # noqa: ANN001
        parser = sub.add_parser(name, help=help_)
        parser.add_argument("--json", action="store_true", help="print JSON")
        parser.add_argument("--agent", default="cli", help="agent id recorded as the actor")
        parser.set_defaults(run=run)
        return parser

    p = add("register", _register, "register a customer and (optionally) one product")
    p.add_argument("--name", required=True)
    p.add_argument("--phone", required=True)
    for part in ("province", "city", "district", "street"):
        p.add_argument(f"--{part}", required=True)
    p.add_argument("--lat", type=float)
    p.add_argument("--lon", type=float)
    p.add_argument("--model", help="product model code (see `orders catalog`)")
    p.add_argument("--serial")
    p.add_argument("--purchased", help="purchase date YYYY-MM-DD")
    p.add_argument("--installed", help="installation date YYYY-MM-DD")
    add_request_id(p)

    p = add("add-product", _add_product, "register another product for a customer")
    p.add_argument("customer_id")
    p.add_argument("--model", required=True)
    p.add_argument("--serial", required=True)
    p.add_argument("--purchased", required=True)
    p.add_argument("--installed")
    add_request_id(p)

    p = add("lookup", _lookup, "look a caller up by phone number")
    p.add_argument("phone")

    p = add("create", _create, "create a service order for a product")
    p.add_argument("--product", required=True, help="product id (from lookup)")
    p.add_argument("--type", required=True, choices=ORDER_TYPES, dest="order_type")
    p.add_argument("--channel", default="phone", choices=CHANNELS)
    p.add_argument("--description", default="")
    p.add_argument("--fault", help="catalogue fault code (a repair waits for one)")
    p.add_argument("--related", help="earlier order this one is about")
    p.add_argument("--request-id", help="idempotency key: retrying with it is safe")

    p = add("fault", _fault, "record the catalogue fault code of a repair")
    p.add_argument("order_id")
    p.add_argument("fault_code")
    add_request_id(p)

    p = add("complaint", _complaint, "file a complaint about an earlier order")
    p.add_argument("order_id")
    p.add_argument("--description", required=True)
    p.add_argument("--channel", default="phone", choices=CHANNELS)
    p.add_argument("--request-id")

    p = add("cancel", _cancel, "cancel an order before it is completed")
    p.add_argument("order_id")
    p.add_argument("--reason", required=True, choices=CANCEL_REASONS)
    p.add_argument("--note", default="")
    add_request_id(p)

    p = add("get", _get, "show one order")
    p.add_argument("order_id")

    p = add("list", _list, "list orders (newest first)")
    p.add_argument("--status", choices=ORDER_STATUSES)
    p.add_argument("--phone")
    p.add_argument("--product")
    p.add_argument("--from", dest="created_from", help="YYYY-MM-DD")
    p.add_argument("--to", dest="created_to", help="YYYY-MM-DD")
    p.add_argument("--page", type=int, default=1)
    p.add_argument("--page-size", type=int, default=20)

    p = add("history", _history, "an order's events, oldest first")
    p.add_argument("order_id")

    add("catalog", _catalog, "product categories, models, fault codes")


def _register(args: argparse.Namespace) -> None:
    payload = {
        "name": args.name, "phone": args.phone, "agent_id": args.agent,
        "address": {"province": args.province, "city": args.city, "district": args.district,
                    "street": args.street, "lat": args.lat, "lon": args.lon},
        "products": [],
    }
    if args.model:
        payload["products"].append(_product(args))
    with cluster() as rpc:
        emit(rpc.orders.register_customer(payload, request_id=args.request_id), args.json,
             _render_lookup)


def _product(args: argparse.Namespace) -> dict:
    return {"model": args.model, "serial": args.serial, "purchase_date": args.purchased,
            "installation_date": args.installed}


def _add_product(args: argparse.Namespace) -> None:
    with cluster() as rpc:
        emit(rpc.orders.register_product(
            {**_product(args), "customer_id": args.customer_id, "agent_id": args.agent},
            request_id=args.request_id), args.json)


def _lookup(args: argparse.Namespace) -> None:
    with cluster() as rpc:
        emit(rpc.orders.lookup(args.phone), args.json, _render_lookup)


def _create(args: argparse.Namespace) -> None:
    payload = {"product_id": args.product, "order_type": args.order_type,
               "channel": args.channel, "description": args.description,
               "fault_code": args.fault, "related_order_id": args.related,
               "request_id": args.request_id, "agent_id": args.agent}
    with cluster() as rpc:
        emit(rpc.orders.create_order(payload), args.json, _render_order)


def _fault(args: argparse.Namespace) -> None:
    with cluster() as rpc:
        emit(rpc.orders.record_fault({"order_id": args.order_id, "fault_code": args.fault_code,
                                      "agent_id": args.agent}, request_id=args.request_id),
             args.json, _render_order)


def _complaint(args: argparse.Namespace) -> None:
    with cluster() as rpc:
        emit(rpc.orders.file_complaint({
            "order_id": args.order_id, "description": args.description,
            "channel": args.channel, "request_id": args.request_id, "agent_id": args.agent,
        }), args.json, _render_order)


def _cancel(args: argparse.Namespace) -> None:
    with cluster() as rpc:
        emit(rpc.orders.cancel_order({"order_id": args.order_id, "reason": args.reason,
                                      "note": args.note, "agent_id": args.agent},
                                     request_id=args.request_id), args.json, _render_order)


def _get(args: argparse.Namespace) -> None:
    with cluster() as rpc:
        emit(rpc.orders.get_order(args.order_id), args.json, _render_order)


def _list(args: argparse.Namespace) -> None:
    filters = {k: getattr(args, k) for k in ("status", "phone", "created_from", "created_to")
               if getattr(args, k)}
    if args.product:
        filters["product_id"] = args.product
    filters.update(page=args.page, page_size=args.page_size)
    with cluster() as rpc:
        emit(rpc.orders.list_orders(filters), args.json,
             lambda r: f"{table(r['items'], ORDER_COLUMNS)}\n"
                       f"page {r['page']} · {len(r['items'])} of {r['total']}")


def _history(args: argparse.Namespace) -> None:
    with cluster() as rpc:
        emit(rpc.orders.order_history(args.order_id), args.json,
             lambda rows: table(rows, ["stream_version", "occurred_at", "event_type", "actor"]))


def _catalog(args: argparse.Namespace) -> None:
    with cluster() as rpc:
        emit(rpc.orders.catalog(), args.json, _render_catalog)


def _render_order(order: dict) -> str:
    lines = [f"{k:17} {v}" for k, v in order.items() if k not in ("warranty",)]
    lines.append("warranty:")
    lines += [f"  {w['component']:15} parts to {w['parts_until']} "
              f"({'covered' if w['parts_covered'] else 'expired'}), labour to "
              f"{w['labour_until']} ({'covered' if w['labour_covered'] else 'expired'})"
              for w in order["warranty"]]
    return "\n".join(lines)


def _render_lookup(answer: dict) -> str:
    c = answer["customer"]
    a = c["address"]
    out = [f"{c['name']}  {c['phone']}  ({c['customer_id']})",
           f"{a['province']} {a['city']} {a['district']} {a['street']}", "", "products:"]
    out.append(table(answer["products"], ["product_id", "category", "model", "serial",
                                          "purchase_date", "warranty_end", "in_warranty_today"]))
    out += ["", "orders:", table(answer["orders"], ORDER_COLUMNS)]
    return "\n".join(out)


def _render_catalog(catalog: dict) -> str:
    out = [table(catalog["models"], ["code", "category", "name"]), ""]
    out.append(table(catalog["faults"], ["code", "category", "symptom"]))
    return "\n".join(out)
