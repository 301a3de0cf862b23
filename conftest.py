# Patch before anything imports socket, threading or psycopg2: nameko's pytest plugin no
# longer does, and a blocking driver would stall every green thread.
import warnings

warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")

import eventlet  # noqa: E402

eventlet.monkey_patch()
