"""The relay's pika transport sends a window's buffered frames in one system call
(serviceloop.relay.send_frames_together), on pika's own transport class."""

from __future__ import annotations

from collections import deque

from pika.adapters.utils.io_services_utils import _AsyncPlaintextTransport

from serviceloop.relay import send_frames_together


class Socket:
    """Takes at most `room` bytes a call, as a non-blocking socket with a full buffer does."""

    def __init__(self, room: int = 1 << 20) -> None:
        self.room = room
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> int:
        self.sent.append(bytes(data[:self.room]))
        return len(self.sent[-1])


def transport_with(buffers: list[bytes], sock: Socket) -> _AsyncPlaintextTransport:
    transport = object.__new__(_AsyncPlaintextTransport)  # only what _produce touches
    transport._sock = sock
    transport._tx_buffers = deque(buffers)
    transport._tx_buffered_byte_count = sum(map(len, buffers))
    return transport


def test_a_window_of_frames_goes_out_in_one_send():
    send_frames_together()
    send_frames_together()  # twice changes nothing
    sock = Socket()
    frames = [b"method-1", b"header-1", b"body-1", b"method-2", b"header-2", b"body-2"]
    transport = transport_with(frames, sock)
    transport._produce()
    assert sock.sent == [b"".join(frames)]
    assert not transport._tx_buffers
    assert transport._tx_buffered_byte_count == 0


def test_what_the_socket_did_not_take_waits_for_the_next_writable():
    send_frames_together()
    sock = Socket(room=5)
    transport = transport_with([b"abc", b"defg", b"hi"], sock)
    transport._produce()
    # each call takes 5 bytes: pika's loop goes on until the buffer is empty, in order
    assert sock.sent == [b"abcde", b"fghi"]
    assert b"".join(sock.sent) == b"abcdefghi"
    assert transport._tx_buffered_byte_count == 0
