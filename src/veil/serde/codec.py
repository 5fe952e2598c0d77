"""Encode and decode wire frames: 4-byte header (magic + wire version) + msgpack body."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

from veil.errors import MessageTooLarge, SerdeError, VersionMismatch
from veil.serde.messages import Call, Reply, Stored
from veil.version import WIRE_VERSION

MAGIC = b"VL"
HEADER = struct.Struct(">2sH")
#: Default largest frame a peer accepts (tensors are sent in chunks of at most CHUNK_BYTES
#: by network transports, and reassembled up to this size).
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024**3 + 1024**2
#: Largest single transport chunk.
CHUNK_BYTES = 1024**2  # measured faster than 8 MiB and 256 KiB, and lower peak memory

T = TypeVar("T")

_HEAD = HEADER.pack(MAGIC, WIRE_VERSION)
_encoder = msgspec.msgpack.Encoder()
_call_decoder = msgspec.msgpack.Decoder(Call)
_reply_decoder = msgspec.msgpack.Decoder(Reply)
_stored_decoder = msgspec.msgpack.Decoder(Stored)


def encode(message: Any, *, version: int = WIRE_VERSION) -> bytearray:
    """Encode a message into a new writable buffer (header + msgpack).

    Example:
        >>> from veil.serde.messages import Call, GetInfo
        >>> frame = encode(Call(GetInfo()))
        >>> bytes(frame[:2]), decode_call(frame).msg
        (b'VL', GetInfo())
    """
    buf = bytearray(_HEAD if version == WIRE_VERSION else HEADER.pack(MAGIC, version))
    try:
        _encoder.encode_into(message, buf, HEADER.size)
    except (TypeError, ValueError, OverflowError) as exc:
        raise SerdeError(f"cannot encode {type(message).__name__}: {exc}") from exc
    return buf


#: A tensor at least this large is kept out of line by :func:`encode_parts`.
OUT_OF_LINE_BYTES = 1024**2
_EMPTY_DATA = b"\xa4data\xc4\x00"  # msgpack: the key "data", then an empty bin


def encode_parts(message: Any) -> list[bytes | bytearray | memoryview]:
    """Encode a message as buffers whose concatenation is :func:`encode`'s frame, with a
    large tensor's bytes left where they are (a view of the tensor, not a copy).

    Only the one tensor of a ``SendObject`` call or a ``Value`` reply goes out of line;
    anything else is a single buffer. A transport that can send several buffers as one
    (``socket.sendall`` each in turn) then sends a 100 MB tensor without copying it.

    Example:
        >>> import torch
        >>> from veil.serde.messages import SendObject
        >>> from veil.serde.tensors import tensor_to_data
        >>> msg = Call(SendObject(tensor_to_data(torch.zeros(2**19))))
        >>> parts = encode_parts(msg)
        >>> len(parts), b"".join(parts) == encode(msg)
        (3, True)
    """
    from veil.serde.messages import SendObject, TensorData, Value

    inner: Any = message.msg if isinstance(message, Call) else message
    if not isinstance(inner, SendObject | Value) or not isinstance(inner.value, TensorData):
        return [encode(message)]
    data = inner.value.data
    n = len(data)
    if n < OUT_OF_LINE_BYTES or n >= 2**32:
        return [encode(message)]
    hollow_inner = msgspec.structs.replace(
        inner, value=msgspec.structs.replace(inner.value, data=memoryview(b""))
    )
    hollow = (
        msgspec.structs.replace(message, msg=hollow_inner)
        if isinstance(message, Call)
        else hollow_inner
    )
    frame = encode(hollow)
    at = frame.find(_EMPTY_DATA)  # once: other fields are numbers or valid UTF-8
    if at < 0:
        return [encode(message)]
    cut = at + len(_EMPTY_DATA) - 2
    head = frame[:cut] + b"\xc6" + n.to_bytes(4, "big")  # bin 32 header
    return [head, data, frame[cut + 2 :]]


def peek_version(frame: bytes | bytearray | memoryview) -> int:
    """The wire version a frame claims; raises :class:`SerdeError` if it is not a veil frame."""
    if len(frame) < HEADER.size:
        raise SerdeError(f"frame of {len(frame)} bytes is too short to be a veil message")
    magic, version = HEADER.unpack_from(frame, 0)
    if magic != MAGIC:
        raise SerdeError(
            "not a veil message (bad magic bytes); veil peers only exchange typed msgpack "
            "frames, never pickles or other formats"
        )
    return int(version)


def _decoder(decoder: msgspec.msgpack.Decoder[Any], peer: str, doc: str) -> Any:
    """A decode function for one direction, built here so that it is a single Python frame
    (it runs twice per op)."""

    def decode(frame: bytes | bytearray | memoryview, *,
               max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Any:  # fmt: skip
        if len(frame) > max_bytes:
            raise MessageTooLarge(
                f"message of {len(frame)} bytes exceeds the limit of {max_bytes} bytes; "
                "raise max_message_bytes on both sides or send smaller pieces"
            )
        if frame[:4] != _HEAD:  # the common case is one comparison; explain anything else
            version = peek_version(frame)
            if version != WIRE_VERSION:
                raise VersionMismatch(
                    f"wire version mismatch: the {peer} speaks v{version}, this side speaks "
                    f"v{WIRE_VERSION}; install the same veil version on both sides"
                )
        try:
            return decoder.decode(memoryview(frame)[HEADER.size :])
        except msgspec.DecodeError as exc:
            raise SerdeError(f"malformed message: {exc}") from exc
        except RecursionError as exc:
            raise SerdeError("malformed message: nested too deeply") from exc
        except (ValueError, TypeError, OverflowError) as exc:  # e.g. a string that is not UTF-8
            raise SerdeError(f"malformed message: {type(exc).__name__}: {exc}") from exc

    decode.__doc__ = doc
    return decode


#: ``decode_call(frame, *, max_bytes=...) -> Call``
decode_call: Callable[..., Call] = _decoder(
    _call_decoder, "client", "Decode a client -> node frame. Every bad input raises a SerdeError."
)
#: ``decode_reply(frame, *, max_bytes=...) -> Reply``
decode_reply: Callable[..., Reply] = _decoder(
    _reply_decoder, "node", "Decode a node -> client frame. Every bad input raises a SerdeError."
)
#: ``decode_stored(frame, *, max_bytes=...) -> Stored``
decode_stored: Callable[..., Stored] = _decoder(
    _stored_decoder,
    "store",
    "Decode a node's stored object (a ``Value``, ``TensorView`` or ``OptimizerSpec``).",
)
