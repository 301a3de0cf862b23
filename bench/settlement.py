"""`settlement.run` for one period of N completed orders: seconds and peak memory.

The period's data goes in through the settlement service's own consumers, not behind its
back: for every order, `order_created` (orders), `order_completed` (dispatch) and
`order_verified` (callback) are delivered with `serviceloop.consumer.deliver` to the real
`SettlementService` handlers, on a fresh migrated settlement database, without a broker.
The service is the real class, built without nameko: its `db` is a `WorkerDatabase` and its
`clock` a `ManualClock`. The rate card and parts list are loaded with its `load_rates`.
Envelopes are hashed and chained per source (as a producer's log would be) and pass
contracts/; the consumer checks envelope and payload, not the producer's chain.

Generation and measurement each run in a subprocess of their own, so the measuring
process's peak RSS (`ru_maxrss`) is that of `run()` plus the imports, nothing else. Then:
the statements' payable total equals the sum of `claims.payable_cents` for the period, every
claim has a line, and a second `run` returns the same statements.

    python -m bench.settlement generate --url URL --orders N [--partners P]
    python -m bench.settlement measure --url URL --period 2026-10
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import uuid
import warnings
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from time import perf_counter

from bench.common import fresh_database

PERIOD = "2026-10"
PERIOD_START = datetime(2026, 10, 1, 8, 0, tzinfo=UTC)
RUN_AT = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
PARTNERS = 50
ROOT = Path(__file__).resolve().parent.parent
ADDRESS = {"province": "广东省", "city": "广州市", "district": "天河区",
           "street": "中山大道100号", "lat": 23.13, "lon": 113.33}
WARRANTY = [{"component": "unit", "parts_until": "2028-01-01", "labour_until": "2027-06-01",
             "parts_covered": True, "labour_covered": True}]


# -- the service, without nameko ------------------------------------------------------------


def stand_in(url: str, now: datetime = RUN_AT):  # noqa: ANN201
    """The real SettlementService class with a WorkerDatabase and a ManualClock."""
    from serviceloop.clock import ManualClock
    from serviceloop.db import make_engine
    from serviceloop.eventstore import EventStore
    from serviceloop.nameko_deps import WorkerDatabase
    from services.settlement.projections import events
    from services.settlement.service import SettlementService

    service = SettlementService.__new__(SettlementService)
    service.db = WorkerDatabase(make_engine(url, pool_size=1), EventStore(events))
    service.clock = ManualClock(now)
    return service


class ProducerLog:
    """One producer's log as its relay would publish it: positions and a hash chain."""

    def __init__(self, source: str) -> None:
        from serviceloop.eventstore import GENESIS_HASH

        self.source, self.position, self.prev_hash = source, 0, GENESIS_HASH

    def envelope(self, stream_id: str, version: int, event_type: str, payload: dict,
                 occurred_at: datetime, correlation_id: str, actor: str = "system") -> dict:
        from serviceloop.clock import isoformat
        from serviceloop.eventstore import Envelope, canonical_json, compute_hash

        self.position += 1
        head = (self.position, str(uuid.uuid4()), stream_id, version, event_type, 1,
                isoformat(occurred_at), correlation_id, f"bench-{uuid.uuid4()}", actor)
        payload_json = canonical_json(payload)
        digest = compute_hash(head, payload_json, self.prev_hash)
        envelope = Envelope(*head, payload_json, self.prev_hash, digest)
        self.prev_hash = digest
        return {**envelope.to_dict(), "source": self.source}


def order_events(logs: dict[str, ProducerLog], index: int, orders: int,
                 partners: int) -> list[tuple[str, str, dict]]:
    """(source, handler, envelope) for one repair: created, completed, verified, in October."""
    order_id, product_id = f"ord-{index:07d}", f"prd-{index:07d}"
    partner_id = f"partner-{index % partners:03d}"
    serial = f"WH{index:08d}"
    # spread evenly over the month, each order's three events an hour apart
    created = PERIOD_START + timedelta(seconds=(29 * 86400 - 7200) * index // max(orders, 1))
    completed, verified = created + timedelta(hours=1), created + timedelta(hours=2)
    parts = []
    if index % 2:
        parts = [{"part_code": "WH-P-HEATER-2KW", "old_serial": f"OLD{index:08d}",
                  "new_serial": f"NEW{index:08d}", "quantity": 1, "fee_cents": 4000,
                  "charged_to": "manufacturer"}]
    created_payload = {
        "order_id": order_id, "request_id": None, "order_type": "repair", "channel": "phone",
        "status": "created", "routed_to": "dispatch", "customer_id": f"cus-{index:07d}",
        "product_id": product_id, "phone": f"139{index:08d}", "address": ADDRESS,
        "category": "water_heater", "model": "WH-E60A", "serial": serial,
        "description": "no hot water (bench)", "fault_code": "WH-E1", "related_order_id": None,
        "about_partner_id": None, "warranty": WARRANTY, "in_warranty": True}
    completed_payload = {
        "order_id": order_id, "partner_id": partner_id, "order_type": "repair",
        "category": "water_heater", "model": "WH-E60A", "serial": serial,
        "phone": f"139{index:08d}", "in_warranty": True, "fault_code": "WH-E1",
        "work_done": "replaced the heating element (bench)", "parts": parts,
        "installation_barcode": None, "labour_fee_cents": 8000, "travel_fee_cents": 1500,
        "travel_distance_km": 10, "parts_fee_cents": sum(p["fee_cents"] for p in parts),
        "customer_paid_cents": 0, "confirmation_matched": True,
        "arrived_at": (completed - timedelta(minutes=40)).isoformat(),
        "arrival_lat": 23.1301, "arrival_lon": 113.3302}
    completion = logs["dispatch"].envelope(f"order-{order_id}", 6, "order_completed",
                                           completed_payload, completed, order_id,
                                           actor=f"partner:{partner_id}")
    verified_payload = {
        "task_id": completion["event_id"], "order_id": order_id, "partner_id": partner_id,
        "channel": "agent", "satisfaction": 5, "customer_paid_cents": 0,
        "notes": "fixed (bench)", "visit": 1}
    return [
        ("orders", "on_order_created", logs["orders"].envelope(
            f"order-{order_id}", 1, "order_created", created_payload, created, order_id)),
        ("dispatch", "on_order_completed", completion),
        ("callback", "on_order_verified", logs["callback"].envelope(
            f"task-{completion['event_id']}", 3, "order_verified", verified_payload, verified,
            order_id, actor="agent:bench")),
    ]


def generate(url: str, orders: int, partners: int = PARTNERS) -> dict:
    """Rates, then `orders` completed and verified repairs, each event its own delivery."""
    # the producers' contracts: the registry loads them all only if nothing is registered yet,
    # and importing the settlement service has registered settlement's own
    import contracts.callback
    import contracts.dispatch
    import contracts.orders  # noqa: F401
    from serviceloop.consumer import deliver
    from serviceloop.seeding import demo_rate_files
    from services.settlement.service import SettlementService

    service = stand_in(url, PERIOD_START - timedelta(days=1))
    started = perf_counter()
    for csv_text in demo_rate_files():
        service.load_rates(csv_text)
    logs = {source: ProducerLog(source) for source in ("orders", "dispatch", "callback")}
    handlers = {name: getattr(SettlementService, name).handler
                for name in ("on_order_created", "on_order_completed", "on_order_verified")}
    outcomes: dict[str, int] = {}
    for index in range(orders):
        for source, name, envelope in order_events(logs, index, orders, partners):
            service.clock.set(datetime.fromisoformat(envelope["occurred_at"].replace("Z", "+00:00"))
                              + timedelta(seconds=5))
            outcome = deliver(service, handlers[name], f"settlement.{name}", source, envelope,
                              attempts=1)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    seconds = perf_counter() - started
    service.db.engine.dispose()
    if set(outcomes) != {"handled"}:
        raise AssertionError(f"deliveries not all handled: {outcomes}")
    return {"orders": orders, "deliveries": outcomes["handled"], "seconds": seconds}


# -- measuring --------------------------------------------------------------------------------


def _rss_mib() -> float:
    """The process's peak resident set so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_rss_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return _rss_mib()


def measure(url: str, period: str = PERIOD, profile: str | None = None) -> dict:
    """Time `run(period)` once (peak RSS of this process with it), then check it."""
    from sqlalchemy import func, select

    from serviceloop.unit_of_work import read_only
    from services.settlement.projections import claims

    service = stand_in(url)
    start, end = f"{period}-01", (date.fromisoformat(f"{period}-01") + timedelta(days=31)
                                  ).replace(day=1) - timedelta(days=1)
    with read_only(service.db.engine) as conn:  # warm the pool and the imports
        in_period, expected = conn.execute(
            select(func.count(), func.coalesce(func.sum(claims.c.payable_cents), 0)).where(
                claims.c.completed_on >= start, claims.c.completed_on <= end.isoformat())).one()
    rss_before = _current_rss_mib()
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        started = perf_counter()
        statements = profiler.runcall(service.run, period)
        seconds = perf_counter() - started
        profiler.dump_stats(profile)
    else:
        started = perf_counter()
        statements = service.run(period)
        seconds = perf_counter() - started
    peak = _rss_mib()
    again = service.run(period)
    lines = sum(len(s["lines"]) for s in statements)
    payable = sum(s["payable_cents"] for s in statements)
    problems = []
    if payable != expected:
        problems.append(f"statements pay {payable}, claims.payable_cents sum {expected}")
    if lines != in_period:
        problems.append(f"{lines} statement lines, {in_period} claims in {period}")
    if again != statements:
        problems.append("a second run returned different statements")
    service.db.engine.dispose()
    return {"seconds": seconds, "peak_rss_mib": peak, "rss_before_mib": rss_before,
            "statements": len(statements), "lines": lines, "claims": in_period,
            "payable_cents": payable, "problems": problems}


# -- the benchmark (from bench.run) -----------------------------------------------------------


def _in_subprocess(*args: str) -> dict:
    """`python -m bench.settlement ARGS` in a fresh interpreter; its last stdout line, JSON."""
    done = subprocess.run([sys.executable, "-m", "bench.settlement", *args], cwd=ROOT,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"bench.settlement {args[0]} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_settlement(backend: str, *, sizes: list[int], partners: int = PARTNERS,
                     log: Callable[[str], None] = print) -> list[dict]:
    """For each size: a fresh database, the period generated, `run` measured and checked."""
    results = []
    for orders in sizes:
        with fresh_database(backend, service="settlement") as url:
            made = _in_subprocess("generate", "--url", url, "--orders", str(orders),
                                  "--partners", str(partners))
            log(f"  {orders:,} orders generated through the consumers in "
                f"{made['seconds']:.1f} s ({made['deliveries'] / made['seconds']:.0f} "
                "deliveries/s)")
            measured = _in_subprocess("measure", "--url", url, "--period", PERIOD)
        if measured["problems"]:
            raise AssertionError(f"settlement {backend} {orders}: "
                                 + "; ".join(measured["problems"]))
        grew = measured["peak_rss_mib"] - measured["rss_before_mib"]
        log(f"  run({PERIOD}) {orders:,} orders: {measured['seconds']:.2f} s, peak RSS "
            f"{measured['peak_rss_mib']:.0f} MiB (+{grew:.0f})")
        results.append({"bench": "settlement", "backend": backend, "orders": orders,
                        "partners": partners, "unit": "s", "value": measured["seconds"],
                        "s_per_1k": measured["seconds"] / orders * 1000,
                        "peak_rss_mib": measured["peak_rss_mib"],
                        "rss_before_mib": measured["rss_before_mib"],
                        "statements": measured["statements"], "lines": measured["lines"],
                        "payable_cents": measured["payable_cents"],
                        "generation_seconds": made["seconds"],
                        "deliveries": made["deliveries"]})
    smallest = results[0]["s_per_1k"] if results else None
    for result in results:  # linearity: seconds per 1k orders against the smallest size
        result["baseline"] = smallest
        result["ratio"] = result["s_per_1k"] / smallest
    return results


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
    parser = argparse.ArgumentParser(prog="python -m bench.settlement")
    parser.add_argument("mode", choices=("generate", "measure"))
    parser.add_argument("--url", required=True)
    parser.add_argument("--orders", type=int, default=1000)
    parser.add_argument("--partners", type=int, default=PARTNERS)
    parser.add_argument("--period", default=PERIOD)
    parser.add_argument("--profile", default=None, help="measure: cProfile stats to this file")
    args = parser.parse_args(argv)
    if args.mode == "generate":
        outcome = generate(args.url, args.orders, args.partners)
    else:
        outcome = measure(args.url, args.period, args.profile)
    print(json.dumps(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main())
