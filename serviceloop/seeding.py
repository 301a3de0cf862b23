"""Putting demo data into the running system, through its RPC like any user would."""

from __future__ import annotations

from datetime import UTC, datetime

import eventlet

from contracts.errors import Conflict
from serviceloop.client import cluster
from serviceloop.seed_data import CustomerSeed, generate_customers
from services.orders.catalog import CATALOG


def customer_payload(seed: CustomerSeed) -> dict:
    address = seed.address
    return {
        "name": seed.name, "phone": seed.phone, "agent_id": "seed",
        "address": {"province": address.province, "city": address.city,
                    "district": address.district, "street": address.street,
                    "lat": address.lat, "lon": address.lon},
        "products": [{
            "model": p.model, "serial": p.serial, "purchase_date": p.purchase_date.isoformat(),
            "installation_date": p.installation_date.isoformat() if p.installation_date else None,
        } for p in seed.products],
    }


def demo_customers(count: int, seed: int, today=None):  # noqa: ANN001, ANN201
    categories = CATALOG.categories()
    return generate_customers(
        count, seed=seed, today=today or datetime.now(UTC).date(),
        models_by_category={c.code: [m.code for m in CATALOG.models(c.code)] for c in categories},
        install_required={c.code: c.install_required for c in categories},
    )


def seed_customers(count: int, *, seed: int = 2026, concurrency: int = 8) -> tuple[int, int]:
    """Register `count` generated customers; a customer already there is left as it is."""
    pending = list(demo_customers(count, seed))
    tally = {"created": 0, "existing": 0}

    def worker(share: list[CustomerSeed]) -> None:
        with cluster() as rpc:  # one proxy per green thread
            for customer in share:
                try:
                    rpc.orders.register_customer(customer_payload(customer))
                    tally["created"] += 1
                except Conflict:
                    tally["existing"] += 1

    pool = eventlet.GreenPool(concurrency)
    for index in range(concurrency):
        pool.spawn(worker, pending[index::concurrency])
    pool.waitall()
    return tally["created"], tally["existing"]
