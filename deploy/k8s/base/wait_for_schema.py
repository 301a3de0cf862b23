"""Wait until a service's database is at the alembic head this image knows, then exit 0.

Run as each Deployment's initContainer: `python wait_for_schema.py orders`. The schema is
changed only by the service's migration Job; pods of a new image wait here until it is done,
so no code runs against a schema older than it expects. It waits through a database that is
not up yet, an empty one and one at an older revision alike. By default it waits for ever
(the pod stays in Init and says why in its log); `--timeout SECONDS` gives up with exit 1.
"""

import argparse
import sys
import time

from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from serviceloop.db import make_engine
from serviceloop.migrate import alembic_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("service")
    parser.add_argument("--timeout", type=float, default=0,
                        help="give up (exit 1) after this many seconds; 0 waits for ever")
    parser.add_argument("--interval", type=float, default=3, help="seconds between checks")
    args = parser.parse_args(argv)
    config = alembic_config(args.service)
    expected = set(ScriptDirectory.from_config(config).get_heads())
    engine = make_engine(config.get_main_option("sqlalchemy.url"), pool_size=1)
    deadline = time.monotonic() + args.timeout if args.timeout > 0 else None
    try:
        while True:
            try:
                with engine.connect() as connection:
                    current = set(MigrationContext.configure(connection).get_current_heads())
            except Exception as error:  # noqa: BLE001 - the database may not be up yet
                current = set()
                why = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:200]}"
            else:
                why = f"at {sorted(current) or 'nothing'}"
            if current == expected:
                print(f"{args.service} schema at head {sorted(expected)}", flush=True)
                return 0
            if deadline is not None and time.monotonic() >= deadline:
                print(f"{args.service} schema not at head {sorted(expected)} after "
                      f"{args.timeout:g} s ({why}); giving up", flush=True)
                return 1
            print(f"{args.service} schema not at head {sorted(expected)} yet ({why}); waiting",
                  flush=True)
            time.sleep(args.interval)
    finally:
        engine.dispose()


if __name__ == "__main__":
    sys.exit(main())
