"""TenSEAL's protobuf serializations, read and rewritten without its generated classes.

A context is a ``TenSEALContextProto`` and a vector a ``CKKSVectorProto``
(tenseal/proto/*.proto, TenSEAL 0.3.18): veil reads a vector's claims (slot count, scale)
before loading it, rewrites a vector's slot count (:func:`resized`) and adds its own
Galois keys to a context.
"""

from __future__ import annotations

import struct
from typing import Any

from veil.he import _deps

__all__ = ["proto_field", "proto_fields", "read_varint", "resized", "varint", "vector_claims"]


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        c, n = n & 0x7F, n >> 7
        out.append(c | 0x80 if n else c)
        if not n:
            return bytes(out)


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        c = data[pos]
        pos += 1
        value |= (c & 0x7F) << shift
        shift += 7
        if c < 0x80:
            return value, pos


def proto_fields(data: bytes) -> list[tuple[int, int, Any]]:
    """Top-level (field, wire type, value) of a protobuf message (varint, 64-bit, bytes)."""
    out: list[tuple[int, int, Any]] = []
    pos = 0
    while pos < len(data):
        tag, pos = read_varint(data, pos)
        field, wt = tag >> 3, tag & 7
        value: Any
        if wt == 0:
            value, pos = read_varint(data, pos)
        elif wt == 1:
            value, pos = data[pos : pos + 8], pos + 8
        elif wt == 2:
            n, pos = read_varint(data, pos)
            value, pos = data[pos : pos + n], pos + n
        else:
            raise ValueError(f"unexpected protobuf wire type {wt}")
        out.append((field, wt, value))
    return out


def proto_field(field: int, wt: int, value: Any) -> bytes:
    head = varint((field << 3) | wt)
    if wt == 0:
        return head + varint(value)
    if wt == 1:
        return head + bytes(value)
    return head + varint(len(value)) + bytes(value)


def resized(vec: Any, size: int, raw_ctx: Any) -> Any:
    """The same ciphertext, read as a vector of ``size`` slots.

    TenSEAL's ``CKKSVectorProto`` starts with field 1 (``repeated uint32 sizes``, packed);
    rewriting it changes how many slots ``sum``/``decrypt`` read without touching the
    ciphertext (tenseal/proto/tensors.proto).
    """
    ts = _deps.tenseal()
    data = vec.serialize()
    if data[:1] != b"\x0a":
        raise RuntimeError("unexpected TenSEAL vector serialization; pin tenseal==0.3.18")
    pos, length, shift = 1, 0, 0
    while True:
        c = data[pos]
        pos += 1
        length |= (c & 0x7F) << shift
        shift += 7
        if c < 0x80:
            break
    body = varint(size)
    return ts.ckks_vector_from(raw_ctx, b"\x0a" + varint(len(body)) + body + data[pos + length :])


def vector_claims(raw: bytes) -> tuple[list[int], float]:
    """A serialized CKKS vector's claimed slot counts (field 1) and scale (field 3).

    Raises:
        ValueError: not a TenSEAL vector, or not exactly one of each field.

    Example:
        >>> vector_claims(proto_field(1, 2, varint(3)) + proto_field(3, 1, struct.pack("<d", 2.0)))
        ([3], 2.0)
    """
    try:
        fields = proto_fields(raw)
    except (ValueError, IndexError):
        raise ValueError("a CKKS ciphertext is not a TenSEAL vector") from None
    sizes = [v for f, wt, v in fields if f == 1 and wt == 2]
    scales = [v for f, wt, v in fields if f == 3 and wt == 1]
    if len(sizes) != 1 or len(scales) != 1 or len(bytes(scales[0])) != 8:
        raise ValueError("a CKKS ciphertext must carry one slot count and one scale")
    data, pos, claimed = bytes(sizes[0]), 0, []
    try:
        while pos < len(data):
            value, pos = read_varint(data, pos)
            claimed.append(value)
    except IndexError:
        raise ValueError("a CKKS ciphertext's slot count is truncated") from None
    (scale,) = struct.unpack("<d", bytes(scales[0]))
    return claimed, float(scale)
