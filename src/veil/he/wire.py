"""The two HE schemes, and encrypted tensors / public contexts <-> veil's wire Structs.

Ciphertexts travel in their library's own serialization (TenSEAL ``serialize()`` for
CKKS, fixed-width big-endian integers for Paillier) inside msgpack
:class:`~veil.serde.messages.EncryptedData`; public contexts inside
:class:`~veil.serde.messages.EncryptionContextData`. Secret keys have no wire form:
:meth:`CKKSContext.serialize` never includes one, a receiver refuses a context that
carries one, and a Paillier :class:`~veil.he.paillier.PrivateKey` is not encodable.
"""

from __future__ import annotations

import hashlib
import math
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from veil.he import _deps, ckks, limits, paillier
from veil.he.ckks import CKKSContext, CKKSTensor
from veil.he.paillier import EncryptedTensor, Packing, PublicKey
from veil.he.scheme import HEScheme, register_scheme, scheme_for, scheme_named
from veil.he.tenseal_proto import vector_claims
from veil.serde.messages import EncryptedData, EncryptionContextData
from veil.serde.tensors import tensor_from_data, tensor_to_data

Encrypted = EncryptedTensor | CKKSTensor
Context = PublicKey | CKKSContext

# Public contexts already loaded, by content hash (a restarted node loads each once).
_LOADED: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()


def _digest(scheme: str, data: bytes) -> str:
    return hashlib.sha256(scheme.encode() + b"\0" + data).hexdigest()


def _parts_digest(parts: list[bytes]) -> str:
    """BLAKE2b of a ciphertext's parts: damaged bytes fail loudly instead of decoding to noise."""
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        h.update(len(p).to_bytes(8, "big"))
        h.update(p)
    return h.hexdigest()


def context_digest(ctx: Context) -> str:
    """Content hash of a context's public bytes (what ``context_to_wire`` sends)."""
    digest = ctx.__dict__.get("_digest") if hasattr(ctx, "__dict__") else None
    if digest is None:
        wire = context_to_wire(ctx)
        digest = _digest(wire.scheme, bytes(wire.data))
        if hasattr(ctx, "__dict__"):
            ctx.__dict__["_digest"] = digest
    return digest  # type: ignore[no-any-return]


def scheme_of(value: Encrypted | Context) -> str:
    return scheme_for(value).name


def context_of(value: Encrypted) -> Context:
    return scheme_for(value).context_of(value)  # type: ignore[no-any-return]


def _int_meta(meta: dict[str, Any], key: str, default: int | None = None, *, lo: int = 0,
              hi: int | None = None) -> int:  # fmt: skip
    v = meta.get(key, default)
    if isinstance(v, str) and v.isdigit() and len(v) < 5000:
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool) or v < lo or (hi is not None and v > hi):
        raise ValueError(f"bad {key!r} in encrypted tensor metadata")
    return v


# -------------------------------------------------------------------------- schemes


class PaillierScheme(HEScheme):
    """Paillier: the public key is ``n``; ciphertexts are fixed-width big-endian integers."""

    name = "paillier"
    tensor_type = EncryptedTensor
    context_type = PublicKey

    def encrypt(self, x: Any, key: Any, **kwargs: Any) -> EncryptedTensor:
        return paillier.encrypt(x, key, **kwargs)

    def context_of(self, value: Any) -> PublicKey:
        return value.public_key  # type: ignore[no-any-return]

    def context_to_bytes(self, ctx: Any) -> bytes:
        return ctx.to_bytes()  # type: ignore[no-any-return]

    def context_from_bytes(self, data: bytes) -> PublicKey:
        top = limits.current().max_paillier_bits
        bits = int.from_bytes(data[:64], "big").bit_length() + 8 * max(0, len(data) - 64)
        if bits > top:
            raise ValueError(
                f"a {bits}-bit Paillier modulus is over this node's limit of {top} bits (each "
                "operation costs (bits/2048)**2 times a 2048-bit key's); use a 2048-4096-bit key"
            )
        # Under 2048 bits only where the process opted in (VEIL_HE_INSECURE_KEYS=1, tests);
        # PublicKey also refuses what is not an odd non-square without small factors.
        return PublicKey.from_bytes(data)

    def tensor_to_parts(self, value: Any) -> tuple[list[bytes], dict[str, Any], Any]:
        pk = value.public_key
        width = 2 * ((pk.bits + 7) // 8)
        blob = b"".join(int(c).to_bytes(width, "big") for c in value._data.reshape(-1))
        meta: dict[str, Any] = {
            "exponent": value.exponent, "bound": str(value.bound), "offsets": str(value.offsets),
        }  # fmt: skip
        if value.packing is not None:
            meta.update(slot_bits=value.packing.slot_bits, value_bits=value.packing.value_bits)
        return [blob], meta, None

    def tensor_from_parts(self, parts: list[bytes], meta: dict[str, Any], layout: Any,
                          ctx: Any, shape: list[int]) -> EncryptedTensor:  # fmt: skip
        try:
            return self._tensor_from_parts(parts, meta, ctx, shape)
        except OverflowError as exc:  # a claimed bound past the modulus
            raise ValueError(str(exc)) from None

    def _tensor_from_parts(self, parts: list[bytes], meta: dict[str, Any], ctx: Any,
                           shape: list[int]) -> EncryptedTensor:  # fmt: skip
        gmpy2 = _deps.gmpy2()
        pk: PublicKey = ctx
        numel = math.prod(shape)
        packing = None
        count = numel
        if "slot_bits" in meta:
            packing = Packing(_int_meta(meta, "slot_bits", lo=10, hi=pk.bits),
                              _int_meta(meta, "value_bits", lo=8, hi=pk.bits))  # fmt: skip
            slots = packing.slots(pk.bits)
            if slots < 1:
                raise ValueError("packing slots wider than the key")
            count = -(-numel // slots)
        width = 2 * ((pk.bits + 7) // 8)
        if len(parts) != 1 or len(parts[0]) != count * width:
            raise ValueError(f"expected {count} ciphertexts of {width} bytes")
        blob = bytes(parts[0])
        nsq = pk.nsq
        cs = [gmpy2.mpz(int.from_bytes(blob[i : i + width], "big"))
              for i in range(0, len(blob), width)]  # fmt: skip
        if any(c <= 0 or c >= nsq for c in cs):
            raise ValueError("a Paillier ciphertext is outside (0, n^2): corrupted or tampered")
        n = pk.n
        if any(gmpy2.gcd(c, n) != 1 for c in cs):  # not a unit: no encryption gives it
            raise ValueError("a Paillier ciphertext shares a factor with n: not an encryption")
        offsets = _int_meta(meta, "offsets", 0, hi=1 << 64)
        if packing is None and offsets:
            raise ValueError("an unpacked Paillier tensor carries no offsets")
        arr = np.empty(count, dtype=object)
        arr[:] = cs
        if packing is None:
            arr = arr.reshape(tuple(shape))
        return EncryptedTensor(
            pk, arr, shape, exponent=_int_meta(meta, "exponent", hi=paillier.MAX_EXPONENT),
            bound=_int_meta(meta, "bound"), packing=packing, offsets=offsets,
        )  # fmt: skip

    def nbytes(self, value: Any) -> int:
        if isinstance(value, PublicKey):
            return (value.bits + 7) // 8
        return int(value.ciphertexts * 2 * ((value.public_key.bits + 7) // 8))


class CKKSScheme(HEScheme):
    """CKKS on TenSEAL: contexts and ciphertexts in TenSEAL's own serialization, plus the
    slot layout (element -> ciphertext, slot) as an int64 tensor."""

    name = "ckks"
    tensor_type = CKKSTensor
    context_type = CKKSContext

    def encrypt(self, x: Any, key: Any, **kwargs: Any) -> CKKSTensor:
        return ckks.encrypt(x, key, **kwargs)

    def context_of(self, value: Any) -> CKKSContext:
        return value.context  # type: ignore[no-any-return]

    def context_to_bytes(self, ctx: Any) -> bytes:
        data = ctx.__dict__.get("_public_bytes")  # serializing Galois keys takes seconds
        if data is None:
            data = ctx.__dict__["_public_bytes"] = ctx.serialize()
        return data  # type: ignore[no-any-return]

    def context_storage_bytes(self, ctx: Any) -> bytes:
        # Without Galois keys (~10x smaller): a stored ciphertext rebinds to the full
        # context when the node still holds it, and keeps this one as a fallback.
        data = ctx.__dict__.get("_storage_bytes")
        if data is None:
            data = ctx.__dict__["_storage_bytes"] = ctx.serialize(galois_keys=False)
        return data  # type: ignore[no-any-return]

    def context_from_bytes(self, data: bytes) -> CKKSContext:
        ctx = CKKSContext.from_bytes(data)
        ctx.__dict__["_public_bytes"] = data  # what it came as is what it would go as
        return ctx

    def tensor_to_parts(self, value: Any) -> tuple[list[bytes], dict[str, Any], Any]:
        cts, ct_idx = value._cts, value._ct
        used = np.unique(ct_idx)
        if len(used) < len(cts):  # a view of some ciphertexts: send only those
            cts = [cts[i] for i in used]
            ct_idx = np.searchsorted(used, ct_idx)
        layout = np.stack([ct_idx, value._slot], axis=-1).astype(np.int64)
        meta = {"tile": value.tile, "block": value.block, "level": value.level}
        return [v.serialize() for v in cts], meta, tensor_to_data(torch.from_numpy(layout))

    def tensor_from_parts(self, parts: list[bytes], meta: dict[str, Any], layout_data: Any,
                          ctx: Any, shape: list[int]) -> CKKSTensor:  # fmt: skip
        ts = _deps.tenseal()
        numel = math.prod(shape)
        if layout_data is None:
            raise ValueError("a CKKS tensor needs its slot layout")
        layout = tensor_from_data(layout_data, copy=True).numpy()
        if layout.dtype != np.int64 or list(layout.shape) != [*shape, 2]:
            raise ValueError("CKKS slot layout does not match the shape")
        nct = len(parts)
        if numel and nct == 0:
            raise ValueError("a CKKS tensor with values needs ciphertexts")
        cts_idx, slot_idx = layout[..., 0], layout[..., 1]
        if numel and (cts_idx.min() < 0 or cts_idx.max() >= nct or slot_idx.min() < 0
                      or slot_idx.max() >= ctx.slots):  # fmt: skip
            raise ValueError("CKKS slot layout points outside the ciphertexts")
        used = np.unique(cts_idx)
        if used.size < nct:  # ciphertexts holding no value (a view sent whole): never loaded
            parts = [parts[i] for i in used]
            cts_idx = np.searchsorted(used, cts_idx)
            nct = len(parts)
        tile = _int_meta(meta, "tile", 1, lo=1, hi=ctx.slots)
        block = _int_meta(meta, "block", 0, hi=ctx.slots)
        if tile > 1 and (
            len(shape) != 1 or block < 1 or block & (block - 1) or tile * block > ctx.slots
            or nct != 1
        ):  # fmt: skip
            raise ValueError("bad replicated layout")
        level = _int_meta(meta, "level", 0, hi=ctx.depth)
        cts = []
        for p in parts:
            raw = bytes(p)
            _check_vector_claims(raw, ctx)
            try:
                vec = ts.ckks_vector_from(ctx.raw, raw)
            except Exception as exc:
                raise ValueError(
                    f"a CKKS ciphertext failed to load (corrupted, or another context): {exc}"
                ) from None
            _check_loaded_vector(vec, ctx, level)
            cts.append(vec)
        return CKKSTensor(ctx, cts, np.ascontiguousarray(cts_idx), np.ascontiguousarray(slot_idx),
                          tile=tile, block=block, level=level)  # fmt: skip

    def nbytes(self, value: Any) -> int:
        if isinstance(value, CKKSContext):
            return len(self.context_to_bytes(value))
        ctx = value.context  # 2 polynomials of N coefficients per remaining prime
        primes = max(1, len(ctx.coeff_mod_bit_sizes) - 1 - value.level)
        return int(len(value._cts) * 2 * ctx.poly_modulus_degree * primes * 8)


def _check_vector_claims(raw: bytes, ctx: CKKSContext) -> None:
    """What a serialized TenSEAL vector claims, checked against its context before loading
    it: a slot count (field 1) within the ring's slots, the context's scale (field 3)."""
    claimed, scale = vector_claims(raw)
    if len(claimed) != 1 or not 1 <= claimed[0] <= ctx.slots:
        raise ValueError(
            f"a CKKS ciphertext claims {claimed[:2]} slots; its context has {ctx.slots}"
        )
    if scale != 2.0**ctx.scale_bits:
        raise ValueError(
            f"a CKKS ciphertext claims scale {scale:.6g}, not its context's 2**{ctx.scale_bits}"
        )


def _check_loaded_vector(vec: Any, ctx: CKKSContext, level: int) -> None:
    """The SEAL ciphertext inside: two polynomials, the context's scale, at ``level``."""
    inner = vec.data.ciphertext()
    if len(inner) != 1:
        raise ValueError("a CKKS vector must hold exactly one ciphertext")
    c = inner[0]
    want = ctx.depth + 1 - level
    if c.size() != 2 or c.scale != 2.0**ctx.scale_bits or c.coeff_modulus_size() != want:
        raise ValueError(
            f"a CKKS ciphertext does not match its claims (size {c.size()}, scale {c.scale:.6g}, "
            f"{c.coeff_modulus_size()} primes left; level {level} of this context has {want})"
        )


register_scheme(PaillierScheme())
register_scheme(CKKSScheme())


# ------------------------------------------------------------------------- contexts


def context_to_wire(ctx: Context) -> EncryptionContextData:
    """The public part of a context (there is no secret part to send)."""
    try:
        scheme = scheme_for(ctx)
    except TypeError:
        raise TypeError(
            f"only public keys and contexts travel, not a {type(ctx).__name__}; secret keys "
            "never leave their owner"
        ) from None
    if not isinstance(ctx, scheme.context_type):
        raise TypeError(f"expected a {scheme.name} public context, got {type(ctx).__name__}")
    return EncryptionContextData(scheme.name, memoryview(scheme.context_to_bytes(ctx)))


def context_from_wire(data: EncryptionContextData) -> Context:
    scheme = scheme_named(data.scheme)
    raw = bytes(data.data)
    digest = _digest(data.scheme, raw)
    cached = _LOADED.get(digest)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    ctx = scheme.context_from_bytes(raw)
    _LOADED[digest] = ctx
    if hasattr(ctx, "__dict__"):
        ctx.__dict__["_digest"] = digest
    return ctx  # type: ignore[no-any-return]


# -------------------------------------------------------------------------- tensors


def to_wire(
    value: Encrypted, *, context: int | None = None, storage: bool = False
) -> EncryptedData:
    """An encrypted tensor as a wire Struct.

    Args:
        context: node object id of its public context (what a client sends).
        storage: carry the public context inline (a node's own store: self-contained).
    """
    scheme = scheme_for(value)
    ctx = scheme.context_of(value)
    inline = None
    parts, meta, layout = scheme.tensor_to_parts(value)
    meta = {"context_fp": ctx.fingerprint, "parts_digest": _parts_digest(parts), **meta}
    if storage:
        store = getattr(scheme, "context_storage_bytes", scheme.context_to_bytes)
        inline = memoryview(store(ctx))
        meta["context_digest"] = context_digest(ctx)
    return EncryptedData(scheme.name, list(value.shape), [memoryview(p) for p in parts], meta,
                         layout, context, inline)  # fmt: skip


def from_wire(data: EncryptedData, resolve: Callable[[int], Any] | None = None,
              local: Context | None = None) -> Encrypted:  # fmt: skip
    """Rebuild an encrypted tensor, linked to a context: ``local`` (a client decoding a
    reply with its own context), the inline one (storage), or ``resolve(data.context)``
    (a node receiving it)."""
    scheme = scheme_named(data.scheme)
    ctx: Any
    if local is not None:
        ctx = local
    elif data.context_data is not None:  # from a node's store: the exact context it was
        digest = data.meta.get("context_digest")  # bound to, if the node still holds it
        ctx = _LOADED.get(digest) if isinstance(digest, str) else None
        if ctx is None:
            ctx = context_from_wire(EncryptionContextData(data.scheme, data.context_data))
    elif data.context is not None and resolve is not None:
        ctx = resolve(data.context)
    else:
        raise ValueError("an encrypted tensor arrived without its public context; send it first")
    if not isinstance(ctx, scheme.context_type):
        raise ValueError(f"object {data.context} is not a {data.scheme} context")
    fp, have = data.meta.get("context_fp"), str(getattr(ctx, "fingerprint", ""))
    if fp is not None and fp != have:
        raise ValueError(
            f"this ciphertext belongs to context {str(fp)[:16]!r}, not {have!r}: "
            "a mismatched context cannot read it"
        )
    shape = [int(d) for d in data.shape]
    if any(d < 0 for d in shape) or math.prod(shape) > limits.current().max_elements:
        raise ValueError(f"encrypted tensor shape {shape[:8]} is invalid or over the limit")
    parts = [bytes(p) for p in data.parts]
    if data.meta.get("parts_digest") != _parts_digest(parts):
        raise ValueError(
            "the ciphertext bytes do not match their digest: corrupted or altered on the way; "
            "send the tensor again (a digest catches damage, not a sender that recomputes it: "
            "ciphertexts are malleable by design, see docs/he.md)"
        )
    return scheme.tensor_from_parts(parts, dict(data.meta), data.layout, ctx, shape)  # type: ignore[no-any-return]


def nbytes(value: Encrypted | Context) -> int:
    """Memory an encrypted tensor or public context holds (estimated without serializing)."""
    return scheme_for(value).nbytes(value)
