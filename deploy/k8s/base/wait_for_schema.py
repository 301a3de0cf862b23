"""Wait until a service's database is at the alembic head this image knows, then exit 0.

Run as each Deployment's initContainer: `python wait_for_schema.py orders`. The schema is
changed only by the service's migration Job; pods of a new image wait here until it is done,
so no code runs against a schema older than it expects.
"""

import sys
import time

from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from serviceloop.db import make_engine
from serviceloop.migrate import alembic_config

service = sys.argv[1]
expected = set(ScriptDirectory.from_config(alembic_config(service)).get_heads())
engine = make_engine(alembic_config(service).get_main_option("sqlalchemy.url"), pool_size=1)
while True:
    try:
        with engine.connect() as connection:
            current = set(MigrationContext.configure(connection).get_current_heads())
    except Exception as error:  # noqa: BLE001 - the database may not be up yet
        current, why = set(), f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
    else:
        why = f"at {sorted(current) or 'nothing'}"
    if current == expected:
        print(f"{service} schema at head {sorted(expected)}", flush=True)
        break
    print(f"{service} schema not at head {sorted(expected)} yet ({why}); waiting", flush=True)
    time.sleep(3)
