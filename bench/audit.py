"""`audit verify` and `audit loops` over a million events, read through the services' RPC.

The logs are grown from a template captured from the real running services
(bench/data/audit_template.json, see bench/capture_audit_template.py): one repair order's
whole life (created → dispatched → completed over the gateway → verified → claimed → paid
in a closed period → closed) and one order left open after assignment, in all four logs.
Each copy gets its own ids and is appended, event by event and in causal order across the
four logs, through the kernel's `EventStore.append` (contracts checked, hash chain, the
append-only triggers) — the services' own write path, not rows inserted behind the log's
back; the services' read models are not built (the auditor never reads them). Partners'
months are closed at the end: one `period_closed` per partner listing its copies' claims,
then each closed order's `order_settled`, caused by it.

Then the four services run as `nameko run` processes on those databases (their consumers'
positions set to the producers' heads first, so they do not replay the generated events at
start), and the auditor, in this process, does what the CLI does: `audit verify` reads every
log through `events_since` (packed pages) and checks each page as it arrives
(`serviceloop.audit.verify_over_rpc`, the `stream_*` figures); the logs are also read as dicts
(`read_logs`) and checked in memory (`verify`, the `verify_*` figures, as measured before).
`audit loops` runs on logs holding the target's number of orders (a quarter of the events
asked for: 250,000 for 1,000,000): the same copies topped up with copies of the open order
alone (7 events, a short life), read as the CLI reads them (only the kinds of event loops
looks at, chosen by the services) and the open loops listed. The answers are checked: no
breaks, and exactly the generated open orders are open.

Generated SQLite logs are kept under var/bench-audit/, keyed by the template, the sizes, this
generator's version and the services' migrations, and copied from there on the next run
(generating 1,000,000 events takes minutes); PostgreSQL logs are generated every run.

    python -m bench.audit --events 1000000 [--backend sqlite|postgres]
"""

from __future__ import annotations

import warnings

warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")

import eventlet  # noqa: E402

eventlet.monkey_patch()  # nameko's RPC proxy, and psycopg2 waiting cooperatively

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from contextlib import ExitStack, contextmanager  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402
from time import perf_counter  # noqa: E402

from bench.common import fresh_database, fresh_vhost  # noqa: E402
from serviceloop.cli.operations import die_with_parent  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = Path(__file__).resolve().parent / "data" / "audit_template.json"
SERVICES = ("orders", "dispatch", "callback", "settlement")
CLASSES = {"orders": "services.orders.service:OrdersService",
           "dispatch": "services.dispatch.service:DispatchService",
           "callback": "services.callback.service:CallbackService",
           "settlement": "services.settlement.service:SettlementService"}
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
PARTNERS = 50
COMMIT_EVERY = 400  # copies per transaction


# -- generation ----------------------------------------------------------------------------


class Template:
    """The captured logs, split into set-up, per-copy and period-closing events."""

    def __init__(self, path: Path = TEMPLATE) -> None:
        from serviceloop import audit

        captured = json.loads(path.read_text())
        self.partner = captured["partner_id"]
        self.closed_order, self.open_order = captured["closed_order"], captured["open_order"]
        events = [{**e, "source": s} for s, log in captured["logs"].items() for e in log]
        ordered = audit.causal_order(events)
        # customers (their correlation id) and orders belong to a copy; the rest is set-up
        copy_ids = {self.closed_order, self.open_order} | {
            e["correlation_id"] for e in ordered if e["event_type"] == "customer_registered"}
        self.setup = [e for e in ordered if e["correlation_id"] not in copy_ids
                      and e["event_type"] != "period_closed"]
        self.per_copy = [e for e in ordered if e["correlation_id"] in copy_ids
                         and e["event_type"] != "order_settled"]
        (self.period_closed,) = [e for e in ordered if e["event_type"] == "period_closed"]
        (self.order_settled,) = [e for e in ordered if e["event_type"] == "order_settled"]
        self.event_ids = {e["event_id"] for e in events}
        self.events_per_copy = len(self.per_copy) + 1  # + order_settled
        # the open order alone, with its customer: an order of a short life, for loops
        (created,) = [e for e in ordered if e["event_type"] == "order_created"
                      and e["correlation_id"] == self.open_order]
        open_ids = {self.open_order, created["payload"]["customer_id"]}
        self.open_only = [e for e in self.per_copy if e["correlation_id"] in open_ids]


def partner_id(k: int) -> str:
    return f"p-{k:012x}"


def _renamer(template: Template, copy: int, appended: dict[str, str], partner: str):  # noqa: ANN202
    def swap(match: re.Match) -> str:
        old = match.group(0)
        if old in appended:  # an event of this copy (or of the set-up): its new id
            return appended[old]
        if old in template.event_ids:
            raise ValueError(f"template event {old} referenced before it was appended")
        return old[:24] + f"{copy:012x}"  # an order, customer, product or task: this copy's

    def rename(text: str) -> str:
        return UUID.sub(swap, text).replace(template.partner, partner)

    return rename


def _append(stores, conns, event: dict, rename, payload: dict | None = None) -> str:  # noqa: ANN001
    """Append this copy of template `event` (its payload renamed, unless given)."""
    from serviceloop.clock import parse_time
    from serviceloop.eventstore import NewEvent

    source = event["source"]
    if payload is None:
        payload = json.loads(rename(json.dumps(event["payload"], ensure_ascii=False)))
    (envelope,) = stores[source].append(
        conns[source], rename(event["stream_id"]), event["stream_version"] - 1,
        [NewEvent(event["event_type"], payload, event["schema_version"])],
        occurred_at=parse_time(event["occurred_at"]),
        correlation_id=rename(event["correlation_id"]),
        causation_id=rename(event["causation_id"]), actor=rename(event["actor"]))
    return envelope.event_id


def generate(urls: dict[str, str], copies: int, progress=None,  # noqa: ANN001
             open_only: int = 0) -> dict:
    """Append `copies` copies of the template to the four logs, then `open_only` copies of
    its open order alone (with its customer: 7 events, for `audit loops` over many orders);
    returns what was made."""
    from serviceloop.db import make_engine
    from serviceloop.eventstore import EventStore
    from serviceloop.services import service_metadata

    template = Template()
    engines = {s: make_engine(urls[s], pool_size=1) for s in SERVICES}
    stores = {s: EventStore(service_metadata(s).tables["events"]) for s in SERVICES}
    setup_ids: dict[str, str] = {}
    claims: dict[str, list[tuple[int, dict[str, str]]]] = defaultdict(list)
    open_orders = []
    with ExitStack() as stack:
        conns = {s: stack.enter_context(engines[s].connect()) for s in SERVICES}

        def commit() -> None:
            for conn in conns.values():
                conn.commit()

        for k in range(PARTNERS):
            rename = _renamer(template, 10**9 + k, setup_ids, partner_id(k))
            for event in template.setup:
                if event["event_type"].startswith(("rate_card", "price_list")) and k:
                    continue  # one rate card and price list for everybody
                setup_ids[event["event_id"]] = _append(stores, conns, event, rename)
        commit()
        for copy in range(copies):
            appended = dict(setup_ids)
            partner = partner_id(copy % PARTNERS)
            rename = _renamer(template, copy, appended, partner)
            for event in template.per_copy:
                appended[event["event_id"]] = _append(stores, conns, event, rename)
            claims[partner].append((copy, appended))
            open_orders.append(rename(template.open_order))
            if (copy + 1) % COMMIT_EVERY == 0:
                commit()
                if progress:
                    progress(copy + 1)
        commit()
        for extra in range(open_only):
            appended = dict(setup_ids)
            rename = _renamer(template, copies + extra, appended, partner_id(extra % PARTNERS))
            for event in template.open_only:
                appended[event["event_id"]] = _append(stores, conns, event, rename)
            open_orders.append(rename(template.open_order))
            if (extra + 1) % (4 * COMMIT_EVERY) == 0:
                commit()
                if progress:
                    progress(copies + extra + 1)
        commit()
        # each partner's month closed, then each of its paid orders closed by orders
        for partner, own in sorted(claims.items()):
            closing = dict(setup_ids)
            lines, total = [], 0
            line_template = template.period_closed["payload"]["lines"][0]
            for copy, appended in own:
                rename = _renamer(template, copy, appended, partner)
                lines.append(json.loads(rename(json.dumps(line_template))))
                total += line_template["payable_cents"]
            payload = {**template.period_closed["payload"], "lines": lines,
                       "payable_cents": total, "partner_id": partner}
            rename = _renamer(template, 0, closing, partner)
            period_id = _append(stores, conns, template.period_closed, rename, payload)
            for copy, appended in own:
                appended[template.period_closed["event_id"]] = period_id
                rename = _renamer(template, copy, appended, partner)
                _append(stores, conns, template.order_settled, rename)
            commit()
    heads = {}
    for service, engine in engines.items():
        with engine.connect() as conn:
            heads[service] = stores[service].head(conn)[0]
        engine.dispose()
    return {"copies": copies, "orders": 2 * copies + open_only, "open_orders": open_orders,
            "events": sum(heads.values()), "heads": heads}


def settle_consumers(urls: dict[str, str], heads: dict[str, int]) -> None:
    """Consumers start where the producers are: they do not replay the generated events."""
    from serviceloop.clock import isoformat
    from serviceloop.db import make_engine, save_position

    now = isoformat(datetime.now(UTC))
    for service in SERVICES:
        engine = make_engine(urls[service], pool_size=1)
        with engine.begin() as conn:
            for source in SERVICES:
                if source != service:
                    save_position(conn, "consumer_positions", source, heads[source], now)
        engine.dispose()


# -- measurement ---------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_services(urls: dict[str, str], amqp_uri: str) -> list[subprocess.Popen]:
    env = {**os.environ, "AMQP_URI": amqp_uri, "PYTHONWARNINGS": "ignore",
           "CATCH_UP_INTERVAL": "3600", "LOG_LEVEL": "WARNING",
           **{f"DATABASE_URL_{s.upper()}": urls[s] for s in SERVICES}}
    bin_dir = Path(sys.executable).parent
    return [subprocess.Popen(
        [str(bin_dir / "nameko"), "run", "--config", str(ROOT / "config.yaml"), CLASSES[s]],
        cwd=ROOT, env={**env, "WEB_SERVER_PORT": str(_free_port())},
        stdout=subprocess.DEVNULL, start_new_session=True,
        preexec_fn=die_with_parent) for s in SERVICES]  # not outliving a killed bench


def stop_services(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


@contextmanager
def services_on(urls: dict[str, str], made: dict) -> Iterator[tuple]:
    """The four services running on these logs (their consumers settled at the producers'
    heads), each answering: `(rpc, processes)`."""
    from nameko.standalone.rpc import ClusterRpcProxy

    settle_consumers(urls, made["heads"])
    with fresh_vhost() as amqp_uri:
        processes = start_services(urls, amqp_uri)
        try:
            with ClusterRpcProxy({"AMQP_URI": amqp_uri}, timeout=600) as rpc:
                deadline = time.monotonic() + 90
                while True:  # every service answering
                    try:
                        for service in SERVICES:
                            getattr(rpc, service).events_since(0, 1)
                        break
                    except Exception:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.5)
                yield rpc, processes
        finally:
            stop_services(processes)


def measure_verify(rpc, processes: list[subprocess.Popen], made: dict) -> dict:  # noqa: ANN001
    """`audit verify` end to end (each page checked as it arrives, `verify_over_rpc`), with
    the CPU seconds of the auditor and of the four services; then, as measured before, the
    logs read as dicts (`read_logs`) and checked in memory (`verify`)."""
    from serviceloop import audit

    services_cpu, auditor_cpu = _cpu_seconds(processes), time.process_time()
    started = perf_counter()
    verified = audit.verify_over_rpc(rpc, SERVICES)
    stream_seconds = perf_counter() - started
    stream_cpu = {"auditor": time.process_time() - auditor_cpu,
                  "services": _cpu_seconds(processes) - services_cpu}
    assert verified.breaks == [], verified.breaks[:5]
    assert sum(verified.events.values()) == made["events"], verified.events
    started = perf_counter()
    logs = audit.read_logs(rpc, SERVICES)
    read_seconds = perf_counter() - started
    events = sum(len(log) for log in logs.values())
    assert events == made["events"], (events, made["events"])
    started = perf_counter()
    breaks = audit.verify(logs)
    verify_seconds = perf_counter() - started
    assert breaks == [], breaks[:5]
    return {"events": events, "orders": made["orders"],
            # `serviceloop audit verify`: reading and checking, overlapped
            "stream_seconds": round(stream_seconds, 2),
            "stream_events_per_s": round(events / stream_seconds),
            "stream_auditor_cpu_seconds": round(stream_cpu["auditor"], 2),
            "stream_services_cpu_seconds": round(stream_cpu["services"], 2),
            # the logs read as dicts, then checked in memory (forked)
            "read_seconds": round(read_seconds, 2),
            "read_events_per_s": round(events / read_seconds),
            "verify_seconds": round(verify_seconds, 2),
            "verify_events_per_s": round(events / verify_seconds),
            "verify_with_read_events_per_s": round(events / (read_seconds + verify_seconds))}


def measure_loops(rpc, made: dict) -> dict:  # noqa: ANN001
    """`audit loops` as the CLI does it: only the kinds of event it looks at read (the
    services send only those) and the open loops found; exactly the generated open orders."""
    from serviceloop import audit

    started = perf_counter()
    logs = audit.read_logs(rpc, SERVICES, event_types=audit.LOOP_EVENT_TYPES)
    read_seconds = perf_counter() - started
    started = perf_counter()
    loops = audit.open_loops(logs, datetime.now(UTC))
    loops_seconds = perf_counter() - started
    found, wanted = {loop["order_id"] for loop in loops}, set(made["open_orders"])
    assert found == wanted, (len(found), len(wanted), loops[:3], sorted(wanted - found)[:3])
    assert {loop["missing"] for loop in loops} == {"never_completed"}
    return {"loops_orders": made["orders"], "loops_events": made["events"],
            "open_loops": len(loops), "loops_seconds": round(loops_seconds, 2),
            "loops_read_seconds": round(read_seconds, 2),
            "loops_with_read_seconds": round(read_seconds + loops_seconds, 2)}


def _cpu_seconds(processes: list[subprocess.Popen]) -> float:
    """User and system CPU seconds the services' processes have used so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for process in processes:
        fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


CACHE = ROOT / "var" / "bench-audit"
GENERATION = 1  # bump when generate() makes different logs from the same template


def _cache_folder(backend: str, copies: int, open_only: int) -> Path | None:
    """Where generated SQLite logs of this template, size and schema are kept between runs
    (var/, not in git); None for PostgreSQL (generated afresh every run)."""
    if backend != "sqlite":
        return None
    key = hashlib.sha256(TEMPLATE.read_bytes())
    key.update(f"{GENERATION}:{copies}:{open_only}".encode())
    for migration in sorted(ROOT.glob("services/*/migrations/versions/*.py")):
        key.update(migration.read_bytes())
    size = f"{copies}+{open_only}" if open_only else f"{copies}"
    return CACHE / f"{size}-{key.hexdigest()[:12]}"


def _sqlite_path(url: str) -> Path:
    return Path(url.removeprefix("sqlite:///"))


def logs_generated(urls: dict[str, str], backend: str, copies: int,
                   progress=print, open_only: int = 0) -> dict:  # noqa: ANN001
    """The four databases filled with `copies` copies of the template: copied from the cache
    when this template, size and schema were generated before (SQLite), else generated (and
    cached). What was made, with the seconds generating took (`from_cache`: in an earlier
    run)."""
    cached = _cache_folder(backend, copies, open_only)
    if cached is not None and (cached / "made.json").exists():
        for service in SERVICES:
            shutil.copyfile(cached / f"{service}.db", _sqlite_path(urls[service]))
        progress(f"  audit: {copies:,} copies from {cached}")
        return {**json.loads((cached / "made.json").read_text()), "from_cache": str(cached)}
    started = perf_counter()
    total = copies + open_only
    made = generate(urls, copies, lambda n: progress(f"  audit: {n:,}/{total:,} copies"),
                    open_only)
    made["generate_seconds"] = perf_counter() - started
    if cached is not None:  # generate() disposed of its engines: each log is one file now
        filling = cached.with_name(cached.name + ".tmp")
        shutil.rmtree(filling, ignore_errors=True)
        filling.mkdir(parents=True)
        for service in SERVICES:
            shutil.copyfile(_sqlite_path(urls[service]), filling / f"{service}.db")
        (filling / "made.json").write_text(json.dumps(made))
        filling.rename(cached)
    return made


def bench_audit(events: int, backend: str = "sqlite", progress=print,  # noqa: ANN001
                loop_orders: int | None = None) -> dict:
    """`audit verify` over logs of `events` events; `audit loops` over `loop_orders` orders
    (default: the target's shape, a quarter of `events`), the same logs topped up with
    orders of a short life (the open order alone) to reach that many."""
    copies = max(1, events // Template().events_per_copy)
    loop_orders = events // 4 if loop_orders is None else loop_orders
    with ExitStack() as stack:
        urls = {s: stack.enter_context(fresh_database(backend, service=s)) for s in SERVICES}
        made = logs_generated(urls, backend, copies, progress)
        with services_on(urls, made) as (rpc, processes):
            result = measure_verify(rpc, processes, made)
            result["auditor_peak_rss_mib"] = round(
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
            if loop_orders <= made["orders"]:
                result.update(measure_loops(rpc, made))
    if "loops_orders" not in result:
        with ExitStack() as stack:
            urls = {s: stack.enter_context(fresh_database(backend, service=s))
                    for s in SERVICES}
            for_loops = logs_generated(urls, backend, copies, progress,
                                       open_only=loop_orders - 2 * copies)
            with services_on(urls, for_loops) as (rpc, _):
                result.update(measure_loops(rpc, for_loops))
            result["loops_generate_seconds"] = round(for_loops["generate_seconds"], 1)
    return {"backend": backend, "generate_seconds": round(made["generate_seconds"], 1),
            "generate_events_per_s": round(made["events"] / made["generate_seconds"]),
            "logs_from_cache": made.get("from_cache"), **result}


def hash_baseline(count: int = 200_000) -> float:
    """SHA-256 alone over documents the size of the template's: events/s."""
    import hashlib

    template = Template()
    documents = [json.dumps(e, sort_keys=True, ensure_ascii=False).encode()
                 for e in template.per_copy]
    documents = (documents * (count // len(documents) + 1))[:count]
    started = perf_counter()
    for document in documents:
        hashlib.sha256(document).hexdigest()
    return count / (perf_counter() - started)


def bench_audit_results(events: int, backend: str, log=print) -> list[dict]:  # noqa: ANN001
    """Two rows for bench/run.py: verify, and loops."""
    result = bench_audit(events, backend, log)
    baseline = hash_baseline()
    verify = {**result, "bench": "audit_verify", "value": result["verify_events_per_s"],
              "baseline": baseline, "ratio": result["verify_events_per_s"] / baseline}
    # measured at the target's number of orders (in more events than its shape's: each
    # order has a real life); below it (a quick run), scaled by the orders
    at_target = result["loops_with_read_seconds"] * max(1.0, 250_000 / result["loops_orders"])
    loops = {**result, "bench": "audit_loops", "value": result["loops_with_read_seconds"],
             "orders": result["loops_orders"], "seconds_per_250k": at_target}
    return [verify, loops]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    args = parser.parse_args()
    print(json.dumps(bench_audit(args.events, args.backend), indent=2))


if __name__ == "__main__":
    main()
