"""Where does a `create_order` call spend its CPU? Not part of `make bench`.

Usage: python -m bench.profile_rpc [--backend postgres] [--callers 16] [--calls 1500]
           [--method create_order|echo]
Samples the whole process (nameko service, broker client and callers all run in it).
"""

import warnings

warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")

import eventlet  # noqa: E402

eventlet.monkey_patch()

import argparse  # noqa: E402
import uuid  # noqa: E402

from bench.common import fresh_database, fresh_vhost  # noqa: E402
from bench.loop import BROKER, POSTGRES, ProcessWatch, cpu_between  # noqa: E402
from bench.rpc import (  # noqa: E402
    call_concurrently,
    order_payload,
    register_products,
    running_services,
    service_config,
)
from bench.sampler import Sampler  # noqa: E402

PROJECT = ("serviceloop/", "services/", "contracts/", "bench/rpc", "sqlalchemy/engine/base.py",
           "sqlalchemy/engine/default.py", "sqlalchemy/sql/compiler.py", "marshmallow/schema",
           "nameko/", "kombu/", "amqp/", "json/", "stdlib/json", "stdlib/uuid")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_rpc")
    parser.add_argument("--backend", default="postgres")
    parser.add_argument("--callers", type=int, default=16)
    parser.add_argument("--calls", type=int, default=1500)
    parser.add_argument("--method", default="create_order", choices=["create_order", "echo"])
    parser.add_argument("--top", type=int, default=25, help="lines in each part of the report")
    args = parser.parse_args(argv)
    with fresh_database(args.backend) as url, fresh_vhost() as amqp_uri:
        config = service_config(amqp_uri, url)
        with running_services(config):
            products = register_products(config, args.calls + 100)
            payloads = [order_payload(p) for p in products]
            service, method = "orders", "create_order"
            if args.method == "echo":
                payloads = [order_payload(str(uuid.uuid4())) for _ in payloads]
                service, method = "bench_noop", "echo"
            call_concurrently(config, service, method, payloads[:100], args.callers)
            # the broker's and the database's CPU meanwhile (ProcessWatch: the loop bench's)
            watch = ProcessWatch(0, [url.rsplit("/", 1)[1]] if "postgresql" in url else [])
            first = watch.sample()
            with Sampler() as sampler:
                result = call_concurrently(config, service, method, payloads[100:],
                                           args.callers)
            last = watch.sample()
            spent = {"broker": cpu_between(first, last, BROKER),
                     "postgres": cpu_between(first, last, POSTGRES)}
    print(f"{method}: {result['per_s']:.0f}/s, p50 {result['p50_ms']:.1f} ms, "
          f"p99 {result['p99_ms']:.1f} ms over {result['calls']} calls; process CPU "
          f"{result['process_cpu_ms_per_call']:.2f} ms/call, busy {result['process_cpu_busy']:.0%}")
    per_call = {name: seconds * 1000 / result["calls"] for name, seconds in spent.items()}
    print("CPU of the other processes meanwhile: "
          + ", ".join(f"{name} {ms:.2f} ms/call" for name, ms in per_call.items()))
    print(sampler.report(top=args.top, inclusive_filter=PROJECT,
                         cpu_ms_per_call=result["process_cpu_ms_per_call"]))


if __name__ == "__main__":
    main()
