"""`make bench`: every benchmark beside its baseline, results in bench/results/latest.*.

Usage: python -m bench.run [--quick] [--only append,replay,rpc,gateway,settlement,audit,loop]
                           [--backends sqlite,postgres] [--output latest]
                           [--settlement-sizes 10000,30000,100000]
"""

# nameko needs eventlet's patches, and psycopg2 only waits cooperatively once patched:
# patch before anything imports socket, threading or psycopg2.
import warnings

warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")

import eventlet  # noqa: E402

eventlet.monkey_patch()

import argparse  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

from bench import report  # noqa: E402
from bench.common import BACKENDS  # noqa: E402
from bench.eventstore import bench_append, bench_replay  # noqa: E402

CATALOG_FILE = Path(__file__).resolve().parent.parent / "services" / "orders" / "catalog.py"

FULL = {"repetitions": 3, "append_events": 1000, "append_batched_events": 2000,
        "replay_events": 200_000, "rpc_plan": [(1, 500), (16, 2000)], "rpc_warmup": 100,
        "rpc_rounds": 3, "gateway_partners": 16, "gateway_requests": 100,
        "gateway_warmup": 10, "gateway_rounds": 3,
        "settlement_sizes": [10_000, 30_000, 100_000], "audit_events": 1_000_000,
        "loop": {"in_flight": 64, "warmup_s": 30, "measure_s": 300, "sample_s": 10}}
QUICK = {"repetitions": 3, "append_events": 200, "append_batched_events": 400,
         "replay_events": 20_000, "rpc_plan": [(1, 100), (16, 400)], "rpc_warmup": 20,
         "rpc_rounds": 1, "gateway_partners": 16, "gateway_requests": 20,
         "gateway_warmup": 5, "gateway_rounds": 1, "settlement_sizes": [1_000, 3_000],
         "audit_events": 50_000,
         "loop": {"in_flight": 32, "warmup_s": 15, "measure_s": 45, "sample_s": 5}}


def log(message: str) -> None:
    print(message, flush=True)


def _guarded(name: str, errors: list[str], action: Callable[..., dict | list[dict]],
             *args: object, **kwargs: object) -> list[dict]:
    """Run one benchmark; a failure is recorded and reported, the others still run."""
    started = time.perf_counter()
    log(f"{name} ...")
    try:
        outcome = action(*args, **kwargs)
        results = outcome if isinstance(outcome, list) else [outcome]
    except Exception as error:  # reported in the results, not swallowed
        traceback.print_exc()
        errors.append(f"{name}: {type(error).__name__}: {error}")
        return []
    log(f"{name}: {time.perf_counter() - started:.1f} s")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke test")
    parser.add_argument("--only", default="append,replay,rpc,gateway,settlement,audit,loop")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--output", default="latest",
                        help="results to bench/results/OUTPUT.{json,md}")
    parser.add_argument("--settlement-sizes", default=None,
                        help="orders per settlement period, comma-separated (overrides the plan)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    settings = dict(QUICK if args.quick else FULL)
    if args.settlement_sizes:
        settings["settlement_sizes"] = [int(n) for n in args.settlement_sizes.split(",")]
    only, backends = args.only.split(","), args.backends.split(",")
    machine = report.machine_info()
    reps = settings["repetitions"]
    started = time.perf_counter()
    results: list[dict] = []
    errors: list[str] = []

    for backend in backends:
        if "append" in only:
            for batch, count in ((1, settings["append_events"]),
                                 (10, settings["append_batched_events"])):
                results += _guarded(f"append {backend} batch={batch}", errors, bench_append,
                                    backend, count=count, batch=batch, repetitions=reps)
        if "replay" in only:
            results += _guarded(f"replay {backend}", errors, bench_replay, backend,
                                total=settings["replay_events"], repetitions=reps, log=log)

    if "rpc" in only:
        if CATALOG_FILE.exists():
            from bench.rpc import bench_rpc

            for backend in ("postgres", "sqlite"):
                if backend in backends:
                    results += _guarded(f"create_order RPC {backend}", errors, bench_rpc,
                                        backend, plan=settings["rpc_plan"],
                                        warmup=settings["rpc_warmup"],
                                        rounds=settings["rpc_rounds"], log=log)
        else:
            errors.append("create_order RPC: services/orders/catalog.py does not exist yet")

    if "gateway" in only:
        from bench.gateway import bench_gateway

        for backend in ("postgres", "sqlite"):
            if backend in backends:
                results += _guarded(f"partner gateway {backend}", errors, bench_gateway,
                                    backend, partners=settings["gateway_partners"],
                                    requests_each=settings["gateway_requests"],
                                    warmup=settings["gateway_warmup"],
                                    rounds=settings["gateway_rounds"], log=log)

    if "settlement" in only:
        from bench.settlement import bench_settlement

        for backend in ("postgres", "sqlite"):
            if backend in backends:
                results += _guarded(f"settlement.run {backend}", errors, bench_settlement,
                                    backend, sizes=settings["settlement_sizes"], log=log)

    if "audit" in only:
        from bench.audit import bench_audit_results

        results += _guarded("audit verify and loops sqlite", errors, bench_audit_results,
                            settings["audit_events"], "sqlite", log)

    if "loop" in only:
        from bench.loop import bench_loop

        results += _guarded("whole loop postgres", errors, bench_loop, **settings["loop"],
                            log=log)

    table = report.write(results, machine=machine, seconds=time.perf_counter() - started,
                         repetitions=reps, errors=errors, settings=settings, name=args.output)
    print()
    print(table)
    print(f"written to {report.RESULTS_DIR}/{args.output}.json and {args.output}.md")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
