"""A small TCP proxy for network faults: forwards 127.0.0.1:port to a target.

It runs in its own (unpatched) Python process, so cutting it is killing it: every connection
through it drops at once and new ones are refused until `restore()` starts it again on the
same port. `python -m tests.tcp_proxy LISTEN_PORT TARGET_HOST TARGET_PORT` is the child.
"""

from __future__ import annotations

import os
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
        self.restore()

    def restore(self) -> None:
        if self._process is not None and self._process.poll() is None:
            return
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

    def uri(self, amqp_uri: str) -> str:
        """The same AMQP URI, through this proxy."""
        from urllib.parse import urlparse, urlunparse

        parsed = urlparse(amqp_uri)
        netloc = f"{parsed.username}:{parsed.password}@127.0.0.1:{self.port}"
        return urlunparse(parsed._replace(netloc=netloc))


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    for sock in (source, sink):
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
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pipe, args=(a, b), daemon=True).start()


if __name__ == "__main__":
    _serve(int(sys.argv[1]), (sys.argv[2], int(sys.argv[3])))
