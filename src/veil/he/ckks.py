"""CKKS encrypted tensors on TenSEAL: a checked context, shape-preserving tensors, a fast matvec.

CKKS encrypts vectors of real numbers into the slots of one ciphertext and computes on
them approximately (errors around ``2**-20`` relative with the defaults). Each
multiplication consumes one level of the modulus chain; a context has ``depth`` levels.

:func:`context` builds a TenSEAL context with documented defaults and refuses
parameters below 128-bit security (the HomomorphicEncryption.org standard's bound on
``log2 q`` for each polynomial degree), with no override: SEAL inside TenSEAL enforces the
same bound. :func:`encrypt` turns a
tensor into a :class:`CKKSTensor`, which keeps its shape through ``+ - *`` (ciphertext
or plaintext, broadcasting plaintexts), ``neg``, ``square``, ``polyval``, :func:`sigmoid`
approximations, ``sum``, ``dot``, ``@`` with a plaintext matrix on either side,
``reshape``/``transpose``/indexing-free shape changes.

Layout: element ``e`` of the flattened tensor lives in ciphertext ``ct[e]`` at slot
``slot[e]``. Fresh tensors are *contiguous* (``numel / slots`` ciphertexts filled in
order), so elementwise ops are one TenSEAL call per ciphertext. ``encrypt(x,
replicate=True)`` tiles a vector across the slots so that ``x @ W`` runs as one
plaintext product and a block rotate-and-sum per group of outputs (:meth:`matmul`):
an encrypted 784-vector times a 784x10 matrix takes tens of milliseconds instead of
TenSEAL's diagonal ``CKKSVector.mm`` seconds, at one level.

Example:
    >>> import torch
    >>> from veil.he import ckks
    >>> ctx = ckks.context()                          # N=8192, [60, 40, 40, 60], scale 2**40
    >>> x = ckks.encrypt(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), ctx)
    >>> y = (x * 2 + 1).square()
    >>> y.shape, y.decrypt().round(decimals=3)
    (torch.Size([2, 2]), tensor([[ 9., 25.],
            [49., 81.]], dtype=torch.float64))
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from collections.abc import Sequence
from functools import cached_property
from typing import Any

import numpy as np
import torch

from veil.he import _deps

#: HomomorphicEncryption.org security standard (2018), 128-bit classical security,
#: ternary secret: the largest total coefficient modulus (bits) for each ring degree.
MAX_LOG_Q_128 = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}
#: Default ring degree: 4096 slots, room for 218 bits of modulus.
DEFAULT_POLY_MODULUS_DEGREE = 8192
#: Default scale (2**40: about 12 decimal digits of fixed point before noise).
DEFAULT_SCALE_BITS = 40


class DepthExceeded(ValueError):
    """A multiplication needs more levels than the context's modulus chain has."""


class CKKSContext:
    """A CKKS context: parameters, keys, and which of them may travel.

    Build one with :func:`context`. :meth:`public` drops the secret key (what a node
    receives); :meth:`serialize` never includes the secret key.
    """

    def __init__(self, raw: Any, *, poly_modulus_degree: int, coeff_mod_bit_sizes: Sequence[int],
                 scale_bits: int, galois_span: int | None = None) -> None:  # fmt: skip
        self.raw = raw
        self.poly_modulus_degree = int(poly_modulus_degree)
        self.coeff_mod_bit_sizes = [int(b) for b in coeff_mod_bit_sizes]
        self.scale_bits = int(scale_bits)
        if galois_span is not None:
            self.__dict__["rotation_span"] = int(galois_span)

    @property
    def slots(self) -> int:
        """Values per ciphertext (``poly_modulus_degree / 2``)."""
        return self.poly_modulus_degree // 2

    @property
    def depth(self) -> int:
        """Multiplications a fresh ciphertext can go through."""
        return len(self.coeff_mod_bit_sizes) - 2

    @property
    def is_private(self) -> bool:
        """Holds the secret key (can decrypt)."""
        return bool(self.raw.is_private())

    @cached_property
    def rotation_span(self) -> int:
        """Sums over up to this many slots are possible where this context is sent: its
        Galois keys rotate by 1, 2, 4, ... ``rotation_span / 2`` (0: no keys)."""
        if not self.raw.has_galois_keys():
            return 0
        keys = self.raw.galois_keys().data
        span, step = 1, 1
        while step < self.slots and keys.has_key(pow(3, step, 2 * self.poly_modulus_degree)):
            span, step = step * 2, step * 2
        return span

    @property
    def has_galois_keys(self) -> bool:
        return self.rotation_span > 0

    def _galois_bytes(self) -> bytes:
        """Galois keys for rotations by 1, 2, 4, ... < rotation_span only (SEAL format), made
        with the secret key and kept: TenSEAL's own generator makes every power of two in
        both directions, twice the size."""
        data = self.__dict__.get("_galois")
        if data is None:
            ts = _deps.tenseal()
            elts = [pow(3, 1 << i, 2 * self.poly_modulus_degree)
                    for i in range(max(0, self.rotation_span - 1).bit_length())]  # fmt: skip
            gen = ts._ts_cpp.KeyGenerator(self.raw.data.seal_context(), self.raw.data.secret_key())
            keys = ts._ts_cpp.GaloisKeys()
            gen.create_galois_keys(elts, keys)
            with tempfile.TemporaryDirectory() as tmp:  # public material only
                path = os.path.join(tmp, "galois")
                keys.save(path)
                with open(path, "rb") as f:
                    data = f.read()
            self.__dict__["_galois"] = data
        return data  # type: ignore[no-any-return]

    def _local_rotations(self) -> None:
        """Rotations on the key owner's machine use TenSEAL's full key set (made on demand)."""
        if self.is_private and not self.raw.has_galois_keys():
            self.raw.generate_galois_keys()

    @cached_property
    def fingerprint(self) -> str:
        """Identifies the key pair (a hash of the public key)."""
        data = self.raw.serialize(
            save_public_key=True, save_secret_key=False, save_galois_keys=False,
            save_relin_keys=False,
        )  # fmt: skip
        return hashlib.sha256(data).hexdigest()[:16]

    def public(self) -> CKKSContext:
        """A copy without the secret key: it encrypts and computes, never decrypts."""
        if not self.is_private:
            return self
        ts = _deps.tenseal()
        raw = ts.context_from(self.serialize())
        ctx = CKKSContext(raw, poly_modulus_degree=self.poly_modulus_degree,
                          coeff_mod_bit_sizes=self.coeff_mod_bit_sizes,
                          scale_bits=self.scale_bits)  # fmt: skip
        ctx.__dict__["fingerprint"] = self.fingerprint
        return ctx

    def serialize(self, *, galois_keys: bool = True) -> bytes:
        """The public context (public, relinearization and, if asked, Galois keys): TenSEAL's
        own serialization, never with the secret key."""
        with_keys = galois_keys and self.rotation_span > 0
        if with_keys and not self.is_private:
            data: bytes = self.raw.serialize(
                save_public_key=True, save_secret_key=False, save_galois_keys=True,
                save_relin_keys=True,
            )  # fmt: skip
            return data
        data = self.raw.serialize(
            save_public_key=True, save_secret_key=False, save_galois_keys=False,
            save_relin_keys=True,
        )  # fmt: skip
        if not with_keys:
            return data
        # TenSEALContextProto field 2 (TenSEALPublicProto) gets field 5 (galois_keys):
        # tenseal/proto/tensealcontext.proto.
        fields = _proto_fields(data)
        out = b"".join(
            _proto_field(f, wt, v + _proto_field(5, 2, self._galois_bytes()) if f == 2 else v)
            for f, wt, v in fields
        )
        return out

    @classmethod
    def from_bytes(cls, data: bytes | memoryview) -> CKKSContext:
        """Load a public context sent by :meth:`serialize` (refuses one holding a secret key)."""
        ts = _deps.tenseal()
        try:
            raw = ts.context_from(bytes(data))
        except Exception as exc:
            raise ValueError(f"not a valid TenSEAL context: {exc}") from None
        if raw.is_private():
            raise ValueError("refusing a context that carries a secret key: send ctx.public()")
        ctx = _wrap_raw(raw)
        problems = check_parameters(
            ctx.poly_modulus_degree, ctx.coeff_mod_bit_sizes, ctx.scale_bits
        )
        if problems:
            raise ValueError("refusing a CKKS context: " + "; ".join(problems))
        return ctx

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError("CKKS contexts travel only as ctx.serialize() (public keys), never pickled")

    def __repr__(self) -> str:
        kind = "private" if self.is_private else "public"
        return (
            f"CKKSContext(N={self.poly_modulus_degree}, coeff_mod_bit_sizes="
            f"{self.coeff_mod_bit_sizes}, scale=2**{self.scale_bits}, depth={self.depth}, "
            f"{kind}, rotation_span={self.rotation_span})"
        )


def _wrap_raw(raw: Any) -> CKKSContext:
    """Wrap a TenSEAL context, reading its parameters back from SEAL."""
    _deps.tenseal()
    import tenseal.sealapi  # noqa: F401 - registers seal::Modulus so the chain can be read

    parms = raw.seal_context().data.key_context_data().parms()
    bits = [m.bit_count() for m in parms.coeff_modulus()]
    n = int(parms.poly_modulus_degree())
    scale = raw.global_scale
    scale_bits = int(round(math.log2(scale))) if scale and scale > 0 else DEFAULT_SCALE_BITS
    return CKKSContext(raw, poly_modulus_degree=n, coeff_mod_bit_sizes=bits, scale_bits=scale_bits)


def check_parameters(poly_modulus_degree: int, coeff_mod_bit_sizes: Sequence[int],
                     scale_bits: int) -> list[str]:  # fmt: skip
    """Every problem with a set of CKKS parameters, each saying what to change.

    Example:
        >>> check_parameters(8192, [60, 40, 40, 60], 40)
        []
        >>> print(check_parameters(4096, [60, 40, 40, 60], 40)[0])  # doctest: +ELLIPSIS
        poly_modulus_degree=4096 allows at most 109 bits ...
    """
    problems: list[str] = []
    n = poly_modulus_degree
    bits = list(coeff_mod_bit_sizes)
    if n not in MAX_LOG_Q_128:
        problems.append(f"poly_modulus_degree must be one of {sorted(MAX_LOG_Q_128)}, got {n}")
        return problems
    if len(bits) < 2:
        problems.append(
            "coeff_mod_bit_sizes needs at least 2 primes ([first, ...middle..., last]); "
            "e.g. [60, 40, 40, 60] for depth 2"
        )
        return problems
    if any(not 17 <= b <= 60 for b in bits):
        problems.append(f"every coefficient modulus prime must have 17-60 bits, got {bits}")
    total = sum(bits)
    if total > MAX_LOG_Q_128[n]:
        bigger = next((d for d, q in sorted(MAX_LOG_Q_128.items()) if q >= total), None)
        hint = f"use poly_modulus_degree={bigger}" if bigger else "use fewer or smaller primes"
        problems.append(
            f"poly_modulus_degree={n} allows at most {MAX_LOG_Q_128[n]} bits of coefficient "
            f"modulus for 128-bit security (HomomorphicEncryption.org standard), got {total} "
            f"({bits}); {hint}, or lower the depth or the scale (TenSEAL's SEAL build "
            "refuses weaker parameters, so this cannot be forced)"
        )
    if not 20 <= scale_bits <= 60:
        problems.append(f"scale_bits must be in 20..60, got {scale_bits}; 40 is typical")
    middle = bits[1:-1]
    if middle and any(b != scale_bits for b in middle):
        problems.append(
            f"the middle primes {middle} should equal the scale (2**{scale_bits}) so each "
            f"rescale divides the scale back out; use coeff_mod_bit_sizes=[60, "
            f"{', '.join([str(scale_bits)] * len(middle))}, 60]"
        )
    if bits[0] < scale_bits + 10:
        problems.append(
            f"the first prime ({bits[0]} bits) should exceed the scale by ~10-20 bits "
            f"(room for the integer part); use {min(60, scale_bits + 20)}"
        )
    return problems


def context(poly_modulus_degree: int = DEFAULT_POLY_MODULUS_DEGREE,
            coeff_mod_bit_sizes: Sequence[int] | None = None, *, scale_bits: int = DEFAULT_SCALE_BITS,
            depth: int | None = None, galois_keys: bool | int = True) -> CKKSContext:  # fmt: skip
    """A CKKS context with a fresh key pair.

    Defaults: ``N = 8192`` (4096 slots), ``coeff_mod_bit_sizes = [60, 40, 40, 60]``
    (depth 2, 200 bits of the 218 that 128-bit security allows at N=8192), scale
    ``2**40``, relinearization and Galois keys (rotations: ``sum``, ``dot``, ``@``).

    Args:
        poly_modulus_degree: ring degree N (1024..32768, a power of two).
        coeff_mod_bit_sizes: bit sizes of the modulus chain; default
            ``[60] + [scale_bits] * depth + [60]``.
        scale_bits: ``log2`` of the encoding scale.
        depth: multiplications to support (sets the chain when ``coeff_mod_bit_sizes``
            is not given; default 2).
        galois_keys: rotation keys sent with the public context, needed where it is sent by
            ``sum``, ``dot`` and ``@``: ``True`` for sums over any number of slots (rotations
            by 1, 2, 4, ... slots/2: a 1.8 MiB context becomes ~18 MiB at N=8192, half of
            TenSEAL's default key set), an int ``n`` for sums over at most ``n`` slots
            (``log2(n)`` keys; ``galois_keys=1024`` serves a 784-input ``x @ W`` on a
            replicated vector), ``False`` for none. The key owner's own context makes
            rotation keys on demand for local computations.

    Parameters below 128-bit security are refused, with no override: SEAL (inside
    TenSEAL) enforces the same HomomorphicEncryption.org bound and cannot be told
    otherwise, so veil checks first and says what to change.

    Raises:
        ValueError: insecure or inconsistent parameters, with the fix.

    Example:
        >>> context(8192, depth=4)
        Traceback (most recent call last):
        ...
        ValueError: poly_modulus_degree=8192 allows at most 218 bits ...
        >>> context(16384, depth=4, galois_keys=False).depth
        4
    """
    if coeff_mod_bit_sizes is None:
        d = 2 if depth is None else int(depth)
        if d < 0:
            raise ValueError(f"depth must be >= 0, got {d}")
        coeff_mod_bit_sizes = [60] + [scale_bits] * d + [60]
    elif depth is not None and depth != len(coeff_mod_bit_sizes) - 2:
        raise ValueError(
            f"depth={depth} contradicts coeff_mod_bit_sizes={list(coeff_mod_bit_sizes)} "
            f"(depth {len(coeff_mod_bit_sizes) - 2}); give one of them"
        )
    problems = check_parameters(poly_modulus_degree, coeff_mod_bit_sizes, scale_bits)
    if problems:
        raise ValueError("; ".join(problems))
    ts = _deps.tenseal()
    raw = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=poly_modulus_degree,
                     coeff_mod_bit_sizes=list(coeff_mod_bit_sizes))  # fmt: skip
    raw.global_scale = 2.0**scale_bits
    slots = poly_modulus_degree // 2
    if galois_keys is True:
        span = slots
    elif galois_keys is False:
        span = 0
    elif isinstance(galois_keys, int) and 2 <= galois_keys <= slots:
        span = 1 << (galois_keys - 1).bit_length()
    else:
        raise ValueError(f"galois_keys is True, False or a number of slots in 2..{slots}")
    return CKKSContext(raw, poly_modulus_degree=poly_modulus_degree,
                       coeff_mod_bit_sizes=coeff_mod_bit_sizes, scale_bits=scale_bits,
                       galois_span=span)  # fmt: skip


# ----------------------------------------------------------------------------- helpers


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        c, n = n & 0x7F, n >> 7
        out.append(c | 0x80 if n else c)
        if not n:
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        c = data[pos]
        pos += 1
        value |= (c & 0x7F) << shift
        shift += 7
        if c < 0x80:
            return value, pos


def _proto_fields(data: bytes) -> list[tuple[int, int, Any]]:
    """Top-level (field, wire type, value) of a protobuf message (varint, 64-bit, bytes)."""
    out: list[tuple[int, int, Any]] = []
    pos = 0
    while pos < len(data):
        tag, pos = _read_varint(data, pos)
        field, wt = tag >> 3, tag & 7
        value: Any
        if wt == 0:
            value, pos = _read_varint(data, pos)
        elif wt == 1:
            value, pos = data[pos : pos + 8], pos + 8
        elif wt == 2:
            n, pos = _read_varint(data, pos)
            value, pos = data[pos : pos + n], pos + n
        else:
            raise ValueError(f"unexpected protobuf wire type {wt}")
        out.append((field, wt, value))
    return out


def _proto_field(field: int, wt: int, value: Any) -> bytes:
    head = _varint((field << 3) | wt)
    if wt == 0:
        return head + _varint(value)
    if wt == 1:
        return head + bytes(value)
    return head + _varint(len(value)) + bytes(value)


def _resized(vec: Any, size: int, raw_ctx: Any) -> Any:
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
    body = _varint(size)
    return ts.ckks_vector_from(raw_ctx, b"\x0a" + _varint(len(body)) + body + data[pos + length :])


def _as_plain(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu()
    else:
        t = torch.as_tensor(np.asarray(x, dtype=np.float64))
    if t.is_complex():
        raise TypeError("CKKS tensors here hold real values; got a complex plaintext")
    return t.to(torch.float64)


def _ts_call(fn: Any, *args: Any) -> Any:
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


class CKKSTensor:
    """A tensor encrypted with CKKS; its shape is public and preserved by every op.

    Build one with :func:`encrypt`. Operations need only the public context; decryption
    needs the context holding the secret key.
    """

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
    def depth_left(self) -> int:
        return self.context.depth - self.level

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

    def _like(self, cts: list[Any], *, level: int | None = None) -> CKKSTensor:
        """A tensor of this layout holding ``cts`` (a copy of this one's attributes: every
        element-wise op pays for this, so no __init__ and no layout checks)."""
        out = object.__new__(CKKSTensor)
        d = out.__dict__
        d.update(self.__dict__)
        d["_cts"] = cts
        if level is not None:
            d["level"] = level
        return out

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

    # -- plaintext layout ------------------------------------------------------------
    def _plain_chunks(self, p: Any, fill: float = 0.0) -> list[np.ndarray]:
        """A plaintext broadcast to this shape, laid out like the ciphertexts (float64 arrays,
        which TenSEAL takes as they are)."""
        t = _as_plain(p)
        try:
            arr = np.broadcast_to(t.numpy(), tuple(self.shape))
        except ValueError:
            raise ValueError(
                f"a plain tensor of shape {tuple(t.shape)} does not broadcast to the encrypted "
                f"shape {tuple(self.shape)}"
            ) from None
        flat = np.ascontiguousarray(arr).reshape(-1)
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

    def _check_other(self, other: CKKSTensor) -> None:
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

    # -- arithmetic ------------------------------------------------------------------
    def __add__(self, other: Any) -> CKKSTensor:
        if isinstance(other, CKKSTensor):
            if other._ct is not self._ct or other.context is not self.context:
                self._check_other(other)  # (one layout and context need no check)
            return self._like([a + b for a, b in zip(self._cts, other._cts)],
                              level=max(self.level, other.level))  # fmt: skip
        if isinstance(other, int | float):
            return self._like([v + float(other) for v in self._cts])
        return self._like([v + p for v, p in zip(self._cts, self._plain_chunks(other))])

    __radd__ = __add__

    def __sub__(self, other: Any) -> CKKSTensor:
        if isinstance(other, CKKSTensor):
            self._check_other(other)
            return self._like([a - b for a, b in zip(self._cts, other._cts)],
                              level=max(self.level, other.level))  # fmt: skip
        if isinstance(other, int | float):
            return self._like([v - float(other) for v in self._cts])
        return self._like([v - p for v, p in zip(self._cts, self._plain_chunks(other))])

    def __rsub__(self, other: Any) -> CKKSTensor:
        return (-self) + other

    def __neg__(self) -> CKKSTensor:
        return self._like([-v for v in self._cts])

    def __mul__(self, other: Any) -> CKKSTensor:
        if isinstance(other, CKKSTensor):
            self._check_other(other)
            level = max(self.level, other.level)
            (self if self.level >= other.level else other)._need_level()
            cts = [_ts_call(lambda a, b: a * b, a, b) for a, b in zip(self._cts, other._cts)]
            return self._like(cts, level=level + 1)
        self._need_level()
        if isinstance(other, int | float):
            return self._like([_ts_call(lambda v: v * float(other), v) for v in self._cts],
                              level=self.level + 1)  # fmt: skip
        chunks = self._plain_chunks(other)
        cts = [_ts_call(lambda v, p: v * p, v, p) for v, p in zip(self._cts, chunks)]
        return self._like(cts, level=self.level + 1)

    __rmul__ = __mul__

    def __truediv__(self, other: Any) -> CKKSTensor:
        if isinstance(other, CKKSTensor):
            raise TypeError("CKKS cannot divide by a ciphertext; multiply by a plain reciprocal")
        return self * (1.0 / _as_plain(other))

    def square(self) -> CKKSTensor:
        self._need_level()
        return self._like([_ts_call(lambda v: v.square(), v) for v in self._cts],
                          level=self.level + 1)  # fmt: skip

    def __pow__(self, exponent: int) -> CKKSTensor:
        if not isinstance(exponent, int) or exponent < 1:
            raise ValueError(f"CKKS powers are positive integers, got {exponent!r}")
        need = math.ceil(math.log2(exponent)) if exponent > 1 else 0
        self._need_level(need)
        return self._like([_ts_call(lambda v: v**exponent, v) for v in self._cts],
                          level=self.level + need)  # fmt: skip

    def polyval(self, coefficients: Sequence[float]) -> CKKSTensor:
        """``c0 + c1 x + c2 x**2 + ...`` elementwise (lowest degree first).

        Uses ``floor(log2(degree)) + 1`` levels (TenSEAL's power tree): degree 3 (the
        usual sigmoid approximation) fits the default depth-2 context.
        """
        coeffs = [float(c) for c in coefficients]
        while len(coeffs) > 1 and coeffs[-1] == 0.0:
            coeffs.pop()
        degree = len(coeffs) - 1
        if degree < 1:
            return self * 0.0 + coeffs[0] if coeffs else self * 0.0
        need = degree.bit_length()
        self._need_level(need)
        return self._like([_ts_call(lambda v: v.polyval(coeffs), v) for v in self._cts],
                          level=self.level + need)  # fmt: skip

    # -- reductions and products -----------------------------------------------------
    def _masked_total(self, weights: np.ndarray | None = None) -> Any:
        """One ciphertext holding ``sum(weights * self)`` in slot 0 (weights default 1)."""
        ts_size = self.context.slots
        flat_w = np.ones(self.numel()) if weights is None else weights.reshape(-1)
        if self._contiguous:  # unused slots are zero: sum each ciphertext over its own size
            total = None
            for vec, chunk in zip(
                self._cts, self._plain_chunks(torch.from_numpy(flat_w.reshape(tuple(self.shape))))
            ):
                if total is not None and not any(chunk):
                    continue
                s = _ts_call(lambda a, c: a.dot(c), vec, chunk)
                total = s if total is None else total + s
            if total is None:
                raise ValueError("sum of an empty encrypted tensor")
            return total
        acc = None
        for i, vec in enumerate(self._cts):
            sel = self._ct.reshape(-1) == i
            if not sel.any():
                continue
            mask = np.zeros(max(vec.size(), int(self._slot.reshape(-1)[sel].max()) + 1))
            np.add.at(mask, self._slot.reshape(-1)[sel], flat_w[sel])  # repeated views add up
            v = vec if vec.size() >= len(mask) else _resized(vec, len(mask), self.context.raw)
            term = _ts_call(lambda a, m: a * m, v, mask[: v.size()].tolist())
            acc = term if acc is None else acc + term
        if acc is None:
            raise ValueError("sum of an empty encrypted tensor")
        if acc.size() != ts_size:
            acc = _resized(acc, ts_size, self.context.raw)
        return _ts_call(lambda a: a.sum(), acc)

    def _from_scalars(self, cts: list[Any], shape: Sequence[int], level: int) -> CKKSTensor:
        n = math.prod(shape)
        return CKKSTensor(self.context, cts, np.arange(n).reshape(tuple(shape)),
                          np.zeros(tuple(shape), dtype=np.int64), level=level)  # fmt: skip

    def sum(self, dim: int | None = None) -> CKKSTensor:
        """Sum of all elements (``dim=None``) or over one dimension.

        A contiguous tensor sums with rotations only; other layouts first multiply by a
        0/1 mask (one level) so unused slots cannot leak into the total.
        """
        self._need_galois()
        if dim is None:
            if self._contiguous:
                total = None
                for v in self._cts:
                    s = _ts_call(lambda a: a.sum(), v)
                    total = s if total is None else total + s
                return self._from_scalars([total], (), self.level)
            self._need_level()
            return self._from_scalars([self._masked_total()], (), self.level + 1)
        dim = dim % self.ndim
        moved = self.transpose(dim, -1) if dim != self.ndim - 1 else self
        out_shape = moved.shape[:-1]
        cts = []
        self._need_level()
        for idx in np.ndindex(*out_shape):
            w = np.zeros(tuple(moved.shape))
            w[idx] = 1.0
            cts.append(moved._masked_total(np.ascontiguousarray(w)))
        return self._from_scalars(cts, out_shape, self.level + 1)

    def _need_galois(self, span: int | None = None) -> None:
        """Check the rotations a sum over ``span`` slots needs (default: this layout's)."""
        ctx = self.context
        if ctx.is_private:
            ctx._local_rotations()
            return
        if span is None:
            span = self._rotation_need()
        if span > ctx.rotation_span:
            have = f"sums over at most {ctx.rotation_span} slots" if ctx.rotation_span else "none"
            raise ValueError(
                f"this rotates over {span} slots, but the context's Galois keys allow {have}: "
                f"create it with ckks.context(..., galois_keys=True) (or >= {span}) and send "
                "it again"
            )

    def _rotation_need(self) -> int:
        if self.tile > 1:
            return self.context.slots  # sums of a replicated vector mask and sum every slot
        if self._contiguous:
            return 1 << (max([v.size() for v in self._cts] + [1]) - 1).bit_length()
        return self.context.slots

    def dot(self, other: Any) -> CKKSTensor:
        """Dot product of 1-d tensors (with a plain vector or an encrypted one)."""
        if self.ndim != 1:
            raise ValueError(f"dot needs a 1-d tensor, got shape {tuple(self.shape)}")
        if isinstance(other, CKKSTensor):
            return (self * other).sum()
        return self.matmul(_as_plain(other))

    def matmul(self, other: Any) -> CKKSTensor:
        """``self @ W`` with a plaintext vector or matrix ``W``.

        A vector encrypted with ``replicate=True`` takes the fast path: per group of
        ``tile`` outputs, one plaintext product with the matrix columns laid side by side
        and a rotate-and-sum inside each block (``log2(block)`` rotations), one level.
        Otherwise each output is a masked product and a full rotate-and-sum.
        """
        if isinstance(other, CKKSTensor):
            raise TypeError("matmul of two ciphertexts is not supported; one side must be plain")
        if not (self.tile > 1 and self.ndim == 1):
            self._need_galois()
        w = _as_plain(other)
        if w.ndim not in (1, 2) or self.ndim not in (1, 2) or w.shape[0] != self.shape[-1]:
            raise ValueError(
                f"matmul: shapes {tuple(self.shape)} and {tuple(w.shape)} do not match "
                "(1-d or 2-d, inner sizes equal)"
            )
        self._need_level()
        if self.tile > 1 and self.ndim == 1:
            self._need_galois(self.block)
            out = self._replicated_matmul(w if w.ndim == 2 else w[:, None])
            return out.reshape(()) if w.ndim == 1 else out
        wn = w.numpy() if w.ndim == 2 else w.numpy()[:, None]
        rows = [()] if self.ndim == 1 else [(i,) for i in range(self.shape[0])]
        cts = []
        for r in rows:
            for j in range(wn.shape[1]):
                weights = np.zeros(tuple(self.shape))
                weights[r] = wn[:, j]
                cts.append(self._masked_total(weights))
        shape = [*(self.shape[:-1]), wn.shape[1]] if w.ndim == 2 else list(self.shape[:-1])
        return self._from_scalars(cts, shape, self.level + 1)

    __matmul__ = matmul

    def __rmatmul__(self, other: Any) -> CKKSTensor:
        w = _as_plain(other)
        if self.ndim == 1:
            return self.matmul(w.T if w.ndim == 2 else w)
        return self.transpose(0, 1).matmul(w.T if w.ndim == 2 else w).transpose(0, 1)

    def _replicated_matmul(self, w: torch.Tensor) -> CKKSTensor:
        k, m = w.shape
        block, tile, slots = self.block, self.tile, self.context.slots
        vec = self._cts[0]
        cts, wn = [], w.numpy()
        for g in range(0, m, tile):
            cols = min(tile, m - g)
            layout = np.zeros((tile, block))
            for c in range(cols):  # element i sits in slot[i] (views may repeat an element)
                np.add.at(layout[c], self._slot, wn[:, g + c])
            prod = _ts_call(lambda a, p: a * p, vec, layout.reshape(-1)[: vec.size()].tolist())
            summed = _ts_call(lambda a: a.sum(), _resized(prod, block, self.context.raw))
            cts.append(_resized(summed, slots, self.context.raw))
        j = np.arange(m)
        return CKKSTensor(self.context, cts, j // tile, (j % tile) * block, level=self.level + 1)

    # -- shape (free: only the index maps move) --------------------------------------
    def _view(self, ct: np.ndarray, slot: np.ndarray) -> CKKSTensor:
        return CKKSTensor(self.context, self._cts, ct, slot, tile=self.tile, block=self.block,
                          level=self.level)  # fmt: skip

    def reshape(self, *shape: Any) -> CKKSTensor:
        dims = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], Sequence) else shape
        return self._view(self._ct.reshape(dims), self._slot.reshape(dims))

    view = reshape

    def flatten(self) -> CKKSTensor:
        return self.reshape(-1)

    def transpose(self, dim0: int, dim1: int) -> CKKSTensor:
        return self._view(np.swapaxes(self._ct, dim0, dim1), np.swapaxes(self._slot, dim0, dim1))

    @property
    def T(self) -> CKKSTensor:  # noqa: N802 - torch's spelling
        return self._view(self._ct.T, self._slot.T)

    def __getitem__(self, index: Any) -> CKKSTensor:
        return self._view(np.asarray(self._ct[index]), np.asarray(self._slot[index]))

    def send(self, worker: Any, **kwargs: Any) -> Any:
        """Send to a node (``worker.send(self)``): returns an :class:`~veil.he.EncryptedPointer`."""
        return worker.send(self, **kwargs)

    def __veil_send__(self, worker: Any, *, description: str = "") -> Any:
        from veil.he.remote import send  # the node-facing half lives above this module

        return send(self, worker, description=description)


def encrypt(x: Any, ctx: CKKSContext, *, replicate: bool = False) -> CKKSTensor:
    """Encrypt a real tensor (any shape) under ``ctx``.

    Args:
        x: values; the flattened tensor fills ``ceil(numel / slots)`` ciphertexts.
        ctx: from :func:`context` (its public copy encrypts too).
        replicate: 1-d only: tile the vector across the slots (block = next power of two
            of its length) for the fast ``x @ W`` of :meth:`CKKSTensor.matmul`.

    Example:
        >>> ctx = context()
        >>> x = encrypt(torch.arange(6.0), ctx, replicate=True)
        >>> (x @ torch.ones(6, 3)).decrypt().round(decimals=3)
        tensor([15., 15., 15.], dtype=torch.float64)
    """
    if not isinstance(ctx, CKKSContext):
        raise TypeError(f"encrypt() needs a ckks.CKKSContext, got {type(ctx).__name__}")
    ts = _deps.tenseal()
    t = _as_plain(x)
    flat = t.reshape(-1).numpy()
    if not np.isfinite(flat).all():  # (numpy: a twentieth of torch's cost at this size)
        raise ValueError("cannot encrypt NaN or infinity")
    slots = ctx.slots
    if replicate:
        if t.ndim != 1 or t.numel() == 0:
            raise ValueError("replicate=True encrypts a non-empty 1-d vector")
        block = 1 << (t.numel() - 1).bit_length()
        if block > slots:
            raise ValueError(
                f"a vector of {t.numel()} values does not fit {slots} slots; use a larger "
                "poly_modulus_degree or encrypt without replicate"
            )
        tile = slots // block
        padded = np.zeros(block)
        padded[: t.numel()] = flat
        vec = ts.ckks_vector(ctx.raw, np.tile(padded, tile).tolist())
        n = t.numel()
        return CKKSTensor(ctx, [vec], np.zeros(n, dtype=np.int64), np.arange(n), tile=tile,
                          block=block)  # fmt: skip
    n = flat.size
    # TenSEAL takes the float64 array (and lists it itself, faster than from a tensor).
    cts = [ts.ckks_vector(ctx.raw, flat[i : i + slots]) for i in range(0, n, slots)]
    idx = np.arange(n)
    out = CKKSTensor(ctx, cts, (idx // slots).reshape(tuple(t.shape)),
                     (idx % slots).reshape(tuple(t.shape)))  # fmt: skip
    out.__dict__["_contiguous"] = True
    return out


def sigmoid_coefficients(
    degree: int = 3, interval: tuple[float, float] = (-8.0, 8.0)
) -> list[float]:
    """Least-squares polynomial fit of the sigmoid on ``interval`` (odd degrees 1, 3, 5, 7).

    Largest error on the interval: degree 3: 0.11 on [-8, 8], 0.06 on [-5, 5]; degree 5:
    0.06 / 0.02; degree 7: 0.03 / 0.007. Outside the interval the polynomial diverges.

    Example:
        >>> [round(c, 4) for c in sigmoid_coefficients(3)]
        [0.5, 0.1501, 0.0, -0.0016]
    """
    if degree not in (1, 3, 5, 7):
        raise ValueError(f"sigmoid approximations have odd degree 1, 3, 5 or 7, got {degree}")
    lo, hi = interval
    xs = np.linspace(lo, hi, 2001)
    ys = 1.0 / (1.0 + np.exp(-xs))
    coeffs = np.polynomial.polynomial.polyfit(xs, ys, degree)
    coeffs[2::2] = 0.0  # sigmoid - 1/2 is odd: drop the even terms (fit noise)
    coeffs[0] = 0.5
    return [float(c) for c in coeffs]


def sigmoid(
    x: CKKSTensor, degree: int = 3, interval: tuple[float, float] = (-8.0, 8.0)
) -> CKKSTensor:
    """Polynomial approximation of the sigmoid (accurate inside ``interval`` only)."""
    return x.polyval(sigmoid_coefficients(degree, interval))
