"""A small TCP proxy for network faults: forwards 127.0.0.1:port to a target.

It runs in its own (unpatched) Python process, so cutting it is killing it: every connection
through it drops at once and new ones are refused until `restore()` starts it again on the
same port. `python -m tests.tcp_proxy LISTEN_PORT TARGET_HOST TARGET_PORT` is the child.

In front of PostgreSQL it can also lose one COMMIT's answer (`lose_next_commit_answer`): the
next COMMIT on the connection that sent the text asked for (psycopg2 sends parameters inside
the query; the COMMIT may be in the same query) goes through and PostgreSQL runs it, then
that connection is closed before the answer reaches the client, which cannot tell whether
it committed. Or it drops that COMMIT unsent (`drop_next_commit`): nothing was committed.
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
             str(self.target[1])], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONWARNINGS": "ignore"})
        assert self._process.stdout.readline().strip() == b"listening"

    def cut(self) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait(10)
            self._process = None

    def close(self) -> None:
        self.cut()

    def lose_next_commit_answer(self, containing: str = "") -> None:
        """Arm the child: the next COMMIT of the connection whose query has `containing`
        runs, its answer is not passed on (`commit_answer_lost` says when)."""
        self._arm("lose", containing)

    def drop_next_commit(self, containing: str = "") -> None:
        """Arm the child: the next COMMIT of the connection whose query has `containing` is
        not sent, and the connection is closed (`commit_dropped` says when)."""
        self._arm("drop", containing)

    def commit_answer_lost(self, timeout: float = 30) -> bool:
        return self._line(timeout) == "lost"

    def commit_dropped(self, timeout: float = 30) -> bool:
        return self._line(timeout) == "dropped"

    def _arm(self, command: str, containing: str) -> None:
        self._process.stdin.write(f"{command} {containing}\n".encode())
        self._process.stdin.flush()
        assert self._line(10) == "armed"

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


_armed: list[tuple[bytes, bytes]] = []  # (what to do, the text that marks the connection)
_arming = threading.Lock()
_READY_FOR_QUERY_IDLE = b"Z\x00\x00\x00\x05I"  # PostgreSQL: a query's answer has ended


def _take_orders() -> None:
    """The parent's lines on stdin: `lose TEXT` (the answer to the next COMMIT of the
    connection that sends TEXT) or `drop TEXT` (that COMMIT itself, unsent)."""
    for line in sys.stdin.buffer:
        command, _, text = line.rstrip(b"\n").partition(b" ")
        if command in (b"lose", b"drop"):
            with _arming:
                _armed[:] = [(command, text)]
            _say("armed")


class _Link:
    """One client connection: `marked` (lose or drop) once it sent the armed text, `losing`
    once its COMMIT went out after that."""

    def __init__(self) -> None:
        self.marked = b""
        self.losing = False


def _upstream(client: socket.socket, server: socket.socket, link: _Link) -> None:
    try:
        while data := client.recv(65536):
            with _arming:
                if _armed and _armed[0][1] in data:
                    link.marked = _armed.pop()[0]
            if link.marked and b"COMMIT" in data:
                if link.marked == b"drop":  # PostgreSQL never sees it
                    _shut(client, server)
                    _say("dropped")
                    return
                link.losing = True  # before PostgreSQL can answer
                link.marked = b""
            server.sendall(data)
    except OSError:
        pass
    _shut(client, server)


def _say(line: str) -> None:
    sys.stdout.write(f"{line}\n")
    sys.stdout.flush()


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
                _say("lost")
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
    threading.Thread(target=_take_orders, daemon=True).start()
    _serve(int(sys.argv[1]), (sys.argv[2], int(sys.argv[3])))
