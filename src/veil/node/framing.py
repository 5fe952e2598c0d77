"""Chunked framing of veil frames over a message transport (WebSocket messages).

A frame of at most ``chunk_bytes`` travels as one message: type byte ``0x00`` + frame.
A larger frame travels as a start message, type byte ``0x01`` + its length as 8 bytes
big-endian, followed by raw parts (no prefix, so each part is a slice of the frame and
nothing is copied to build it) until that many bytes have arrived.

The receiver checks the announced length against its limit, then preallocates it, so a
1 GB tensor streams through in chunks with one copy and no "message too big".
"""

from __future__ import annotations

import struct

import numpy as np

from veil.errors import MessageTooLarge, SerdeError

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
