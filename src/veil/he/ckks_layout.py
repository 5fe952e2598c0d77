"""The layout half of a CKKS tensor: which ciphertext slot holds each element, the
tensor's public metadata, free shape changes, decryption, and the public checks that every
operation and its plan share. :class:`veil.he.ckks.CKKSTensor` builds on it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Self

import numpy as np
import torch

from veil.he import _deps
from veil.he.ckks_context import CKKSContext, DepthExceeded
from veil.he.tenseal_proto import resized

__all__ = [
    "CKKSPlan",
    "CKKSTensorLayout",
    "MetaCiphertext",
    "as_plain",
    "combine",
    "is_number",
    "ts_call",
    "zero_ct",
]


def as_plain(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach() if x.is_meta else x.detach().cpu()
    else:
        t = torch.as_tensor(np.asarray(x, dtype=np.float64))
    if t.is_complex():
        raise TypeError("CKKS tensors here hold real values; got a complex plaintext")
    return t.to(torch.float64)


def is_number(x: Any) -> bool:
    return isinstance(x, int | float | np.integer | np.floating) and not isinstance(x, bool)


def ts_call(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except ValueError as exc:
        msg = str(exc)
        if "scale out of bounds" in msg or "end of modulus switching chain" in msg:
            raise DepthExceeded(
                "this operation needs another multiplication level, but the ciphertext has used "
                "all of its context's depth; create the context with a larger depth, e.g. "
                "ckks.context(16384, depth=...), or decrypt and re-encrypt in between"
            ) from None
        raise


def zero_ct(ctx: CKKSContext, level: int, size: int) -> Any:
    """An encryption of ``size`` zeros at ``level``: a stand-in for results that are exactly
    zero, and for placeholders. One full-size encryption per level is kept with the context;
    other sizes are the same ciphertext read with another slot count (a few kept, LRU)."""
    cache: dict[tuple[int, int], Any] = ctx.__dict__.setdefault("_zeros", {})
    vec = cache.pop((level, size), None)
    if vec is None:
        full = cache.get((level, ctx.slots))
        if full is None:
            full = _deps.tenseal().ckks_vector(ctx.raw, np.zeros(ctx.slots))
            for _ in range(level):
                full = full * 1.0
            cache[(level, ctx.slots)] = full
        vec = full if size == ctx.slots else resized(full, size, ctx.raw)
    cache[(level, size)] = vec  # most recently used last
    while len(cache) > 16 + ctx.depth + 1:
        oldest = next(k for k in cache if k[1] != ctx.slots)
        del cache[oldest]
    return vec


def combine(a: Any, b: Any, sub: bool, ctx: CKKSContext, level: int) -> Any:
    """``a + b`` or ``a - b`` of two ciphertexts; a result that is exactly zero (``x - x``:
    SEAL refuses a 'transparent' ciphertext) becomes a fresh encryption of zeros."""
    try:
        return a - b if sub else a + b
    except RuntimeError as exc:
        if "transparent" not in str(exc):
            raise
        return zero_ct(ctx, level, a.size())


class MetaCiphertext:
    """A ciphertext stand-in holding only its slot count: plans run on these."""

    __slots__ = ("_size",)

    def __init__(self, size: int) -> None:
        self._size = size

    def size(self) -> int:
        return self._size


@dataclass(frozen=True, slots=True, eq=False)
class CKKSPlan:
    """What an operation on a :class:`CKKSTensor` produces and costs, from public facts
    only: computed before anything runs, and what a node predicts its reply from.

    Attributes:
        shape: the result's shape.
        ct_index, slot_index: its layout (element -> ciphertext, slot).
        sizes: slots each result ciphertext holds.
        level: multiplications its ciphertexts went through.
        tile, block: the replicated layout (``tile`` copies of ``block`` slots), or 1, 0.
        work: ciphertext operations at N=8192 (see :mod:`veil.he.limits`).
    """

    shape: tuple[int, ...]
    ct_index: np.ndarray
    slot_index: np.ndarray
    sizes: tuple[int, ...]
    level: int
    tile: int = 1
    block: int = 0
    work: float = 0.0


class CKKSTensorLayout:
    """A CKKS tensor's ciphertexts and layout (element -> ciphertext, slot), its metadata,
    views and decryption, and the public checks of operands (see :class:`CKKSTensor
    <veil.he.ckks.CKKSTensor>`, the only class built on it)."""

    __array_priority__ = 1000

    def __init__(self, context: CKKSContext, cts: list[Any], ct_index: np.ndarray,
                 slot_index: np.ndarray, *, tile: int = 1, block: int = 0,
                 level: int = 0) -> None:  # fmt: skip
        self.context = context
        self._cts = cts
        self._ct = ct_index
        self._slot = slot_index
        self.tile = tile  # copies of a replicated vector per ciphertext (1: not replicated)
        self.block = block  # slots per copy when replicated
        self.level = level

    # -- metadata --------------------------------------------------------------------
    @property
    def shape(self) -> torch.Size:
        return torch.Size(self._ct.shape)

    @property
    def ndim(self) -> int:
        return self._ct.ndim

    def numel(self) -> int:
        return int(self._ct.size)

    def size(self, dim: int | None = None) -> Any:
        return self.shape if dim is None else self.shape[dim]

    def __len__(self) -> int:
        if not self.ndim:
            raise TypeError("len() of a 0-d encrypted tensor")
        return self.shape[0]

    @property
    def ciphertexts(self) -> int:
        return len(self._cts)

    @property
    def sizes(self) -> tuple[int, ...]:
        """Slots each ciphertext holds (what TenSEAL's ``size()`` reports)."""
        return tuple(int(v.size()) for v in self._cts)

    @property
    def depth_left(self) -> int:
        return self.context.depth - self.level

    @property
    def max_abs(self) -> float:
        """Largest magnitude this tensor's level holds (``CKKSContext.max_abs(level)``):
        2**99, 2**59, 2**19 at levels 0, 1, 2 of the default context."""
        return self.context.max_abs(self.level)

    def __repr__(self) -> str:
        layout = f"replicated x{self.tile}" if self.tile > 1 else (
            "contiguous" if self._contiguous else "scattered")  # fmt: skip
        return (
            f"ckks.CKKSTensor(shape={tuple(self.shape)}, ciphertexts={len(self._cts)}, {layout}, "
            f"depth_left={self.depth_left}, context={self.context.fingerprint!r})"
        )

    @cached_property
    def _contiguous(self) -> bool:
        """Flattened elements fill the ciphertexts' first slots in order, nothing else."""
        if self.tile > 1:
            return False
        ct, slot = self._ct.reshape(-1), self._slot.reshape(-1)
        sizes = [v.size() for v in self._cts]
        if sum(sizes) != ct.size:
            return False
        want_ct = np.repeat(np.arange(len(sizes)), sizes)
        want_slot = np.concatenate([np.arange(s) for s in sizes]) if sizes else want_ct
        return bool(np.array_equal(ct, want_ct) and np.array_equal(slot, want_slot))

    def _like(self, cts: list[Any], *, level: int | None = None) -> Self:
        """A tensor of this layout holding ``cts`` (a copy of this one's attributes: every
        element-wise op pays for this, so no __init__ and no layout checks)."""
        out = object.__new__(type(self))
        d = out.__dict__
        d.update(self.__dict__)
        d["_cts"] = cts
        if level is not None:
            d["level"] = level
        return out

    def _from_plan(self, cts: list[Any], plan: CKKSPlan) -> Self:
        return type(self)(self.context, cts, plan.ct_index, plan.slot_index, tile=plan.tile,
                          block=plan.block, level=plan.level)  # fmt: skip

    def _shadow(self, plan: CKKSPlan) -> Self:
        """A tensor with a plan's layout and stand-in ciphertexts: plans the next operation."""
        return self._from_plan([MetaCiphertext(s) for s in plan.sizes], plan)

    # -- decryption ------------------------------------------------------------------
    def decrypt(self, context: CKKSContext | None = None) -> torch.Tensor:
        """Decrypt to a float64 tensor of this shape (needs the secret key).

        Args:
            context: the private context; default the tensor's own (the encrypting client's).

        Raises:
            ValueError: no secret key, or a context of another key pair.
        """
        ctx = context or self.context
        if ctx.fingerprint != self.context.fingerprint:
            raise ValueError(
                f"this tensor is encrypted under context {self.context.fingerprint!r}, not "
                f"{ctx.fingerprint!r}: decrypt with the context that encrypted it"
            )
        if not ctx.is_private:
            raise ValueError(
                "this context has no secret key (a public context cannot decrypt); only the "
                "key owner can decrypt: send the tensor back to them"
            )
        values = []
        for vec in self._cts:
            values.append(np.asarray(vec.decrypt(ctx.raw.secret_key()), dtype=np.float64))
        if self._contiguous:
            flat = np.concatenate(values) if values else np.zeros(0)
        else:
            slots = max((int(s) for s in self._slot.reshape(-1)), default=-1) + 1
            padded = np.zeros((len(values), max(slots, max((len(v) for v in values), default=0))))
            for i, v in enumerate(values):
                padded[i, : len(v)] = v
            flat = padded[self._ct.reshape(-1), self._slot.reshape(-1)]
        return torch.from_numpy(np.ascontiguousarray(flat).reshape(tuple(self.shape)))

    # -- public checks (shared by the operations and their plans) ---------------------
    def _broadcast_to_me(self, shape: Sequence[int]) -> None:
        if tuple(shape) == tuple(self._ct.shape):
            return
        try:  # numpy's rules are torch's; torch.broadcast_shapes imports sympy on first use
            ok = np.broadcast_shapes(tuple(shape), tuple(self.shape)) == tuple(self.shape)
        except (ValueError, RuntimeError):  # numpy: RuntimeError past 32 dimensions
            ok = False
        if not ok:
            raise ValueError(
                f"a plain tensor of shape {tuple(shape)} does not broadcast to the encrypted "
                f"shape {tuple(self.shape)}"
            )

    def _check_number(self, v: Any, level: int) -> float:
        """A Python number as a plaintext at ``level`` (public: refused when it cannot be
        encoded there)."""
        x = float(v)
        if not math.isfinite(x):
            raise ValueError(f"cannot compute with {x} (not a finite number)")
        cap = self.context.max_abs(level)
        if not abs(x) < cap:
            raise ValueError(
                f"the number {x:.6g} is outside what a CKKS ciphertext at level {level} holds "
                f"(|x| < {cap:.6g}); scale it down, or use it before earlier multiplications"
            )
        return x

    def _check_plain(self, flat: np.ndarray, level: int) -> None:
        """Plaintext values (a tensor's: this check depends on them, so it fails when the
        operation runs; on a node that failure is kept as the result's error)."""
        if not flat.size:
            return
        cap = self.context.max_abs(level)
        if not (-cap < flat.min() and flat.max() < cap):  # (NaN and infinity fail too)
            raise ValueError(
                f"a plaintext value is not finite or outside what a CKKS ciphertext at level "
                f"{level} holds (|x| < {cap:.6g}); scale the values into range, or apply the "
                "operation at an earlier level"
            )

    # -- plaintext layout ------------------------------------------------------------
    def _plain_chunks(self, p: Any, fill: float = 0.0) -> list[np.ndarray]:
        """A plaintext broadcast to this shape, laid out like the ciphertexts (float64 arrays,
        which TenSEAL takes as they are); its values checked against the level's range."""
        t = as_plain(p)
        self._broadcast_to_me(t.shape)
        arr = np.broadcast_to(t.numpy(), tuple(self.shape))
        flat = np.ascontiguousarray(arr).reshape(-1)
        self._check_plain(flat, self.level)
        if self._contiguous:
            out, start = [], 0
            for v in self._cts:
                n = v.size()
                out.append(flat[start : start + n])
                start += n
            return out
        sizes = [v.size() for v in self._cts]
        cts, slots = self._ct.reshape(-1), self._slot.reshape(-1)
        keys = cts * (max(sizes, default=0) + 1) + slots
        order = np.argsort(keys, kind="stable")
        same = keys[order][1:] == keys[order][:-1]
        if same.any() and (flat[order][1:][same] != flat[order][:-1][same]).any():
            raise ValueError(
                "this view shows one encrypted element several times (e.g. x[[1, 1]]) and the "
                "plaintext gives its copies different values: one slot cannot hold both; apply "
                "the operation before indexing"
            )
        grid = np.full((len(self._cts), max(sizes, default=0)), fill)
        grid[cts, slots] = flat
        if self.tile > 1:  # keep every copy of a replicated vector identical
            grid[:, :] = np.tile(grid[:, : self.block], self.tile)[:, : grid.shape[1]]
        return [grid[i, :n] for i, n in enumerate(sizes)]

    def _check_other(self, other: CKKSTensorLayout) -> None:
        if (
            other.context is not self.context
            and other.context.fingerprint != self.context.fingerprint
        ):
            raise ValueError(
                f"cannot combine tensors under different CKKS contexts ({self.context.fingerprint!r} "
                f"and {other.context.fingerprint!r}); encrypt both with one context"
            )
        if other._ct is self._ct and other._slot is self._slot and other.tile == self.tile:
            return  # derived from one another: the same layout
        if (
            len(other._cts) == len(self._cts) == 1
            and self._ct.shape == other._ct.shape
            and self.__dict__.get("_contiguous")
            and other.__dict__.get("_contiguous")
        ):
            return  # one contiguous ciphertext each, same shape: the same layout
        if (
            other.shape != self.shape
            or len(other._cts) != len(self._cts)
            or other.tile != self.tile
            or other.sizes != self.sizes
            or not np.array_equal(other._ct, self._ct)
            or not np.array_equal(other._slot, self._slot)
        ):
            raise ValueError(
                f"encrypted operands must have the same shape and layout, got {tuple(self.shape)} "
                f"and {tuple(other.shape)}; CKKS cannot move values between slots for free"
            )

    def _need_level(self, extra: int = 1) -> None:
        if self.level + extra > self.context.depth:
            raise DepthExceeded(
                f"this needs {self.level + extra} multiplication levels but the context has depth "
                f"{self.context.depth}; create it with ckks.context(..., depth="
                f"{self.level + extra}) (a larger poly_modulus_degree if the security check "
                "asks), or decrypt and re-encrypt in between"
            )

    # -- shape (free: only the index maps move) --------------------------------------
    def _view(self, ct: np.ndarray, slot: np.ndarray) -> Self:
        return type(self)(self.context, self._cts, ct, slot, tile=self.tile, block=self.block,
                          level=self.level)  # fmt: skip

    def reshape(self, *shape: Any) -> Self:
        dims = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], Sequence) else shape
        return self._view(self._ct.reshape(dims), self._slot.reshape(dims))

    view = reshape

    def flatten(self) -> Self:
        return self.reshape(-1)

    def transpose(self, dim0: int, dim1: int) -> Self:
        return self._view(np.swapaxes(self._ct, dim0, dim1), np.swapaxes(self._slot, dim0, dim1))

    @property
    def T(self) -> Self:  # noqa: N802 - torch's spelling
        return self._view(self._ct.T, self._slot.T)

    def __getitem__(self, index: Any) -> Self:
        return self._view(np.asarray(self._ct[index]), np.asarray(self._slot[index]))
