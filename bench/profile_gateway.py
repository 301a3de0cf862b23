"""Where does a signed gateway request spend its CPU? Not part of `make bench`.

Usage: python -m bench.profile_gateway [--backend postgres] [--partners 16] [--requests 100]
           [--operation get|complete|bare_get|bare_post]
Samples the whole process (dispatch, the bare service and the partners' clients all run in it),
and on PostgreSQL counts the waits for the database per request (each round trip is at least
one: psycopg2 hands every wait to eventlet's callback; dispatch's timers add a few).
"""

import warnings

warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")

import eventlet  # noqa: E402

eventlet.monkey_patch()

import argparse  # noqa: E402

import psycopg2.extensions  # noqa: E402

from bench.common import fresh_database, fresh_vhost  # noqa: E402
from bench.gateway import (  # noqa: E402
    Partner,
    bare_get,
    bare_post,
    free_port,
    register_partners,
    running_services,
    seed_orders,
    send_concurrently,
    service_config,
    signed_complete,
    signed_get,
)
from bench.sampler import Sampler  # noqa: E402
from serviceloop.migrate import declare_broker_topology  # noqa: E402

PROJECT = ("serviceloop/", "services/", "contracts/", "bench/gateway", "sqlalchemy/engine/base.py",
           "sqlalchemy/engine/default.py", "sqlalchemy/sql/compiler.py", "sqlalchemy/pool",
           "marshmallow/schema", "nameko/", "werkzeug/", "eventlet/wsgi", "requests/",
           "urllib3/", "psycopg2/", "json/", "stdlib/json", "stdlib/uuid", "stdlib/hmac")
WARMUP = 10


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_gateway")
    parser.add_argument("--backend", default="postgres")
    parser.add_argument("--partners", type=int, default=16)
    parser.add_argument("--requests", type=int, default=100, help="per partner")
    parser.add_argument("--operation", default="get",
                        choices=["get", "complete", "bare_get", "bare_post"])
    args = parser.parse_args(argv)
    with fresh_database(args.backend, service="dispatch") as url, fresh_vhost() as amqp_uri:
        declare_broker_topology(amqp_uri)
        config = service_config(amqp_uri, url, free_port())
        with running_services(config) as (gateway_url, bare_url):
            credentials = register_partners(config, args.partners)
            orders = seed_orders(url, [pid for pid, _ in credentials], WARMUP + args.requests)
            partners = [Partner(pid, secret, tuple(orders[pid])) for pid, secret in credentials]

            def calls(first: int, count: int) -> list[list]:
                make = {"get": lambda p, o: signed_get(gateway_url, p, o),
                        "complete": lambda p, o: signed_complete(gateway_url, p, o),
                        "bare_get": lambda p, o: bare_get(bare_url),
                        "bare_post": lambda p, o: bare_post(bare_url)}[args.operation]
                return [[make(p, p.orders[n]) for n in range(first, first + count)]
                        for p in partners]

            def ok(status: int, _body: bytes) -> bool:
                return status == 200

            send_concurrently(calls(0, WARMUP), ok)
            timed = calls(WARMUP, args.requests)
            waits = count_database_waits()
            with Sampler() as sampler:
                result = send_concurrently(timed, ok)
            waits = waits()
    print(f"{args.operation}: {result['per_s']:.0f}/s, p50 {result['p50_ms']:.1f} ms, "
          f"p99 {result['p99_ms']:.1f} ms over {result['requests']} requests; process CPU "
          f"{result['process_cpu_ms_per_request']:.2f} ms/request, "
          f"busy {result['process_cpu_busy']:.0%}")
    if args.backend == "postgres":
        print(f"database waits (>= round trips): {waits / result['requests']:.2f} per request")
    print(sampler.report(top=60, inclusive_filter=PROJECT,
                         cpu_ms_per_call=result["process_cpu_ms_per_request"]))


def count_database_waits():  # noqa: ANN201
    """Count psycopg2's waits from now on; the returned function stops and gives the count."""
    wait = psycopg2.extensions.get_wait_callback()
    waits = 0

    def counting(connection):  # noqa: ANN001, ANN202
        nonlocal waits
        waits += 1
        return wait(connection)

    psycopg2.extensions.set_wait_callback(counting)

    def stop() -> int:
        psycopg2.extensions.set_wait_callback(wait)
        return waits

    return stop


if __name__ == "__main__":
    main()
