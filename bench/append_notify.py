"""What telling a relay about an append costs the append: one committed append on PostgreSQL
(`EventStore.append(commit=True)`), three databases side by side, the variants taking turns
append by append.

`none`: no notification (what the relay then needs: polling); `trigger`: a statement-level
AFTER INSERT trigger on `events` calls `pg_notify` (`eventstore.add_append_notify`,
which the migrations apply);
`in append`: `SELECT pg_notify(...)` sent in the append's own round trip (through the
read-model hook, which the store sends ahead of its lock). A relay LISTENs on each database
and drains its notifications, as in production. Run with synchronous_commit on (as in
production) and off (the statements' own cost, without the WAL flush's noise).

    .venv/bin/python -m bench.append_notify [appends]
"""

from __future__ import annotations

import sys
from contextlib import ExitStack

from bench.append_commit import report, timed_append
from bench.common import fresh_database
from serviceloop.db import make_engine, sql
from serviceloop.eventstore import notify_channel

CHANNEL = notify_channel("orders")


def _notify_in_append(conn, _drafts) -> None:  # noqa: ANN001
    sql(conn, "SELECT pg_notify(?, '')", (CHANNEL,))


def _listener(engine):  # noqa: ANN001, ANN202
    args, kwargs = engine.dialect.create_connect_args(engine.url)
    raw = engine.dialect.connect(*args, **kwargs)
    raw.autocommit = True
    raw.cursor().execute(f"LISTEN {CHANNEL}")
    return raw


def main(appends: int = 2000) -> None:
    for flush in ("on", "off"):
        print(f"synchronous_commit {flush}:")
        _compare(appends, flush)


def _compare(appends: int, flush: str) -> None:
    with ExitStack() as stack:
        engines, listeners, notified = {}, [], {}
        for name in ("none", "trigger", "in append"):
            url = stack.enter_context(fresh_database("postgres"))
            engines[name] = make_engine(
                url, pool_size=2, connect_args={"options": f"-c synchronous_commit={flush}"})
            stack.callback(engines[name].dispose)
            if name != "none":
                listeners.append((name, _listener(engines[name])))
                notified[name] = 0
        for name in ("none", "in append"):  # the migration gave every log the trigger
            with engines[name].begin() as conn:
                conn.exec_driver_sql("DROP TRIGGER events_notify_relay ON events")
        variants = {"none": lambda i: timed_append(engines["none"], i),
                    "trigger": lambda i: timed_append(engines["trigger"], i),
                    "in append": lambda i: timed_append(engines["in append"], i,
                                                                project=_notify_in_append)}
        times: dict[str, list[float]] = {name: [] for name in variants}
        for index in range(200 + appends):
            for name, measure in variants.items():
                seconds = measure(index)
                if index >= 200:  # after a warm-up
                    times[name].append(seconds)
            for name, raw in listeners:
                raw.poll()
                notified[name] += len(raw.notifies)
                raw.notifies.clear()
        for _, raw in listeners:
            raw.close()
    report(times, "none", {name: f"{count} notifications" for name, count in notified.items()})


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
