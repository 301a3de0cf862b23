"""`create_order` over nameko RPC against the real orders service, beside a no-op service.

Both services run in this process (one `ServiceRunner`, its own RabbitMQ vhost and a fresh
migrated database). Every concurrent caller has its own `ServiceRpcProxy`: a proxy must
not be shared between green threads. Each `create_order` is for a product no other call
uses, so the one-open-order-per-product rule never short-circuits the write.
"""

from __future__ import annotations

import resource
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from time import perf_counter

import eventlet
from nameko.rpc import rpc
from nameko.runners import ServiceRunner
from nameko.standalone.rpc import ServiceRpcProxy

from bench.common import fresh_database, fresh_vhost, median, percentile, rate
from serviceloop.db import make_engine
from serviceloop.entrypoints import rpc as serviceloop_rpc
from serviceloop.eventstore import EventStore, verify_chain
from serviceloop.unit_of_work import read_only

PRODUCTS_PER_CUSTOMER = 20
RPC_TIMEOUT = 60.0


class NoopService:
    """The baseline: the same broker round trip and (de)serialisation, no work."""

    name = "bench_noop"

    @rpc
    def echo(self, payload: dict) -> dict:
        return payload


class ServiceloopNoopService:
    """Not the target's baseline, shown beside it: the same no-op on serviceloop's own RPC
    entrypoint (serviceloop/entrypoints.py, which answers without a publisher confirm), so the table
    says how much of create_order's ratio is that reply path and how much the work."""

    name = "bench_noop_serviceloop"

    @serviceloop_rpc
    def echo(self, payload: dict) -> dict:
        return payload


def service_config(amqp_uri: str, database_url: str, max_workers: int = 16) -> dict:
    return {"AMQP_URI": amqp_uri, "max_workers": max_workers, "parent_calls_tracked": 10,
            "HEARTBEAT": 30, "CLOCK": "system", "DATABASE_URL_ORDERS": database_url}


@contextmanager
def running_services(config: dict) -> Iterator[None]:
    from services.orders.service import OrdersService  # needs services/orders/catalog.py

    runner = ServiceRunner(config)
    runner.add_service(OrdersService)
    runner.add_service(NoopService)
    runner.add_service(ServiceloopNoopService)
    runner.start()
    try:
        yield
    finally:
        runner.stop()


# -- payloads --------------------------------------------------------------------------------


def customer_payload(index: int, models: list[str], products: int) -> dict:
    """A caller with `products` appliances (models round-robin), valid for register_customer."""
    today = datetime.now(UTC).date()
    return {
        "name": f"王小明{index}", "phone": f"139{index:08d}", "agent_id": "bench",
        "address": {"province": "广东省", "city": "广州市", "district": "天河区",
                    "street": f"中山大道{index}号", "lat": 23.13, "lon": 113.33},
        "products": [{
            "model": models[(index * products + n) % len(models)],
            "serial": f"SN{index:06d}{n:04d}",
            "purchase_date": (today - timedelta(days=200 + n)).isoformat(),
            "installation_date": (today - timedelta(days=195 + n)).isoformat(),
        } for n in range(products)],
    }


def order_payload(product_id: str) -> dict:
    return {"request_id": uuid.uuid4().hex, "product_id": product_id, "order_type": "install",
            "channel": "phone", "description": "安装 (bench)", "agent_id": "bench"}


# -- callers ---------------------------------------------------------------------------------


def call_concurrently(config: dict, service: str, method: str, payloads: list[dict],
                      callers: int, check: Callable[[dict], bool] | None = None) -> dict:
    """Send every payload, `callers` at a time, each caller on its own proxy; wall rate, latency."""
    proxies = [ServiceRpcProxy(service, config, timeout=RPC_TIMEOUT) for _ in range(callers)]
    handles = [proxy.start() for proxy in proxies]
    pending = iter(payloads)  # shared: next() never yields to another green thread
    latencies: list[float] = []
    failed = 0
    errors: list[BaseException] = []

    def caller(handle) -> None:  # noqa: ANN001 - a nameko ServiceProxy
        nonlocal failed
        call = getattr(handle, method)
        for payload in pending:
            if errors:  # another caller failed: stop, the run is void
                return
            start = perf_counter()
            try:
                answer = call(payload)
            except Exception as error:  # re-raised below, once all have stopped
                errors.append(error)
                return
            latencies.append(perf_counter() - start)
            if check is not None and not check(answer):
                failed += 1

    try:
        cpu_start, start = _cpu_seconds(), perf_counter()
        threads = [eventlet.spawn(caller, handle) for handle in handles]
        for thread in threads:
            thread.wait()
        wall, cpu = perf_counter() - start, _cpu_seconds() - cpu_start
    finally:
        for proxy in proxies:
            proxy.stop()
    if errors:
        raise errors[0]
    if failed:
        raise AssertionError(f"{failed} of {len(payloads)} {method} calls did not do the work")
    return {"calls": len(latencies), "callers": callers, "per_s": rate(len(latencies), wall),
            "p50_ms": percentile(latencies, 50) * 1000, "p99_ms": percentile(latencies, 99) * 1000,
            "seconds": wall, "process_cpu_ms_per_call": cpu / len(latencies) * 1000,
            "process_cpu_busy": cpu / wall}


def _cpu_seconds() -> float:
    """CPU time of this whole process: the services, the broker clients and the callers."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def register_products(config: dict, count: int, *, callers: int = 8) -> list[str]:
    """Register customers through `register_customer` until `count` products exist."""
    from services.orders.catalog import CATALOG

    models = [m.code for m in CATALOG.models()]
    customers = -(-count // PRODUCTS_PER_CUSTOMER)
    payloads = [customer_payload(i, models, PRODUCTS_PER_CUSTOMER) for i in range(customers)]
    product_ids: list[str] = []

    def keep(answer: dict) -> bool:
        product_ids.extend(p["product_id"] for p in answer["products"])
        return len(answer["products"]) == PRODUCTS_PER_CUSTOMER

    call_concurrently(config, "orders", "register_customer", payloads, callers, keep)
    return product_ids[:count]


def check_log(database_url: str, orders_expected: int) -> None:
    """After the runs: the hash chain is intact and each create_order logged one order."""
    from services.orders.projections import events

    engine = make_engine(database_url, pool_size=1)
    try:
        with read_only(engine) as conn:
            store = EventStore(events)
            breaks = verify_chain(store.replay(conn))
            created = sum(1 for e in store.replay(conn) if e.event_type == "order_created")
    finally:
        engine.dispose()
    if breaks or created != orders_expected:
        raise AssertionError(f"log check failed: {created} order_created events, expected "
                             f"{orders_expected}; chain breaks: {breaks[:3]}")


# -- the benchmark ---------------------------------------------------------------------------


def _summary(runs: list[dict]) -> dict:
    """Median of each figure over the rounds (each figure separately), every run kept."""
    keys = ("per_s", "p50_ms", "p99_ms", "process_cpu_ms_per_call", "process_cpu_busy")
    return {**{k: median([r[k] for r in runs]) for k in keys},
            "calls": runs[0]["calls"], "callers": runs[0]["callers"], "runs": runs}


def _ratio(real: dict, baseline: dict) -> float:
    """The median of the per-round ratios of two summaries' rates."""
    return median([r["per_s"] / n["per_s"]
                   for r, n in zip(real["runs"], baseline["runs"], strict=True)])


def _created(answer: dict) -> bool:
    return answer.get("created") is True


def _side_by_side(config: dict, products: Iterator[str], callers: int, calls: int,
                  warmup: int) -> tuple[dict, dict, dict]:
    """A no-op run on nameko's entrypoint, one on serviceloop's, then a create_order run,
    with the same callers (after a warm-up)."""
    orders = [order_payload(next(products)) for _ in range(warmup + calls)]
    echoes = [order_payload(str(uuid.uuid4())) for _ in range(warmup + calls)]
    services = ("bench_noop", "bench_noop_serviceloop")
    if warmup:
        for service in services:
            call_concurrently(config, service, "echo", echoes[:warmup], callers)
        call_concurrently(config, "orders", "create_order", orders[:warmup], callers, _created)
    noop, lean = (call_concurrently(config, service, "echo", echoes[warmup:], callers)
                  for service in services)
    real = call_concurrently(config, "orders", "create_order", orders[warmup:], callers,
                             _created)
    return noop, lean, real


def bench_rpc(backend: str, *, plan: list[tuple[int, int]], warmup: int, rounds: int = 1,
              log: Callable[[str], None] = print) -> list[dict]:
    """`rounds` times, for each (callers, calls) in `plan`: no-op echo, then create_order."""
    needed = rounds * sum(calls for _, calls in plan) + warmup * len(plan)
    runs: dict[int, dict[str, list[dict]]] = {c: {"noop": [], "lean": [], "real": []}
                                              for c, _ in plan}
    with fresh_database(backend) as url, fresh_vhost() as amqp_uri:
        config = service_config(amqp_uri, url)
        with running_services(config):
            started = perf_counter()
            products = iter(register_products(config, needed))
            log(f"  registered {needed} products in {perf_counter() - started:.1f} s")
            for round_ in range(rounds):
                for callers, calls in plan:
                    noop, lean, real = _side_by_side(config, products, callers, calls,
                                                     warmup if round_ == 0 else 0)
                    runs[callers]["noop"].append(noop)
                    runs[callers]["lean"].append(lean)
                    runs[callers]["real"].append(real)
                    log(f"  round {round_ + 1}, {callers:>2} caller(s): create_order "
                        f"{real['per_s']:.0f}/s p99 {real['p99_ms']:.1f} ms, "
                        f"no-op {noop['per_s']:.0f}/s (on serviceloop's rpc "
                        f"{lean['per_s']:.0f}/s)")
        check_log(url, needed)
    results = []
    for callers, _ in plan:
        real, noop, lean = (_summary(runs[callers][name]) for name in ("real", "noop", "lean"))
        results.append({"bench": "create_order", "backend": backend, "callers": callers,
                        "unit": "orders/s", "value": real["per_s"], "baseline": noop["per_s"],
                        "ratio": _ratio(real, noop), "create_order": real, "noop": noop,
                        "noop_serviceloop": lean, "ratio_to_serviceloop_noop": _ratio(real, lean)})
    return results
