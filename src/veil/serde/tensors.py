"""Tensors on the wire: dtype name + shape + raw bytes, zero-copy where the buffer allows."""

from __future__ import annotations

import math

import torch

from veil.errors import SerdeError
from veil.serde.messages import TensorData

#: The dtypes that may cross the wire, by wire name.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "complex64": torch.complex64,
    "complex128": torch.complex128,
    "int8": torch.int8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}

#: Largest number of dimensions a wire tensor may have (torch's own limit is 64).
MAX_DIMS = 64


def dtype_name(dtype: torch.dtype) -> str:
    """Wire name of a torch dtype.

    Example:
        >>> dtype_name(torch.float32)
        'float32'
    """
    try:
        return DTYPE_NAMES[dtype]
    except KeyError:
        raise SerdeError(
            f"dtype {dtype} cannot cross the wire; use one of {sorted(DTYPES)}"
        ) from None


def dtype_from_name(name: str) -> torch.dtype:
    """The torch dtype for a wire name; an unknown name is a :class:`SerdeError`."""
    try:
        return DTYPES[name]
    except KeyError:
        raise SerdeError(f"unknown dtype {name[:40]!r}; expected one of {sorted(DTYPES)}") from None


def tensor_to_data(tensor: torch.Tensor) -> TensorData:
    """Describe a tensor for the wire without copying a contiguous CPU tensor.

    Example:
        >>> td = tensor_to_data(torch.tensor([1.0, 2.0]))
        >>> td.dtype, td.shape, bytes(td.data)[:4]
        ('float32', [2], b'\\x00\\x00\\x80?')
    """
    if tensor.layout != torch.strided:
        tensor = tensor.to_dense()
    t = tensor.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous()
    name = dtype_name(t.dtype)
    shape = list(t.shape)
    grad = tensor.requires_grad and tensor.is_leaf  # results of ops come back as plain values
    if t.numel() == 0:
        return TensorData(name, shape, memoryview(b""), grad)
    flat = t.reshape(-1)
    if flat.stride(0) != 1:  # "contiguous" with an odd stride on a size-1 dim (x[..., ::2])
        flat = flat.clone(memory_format=torch.contiguous_format)
    raw = flat.view(torch.uint8).numpy()  # shares memory with t
    return TensorData(name, shape, memoryview(raw), grad)  # type: ignore[arg-type]


def tensor_from_data(data: TensorData, *, copy: bool = False) -> torch.Tensor:
    """Rebuild a tensor. Shares the message buffer when it is writable and ``copy`` is False.

    Raises:
        SerdeError: shape, dtype and byte count disagree.

    Example:
        >>> t = torch.arange(6.0).reshape(2, 3)
        >>> torch.equal(tensor_from_data(tensor_to_data(t), copy=True), t)
        True
    """
    dtype = dtype_from_name(data.dtype)
    shape = data.shape
    if len(shape) > MAX_DIMS or any((not isinstance(d, int)) or d < 0 for d in shape):
        raise SerdeError(f"invalid tensor shape {shape[:8]}")
    numel = math.prod(shape)
    itemsize = torch.empty((), dtype=dtype).element_size()
    if numel * itemsize != len(data.data):
        raise SerdeError(
            f"tensor of shape {shape} and dtype {data.data and data.dtype} needs "
            f"{numel * itemsize} bytes but the message carries {len(data.data)}"
        )
    if numel == 0:
        out = torch.empty(shape, dtype=dtype)
    else:
        buf: memoryview | bytearray = data.data
        writable = isinstance(buf, memoryview) and not buf.readonly
        if copy or not writable:
            buf = bytearray(buf)
        out = torch.frombuffer(buf, dtype=dtype).reshape(shape)
    if data.requires_grad:
        if not (out.is_floating_point() or out.is_complex()):
            raise SerdeError("requires_grad is only valid for floating point tensors")
        out.requires_grad_(True)
    return out
