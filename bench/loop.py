"""The whole loop under load (issue 7, "Load"): N orders in flight on PostgreSQL.

`serviceloop up` runs the four services, their relays and the stand-in provider as real
processes on fresh PostgreSQL databases and a RabbitMQ vhost of their own. This process is
the load generator: the call centre opens orders over RPC so that N are always in flight,
simulated partners (serviceloop.simulation) work them over the signed gateway and simulated
agents verify them over RPC; settlement decides each claim from the events. Measured over a
window after a warm-up: verified loops/s, create_order -> verified latency (p50/p99) and each
stage's share of it, every process's CPU (broker, each service, each relay, PostgreSQL, the
load generator) per loop, memory and queue depth over time. Beside them, in the same run:
the raw cost of one nameko RPC, one event delivery and one append.

    python -m bench.run --only loop --output loop [--quick]
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import eventlet
from kombu import Connection
from nameko.events import event_handler
from nameko.runners import ServiceRunner
from nameko.standalone.events import event_dispatcher

from bench.common import fresh_database, fresh_vhost, median, percentile
from bench.eventstore import AppendBench
from bench.report import LOOP_TARGET_PER_S
from bench.rpc import NoopService, call_concurrently
from contracts.subscriptions import SUBSCRIPTIONS
from serviceloop.cli.operations import die_with_parent
from serviceloop.consumer import queue_name
from serviceloop.services import IMPLEMENTED

ROOT = Path(__file__).resolve().parent.parent
PARTNERS, AGENTS, PRODUCTS_PER_CUSTOMER = 30, 8, 10
SIZED_FOR_LOOPS_PER_S = 60  # products registered for (above the target); running out is reported


# -- the system as processes ------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_system(log: Callable[[str], None]):  # noqa: ANN201
    """`serviceloop up` on fresh PostgreSQL databases and vhost; this process's environment
    points at it (the simulation reads AMQP_URI, SERVICELOOP_VAR, the gateway from it)."""
    with contextlib.ExitStack() as stack:
        urls = {s: stack.enter_context(fresh_database("postgres", service=s))
                for s in IMPLEMENTED}
        amqp_uri = stack.enter_context(fresh_vhost())
        var = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_loop_"))
        gateway = free_port()
        env = {"AMQP_URI": amqp_uri, "SERVICELOOP_VAR": var,
               **{f"DATABASE_URL_{s.upper()}": url for s, url in urls.items()},
               "GATEWAY_PORT": str(gateway),
               "SERVICELOOP_GATEWAY": f"http://127.0.0.1:{gateway}",
               **{f"{name}_PORT": str(free_port())
                  for name in ("CALLBACK", "PROVIDER", "ORDERS", "SETTLEMENT")},
               "GATEWAY_RATE_PER_SECOND": "1000", "GATEWAY_BURST": "2000",
               "LOG_LEVEL": "WARNING", "PYTHONWARNINGS": "ignore::DeprecationWarning"}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        cli = [sys.executable, "-m", "serviceloop.cli"]
        subprocess.run([*cli, "migrate"], check=True, capture_output=True, timeout=300)
        up = subprocess.Popen([*cli, "up"], cwd=ROOT, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              preexec_fn=die_with_parent)  # not outliving a killed bench
        try:
            from serviceloop.demo import SystemNotRunning, check_running
            from serviceloop.simulation import until

            until(lambda: check_running(5) is None, 90, "the services to answer",
                  tolerate=(SystemNotRunning,))
            log(f"  system up (pid {up.pid}) on {amqp_uri.rsplit('/', 1)[1]}")
            yield {"up": up, "urls": urls, "amqp_uri": amqp_uri}
        finally:
            os.killpg(up.pid, signal.SIGTERM)
            try:
                up.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(up.pid, signal.SIGKILL)
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


# -- watching processes and queues ------------------------------------------------------------

TICK = os.sysconf("SC_CLK_TCK")
POSTGRES, BROKER = "postgres (our databases)", "broker (beam.smp, shared)"


def _stat(pid: int) -> tuple[int, float, int] | None:
    """(parent pid, CPU seconds, RSS bytes) of a process, None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK, \
        int(fields[21]) * os.sysconf("SC_PAGE_SIZE")


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return []


def _name(command: list[str]) -> str | None:
    text = " ".join(command)
    for service in IMPLEMENTED:
        if f"services.{service}.service" in text:
            return service
        if f"relay {service}" in text:
            return f"{service} relay"
    return "stand-in provider" if " provider" in text else None


class ProcessWatch:
    """CPU seconds and RSS of every process the loop runs on, by role."""

    def __init__(self, up_pid: int, databases: list[str]) -> None:
        self.roles: dict[str, list[int]] = {"load generator": [os.getpid()]}
        for pid in (int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()):
            stat = _stat(pid)
            if stat and stat[0] == up_pid and (role := _name(_cmdline(pid))):
                self.roles.setdefault(role, []).append(pid)
            elif Path(f"/proc/{pid}/comm").exists() and \
                    _read(f"/proc/{pid}/comm") == "beam.smp":
                self.roles.setdefault(BROKER, []).append(pid)
        self.databases = databases

    def postgres_pids(self) -> list[int]:
        """The PostgreSQL backends serving our databases (they come and go with pools)."""
        if not self.databases:
            return []
        names = ",".join(f"'{name}'" for name in self.databases)
        out = subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-At", "-c",
                              f"SELECT pid FROM pg_stat_activity WHERE datname IN ({names})"],
                             capture_output=True, text=True).stdout
        return [int(line) for line in out.split()]

    def sample(self) -> dict[str, dict]:
        """Per role: CPU seconds of each process, and their RSS together."""
        taken = {}
        for role, pids in {**self.roles, POSTGRES: self.postgres_pids()}.items():
            stats = {pid: stat for pid in pids if (stat := _stat(pid))}
            taken[role] = {"cpu_s": {pid: stat[1] for pid, stat in stats.items()},
                           "rss_mib": sum(stat[2] for stat in stats.values()) / 2**20}
        return taken


def cpu_between(first: dict, last: dict, role: str) -> float:
    """CPU seconds a role's processes used between two samples (a process started in
    between counts whole; one that ended in between is missed)."""
    before = first.get(role, {}).get("cpu_s", {})
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in last[role]["cpu_s"].items())


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def queue_depths(amqp_uri: str) -> dict[str, int]:
    """Messages waiting in every consumer's event queue and every service's RPC queue."""
    names = sorted({queue_name(*sub) for sub in SUBSCRIPTIONS}) + \
        [f"rpc-{service}" for service in IMPLEMENTED]
    depths = {}
    with Connection(amqp_uri) as connection:
        channel = connection.channel()
        for name in names:
            try:
                depths[name] = channel.queue_declare(name, passive=True).message_count
            except Exception:  # noqa: BLE001 - a queue not declared (yet): nothing waits
                channel = connection.channel()
    return depths


# -- raw costs, in the same run -----------------------------------------------------------


class EventSink:
    """The baseline consumer: one nameko event handler that only counts."""

    name = "bench_sink"
    received = 0

    @event_handler("bench_source", "ping")
    def on_ping(self, payload: dict) -> None:
        EventSink.received += 1


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def raw_costs(amqp_uri: str, *, calls: int, events: int, appends: int) -> dict:
    """One no-op RPC, one event published and consumed, one append (PostgreSQL): rate,
    latency and this process's CPU per operation (service and client share the process)."""
    config = {"AMQP_URI": amqp_uri, "max_workers": 16, "parent_calls_tracked": 10,
              "HEARTBEAT": 30}
    runner = ServiceRunner(config)
    runner.add_service(NoopService)
    runner.add_service(EventSink)
    runner.start()
    try:
        payloads = [{"n": n} for n in range(calls)]
        call_concurrently(config, "bench_noop", "echo", payloads[:50], 1)  # warm-up
        rpc = call_concurrently(config, "bench_noop", "echo", payloads, 1)
        dispatch = event_dispatcher(config)
        EventSink.received = 0
        cpu, started = _cpu(), time.perf_counter()
        for n in range(events):
            dispatch("bench_source", "ping", {"n": n})
        from serviceloop.simulation import until

        until(lambda: EventSink.received >= events, 60, "the events to arrive", every=0.01)
        delivery = {"events": events, "per_s": events / (time.perf_counter() - started),
                    "process_cpu_ms_per_event": (_cpu() - cpu) / events * 1000}
    finally:
        runner.stop()
    with fresh_database("postgres") as url:
        bench = AppendBench(url)
        try:
            bench.store_rate(50, 1)
            cpu, started = _cpu(), time.perf_counter()
            bench.store_rate(appends, 1)
            append = {"events": appends, "per_s": appends / (time.perf_counter() - started),
                      "process_cpu_ms_per_append": (_cpu() - cpu) / appends * 1000}
        finally:
            bench.close()
    return {"rpc": {k: rpc[k] for k in ("per_s", "p50_ms", "p99_ms", "process_cpu_ms_per_call")},
            "event_delivery": delivery, "append": append}


# -- the load -------------------------------------------------------------------------------


def seed(log: Callable[[str], None], customers: int):  # noqa: ANN201
    """Rates, partners with room for the whole run, and customers each owning
    PRODUCTS_PER_CUSTOMER appliances bought 100 days ago (under full warranty)."""
    from datetime import date

    from serviceloop.client import cluster
    from serviceloop.seed_data import ProductSeed
    from serviceloop.seeding import customer_payload, demo_customers, seed_partners, seed_rates

    seed_rates()
    seed_partners(PARTNERS)
    bought = date.today() - timedelta(days=100)
    people = [dataclasses.replace(person, products=tuple(
        ProductSeed(p.category, p.model, f"{p.serial}{k}", bought,
                    bought + timedelta(days=1) if p.installation_date else None)
        for k in range(PRODUCTS_PER_CUSTOMER) for p in person.products[:1]))
        for person in demo_customers(customers, 2026)]
    with cluster() as rpc:
        for partner in rpc.dispatch.list_partners():
            rpc.dispatch.update_partner({"partner_id": partner["partner_id"],
                                         "daily_capacity": 10_000, "agent_id": "bench"})

    def register(share: list) -> None:
        with cluster() as rpc:
            for person in share:
                rpc.orders.register_customer(customer_payload(person))

    pool = eventlet.GreenPool(8)
    for n in range(8):
        pool.spawn(register, people[n::8])
    pool.waitall()
    log(f"  seeded {PARTNERS} partners and {customers} customers "
        f"({customers * PRODUCTS_PER_CUSTOMER} products)")
    return [person.phone for person in people]


class Intake:
    """The call centre: keeps `in_flight` orders open (created, not yet verified)."""

    def __init__(self, world, pool: list, in_flight: int) -> None:  # noqa: ANN001
        self.world, self.pool, self.in_flight = world, pool, in_flight
        self.running = True
        self.opened = 0

    def run(self) -> None:
        """Opens orders until stopped or out of products. A call that fails (refused, timed
        out, a lost connection) is reported in the world's problems and the call centre goes
        on with the next product after a pause, as the simulated people do: one failure
        must not stop the load. (An order whose answer was lost still runs its loop; the
        partners and agents treat it as ordinary.)"""
        from serviceloop.client import cluster
        from serviceloop.simulation import NORMAL, open_order

        with cluster() as rpc:
            while self.running and self.pool:
                if self.opened - self.world.finished >= self.in_flight:
                    eventlet.sleep(0.01)
                    continue
                try:
                    opened = open_order(rpc, self.world, self.pool.pop(), NORMAL)
                except Exception as error:  # noqa: BLE001 - reported; on with the next
                    self.world.problems.append(
                        f"intake: {type(error).__name__}: {error}"[:300])
                    eventlet.sleep(1.0)
                    continue
                if opened:
                    self.opened += 1


def bench_loop(*, in_flight: int, warmup_s: float, measure_s: float, sample_s: float,
               log: Callable[[str], None] = print) -> dict:
    from serviceloop import simulation
    from serviceloop.client import cluster

    products_needed = int((warmup_s + measure_s) * SIZED_FOR_LOOPS_PER_S) + in_flight
    customers = -(-products_needed // PRODUCTS_PER_CUSTOMER)
    with running_system(log) as system:
        log("  raw costs: one RPC, one event delivery, one append …")
        raw = raw_costs(system["amqp_uri"], calls=1000, events=2000, appends=500)
        phones = seed(log, customers)
        with cluster(timeout=60) as rpc:
            world = simulation.World(7, rpc.settlement.current_rates())
            partners = rpc.dispatch.list_partners()
            pool = simulation.candidates(rpc, phones, partners)
        log(f"  {len(pool)} products to open orders for; {in_flight} orders in flight")
        watch = ProcessWatch(system["up"].pid,
                             [url.rsplit("/", 1)[1] for url in system["urls"].values()])
        intake = Intake(world, pool, in_flight)
        # assignment favours the best-rated partner of a district: give each enough
        # technicians that a partner never waits for one
        sim = simulation.Simulation(world, simulation.partners_from_folder(
                                        world, technicians=in_flight),
                                    simulation.agents(AGENTS, world),
                                    simulation.SimulatedSupervisor(world, partners))
        samples: list[dict] = []
        with sim:
            feeder = eventlet.spawn(intake.run)
            started = time.monotonic()
            eventlet.sleep(warmup_s)
            window_start = time.monotonic()
            first = watch.sample()
            while time.monotonic() - window_start < measure_s:
                eventlet.sleep(sample_s)
                samples.append(_sample(world, watch, system["amqp_uri"], window_start))
                log(f"  t={samples[-1]['t']:.0f} s: {samples[-1]['verified']} verified in "
                    f"the window, queues {samples[-1]['queued']}, "
                    f"RSS {samples[-1]['rss_mib']:.0f} MiB")
                before = samples[-2]["verified"] if len(samples) > 1 else 0
                stalled = samples[-1]["verified"] == before
                if stalled:  # what the call centre and the simulated people last ran into
                    log(f"    no loop closed since the last sample: {intake.opened} orders "
                        f"opened, {world.finished} finished, {len(intake.pool)} products "
                        f"left, intake {'dead' if feeder.dead else 'running'}; "
                        f"{len(world.problems)} problems"
                        + (f", the last: {world.problems[-1]}" if world.problems else ""))
            last = watch.sample()
            window_end = time.monotonic()
            intake.running = False
            feeder.wait()
            drained = _drain(world, log)
        loops = [s for s in world.scripts.values()
                 if s.outcome == "verified" and window_start <= s.finished <= window_end]
        settled = _settlement(world, log)
    return _result(in_flight, warmup_s, window_end - window_start, loops, first, last,
                   samples, raw, drained, settled, world, started, len(intake.pool))


def _sample(world, watch: ProcessWatch, amqp_uri: str, since: float) -> dict:  # noqa: ANN001
    processes = watch.sample()
    depths = queue_depths(amqp_uri)
    return {"t": time.monotonic() - since,
            "verified": sum(1 for s in world.scripts.values()
                            if s.outcome == "verified" and s.finished >= since),
            "queued": sum(depths.values()),
            "deepest": max(depths.items(), key=lambda kv: kv[1]) if depths else None,
            # PostgreSQL backends share their buffers: their RSS counts pages many times
            "rss_mib": sum(p["rss_mib"] for role, p in processes.items() if role != POSTGRES),
            "rss_by_process": {role: round(p["rss_mib"], 1) for role, p in processes.items()}}


def _drain(world, log: Callable[[str], None]) -> dict:  # noqa: ANN001
    """After the load stops: every order opened reaches verified (nothing lost)."""
    from serviceloop.simulation import until

    started = time.monotonic()
    try:
        until(lambda: all(s.outcome for s in world.scripts.values()), 120,
              "every open order to be verified")
    except TimeoutError:
        pass
    left = [s.order_id for s in world.scripts.values() if not s.outcome]
    log(f"  drained in {time.monotonic() - started:.1f} s, {len(left)} orders not verified")
    return {"seconds": time.monotonic() - started, "not_verified": len(left)}


def _settlement(world, log: Callable[[str], None]) -> dict:  # noqa: ANN001
    """Every verified order has its claim decided as verified; then the month's run."""
    from serviceloop.client import cluster
    from serviceloop.simulation import until

    verified = [s.order_id for s in world.scripts.values() if s.outcome == "verified"]
    pending = set(verified)
    with cluster(timeout=300) as rpc:
        started = time.monotonic()

        def decided() -> bool:
            for order_id in list(pending):
                claims = rpc.settlement.claims_for_order(order_id)
                if claims and claims[-1]["callback"] == "verified":
                    pending.discard(order_id)
            return not pending

        try:
            until(decided, 120, "settlement to decide every verified claim", every=1.0)
        except TimeoutError:
            log(f"  settlement: {len(pending)} verified orders' claims still not decided as "
                "verified")
        lag = time.monotonic() - started
        undecided = [{"order_id": order_id,
                      "claims": [(c["version"], c["callback"])
                                 for c in rpc.settlement.claims_for_order(order_id)],
                      "tasks": [t["status"] for t in rpc.callback.tasks_for_order(order_id)]}
                     for order_id in sorted(pending)[:5]]
        parked = {service: [{k: m[k] for k in ("consumer", "event_type", "attempts")}
                            | {"error": str(m["error"])[:160]}
                            for m in getattr(rpc, service).parked_messages()]
                  for service in IMPLEMENTED}
        period = world.clock.now().strftime("%Y-%m")
        started = time.monotonic()
        statements = rpc.settlement.run(period)
        run_s = time.monotonic() - started
    log(f"  settlement: {len(verified)} claims decided (checked in {lag:.1f} s), run "
        f"{period} in {run_s:.1f} s")
    return {"claims_checked": len(verified), "check_seconds": lag, "run_seconds": run_s,
            "undecided": len(pending), "undecided_examples": undecided, "parked": parked,
            "statements": len(statements),
            "payable_cents": sum(s["payable_cents"] for s in statements)}


def _result(in_flight: int, warmup_s: float, window: float, loops: list, first: dict,
            last: dict, samples: list[dict], raw: dict, drained: dict, settled: dict,
            world, started: float, pool_left: int) -> dict:  # noqa: ANN001
    count = len(loops)
    latencies = [s.finished - s.created for s in loops]
    stages = {"intake and dispatch (created -> a partner sees it)": ("created", "assigned"),
              "partner (sees it -> completed over the gateway)": ("assigned", "completed"),
              "to callback (completed -> an agent has the task)": ("completed", "task"),
              "agent (task -> verified)": ("task", "finished")}
    stage_ms = {}
    for name, (a, b) in stages.items():
        spans = [_mark(s, b) - _mark(s, a) for s in loops if _mark(s, a) and _mark(s, b)]
        stage_ms[name] = {"p50_ms": percentile(spans, 50) * 1000 if spans else None,
                          "mean_ms": sum(spans) / len(spans) * 1000 if spans else None}
    used = {role: cpu_between(first, last, role) for role in last}
    cpu = {role: {"cores": seconds / window, "ms_per_loop": seconds / max(count, 1) * 1000}
           for role, seconds in used.items()}
    busiest = max((r for r in cpu if r not in (BROKER, POSTGRES)), key=lambda r: cpu[r]["cores"])
    half = len(samples) // 2
    early, late = samples[:half] or samples, samples[half:] or samples
    return {"bench": "loop", "backend": "postgres", "in_flight": in_flight,
            "warmup_s": warmup_s, "window_s": window, "loops": count,
            "value": count / window, "unit": "loops/s",
            "p50_ms": percentile(latencies, 50) * 1000 if latencies else None,
            "p99_ms": percentile(latencies, 99) * 1000 if latencies else None,
            "stages": stage_ms, "cpu": cpu, "busiest_process": busiest,
            "cpu_cores_total": sum(c["cores"] for c in cpu.values()),
            "queued_early": median([s["queued"] for s in early]) if samples else None,
            "queued_late": median([s["queued"] for s in late]) if samples else None,
            "rss_early_mib": median([s["rss_mib"] for s in early]) if samples else None,
            "rss_late_mib": median([s["rss_mib"] for s in late]) if samples else None,
            "samples": samples, "raw": raw, "drain": drained, "settlement": settled,
            "orders_opened": len(world.scripts), "problems": world.problems[:20],
            "partner_polls_per_loop": world.polls / max(len(world.scripts), 1),
            "seconds": time.monotonic() - started,
            "products_ran_out": not pool_left,
            "baseline": raw["rpc"]["per_s"], "ratio": (count / window) / LOOP_TARGET_PER_S}


def _mark(script, name: str) -> float | None:  # noqa: ANN001
    return {"created": script.created, "finished": script.finished}.get(name) \
        or script.marks.get(name)
