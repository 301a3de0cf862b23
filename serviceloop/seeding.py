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


def seed_partners(count: int, *, seed: int = 2026, folder=None) -> tuple[int, int]:  # noqa: ANN001
    """Register `count` generated partners covering every demo district; one already there
    (same name) is left as it is. Each new partner's credentials go to FOLDER/<id>.json
    (mode 0600), since the secret is shown only once."""
    import json
    import os
    from pathlib import Path

    from serviceloop.config import var_dir
    from serviceloop.seed_data import generate_partners

    folder = Path(folder or var_dir() / "partners")
    folder.mkdir(parents=True, exist_ok=True)
    partners = generate_partners(count, seed=seed,
                                 categories=[c.code for c in CATALOG.categories()])
    created = existing = 0
    with cluster() as rpc:
        known = {p["name"] for p in rpc.dispatch.list_partners()}
        for index, partner in enumerate(partners):
            if partner.name in known:
                existing += 1
                continue
            answer = rpc.dispatch.register_partner({
                "name": partner.name, "daily_capacity": partner.daily_capacity,
                "rating": round(3.0 + (index * 7 % 20) / 10, 1),
                "categories": list(partner.categories), "agent_id": "seed",
                "regions": [{"province": d.province, "city": d.city, "district": d.district}
                            for d in partner.districts]})
            partner_id = answer["partner"]["partner_id"]
            path = folder / f"{partner_id}.json"
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w") as file:
                json.dump({"partner_id": partner_id, "secret": answer["secret"],
                           "name": partner.name}, file, ensure_ascii=False)
            created += 1
    return created, existing


def demo_rate_files(effective_from: str = "2026-01-01") -> tuple[str, str]:
    """A demo rate card and parts price list (CSV), in the format finance loads."""
    import hashlib

    rates = ["effective_from,kind,order_type,category,region,up_to_km,cents"]
    for order_type, cents in (("install", 5000), ("repair", 8000), ("maintenance", 4000)):
        rates.append(f"{effective_from},labour,{order_type},*,*,,{cents}")
    rates.append(f"{effective_from},labour,repair,air_conditioner,*,,12000")
    for up_to, cents in ((10, 1000), (20, 1500), (50, 3000), (100, 5000)):
        rates.append(f"{effective_from},travel,,,*,{up_to},{cents}")
    parts = ["effective_from,part_code,cents"]
    for part in CATALOG.parts():
        bucket = int(hashlib.sha256(part.code.encode()).hexdigest()[:6], 16)
        parts.append(f"{effective_from},{part.code},{2000 + bucket % 280 * 100}")
    return "\n".join(rates) + "\n", "\n".join(parts) + "\n"


def seed_rates() -> bool:
    """Load the demo rate card and price list unless finance already loaded some."""
    with cluster() as rpc:
        current = rpc.settlement.current_rates()
        if current["rates"] or current["parts"]:
            return False
        for text in demo_rate_files():
            rpc.settlement.load_rates(text, "seed")
    return True
