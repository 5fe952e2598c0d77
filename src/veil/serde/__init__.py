"""The wire format: typed msgspec messages, encoded as msgpack; never pickle.

Example:
    >>> import torch
    >>> from veil.serde import Call, SendObject, decode_call, encode, tensor_to_data
    >>> frame = encode(Call(SendObject(tensor_to_data(torch.ones(2)))))
    >>> decode_call(frame).msg.value.shape
    [2]
"""

from __future__ import annotations

from veil.serde.codec import (
    CHUNK_BYTES,
    DEFAULT_MAX_MESSAGE_BYTES,
    decode_call,
    decode_reply,
    encode,
    peek_version,
)
from veil.serde.messages import *  # noqa: F403
from veil.serde.messages import Call, SendObject
from veil.serde.modules import module_to_spec, spec_to_module, unsupported_modules
from veil.serde.tensors import dtype_from_name, dtype_name, tensor_from_data, tensor_to_data
from veil.serde.values import from_arg, to_arg

__all__ = [
    "CHUNK_BYTES",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "Call",
    "SendObject",
    "decode_call",
    "decode_reply",
    "dtype_from_name",
    "dtype_name",
    "encode",
    "from_arg",
    "module_to_spec",
    "peek_version",
    "spec_to_module",
    "tensor_from_data",
    "tensor_to_data",
    "to_arg",
    "unsupported_modules",
]
