"""What a node accepts as an encrypted tensor or a key: every claim checked against its
context on arrival (slot counts, scale, level, layout, key sizes, ciphertext ranges)."""

from __future__ import annotations

import struct

import pytest
import torch

from veil.errors import InvalidRequest
from veil.he import ckks, limits, paillier, wire
from veil.he.remote import _SENT
from veil.he.tenseal_proto import proto_field, proto_fields, varint
from veil.serde.messages import EncryptedData, EncryptionContextData, SendObject
from veil.serde.tensors import tensor_from_data, tensor_to_data

pytest.importorskip("tenseal", reason="CKKS needs TenSEAL: pip install 'veil[he]'")


def forged(data: EncryptedData, parts: list[bytes] | None = None, **meta: object) -> EncryptedData:
    """``data`` with other ciphertext bytes or metadata, its digest recomputed (what a
    sender who wants them accepted does: the digest catches damage, not intent)."""
    parts = [bytes(p) for p in data.parts] if parts is None else parts
    new_meta = {**data.meta, **meta, "parts_digest": wire._parts_digest(parts)}
    return EncryptedData(data.scheme, data.shape, [memoryview(p) for p in parts], new_meta,
                         data.layout, data.context)  # fmt: skip


def rewrite(vector: bytes, field: int, value: bytes) -> bytes:
    return b"".join(proto_field(f, wt, value if f == field else v)
                    for f, wt, v in proto_fields(vector))  # fmt: skip


@pytest.fixture
def ckks_wire(virtual, ckks_ctx):
    ds = virtual.scientist()
    ckks.encrypt(torch.ones(2), ckks_ctx).send(ds)  # the context goes first
    return ds, _SENT[ds][ckks_ctx.fingerprint]


def test_a_ciphertext_claiming_more_slots_than_its_ring_is_refused(ckks_wire, ckks_ctx) -> None:
    """Item 2 (issue 10): a 323 KiB ciphertext claiming 20M slots cost 11.8 s and 2.7 GB in
    one he.sum; the claim is now checked against the context before the vector loads."""
    ds, ctx_id = ckks_wire
    data = wire.to_wire(ckks.encrypt(torch.ones(2), ckks_ctx), context=ctx_id)
    for claim in (20_000_000, ckks_ctx.slots + 1, 0):
        bad = forged(data, [rewrite(bytes(data.parts[0]), 1, varint(claim))])
        with pytest.raises(InvalidRequest, match="claims"):
            ds.call(SendObject(bad))


def test_scale_and_level_claims_must_match_the_ciphertext(ckks_wire, ckks_ctx) -> None:
    ds, ctx_id = ckks_wire
    data = wire.to_wire(ckks.encrypt(torch.ones(2), ckks_ctx), context=ctx_id)
    scaled = forged(data, [rewrite(bytes(data.parts[0]), 3, struct.pack("<d", 2.0**30))])
    with pytest.raises(InvalidRequest, match="scale"):
        ds.call(SendObject(scaled))
    with pytest.raises(InvalidRequest, match="primes left"):
        ds.call(SendObject(forged(data, level=1)))  # a fresh ciphertext claiming level 1
    deeper = wire.to_wire(ckks.encrypt(torch.ones(2), ckks_ctx) * 1.0, context=ctx_id)
    with pytest.raises(InvalidRequest, match="primes left"):
        ds.call(SendObject(forged(deeper, level=0)))


def test_views_travel_compact_and_unused_ciphertexts_are_dropped(virtual, ckks_ctx) -> None:
    """Ciphertexts a tensor's layout does not use cost work in every op: they are not sent,
    and a node drops any it receives before loading them."""
    ds = virtual.scientist()
    x = torch.arange(float(ckks_ctx.slots + 3))
    enc = ckks.encrypt(x, ckks_ctx)  # two ciphertexts
    view = enc[-2:]  # values of the second only
    ptr = view.send(ds)
    data = wire.to_wire(view, context=_SENT[ds][ckks_ctx.fingerprint])
    assert len(data.parts) == 1  # compacted on the way out
    assert torch.allclose(ptr.decrypt(), x[-2:].double(), atol=1e-3)
    garbage = b"not a ciphertext" * 100  # never parsed: the layout does not use it
    layout = tensor_from_data(data.layout, copy=True)
    layout[..., 0] += 1  # the values now sit in the second part
    padded = forged(EncryptedData(data.scheme, data.shape, data.parts, data.meta,
                                  tensor_to_data(layout), data.context),
                    [garbage, bytes(data.parts[0])])  # fmt: skip
    info = ds.call(SendObject(padded))
    stored = virtual.node._objects[info.id].value
    assert stored.ciphertexts == 1 and stored._ct.tolist() == [0, 0]
    again = ds.pointer(info.id)
    again._local = ckks_ctx
    assert torch.allclose(again.decrypt(), x[-2:].double(), atol=1e-3)


def test_nodes_refuse_small_keys_without_the_test_opt_in(virtual, monkeypatch) -> None:
    """Item 2: nodes accepted Paillier keys from 256 bits. Under 2048 bits is now refused
    unless the process opted in (VEIL_HE_INSECURE_KEYS=1, which this suite sets)."""
    pk, _ = paillier.keygen(512, force=True)
    ds = virtual.scientist()
    monkeypatch.delenv("VEIL_HE_INSECURE_KEYS")
    with pytest.raises(InvalidRequest, match="512-bit Paillier key is not secure"):
        paillier.encrypt(torch.ones(1), pk).send(ds)
    with pytest.raises(ValueError, match="not secure"):
        paillier.PublicKey(pk.n)  # and encrypt() has no small key to work with
    assert paillier.PublicKey(pk.n, allow_insecure=True).insecure  # the explicit test keyword
    monkeypatch.setenv("VEIL_HE_INSECURE_KEYS", "1")
    assert paillier.encrypt(torch.ones(1), pk).send(ds).shape == (1,)


def test_nodes_refuse_oversized_and_fake_moduli(virtual) -> None:
    """Item 2: a fake 16,384-bit modulus was accepted (each product then costs ~64x)."""
    ds = virtual.scientist()
    top = limits.current().max_paillier_bits
    huge = (1 << 16383) + 1 + 2 * 3**5000
    with pytest.raises(InvalidRequest, match=f"over this node's limit of {top} bits"):
        ds.call(
            SendObject(EncryptionContextData("paillier", memoryview(huge.to_bytes(2048, "big"))))
        )
    for fake in ((1 << 2047) + 1, 3 * ((1 << 2046) + 1), 2**2048 - 2):
        data = fake.to_bytes(256, "big")
        with pytest.raises(InvalidRequest, match="not a Paillier modulus"):
            ds.call(SendObject(EncryptionContextData("paillier", memoryview(data))))
    with limits.override(max_paillier_bits=8192):
        assert limits.current().max_paillier_bits == 8192


def test_paillier_claims_are_checked(virtual, paillier_keys) -> None:
    ds = virtual.scientist()
    pk, _ = paillier_keys
    paillier.encrypt(torch.ones(1), pk).send(ds)
    ctx_id = _SENT[ds][pk.fingerprint]
    data = wire.to_wire(paillier.encrypt(torch.ones(2), pk), context=ctx_id)
    width = 2 * ((pk.bits + 7) // 8)
    shared = int(pk.n).to_bytes(width, "big") * 2  # a multiple of n is no encryption
    with pytest.raises(InvalidRequest, match="shares a factor"):
        ds.call(SendObject(forged(data, [shared])))
    with pytest.raises(InvalidRequest, match="past the"):
        ds.call(SendObject(forged(data, bound=str(int(pk.n)))))
    with pytest.raises(InvalidRequest, match="offsets"):
        ds.call(SendObject(forged(data, offsets="3")))
    with pytest.raises(InvalidRequest, match="exponent"):
        ds.call(SendObject(forged(data, exponent=paillier.MAX_EXPONENT + 1)))
