"""A structural check that bytes are an ONNX model, without onnx: the node needs no onnx."""

from __future__ import annotations

__all__ = ["onnx_problem"]

#: ModelProto fields the check requires, with their protobuf wire types: ``ir_version``
#: (a varint) and ``graph`` (length-delimited).
_REQUIRED = {1: 0, 7: 2}


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    for k in range(10):
        if i + k >= len(data):
            raise ValueError("truncated")
        b = data[i + k]
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i + k + 1
        shift += 7
    raise ValueError("a varint longer than 10 bytes")


def onnx_problem(data: bytes) -> str | None:
    """Why ``data`` is not a serialized ONNX ``ModelProto``, or None if it reads as one.

    Walks the message's top-level protobuf fields (it does not decode the graph): every
    field must be well-formed up to the last byte, and ``ir_version`` and ``graph`` must be
    there. onnxruntime checks the rest where the model runs.

    Example:
        >>> onnx_problem(b"\\x08\\x08\\x3a\\x00")  # ir_version 8, an empty graph
        >>> onnx_problem(b"PK\\x03\\x04 a zip file")
        'byte 2: a field number 0, not protobuf'
        >>> onnx_problem(b"\\x08\\x08")
        'no graph (field 7): not an ONNX model'
    """
    seen: dict[int, int] = {}
    i, n = 0, len(data)
    try:
        while i < n:
            start = i
            key, i = _varint(data, i)
            field, wire = key >> 3, key & 7
            if field == 0:
                return f"byte {start}: a field number 0, not protobuf"
            if wire == 0:
                _, i = _varint(data, i)
            elif wire == 1:
                i += 8
            elif wire == 2:
                length, i = _varint(data, i)
                i += length
            elif wire == 5:
                i += 4
            else:
                return f"byte {start}: wire type {wire}, not protobuf"
            if i > n:
                return f"byte {start}: field {field} runs past the end (truncated?)"
            seen.setdefault(field, wire)
    except ValueError as exc:
        return f"byte {i}: {exc}"
    for field, wire in _REQUIRED.items():
        name = "ir_version" if field == 1 else "graph"
        if field not in seen:
            return f"no {name} (field {field}): not an ONNX model"
        if seen[field] != wire:
            return f"{name} (field {field}) has the wrong type: not an ONNX model"
    return None
