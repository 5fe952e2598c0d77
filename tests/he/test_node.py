"""Encrypted tensors on nodes: send, compute, get; privacy of results; no secret key ever
reaches a node (checked by inspecting every frame it receives and everything it stores)."""

from __future__ import annotations

import gc
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import veil
from veil.errors import InvalidRequest, PermissionDenied
from veil.he import EncryptedPointer, ckks, paillier
from veil.node import Node
from veil.node.store.sql import SQLStore
from veil.serde import codec
from veil.serde.messages import EncryptedData, EncryptionContextData, SendObject

pytest.importorskip("tenseal", reason="CKKS needs TenSEAL: pip install 'veil[he]'")


def test_ckks_ops_run_on_the_node_and_decrypt_locally(deployment, ckks_ctx) -> None:
    ds = deployment.scientist()
    x = torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.0, -1.0]])
    w = torch.tensor([[1.0, 0.5], [2.0, -1.0], [0.0, 1.0]])
    ptr = ckks.encrypt(x, ckks_ctx).send(ds)
    assert isinstance(ptr, EncryptedPointer) and ptr.shape == (2, 3)
    y = ((ptr - 1) @ w).square() + torch.tensor([1.0, 0.0])
    assert y.shape == (2, 2) and not y.private
    ref = ((x - 1) @ w) ** 2 + torch.tensor([1.0, 0.0])
    assert torch.allclose(y.decrypt(), ref.double(), atol=1e-2)
    with pytest.raises(InvalidRequest, match="depth=3"):
        y.square()
    w_ptr = ds.send(w)
    z = ptr @ w_ptr  # a plaintext operand that lives on the node
    assert torch.allclose(z.decrypt(), x.double() @ w.double(), atol=1e-3)
    assert torch.allclose((ptr.sum()).decrypt(), x.sum().double(), atol=1e-3)


def test_paillier_ops_run_on_the_node(deployment, paillier_keys) -> None:
    pk, sk = paillier_keys
    ds = deployment.scientist()
    x = torch.tensor([1.5, -2.0, 4.0])
    ptr = paillier.encrypt(x, pk).send(ds)
    out = (ptr * torch.tensor([2.0, 1.0, -0.5]) + 1).sum()
    assert torch.allclose(
        out.decrypt(sk), ((x * torch.tensor([2.0, 1.0, -0.5]) + 1).sum()).double()
    )
    packed = paillier.encrypt(x, pk, pack=True).send(ds)
    assert torch.allclose((packed + packed - x).decrypt(sk), x.double())
    with pytest.raises(TypeError, match="PrivateKey"):
        ptr.decrypt()


def test_the_context_travels_once_per_node(virtual, ckks_ctx) -> None:
    ds = virtual.scientist()
    before = virtual.node.object_count()
    a = ckks.encrypt(torch.ones(3), ckks_ctx).send(ds)
    b = ckks.encrypt(torch.ones(3), ckks_ctx).send(ds)
    assert virtual.node.object_count() == before + 3  # one context, two tensors
    assert torch.allclose((a + b).decrypt(), torch.full((3,), 2.0, dtype=torch.float64))
    ds.clear()  # the node forgets the context: the next send puts it back
    c = ckks.encrypt(torch.ones(3), ckks_ctx).send(ds)
    assert torch.allclose(c.decrypt(), torch.ones(3, dtype=torch.float64), atol=1e-4)


class Recorder:
    """Wraps a node's frame handler and keeps every frame it receives."""

    def __init__(self, node: Node) -> None:
        self.frames: list[bytes] = []
        self._inner = node.handle_frame
        node.handle_frame = self  # type: ignore[method-assign]

    def __call__(self, session, frame):  # noqa: ANN001, ANN204
        self.frames.append(bytes(frame))
        return self._inner(session, frame)


def _secret_key_bytes(ctx: ckks.CKKSContext) -> bytes:
    """The SEAL secret key as serialized inside a private TenSEAL context."""
    full = ctx.raw.serialize(save_public_key=False, save_secret_key=True,
                             save_galois_keys=False, save_relin_keys=False)  # fmt: skip
    public = ctx.raw.serialize(save_public_key=False, save_secret_key=False,
                               save_galois_keys=False, save_relin_keys=False)  # fmt: skip
    assert len(full) > len(public) + 1000
    # The secret key's bytes are what the private serialization adds at its end: a run of
    # 256 of them cannot appear by chance in other data.
    assert full.startswith(public[:64])
    return full[len(public) + 64 : len(public) + 64 + 256]


def test_node_never_receives_or_stores_a_secret_key(tmp_path, ckks_ctx, paillier_keys) -> None:
    node = Node("n", store=SQLStore(f"sqlite:///{tmp_path / 'n.db'}"),
                owner_email="o@x.org", owner_password="owner-pass-1")  # fmt: skip
    rec = Recorder(node)
    owner = veil.VirtualWorker(node=node)
    pk, sk = paillier_keys
    enc = ckks.encrypt(torch.arange(4.0), ckks_ctx).send(owner)
    (enc * enc).sum()
    p = paillier.encrypt(torch.arange(4.0), pk).send(owner)
    (p + 1).sum()
    secret = _secret_key_bytes(ckks_ctx)
    p_bytes = int(sk._p).to_bytes((int(sk._p).bit_length() + 7) // 8, "big")
    q_bytes = int(sk._q).to_bytes((int(sk._q).bit_length() + 7) // 8, "big")
    assert rec.frames
    for frame in rec.frames:
        assert secret not in frame and p_bytes not in frame and q_bytes not in frame
        call = codec.decode_call(frame)
        if isinstance(call.msg, SendObject) and isinstance(call.msg.value, EncryptionContextData):
            if call.msg.value.scheme == "ckks":
                assert not ckks.CKKSContext.from_bytes(call.msg.value.data).is_private
    node.close()
    db = (tmp_path / "n.db").read_bytes() + b"".join(
        f.read_bytes() for f in tmp_path.rglob("*") if f.is_file() and f.name != "n.db"
    )
    assert secret not in db and p_bytes not in db and q_bytes not in db
    for value in (r.value for r in node._objects.values()):
        if isinstance(value, ckks.CKKSContext | ckks.CKKSTensor):
            ctx = value if isinstance(value, ckks.CKKSContext) else value.context
            assert not ctx.is_private


def test_a_node_refuses_a_context_carrying_a_secret_key(virtual, ckks_ctx) -> None:
    ds = virtual.scientist()
    leaked = ckks_ctx.raw.serialize(save_secret_key=True)
    with pytest.raises(InvalidRequest, match="secret key"):
        ds.call(SendObject(EncryptionContextData("ckks", memoryview(leaked))))
    with pytest.raises(TypeError):
        ds.send(paillier_private_key_stub())


def paillier_private_key_stub():  # a private key is not something send() accepts
    _, sk = paillier.keygen(256, force=True)
    return sk


def test_encrypted_results_from_private_data_need_approval(deployment, ckks_ctx) -> None:
    """Attack: encrypt unit vectors, multiply by a dataset's private data, decrypt the
    rows. The node marks the encrypted result private: no get without approval."""
    owner = deployment.owner
    secret = torch.tensor([[3.0, 1.0], [4.0, 1.5], [5.0, 9.0]])
    owner.datasets.create("records", private=secret, mock=torch.zeros(3, 2))
    ds = deployment.scientist()
    private = ds.datasets["records"].private
    probe = ckks.encrypt(torch.tensor([1.0, 0.0, 0.0]), ckks_ctx).send(ds)
    leak = probe @ private
    assert leak.private and "records" in leak.sources
    with pytest.raises(PermissionDenied):
        leak.get()
    with pytest.raises(PermissionDenied):
        (private @ probe.reshape(3, 1)).get() if False else (probe * 1.0 + private[:, 0]).get()
    req = leak.request("scores for my own query vector")
    owner.requests.approve(req.id)
    assert torch.allclose(leak.decrypt(), secret[0].double(), atol=1e-3)


def test_ciphertexts_from_another_context_or_tampered_are_refused(virtual, ckks_ctx,
                                                                  paillier_keys) -> None:  # fmt: skip
    ds = virtual.scientist()
    enc = ckks.encrypt(torch.ones(3), ckks_ctx)
    good = ckks.encrypt(torch.ones(3), ckks_ctx).send(ds)
    other = ckks.context(galois_keys=False)
    foreign = ckks.encrypt(torch.ones(3), other).send(ds)
    with pytest.raises(InvalidRequest, match="different CKKS contexts"):
        good + foreign
    from veil.he import wire
    from veil.he.remote import _SENT

    ctx_id = _SENT[ds][ckks_ctx.fingerprint]
    data = wire.to_wire(enc, context=ctx_id)
    broken = bytearray(data.parts[0])
    broken[len(broken) // 2 : len(broken) // 2 + 64] = b"\xff" * 64
    bad = EncryptedData(data.scheme, data.shape, [memoryview(bytes(broken))], data.meta,
                        data.layout, ctx_id)  # fmt: skip
    with pytest.raises(InvalidRequest, match="do not match their digest"):
        ds.call(SendObject(bad))
    wrong_ctx = EncryptedData(data.scheme, data.shape, data.parts,
                              {**data.meta, "context_fp": other.fingerprint}, data.layout, ctx_id)  # fmt: skip
    with pytest.raises(InvalidRequest, match="mismatched context"):
        ds.call(SendObject(wrong_ctx))
    pk, _ = paillier_keys
    p = wire.to_wire(paillier.encrypt(torch.ones(2), pk), context=ctx_id)
    with pytest.raises(InvalidRequest, match="not a paillier context"):
        ds.call(SendObject(p))
    assert torch.allclose(good.decrypt(), torch.ones(3, dtype=torch.float64), atol=1e-4)


def test_ops_refuse_non_encrypted_inputs(virtual) -> None:
    ds = virtual.scientist()
    x = ds.send(torch.ones(3))
    with pytest.raises(InvalidRequest, match="argument 'x' must be an encrypted tensor"):
        ds.run_op("he.add", x, 1)


def test_encrypted_objects_survive_a_restart(tmp_path, ckks_ctx, paillier_keys) -> None:
    url = f"sqlite:///{tmp_path / 'n.db'}"
    node = Node("n", store=SQLStore(url), owner_email="o@x.org", owner_password="owner-pass-1")
    owner = veil.VirtualWorker(node=node)
    pk, sk = paillier_keys
    c = ckks.encrypt(torch.tensor([1.0, 2.0]), ckks_ctx).send(owner) * 3
    p = paillier.encrypt(torch.tensor([1.0, 2.0]), pk, pack=True).send(owner) + 1
    c._owned = p._owned = False
    ids = c.id, p.id
    node.close()
    node2 = Node("n", store=SQLStore(url))
    owner2 = veil.VirtualWorker(node=node2).login("o@x.org", "owner-pass-1")
    c2, p2 = owner2.pointer(ids[0]), owner2.pointer(ids[1])
    c2._local, p2._local = ckks_ctx, pk
    assert torch.allclose(c2.decrypt(), torch.tensor([3.0, 6.0], dtype=torch.float64), atol=1e-3)
    assert torch.allclose(p2.decrypt(sk), torch.tensor([2.0, 3.0], dtype=torch.float64))
    assert torch.allclose((c2 + 1).decrypt(), torch.tensor([4.0, 7.0], dtype=torch.float64),
                          atol=1e-3)  # fmt: skip
    assert torch.allclose(c2.sum().decrypt(), torch.tensor(9.0, dtype=torch.float64), atol=1e-3)
    node2.close()


def test_stored_ciphertexts_do_not_each_carry_galois_keys(tmp_path) -> None:
    ckks_ctx = ckks.context()  # its own: no other test's node may hold its public context
    url = f"sqlite:///{tmp_path / 'n.db'}"
    node = Node("n", store=SQLStore(url), owner_email="o@x.org", owner_password="owner-pass-1")
    owner = veil.VirtualWorker(node=node)
    ptrs = [ckks.encrypt(torch.tensor([float(i)]), ckks_ctx).send(owner) * 2 for i in range(4)]
    for ptr in ptrs:
        ptr._owned = False
    last = ptrs[-1].id
    node.close()
    del node, owner, ptrs, ptr
    stored = sum(f.stat().st_size for f in tmp_path.rglob("*") if f.is_file())
    with_keys = len(ckks_ctx.serialize())
    without = len(ckks_ctx.serialize(galois_keys=False))
    assert stored < with_keys + 4 * (without + 400_000) + 4 * 400_000  # one full context
    # The context object deleted: ciphertexts still load (on their stored public context).
    node2 = Node("n", store=SQLStore(url))
    owner2 = veil.VirtualWorker(node=node2).login("o@x.org", "owner-pass-1")
    for info in owner2.objects():
        if info.kind == "he_context":
            owner2.call(veil.serde.messages.DeleteObjects([info.id]))
    node2.close()
    del node2, owner2
    gc.collect()  # nothing in this process holds the full context any more
    node3 = Node("n", store=SQLStore(url))
    owner3 = veil.VirtualWorker(node=node3).login("o@x.org", "owner-pass-1")
    p = owner3.pointer(last)
    p._local = ckks_ctx
    assert torch.allclose(p.decrypt(), torch.tensor([6.0], dtype=torch.float64), atol=1e-3)
    with pytest.raises(InvalidRequest, match="galois_keys=True"):
        (p + p).reshape(1, 1).sum(0)
    node3.close()


def test_private_values_cannot_shape_an_encrypted_result(virtual, ckks_ctx) -> None:
    """Attack: index with a mask of private data, or reshape by a private count: the
    result's public shape would reveal them. Both are refused."""
    owner = virtual.owner
    owner.datasets.create("d", private=torch.tensor([1.0, 0.0, 1.0, 1.0]), mock=torch.zeros(4))
    ds = virtual.scientist()
    private = ds.datasets["d"].private
    enc = ckks.encrypt(torch.arange(4.0), ckks_ctx).send(ds)
    mask = private > 0.5
    with pytest.raises(InvalidRequest, match="no tensor indices"):
        ds.run_op("he.getitem", enc, mask)
    count = private.sum().long()  # refused by the node's shape-leak check, or by he.* itself
    with pytest.raises((PermissionDenied, InvalidRequest), match="shape|plain int"):
        ds.run_op("he.reshape", enc, [count, -1])
    with pytest.raises((PermissionDenied, InvalidRequest), match="shape|plain int"):
        ds.run_op("he.sum", enc, count)
    own = ds.send(torch.tensor(2))  # not private: still no tensor as a size
    with pytest.raises(InvalidRequest, match="plain int"):
        ds.run_op("he.reshape", enc, [own, -1])
    assert enc[1:3].shape == (2,)  # plain slices are fine


def test_scheme_registry_refuses_duplicates_and_unknown_schemes(virtual) -> None:
    from veil.he import register_scheme, scheme_for, schemes
    from veil.he.wire import PaillierScheme

    assert schemes() == ["ckks", "paillier"]
    with pytest.raises(ValueError, match="already registered"):
        register_scheme(PaillierScheme())
    with pytest.raises(TypeError, match="not an encrypted tensor"):
        scheme_for(torch.ones(1))
    ds = virtual.scientist()
    with pytest.raises(InvalidRequest, match="unknown encryption scheme"):
        ds.call(SendObject(EncryptionContextData("rot13", memoryview(b"x"))))


def test_move_between_nodes_and_delete(ckks_ctx, paillier_keys) -> None:
    pk, sk = paillier_keys
    a, b = veil.VirtualWorker("a"), veil.VirtualWorker("b")
    x = torch.tensor([1.0, 2.0])
    p = paillier.encrypt(x, pk, pack=True).send(a)
    moved = (p + p).move(b)
    assert moved.location is b and torch.equal(moved.decrypt(sk), 2 * x.double())
    c = ckks.encrypt(x, ckks_ctx).send(a).move(b)
    assert torch.allclose(c.decrypt(), x.double(), atol=1e-4)
    a.flush()  # pending releases of dropped pointers go first
    count = a.node.object_count()
    p.delete()
    assert a.node.object_count() == count - 1


def test_products_with_plaintexts_come_back_rerandomized(virtual, paillier_keys) -> None:
    """The key holder must not be able to relate a returned ciphertext's randomness to
    the plaintext it was multiplied by: the node rerandomizes products."""
    pk, sk = paillier_keys
    ds = virtual.scientist()
    enc = paillier.encrypt(torch.tensor([1.0, 2.0, 3.0]), pk)
    w = torch.tensor([3.0, -1.0, 2.0])
    remote = (enc.send(ds) * w).get(context=pk)
    local = enc * w  # the deterministic c ** w
    assert not any(a == b for a, b in zip(remote._data, local._data))
    assert torch.equal(remote.decrypt(sk), local.decrypt(sk))
    dot = (enc.send(ds) @ w).get(context=pk)
    assert dot._data.reshape(-1)[0] != (enc @ w)._data.reshape(-1)[0]


@settings(max_examples=15, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(blob=st.binary(max_size=4096), scheme=st.sampled_from(["ckks", "paillier"]),
       shape=st.lists(st.integers(-2, 70000), max_size=3))  # fmt: skip
def test_garbage_ciphertexts_are_refused_and_the_node_keeps_serving(
    virtual, ckks_ctx, paillier_keys, blob, scheme, shape
) -> None:
    ds = virtual.scientist()
    ctx = ckks_ctx if scheme == "ckks" else paillier_keys[0]
    good = (ckks.encrypt(torch.ones(2), ctx) if scheme == "ckks"
            else paillier.encrypt(torch.ones(2), ctx)).send(ds)  # fmt: skip
    from veil.he.remote import _SENT

    ctx_id = _SENT[ds][ctx.fingerprint]
    bad = EncryptedData(scheme, shape, [memoryview(blob)], {"exponent": 24, "bound": "5"},
                        None, ctx_id)  # fmt: skip
    try:
        ds.call(SendObject(bad))
    except InvalidRequest:
        pass
    else:  # only a well-formed Paillier payload can pass: the right size, in range
        width = 2 * ((ctx.bits + 7) // 8) if scheme == "paillier" else -1
        assert all(d >= 0 for d in shape) and len(blob) == width * math.prod(shape)
    out = (good + 1).decrypt(ckks_ctx) if scheme == "ckks" else (good + 1).decrypt(paillier_keys[1])
    assert torch.allclose(out, torch.full((2,), 2.0, dtype=torch.float64), atol=1e-3)


def test_approved_results_carry_no_metadata_derived_from_the_data(paillier_keys) -> None:
    """Item 3 (issue 10): an approved result's bound was the private table's exact maximum,
    and its exponent showed whether the table was all integers. Now both follow from public
    facts (key, shapes, dtypes, ops): the same for any table of that shape and dtype."""
    pk, sk = paillier_keys
    seen = []
    for table in (
        torch.tensor([[1.0, 2.0], [3.0, 4.0]]),
        torch.tensor([[0.5, -2.0], [300.0, 4.25]]),
    ):
        node = Node("bank", owner_email="o@bank.example", owner_password="owner-pass-1")
        owner = veil.VirtualWorker(node=node)
        owner.datasets.create("t", private=table, mock=torch.zeros(2, 2))
        owner.create_user("ds@lab.example", "scientist-pass", role="data_scientist")
        ds = owner.login("ds@lab.example", "scientist-pass")
        w = paillier.encrypt(torch.tensor([1.0, -1.0]), pk).send(ds)
        private = ds.datasets["t"].private
        metas = []
        for result, expect in ((private @ w + 0.25, table @ torch.tensor([1.0, -1.0]) + 0.25),
                               (w * private[1], torch.tensor([1.0, -1.0]) * table[1])):  # fmt: skip
            owner.requests.approve(result.request("scores").id)
            got = result.get()
            assert torch.allclose(got.decrypt(sk), expect.double(), atol=1e-6)
            metas.append((got.exponent, got.bound, got.offsets))
        packed = paillier.encrypt(torch.ones(2), pk, pack=True).send(ds)
        with pytest.raises(InvalidRequest, match="multiplies only by a Python number"):
            packed * private[0, 0]  # its bound would be the private value itself
        seen.append(metas)
        node.close()
    assert seen[0] == seen[1]
