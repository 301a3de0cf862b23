"""A small TCP proxy for network faults: forwards 127.0.0.1:port to a target.

It runs in its own (unpatched) Python process, so cutting it is killing it: every connection
through it drops at once and new ones are refused until `restore()` starts it again on the
same port. `python -m tests.tcp_proxy LISTEN_PORT TARGET_HOST TARGET_PORT` is the child.

In front of PostgreSQL it can also lose one COMMIT's answer (`lose_next_commit_answer`): the
next query with COMMIT in it goes through and PostgreSQL runs it, then that connection is
closed before the answer reaches the client, which cannot tell whether it committed.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time

from tests.integration.dispatch_system import free_port


class TcpProxy:
    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._process: subprocess.Popen | None = None
        self._said = b""  # the child's stdout read but not yet taken as lines
        self.restore()

    def restore(self) -> None:
        if self._process is not None and self._process.poll() is None:
            return
        self._said = b""
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tests.tcp_proxy", str(self.port), self.target[0],
             str(self.target[1])], stdout=subprocess.PIPE, env={**os.environ,
                                                                 "PYTHONWARNINGS": "ignore"})
        assert self._process.stdout.readline().strip() == b"listening"

    def cut(self) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait(10)
            self._process = None

    def close(self) -> None:
        self.cut()

    def lose_next_commit_answer(self) -> None:
        """Arm the child: the next query carrying COMMIT runs, its answer is not passed on."""
        self._process.send_signal(signal.SIGUSR1)
        assert self._line(10) == "armed"

    def commit_answer_lost(self, timeout: float = 30) -> bool:
        """Whether the armed COMMIT's answer was lost, within `timeout` seconds."""
        return self._line(timeout) == "lost"

    def _line(self, timeout: float) -> str:
        """The child's next line on stdout ("" if none came within `timeout` seconds)."""
        deadline = time.monotonic() + timeout
        fd = self._process.stdout.fileno()
        while b"\n" not in self._said:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return ""
            if not (chunk := os.read(fd, 4096)):
                return ""
            self._said += chunk
        line, self._said = self._said.split(b"\n", 1)
        return line.decode().strip()

    def uri(self, amqp_uri: str) -> str:
        """The same AMQP URI, through this proxy."""
        from urllib.parse import urlparse, urlunparse

        parsed = urlparse(amqp_uri)
        netloc = f"{parsed.username}:{parsed.password}@127.0.0.1:{self.port}"
        return urlunparse(parsed._replace(netloc=netloc))


_armed = threading.Event()  # lose the answer to the next query carrying COMMIT
_READY_FOR_QUERY_IDLE = b"Z\x00\x00\x00\x05I"  # PostgreSQL: a query's answer has ended


def _arm(_signum: int, _frame: object) -> None:
    _armed.set()
    sys.stdout.write("armed\n")
    sys.stdout.flush()


class _Link:
    """One client connection: `losing` once its COMMIT went out armed."""

    def __init__(self) -> None:
        self.losing = False


def _upstream(client: socket.socket, server: socket.socket, link: _Link) -> None:
    try:
        while data := client.recv(65536):
            if _armed.is_set() and b"COMMIT" in data:
                _armed.clear()
                link.losing = True  # before PostgreSQL can answer
            server.sendall(data)
    except OSError:
        pass
    _shut(client, server)


def _downstream(server: socket.socket, client: socket.socket, link: _Link) -> None:
    answer = b""
    try:
        while data := server.recv(65536):
            if not link.losing:
                client.sendall(data)
                continue
            answer += data  # held back until it is whole, then dropped with the connection
            if answer.endswith(_READY_FOR_QUERY_IDLE):
                _shut(client, server)
                sys.stdout.write("lost\n")
                sys.stdout.flush()
                return
    except OSError:
        pass
    _shut(client, server)


def _shut(*sockets: socket.socket) -> None:
    for sock in sockets:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _serve(port: int, target: tuple[str, int]) -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    for attempt in range(100):  # the port may linger a moment after the last proxy was killed
        try:
            listener.bind(("127.0.0.1", port))
            break
        except OSError:
            if attempt == 99:
                raise
            time.sleep(0.05)
    listener.listen(128)
    sys.stdout.write("listening\n")
    sys.stdout.flush()
    while True:
        client, _ = listener.accept()
        try:
            upstream = socket.create_connection(target, timeout=5)
            upstream.settimeout(None)
        except OSError:
            client.close()
            continue
        link = _Link()
        threading.Thread(target=_upstream, args=(client, upstream, link), daemon=True).start()
        threading.Thread(target=_downstream, args=(upstream, client, link), daemon=True).start()


if __name__ == "__main__":
    signal.signal(signal.SIGUSR1, _arm)
    _serve(int(sys.argv[1]), (sys.argv[2], int(sys.argv[3])))
