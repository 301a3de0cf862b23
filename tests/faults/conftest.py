"""The whole system as real processes (`serviceloop up` on PostgreSQL, broker traffic through
a TCP proxy the tests can cut), started once for the fault suite, and the means to hurt it:
signals to one process, the proxy, `pg_terminate_backend`.

One system serves every scenario (starting nine processes takes most of a scenario's time on
two cores); each scenario drives its own load and then checks the invariants over every order
the system has ever accepted, so a scenario that left damage behind fails too.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import unquote, urlparse

import pytest
import requests
from sqlalchemy import create_engine, text

from serviceloop import crashpoints
from serviceloop.client import cluster
from serviceloop.config import PROJECT_ROOT
from serviceloop.services import IMPLEMENTED, SERVICE_CLASSES
from tests.conftest import POSTGRES_ADMIN_URL, _pg_url
from tests.faults.load import World, seed_world
from tests.helpers import queue_counts, wait_until
from tests.integration.dispatch_system import free_port
from tests.tcp_proxy import TcpProxy

CLI = [sys.executable, "-m", "serviceloop.cli"]
HEARTBEAT = 2  # seconds: a frozen consumer is noticed after two of these
PORT_VARIABLES = {"orders": "ORDERS_PORT", "dispatch": "GATEWAY_PORT",
                  "callback": "CALLBACK_PORT", "settlement": "SETTLEMENT_PORT"}


@dataclass
class System:
    """The running system: its environment, ports, databases, proxy and supervisor."""

    env: dict[str, str]
    ports: dict[str, int]
    databases: dict[str, str]
    proxy: TcpProxy
    up: subprocess.Popen
    folder: Path
    log: IO
    seed: str = field(default_factory=lambda: os.environ.get("FAULTS_SEED",
                                                             uuid.uuid4().hex[:8]))

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)  # the random moments; FAULTS_SEED repeats them

    # -- processes ---------------------------------------------------------------------------

    def processes(self) -> dict[str, int]:
        """`serviceloop up`'s children by name (`orders`, `orders-relay` …) -> pid."""
        found = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) != self.up.pid:
                continue
            words = [w.decode() for w in argv if w]
            for service, spec in SERVICE_CLASSES.items():
                if spec in words:
                    found[service] = int(entry.name)
                elif words[-2:] == ["relay", service]:
                    found[f"{service}-relay"] = int(entry.name)
        return found

    def signal(self, name: str, sig: int) -> int:
        pid = self.processes()[name]
        os.kill(pid, sig)
        return pid

    def arm(self, point: str) -> None:
        """The next process to reach `point` (serviceloop.crashpoints) is killed there."""
        crashpoints.arm(self.env["SERVICELOOP_CRASH_FILE"], point)

    def armed(self, point: str) -> bool:
        return crashpoints.armed(self.env["SERVICELOOP_CRASH_FILE"], point)

    def restarted(self, name: str, old_pid: int, timeout: float = 60) -> int:
        """Wait for `serviceloop up` to have started `name` again; its new pid."""
        return wait_until(lambda: self.processes().get(name) not in (None, old_pid),
                          timeout=timeout, interval=0.2,
                          message=f"{name} to be restarted") and self.processes()[name]

    def live(self, service: str) -> bool:
        return self.ready(self.ports[service])

    @staticmethod
    def ready(port: int) -> bool:
        try:
            return requests.get(f"http://127.0.0.1:{port}/health/ready",
                                timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def wait_ready(self, timeout: float = 90) -> None:
        wait_until(lambda: all(self.live(s) for s in IMPLEMENTED), timeout=timeout,
                   interval=0.5, message="every service to be ready")

    @contextmanager
    def replica(self, service: str) -> Iterator[int]:
        """A second process of `service` (nameko workers compete on its queues); its port."""
        port = free_port()
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "nameko"), "run", "--config",
             str(PROJECT_ROOT / "config.yaml"), SERVICE_CLASSES[service]],
            cwd=PROJECT_ROOT, env={**self.env, "WEB_SERVER_PORT": str(port)},
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until(lambda: self.ready(port), timeout=60, interval=0.5,
                       message=f"a second {service} to be ready")
            yield port
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)

    @contextmanager
    def supervisor_paused(self) -> Iterator[None]:
        """`serviceloop up` frozen: a process that dies meanwhile stays down until the end."""
        os.kill(self.up.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.up.pid, signal.SIGCONT)

    # -- the broker ---------------------------------------------------------------------------

    def close_broker_connections(self) -> None:
        """`rabbitmqctl close_all_connections` for this run's virtual host only: the broker
        is shared with other tests, so never --global and never stop_app."""
        subprocess.run(["rabbitmqctl", "-q", "close_all_connections", "--vhost", self.vhost(),
                        "fault injection"], check=True, capture_output=True, timeout=30)

    def queues(self) -> dict[str, int]:
        """Every queue of the run's virtual host -> messages in it, ready or unacknowledged."""
        return queue_counts(self.env["AMQP_URI"])

    def queues_drained(self) -> bool:
        """No event waits for a consumer (reply queues of callers that gave up may hold late
        answers until they expire: those are nobody's work)."""
        return not any(n for queue, n in self.queues().items() if queue.startswith("evt-"))

    def purge_queues_of(self, consumer: str) -> list[str]:
        """Drop every message waiting for `consumer`: the broker forgot them."""
        names = [q for q in self.queues() if q.split("--")[-1].startswith(f"{consumer}.")]
        for name in names:
            subprocess.run(["rabbitmqctl", "-q", "purge_queue", "-p", self.vhost(), name],
                           check=True, capture_output=True, timeout=30)
        return names

    def vhost(self) -> str:
        return unquote(urlparse(self.env["AMQP_URI"]).path[1:])

    # -- the databases -----------------------------------------------------------------------

    def terminate_backends(self, service: str) -> int:
        """pg_terminate_backend on every connection to the service's database; how many."""
        database = self.databases[service].rsplit("/", 1)[1]
        admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                return len(conn.execute(text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :d AND pid <> pg_backend_pid()"), {"d": database}).all())
        finally:
            admin.dispose()

    # -- the clients ------------------------------------------------------------------------

    def gateway(self) -> str:
        return f"http://127.0.0.1:{self.ports['dispatch']}"

    @contextmanager
    def rpc(self, timeout: float = 30) -> Iterator:
        with cluster(timeout=timeout) as proxy:
            yield proxy


def _databases(templates: dict) -> tuple[dict[str, str], list[str]]:
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    names = {s: f"sl_f_{s}_{uuid.uuid4().hex[:10]}" for s in IMPLEMENTED}
    with admin.connect() as conn:
        for service, name in names.items():
            conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE '
                              f'"{templates[service]["postgres"]}"'))
    admin.dispose()
    return {s: _pg_url(n) for s, n in names.items()}, list(names.values())


def _drop(names: list[str]) -> None:
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for name in names:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="package")
def system(tmp_path_factory, broker_uri, migrated_templates) -> Iterator[System]:
    folder = tmp_path_factory.mktemp("faults")
    databases, names = _databases(migrated_templates)
    parsed = urlparse(broker_uri)
    proxy = TcpProxy((parsed.hostname, parsed.port or 5672))
    ports = {s: free_port() for s in IMPLEMENTED}
    env = {**os.environ, "AMQP_URI": broker_uri, "SERVICELOOP_VAR": str(folder),
           "SERVICELOOP_CLOCK": f"file:{folder / 'clock-offset'}",
           "AMQP_HEARTBEAT": str(HEARTBEAT), "PROVIDER_PORT": str(free_port()),
           "SERVICELOOP_CRASH_FILE": str(folder / "crash"),
           "PYTHONWARNINGS": "ignore::DeprecationWarning",
           # 8 workers a service: with 16 their pools (max_workers + 2 connections, kept once
           # a burst opened them) and a restarted or frozen process's beside its successor's
           # reached 92 of PostgreSQL's 100 connections on a fast machine
           "MAX_WORKERS": "8",
           **{f"DATABASE_URL_{s.upper()}": url for s, url in databases.items()},
           **{PORT_VARIABLES[s]: str(port) for s, port in ports.items()}}
    subprocess.run([*CLI, "migrate"], env=env, check=True, capture_output=True, timeout=120)
    log = open(folder / "up.log", "w")  # noqa: SIM115 - closed below
    up = subprocess.Popen([*CLI, "up"], env={**env, "AMQP_URI": proxy.uri(broker_uri)},
                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    running = System(env, ports, databases, proxy, up, folder, log)
    try:
        with pytest.MonkeyPatch.context() as patch:
            for key in ("AMQP_URI", "SERVICELOOP_VAR", "SERVICELOOP_CLOCK", "AMQP_HEARTBEAT",
                        *(f"DATABASE_URL_{s.upper()}" for s in IMPLEMENTED)):
                patch.setenv(key, env[key])
            running.wait_ready()
            yield running
    finally:
        os.killpg(up.pid, signal.SIGCONT)
        os.killpg(up.pid, signal.SIGTERM)
        try:
            up.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait(10)
        proxy.close()
        log.close()
        _drop(names)


@pytest.fixture(scope="package")
def world(system) -> World:
    """Customers, partners and a rate card, registered once through the system's RPC."""
    started = time.monotonic()
    world = seed_world(system)
    print(f"seeded in {time.monotonic() - started:.1f} s; FAULTS_SEED={system.seed}")
    return world
