"""The partner gateway over HTTP (signed GET, signed complete) beside a bare nameko @http service.

The dispatch service and the bare service run in this process, each in its own
`ServiceRunner` (nameko's web server is one per container config, so each has its own
port), on a fresh migrated dispatch database and a RabbitMQ vhost of their own. Partners
are registered over RPC; their orders are written straight into dispatch's log (received,
assigned, accepted, scheduled, arrived: `on_site`), so no orders service is needed and each
signed complete finishes an order nobody else touches.

Every client is one partner with its own keep-alive `requests.Session`. Requests are signed
before the timed part (the gateway is measured, not the partners' HMAC), each one unique:
GETs carry a fresh `nonce`, completes a fresh Idempotency-Key and an order of their own.
"""

from __future__ import annotations

import json
import resource
import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from time import perf_counter, time

import eventlet
import requests
from nameko.rpc import rpc
from nameko.runners import ServiceRunner
from nameko.standalone.rpc import ServiceRpcProxy
from nameko.web.handlers import http
from sqlalchemy import func, select
from werkzeug.wrappers import Request

from bench.common import fresh_database, fresh_vhost, median, percentile, rate
from contracts.signing import signed_headers
from serviceloop.db import make_engine
from serviceloop.eventstore import EventStore, NewEvent, verify_chain
from serviceloop.migrate import declare_broker_topology
from serviceloop.unit_of_work import read_only

RPC_TIMEOUT = 60.0
REQUEST_TIMEOUT = 60.0
SEED_BATCH = 250
REGION = {"province": "广东省", "city": "广州市", "district": "天河区"}
ADDRESS = {**REGION, "street": "中山大道100号", "lat": 23.13, "lon": 113.33}
COMPLETION = {"work_done": "replaced the heating element (bench)", "fault_code": "WH-E1",
              "parts": [], "labour_fee_cents": 8000}
COMPLETION_BODY = json.dumps(COMPLETION).encode()
BARE_ANSWER = json.dumps({"ok": True, "service": "bench_bare_http"})


class BareHttpService:
    """The baseline: nameko's own @http entrypoints, the same web server, no work."""

    name = "bench_bare_http"

    @http("GET", "/bare")
    def read(self, request: Request) -> str:
        return BARE_ANSWER

    @http("POST", "/bare")
    def echo(self, request: Request) -> str:
        return request.get_data(as_text=True)


def producer_stand_in(source: str) -> type:
    """A producer with an empty log, so dispatch's catch-up timer finds nothing, as in a quiet
    system, instead of warning every two seconds that `source` is not running."""

    class EmptyLog:
        name = source

        @rpc
        def events_since(self, position: int, limit: int = 1000,
                         event_types: list[str] | None = None) -> list[dict]:
            return []

    EmptyLog.__name__ = f"EmptyLog_{source}"
    return EmptyLog


@dataclass(frozen=True)
class Partner:
    partner_id: str
    secret: str
    orders: tuple[str, ...]  # on_site, this partner's: one per signed complete


def service_config(amqp_uri: str, database_url: str, port: int, max_workers: int = 16) -> dict:
    return {"AMQP_URI": amqp_uri, "max_workers": max_workers, "parent_calls_tracked": 10,
            "HEARTBEAT": 30, "CLOCK": "system", "DATABASE_URL_DISPATCH": database_url,
            "WEB_SERVER_ADDRESS": f"127.0.0.1:{port}",
            # the limiter must never bite: it is per partner and per process
            "GATEWAY_RATE_PER_SECOND": 1e6}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_services(config: dict) -> Iterator[tuple[str, str]]:
    """Dispatch and the bare service, each on its own port; yields their base URLs."""
    from serviceloop.consumer import subscribed_handlers
    from services.dispatch.service import DispatchService

    bare_config = {**config, "WEB_SERVER_ADDRESS": f"127.0.0.1:{free_port()}"}
    # the stand-ins first: dispatch's catch-up runs as soon as it starts
    runners = [ServiceRunner(bare_config), ServiceRunner(config)]
    runners[0].add_service(BareHttpService)
    for source in subscribed_handlers(DispatchService):
        runners[0].add_service(producer_stand_in(source))
    runners[1].add_service(DispatchService)
    for runner in runners:
        runner.start()
    try:
        yield (f"http://{config['WEB_SERVER_ADDRESS']}",
               f"http://{bare_config['WEB_SERVER_ADDRESS']}")
    finally:
        for runner in reversed(runners):  # dispatch first: its catch-up needs the stand-ins
            runner.stop()


# -- set-up: partners over RPC, their orders straight into dispatch's log ---------------------


def register_partners(config: dict, count: int) -> list[tuple[str, str]]:
    with ServiceRpcProxy("dispatch", config, timeout=RPC_TIMEOUT) as dispatch:
        answers = [dispatch.register_partner({
            "name": f"天河家电维修{n}", "regions": [REGION], "categories": ["water_heater"],
            "daily_capacity": 10_000, "rating": 4.0}) for n in range(count)]
    return [(a["partner"]["partner_id"], a["secret"]) for a in answers]


def on_site_events(order_id: str, partner_id: str, index: int, now: datetime) -> list[NewEvent]:
    """What dispatch logs for a repair from order_received to partner_arrived, via its domain."""
    from services.dispatch import domain
    from services.dispatch.assignment import BEST_RATED_LEAST_LOADED, Choice

    timers = domain.Timers()
    received = domain.receive({
        "order_id": order_id, "order_type": "repair", "routed_to": "dispatch",
        "status": "created", "category": "water_heater", "model": "WH-E60A",
        "serial": f"WH{index:08d}", "description": "no hot water (bench)",
        "fault_code": "WH-E1", "phone": f"139{index:08d}", "address": ADDRESS,
        "in_warranty": True, "related_order_id": None})
    p = received.payload
    order = domain.DispatchOrder(
        order_id=order_id, order_type="repair", status="ready", category=p["category"],
        model=p["model"], serial=p["serial"], phone=p["phone"],
        district=(REGION["province"], REGION["city"], REGION["district"]),
        fault_code=p["fault_code"], in_warranty=True, confirmation_code=p["confirmation_code"],
        partner_id=None, attempt=0, excluded=frozenset(), accept_by=None, schedule_by=None,
        window_start=None, window_end=None, arrived_at=None, arrival_lat=None,
        arrival_lon=None, version=1)
    assigned = domain.placement(order, Choice(partner_id, BEST_RATED_LEAST_LOADED, (),
                                              "assigned by the benchmark"), now, timers)
    order = replace(order, status="assigned", partner_id=partner_id, attempt=1)
    accepted = domain.accept(order, now, timers)
    start, end = now - timedelta(hours=1), now + timedelta(hours=3)
    scheduled = domain.schedule(replace(order, status="accepted"), start, end, now)
    order = replace(order, status="scheduled", window_start=start, window_end=end)
    arrived = domain.arrive(order, {"lat": 23.1301, "lon": 113.3302}, now)
    return [received, assigned, accepted, scheduled, arrived]


def seed_orders(database_url: str, partner_ids: list[str], per_partner: int) -> dict[str, list]:
    """`per_partner` on_site orders for each partner, appended in batches, one txn each."""
    from services.dispatch.projections import events, projector

    store, now = EventStore(events), datetime.now(UTC)
    wanted = [(pid, str(uuid.uuid4())) for _ in range(per_partner) for pid in partner_ids]
    orders: dict[str, list] = {pid: [] for pid in partner_ids}
    engine = make_engine(database_url, pool_size=1)
    try:
        for first in range(0, len(wanted), SEED_BATCH):
            with engine.begin() as conn:
                for index, (partner_id, order_id) in enumerate(
                        wanted[first:first + SEED_BATCH], start=first):
                    store.append(conn, f"order-{order_id}", 0,
                                 on_site_events(order_id, partner_id, index, now),
                                 occurred_at=now, correlation_id=order_id,
                                 causation_id=f"bench-{uuid.uuid4()}", actor="system",
                                 project=projector.apply)
                    orders[partner_id].append(order_id)
    finally:
        engine.dispose()
    return orders


# -- requests ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    method: str
    url: str
    headers: dict
    body: bytes = b""


def signed_get(base_url: str, partner: Partner, order_id: str) -> Call:
    path = f"/api/v1/orders/{order_id}?nonce={uuid.uuid4().hex}"
    headers = signed_headers(partner.partner_id, partner.secret, "GET", path, b"", time())
    return Call("GET", base_url + path, headers)


def signed_complete(base_url: str, partner: Partner, order_id: str) -> Call:
    path = f"/api/v1/orders/{order_id}/complete"
    headers = signed_headers(partner.partner_id, partner.secret, "POST", path,
                             COMPLETION_BODY, time())
    headers.update({"Content-Type": "application/json", "Idempotency-Key": uuid.uuid4().hex})
    return Call("POST", base_url + path, headers, COMPLETION_BODY)


def bare_get(base_url: str) -> Call:
    return Call("GET", f"{base_url}/bare?nonce={uuid.uuid4().hex}", {})


def bare_post(base_url: str) -> Call:
    return Call("POST", f"{base_url}/bare", {"Content-Type": "application/json",
                                             "Idempotency-Key": uuid.uuid4().hex},
                COMPLETION_BODY)


def send_concurrently(per_client: list[list[Call]],
                      check: Callable[[int, bytes], bool]) -> dict:
    """Each client (a green thread, its own keep-alive session) sends its calls in turn.
    Every answer must pass `check`, which runs once the timed part is over (reading an
    answer's JSON is the bench's work, not the request's); a client stops at the first
    answer that is not 200, and the run fails."""
    sessions = [requests.Session() for _ in per_client]
    for session in sessions:
        session.trust_env = False  # no proxy and .netrc look-ups on every request
    latencies: list[float] = []
    answered: list[tuple[Call, int, bytes]] = []  # status and body: no Response kept alive
    errors: list[BaseException] = []

    def client(session: requests.Session, calls: list[Call]) -> None:
        for call in calls:
            if errors:  # another client failed: stop, the run is void
                return
            start = perf_counter()
            try:
                response = session.request(call.method, call.url, data=call.body or None,
                                           headers=call.headers, timeout=REQUEST_TIMEOUT)
            except Exception as error:  # re-raised below, once all have stopped
                errors.append(error)
                return
            latencies.append(perf_counter() - start)
            answered.append((call, response.status_code, response.content))
            if response.status_code != 200:
                errors.append(AssertionError(f"{call.method} {call.url}: "
                                             f"{response.status_code} {response.text[:300]}"))

    try:
        cpu_start, start = _cpu_seconds(), perf_counter()
        threads = [eventlet.spawn(client, s, calls) for s, calls in zip(sessions, per_client,
                                                                         strict=True)]
        for thread in threads:
            thread.wait()
        wall, cpu = perf_counter() - start, _cpu_seconds() - cpu_start
    finally:
        for session in sessions:
            session.close()
    if errors:
        raise errors[0]
    refused = [f"{call.method} {call.url}: {status} {body[:300]!r}"
               for call, status, body in answered if not check(status, body)]
    if refused:
        raise AssertionError(f"{len(refused)} request(s) failed, first: {refused[0]}")
    return {"requests": len(latencies), "clients": len(per_client),
            "per_s": rate(len(latencies), wall),
            "p50_ms": percentile(latencies, 50) * 1000, "p99_ms": percentile(latencies, 99) * 1000,
            "seconds": wall, "process_cpu_ms_per_request": cpu / len(latencies) * 1000,
            "process_cpu_busy": cpu / wall}


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _ok(status: int, _body: bytes) -> bool:
    return status == 200


def _completed(status: int, body: bytes) -> bool:
    return status == 200 and json.loads(body).get("status") == "completed"


# -- after the runs: the log says what the responses said ---------------------------------------


def check_log(database_url: str, completed: set[str], signed_requests: int) -> None:
    """The chain is intact, each completed order has one order_completed, every signature once."""
    from services.dispatch.projections import dispatch_orders, events, seen_signatures

    engine = make_engine(database_url, pool_size=1)
    try:
        with read_only(engine) as conn:
            store = EventStore(events)
            breaks = verify_chain(store.replay(conn))
            completions: dict[str, int] = {}
            for envelope in store.replay(conn):
                if envelope.event_type == "order_completed":
                    order_id = envelope.payload["order_id"]
                    completions[order_id] = completions.get(order_id, 0) + 1
            in_read_model = conn.execute(select(func.count()).select_from(dispatch_orders)
                                         .where(dispatch_orders.c.status == "completed")
                                         ).scalar_one()
            signatures = conn.execute(select(func.count()).select_from(seen_signatures)
                                      ).scalar_one()
    finally:
        engine.dispose()
    problems = []
    if breaks:
        problems.append(f"chain breaks: {breaks[:3]}")
    if set(completions) != completed or any(n != 1 for n in completions.values()):
        twice = sorted(o for o, n in completions.items() if n != 1)
        problems.append(f"{len(completions)} orders with order_completed, {len(completed)} "
                        f"completed over HTTP; more than once: {twice[:3]}")
    if in_read_model != len(completed):
        problems.append(f"{in_read_model} completed in dispatch_orders, {len(completed)} sent")
    if signatures != signed_requests:
        problems.append(f"{signatures} signatures recorded, {signed_requests} signed requests")
    if problems:
        raise AssertionError("gateway log check failed: " + "; ".join(problems))


# -- the benchmark -----------------------------------------------------------------------------


def _summary(runs: list[dict]) -> dict:
    """Median of each figure over the rounds (each figure separately), every run kept."""
    keys = ("per_s", "p50_ms", "p99_ms", "process_cpu_ms_per_request", "process_cpu_busy")
    return {**{k: median([r[k] for r in runs]) for k in keys},
            "requests": runs[0]["requests"], "clients": runs[0]["clients"], "runs": runs}


def bench_gateway(backend: str, *, partners: int, requests_each: int, warmup: int,
                  rounds: int = 1, log: Callable[[str], None] = print) -> list[dict]:
    """`rounds` times: bare GET, signed GET, bare POST, signed complete, `partners` at once."""
    per_partner = warmup + rounds * requests_each
    names = ("bare_get", "signed_get", "bare_post", "signed_complete")
    runs: dict[str, list[dict]] = {name: [] for name in names}
    completed: set[str] = set()
    signed_requests = 0
    with fresh_database(backend, service="dispatch") as url, fresh_vhost() as amqp_uri:
        declare_broker_topology(amqp_uri)
        config = service_config(amqp_uri, url, free_port())
        with running_services(config) as (gateway_url, bare_url):
            started = perf_counter()
            credentials = register_partners(config, partners)
            orders = seed_orders(url, [pid for pid, _ in credentials], per_partner)
            clients = [Partner(pid, secret, tuple(orders[pid])) for pid, secret in credentials]
            log(f"  {partners} partners, {per_partner * partners} on_site orders in "
                f"{perf_counter() - started:.1f} s")
            pending = [iter(p.orders) for p in clients]

            def one_of_each(count: int) -> dict[str, dict]:
                nonlocal signed_requests
                gets = [[signed_get(gateway_url, p, p.orders[n % len(p.orders)])
                         for n in range(count)] for p in clients]
                to_complete = [[next(left) for _ in range(count)] for left in pending]
                completes = [[signed_complete(gateway_url, p, order_id) for order_id in ids]
                             for p, ids in zip(clients, to_complete, strict=True)]
                signed_requests += 2 * count * len(clients)
                outcome = {
                    "bare_get": send_concurrently(
                        [[bare_get(bare_url) for _ in range(count)] for _ in clients], _ok),
                    "signed_get": send_concurrently(gets, _ok),
                    "bare_post": send_concurrently(
                        [[bare_post(bare_url) for _ in range(count)] for _ in clients], _ok),
                    "signed_complete": send_concurrently(completes, _completed),
                }
                completed.update(order_id for ids in to_complete for order_id in ids)
                return outcome

            if warmup:
                one_of_each(warmup)
            for round_ in range(rounds):
                outcome = one_of_each(requests_each)
                for name in names:
                    runs[name].append(outcome[name])
                log(f"  round {round_ + 1}: signed GET {outcome['signed_get']['per_s']:.0f}/s "
                    f"(bare {outcome['bare_get']['per_s']:.0f}/s), signed complete "
                    f"{outcome['signed_complete']['per_s']:.0f}/s "
                    f"(bare POST {outcome['bare_post']['per_s']:.0f}/s)")
        check_log(url, completed, signed_requests)
    results = []
    for operation, signed, bare in (("get_order", "signed_get", "bare_get"),
                                    ("complete", "signed_complete", "bare_post")):
        ours, theirs = _summary(runs[signed]), _summary(runs[bare])
        ratios = [o["per_s"] / t["per_s"] for o, t in zip(ours["runs"], theirs["runs"],
                                                           strict=True)]
        results.append({"bench": "gateway", "backend": backend, "operation": operation,
                        "partners": partners, "unit": "requests/s", "value": ours["per_s"],
                        "baseline": theirs["per_s"], "ratio": median(ratios),
                        "signed": ours, "bare": theirs})
    return results
