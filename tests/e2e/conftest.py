"""One `serviceloop up` shared by the end-to-end tests that drive the command line
(test_cli.py, test_callback_cli.py): started once for the package, on a RabbitMQ virtual host
and databases of its own, so nothing else running meanwhile (test_demo's own system) shares
its queues. The tests share its data: each uses phones, regions and agents of its own, and
leaves no verification task open for the next to pick up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from serviceloop.simulation import CLOCK_OFFSET_FILE, MovableClock
from tests.conftest import POSTGRES_ADMIN_URL, own_vhost
from tests.helpers import wait_until
from tests.integration.dispatch_system import free_port

CLI = [sys.executable, "-m", "serviceloop.cli"]


class RunningSystem:
    """`serviceloop …` against the running system (`system("orders", "get", ID)`), and the
    services' clock (`system.clock.advance(minutes)`), as `serviceloop demo` moves it."""

    def __init__(self, env: dict) -> None:
        self.env = env
        self.clock = MovableClock(Path(env["SERVICELOOP_VAR"]) / CLOCK_OFFSET_FILE)

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([*CLI, *args], env=self.env, capture_output=True, text=True,
                              timeout=60)
        if check and done.returncode != 0:  # say what the command said, not just its code
            raise AssertionError(f"`serviceloop {' '.join(args)}` exited {done.returncode}:\n"
                                 f"{done.stderr[-3000:]}")
        return done


@pytest.fixture(scope="package")
def running_system(tmp_path_factory):
    var = tmp_path_factory.mktemp("e2e-system")
    with own_vhost(f"sl-e2e-{uuid.uuid4().hex[:8]}") as amqp_uri:
        yield from _system(var, amqp_uri)


def _system(var: Path, amqp_uri: str):  # noqa: ANN202 - the fixture's body
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    databases = {s: f"sl_e2e_{s}_{uuid.uuid4().hex[:8]}"
                 for s in ("orders", "dispatch", "settlement")}
    with admin.connect() as conn:
        for name in databases.values():
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    port = free_port()
    env = {**os.environ, "AMQP_URI": amqp_uri,
           "SERVICELOOP_VAR": str(var),
           **{f"DATABASE_URL_{s.upper()}": POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
              for s, name in databases.items()},
           "DATABASE_URL_CALLBACK": f"sqlite:///{var / 'callback.db'}",
           "GATEWAY_PORT": str(port), "SERVICELOOP_GATEWAY": f"http://127.0.0.1:{port}",
           "CALLBACK_PORT": str(free_port()), "PROVIDER_PORT": str(free_port()),
           "ORDERS_PORT": str(free_port()), "SETTLEMENT_PORT": str(free_port()),
           "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    env.pop("SERVICELOOP_CLOCK", None)  # `up` gives the services the movable clock file
    system = RunningSystem(env)
    up = None
    try:
        subprocess.run([*CLI, "migrate"], env=env, check=True, capture_output=True,
                       timeout=120)
        with open(var / "up.log", "wb") as log:  # the services' own account, if one fails
            up = subprocess.Popen([*CLI, "up"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        for group in ("orders catalog", "partner list", "callback supervise"):
            wait_until(lambda g=group: system(*g.split(), "--json", check=False).returncode
                       == 0, timeout=60, interval=0.5, message=f"`{group}` to answer")
        yield system
    finally:
        if up is not None:
            os.killpg(up.pid, signal.SIGTERM)
            up.wait(30)
        with admin.connect() as conn:
            for name in databases.values():
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
