"""Chunked framing of veil frames over a message transport (WebSocket messages).

A frame of at most ``chunk_bytes`` travels as one message: type byte ``0x00`` + frame.
A larger frame travels as a start message, type byte ``0x01`` + its length as 8 bytes
big-endian, followed by raw parts (no prefix, so each part is a slice of the frame and
nothing is copied to build it) until that many bytes have arrived.

The receiver checks the announced length against its limit, then preallocates it, so a
1 GB tensor streams through in chunks with one copy and no "message too big".
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct

import numpy as np

from veil.errors import MessageTooLarge, SerdeError
from veil.version import WIRE_VERSION

WHOLE, BEGIN = 0, 1
_LEN = struct.Struct(">Q")


def split_frame(
    frame: bytes | bytearray | memoryview, chunk_bytes: int
) -> list[bytes | memoryview]:
    """Transport messages for one frame; the parts are views of ``frame``, not copies.

    Example:
        >>> [bytes(m) for m in split_frame(b"abc", 8)]
        [b'\\x00abc']
        >>> [bytes(m) for m in split_frame(b"abcdef", 4)]
        [b'\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x06', b'abcd', b'ef']
    """
    view = memoryview(frame)
    if len(view) <= chunk_bytes:
        return [bytes([WHOLE]) + view]
    out: list[bytes | memoryview] = [bytes([BEGIN]) + _LEN.pack(len(view))]
    out.extend(view[start : start + chunk_bytes] for start in range(0, len(view), chunk_bytes))
    return out


class Assembler:
    """Rebuilds frames from transport messages; one per connection direction.

    Example:
        >>> a = Assembler(max_bytes=100)
        >>> [None if f is None else bytes(f) for f in map(a.feed, split_frame(b"abcdef", 4))]
        [None, None, b'abcdef']
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._buf: memoryview | None = None
        self._filled = 0

    def feed(self, message: bytes | bytearray | memoryview) -> bytearray | memoryview | None:
        """Take one transport message; return a complete frame when one is done."""
        if self._buf is not None:  # a raw part of a chunked frame
            end = self._filled + len(message)
            if end > len(self._buf):
                self._buf = None
                raise SerdeError("frame parts exceed the announced length")
            self._buf[self._filled : end] = message
            self._filled = end
            if end == len(self._buf):
                done, self._buf = self._buf, None
                return done
            return None
        if not message:
            raise SerdeError("empty transport message")
        kind = message[0]
        body = memoryview(message)[1:]
        if kind == WHOLE:
            if len(body) > self.max_bytes:
                raise MessageTooLarge(
                    f"frame of {len(body)} bytes is over the limit of {self.max_bytes}"
                )
            return bytearray(body)
        if kind == BEGIN:
            if len(body) != _LEN.size:
                raise SerdeError("malformed start of a chunked frame")
            (total,) = _LEN.unpack(body)
            if total > self.max_bytes:
                raise MessageTooLarge(
                    f"announced frame of {total} bytes is over the limit of {self.max_bytes} "
                    "bytes; raise max_message_bytes on both sides or send smaller objects"
                )
            # np.empty: no zero-fill and (for large sizes) huge pages; the memoryview is
            # writable, so tensors decoded from the frame share it without another copy.
            self._buf = memoryview(np.empty(total, dtype=np.uint8)).cast("B")  # type: ignore[arg-type]
            self._filled = 0
            return None
        raise SerdeError(f"unknown transport message type {kind}")


# ----------------------------------------------------------------------------- bulk lane
# Length-prefixed frames on a plain TCP connection (see veil.node.server.bulk).
BULK_MAGIC = b"VLBK"
BULK_HELLO = struct.Struct(">4sHH")
#: Frames (or expected replies) at least this large go over the bulk lane when a node offers
#: one. Measured on loopback (2 cores, torch 2.13): a 1 MiB tensor takes 3-5 ms each way over
#: the WebSocket (its 1 MiB messages, masking, the event loop) and 0.7-0.9 ms over the lane;
#: at 64 KiB the lane is 0.1-0.2 ms faster; small frames stay on the WebSocket.
BULK_MIN_BYTES = 64 * 1024
_SOCK_BUF = 4 * 1024**2


def tune(sock: socket.socket) -> None:
    """No Nagle delay and large kernel buffers (what a bulk copy wants)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, opt, _SOCK_BUF)


def recv_exact(sock: socket.socket, n: int) -> memoryview:
    """Read exactly ``n`` bytes into a new writable buffer (no zero-fill, no copies).

    Raises:
        ConnectionError: the peer closed the connection first.
    """
    buf = memoryview(np.empty(n, dtype=np.uint8)).cast("B")  # type: ignore[arg-type]
    got = 0
    while got < n:
        k = sock.recv_into(buf[got:], n - got)
        if k == 0:
            raise ConnectionError(f"connection closed after {got} of {n} bytes")
        got += k
    return buf


def send_frame(sock: socket.socket, *parts: bytes | bytearray | memoryview) -> None:
    """Send one length-prefixed frame, given as one or more buffers (sent without joining)."""
    sock.sendall(_LEN.pack(sum(len(p) for p in parts)))
    for part in parts:
        sock.sendall(part)


def recv_frame(sock: socket.socket, max_bytes: int) -> memoryview:
    """Receive one length-prefixed frame, refusing one over ``max_bytes`` before reading it."""
    (n,) = _LEN.unpack(recv_exact(sock, _LEN.size))
    if n > max_bytes:
        raise MessageTooLarge(
            f"announced frame of {n} bytes is over the limit of {max_bytes} bytes; raise "
            "max_message_bytes on both sides or send smaller objects"
        )
    return recv_exact(sock, n)


def readable(sock: socket.socket) -> bool:
    """Has the peer sent something (or closed), without waiting? On an idle request/reply
    connection that means the peer hung up, or is about to.

    Example:
        >>> a, b = socket.socketpair()
        >>> readable(a)
        False
        >>> b.close()
        >>> readable(a)
        True
        >>> a.close()
    """
    if hasattr(select, "poll"):  # no FD_SETSIZE limit
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([sock], [], [], 0)[0])


def bulk_hello(token: str) -> bytes:
    """The first bytes a client sends on a bulk connection."""
    raw = token.encode()
    return BULK_HELLO.pack(BULK_MAGIC, WIRE_VERSION, len(raw)) + raw
