"""The MPC privacy rules, written as attacks that must fail (veil.mpc.node_ops).

The data scientist drives the computation through a data-scientist account on every node:
it must not read any party's share, reuse or fake dealer randomness, or route data to the
dealer; and what it does see (masked openings) must not depend on the secrets.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from scipy import stats as sps
from veil.mpc.kinds import get_kind, party_slots

import veil
from veil.errors import InvalidRequest, PermissionDenied, ProtocolError
from veil.mpc import MPCSession, ring, seal, state
from veil.mpc import session as msession
from veil.node import Node

DS_EMAIL, DS_PASSWORD = "ds@lab.org", "ds-password-123"


def _deploy(names: list[str]) -> tuple[list[Any], list[Any]]:
    """(owner workers, scientist workers) of fresh nodes; the last node is the crypto
    provider, which every other node's owner approves."""
    owners, scientists = [], []
    for name in names:
        owner = veil.VirtualWorker(node=Node(name, owner_password="owner-password-1"))
        owner.create_user(DS_EMAIL, DS_PASSWORD)
        owners.append(owner)
        scientists.append(owner.login(DS_EMAIL, DS_PASSWORD))
    for owner in owners[:-1]:
        veil.mpc.dealers(owner).add(names[-1], owners[-1])
    return owners, scientists


@pytest.fixture
def deployed() -> tuple[list[Any], list[Any]]:
    """alice, bob (parties) and carol (crypto provider), as owners and as the scientist."""
    return _deploy(["alice", "bob", "carol"])


def test_the_scientist_cannot_fetch_any_share_of_an_input_or_a_result(deployed: Any) -> None:
    owners, (alice, bob, carol) = deployed
    x = torch.tensor([1.5, -2.0, 3.0]).share(alice, bob, crypto_provider=carol)
    y = torch.tensor([0.5, 4.0, -1.0]).share(alice, bob, crypto_provider=carol)
    z = (x * y).relu()
    for t in (x, y, z):
        for share in t.shares:
            assert share.private
            with pytest.raises(PermissionDenied):
                share.get()
        with pytest.raises(PermissionDenied):
            t.get()
    # reconstruction needs the same approval as any private object
    reqs = z.request("the relu of my product, for the report")
    for owner, req in zip(owners, reqs, strict=False):
        owner.requests.approve(req.id)
    assert torch.allclose(z.reconstruct(), torch.tensor([0.75, 0.0, 0.0]), atol=1e-3)


def _spy(*workers: Any) -> list[bytes]:
    """Every byte the scientist sends to any of ``workers`` from now on."""
    seen: list[bytes] = []
    for w in workers:
        attr = "_roundtrip_parts" if w._scatter else "_roundtrip"  # network clients scatter

        def spy(frame: Any, expect_bytes: int = 0, orig: Any = getattr(w, attr)) -> Any:
            parts = frame if isinstance(frame, list) else [frame]
            seen.append(b"".join(bytes(p) for p in parts))
            return orig(frame, expect_bytes)

        setattr(w, attr, spy)
    return seen


def test_owner_data_is_shared_without_passing_through_the_scientist(deployed: Any) -> None:
    owners, (alice, bob, carol) = deployed
    secret = torch.tensor([[3.25, -7.5], [0.125, 42.0]])
    owners[0].datasets.create("scans", private=secret, mock=torch.zeros(2, 2))
    ptr = alice.datasets["scans"].private
    seen = _spy(alice, bob, carol)
    shared = ptr.fix_precision().share(alice, bob, crypto_provider=carol)
    total = (shared * 2).relu()
    enc = ring.FixedPoint(16).encode(secret).numpy().tobytes()
    assert not any(enc[i : i + 8] in frame for frame in seen for i in range(0, len(enc), 8))
    with pytest.raises(PermissionDenied):
        ptr.get()
    with pytest.raises(PermissionDenied):
        shared.shares[1].get()
    # the owners (white-box) see that the shares do sum to the secret
    parts = [o.node._objects[s.id].value for o, s in zip(owners, shared.shares, strict=False)]
    assert torch.equal(parts[0] + parts[1], ring.FixedPoint(16).encode(secret))
    got = sum(o.node._objects[s.id].value for o, s in zip(owners, total.shares, strict=False))
    assert torch.allclose(ring.FixedPoint(16).decode(got), (secret * 2).relu(), atol=1e-3)


def test_owner_data_is_shared_with_macs_without_passing_through_the_scientist(
    deployed: Any,
) -> None:
    from veil.mpc.kinds import combine

    from veil.mpc import r128

    owners, (alice, bob, carol) = deployed
    secret = torch.tensor([[3.25, -7.5], [0.125, 42.0]])
    owners[0].datasets.create("scans", private=secret, mock=torch.zeros(2, 2))
    ptr = alice.datasets["scans"].private
    seen = _spy(alice, bob, carol)
    shared = ptr.fix_precision().share(alice, bob, crypto_provider=carol, security="malicious")
    total = (shared * 2).relu()
    enc = ring.FixedPoint(16).encode(secret).numpy().tobytes()
    assert not any(enc[i : i + 8] in frame for frame in seen for i in range(0, len(enc), 8))
    for t in (shared, total):
        with pytest.raises(PermissionDenied):
            t.shares[1].get()
    with pytest.raises(PermissionDenied):
        shared.get()
    # the owners (white-box) see that the value halves sum to the secret, MACs included
    parts = [o.node._objects[s.id].value for o, s in zip(owners, shared.shares, strict=False)]
    assert torch.equal(combine("auth", parts)[0:2], r128.from64(ring.FixedPoint(16).encode(secret)))


def _deal_owner_input(sess: MPCSession, shape: list[int], owner: int) -> tuple[int, Any]:
    raw = (
        msession.reply_tensor(
            msession.node_call(sess.provider, "mpc.a128.deal_owner_input", sess.sid, shape, owner)
        )
        .numpy()
        .tobytes()
    )
    gid, n_delta = np.frombuffer(raw[:16], dtype=np.int64).tolist()
    return gid, msession._u8(raw[16 + 8 * n_delta :])


def test_an_owner_input_mask_is_sealed_to_its_owner_used_once_and_never_opened(
    deployed: Any,
) -> None:
    _, (alice, bob, carol) = deployed
    sess = MPCSession([alice, bob], carol, security="malicious")
    x = torch.tensor([5, 6]).send(alice)
    call = msession.node_call
    # opening the mask's group first (which would reveal -R) consumes it: no input follows
    gid, box = _deal_owner_input(sess, [2], 0)
    call(alice, "mpc.open", sess.sid, [{"gid": gid, "kind": "m_input", "params": {"x": [2]},
                                        "inputs": []}])  # fmt: skip
    with pytest.raises(PermissionDenied, match="already used"):
        call(alice, "mpc.a128.owner_input", sess.sid, x, gid, box)
    # after an input, the group can neither be opened nor masks a second input (x1 - x2)
    gid, box = _deal_owner_input(sess, [2], 0)
    call(alice, "mpc.a128.owner_input", sess.sid, x, gid, box)
    with pytest.raises(PermissionDenied, match="already"):
        call(alice, "mpc.open", sess.sid, [{"gid": gid, "kind": "m_input", "params": {"x": [2]},
                                            "inputs": []}])  # fmt: skip
    with pytest.raises(PermissionDenied, match="already used"):
        call(alice, "mpc.a128.owner_input", sess.sid, x * 2, gid, box)
    # a mask sealed for bob does not open on alice, and an altered box does not open at all
    gid, box = _deal_owner_input(sess, [2], 1)
    with pytest.raises(ProtocolError):
        call(alice, "mpc.a128.owner_input", sess.sid, x, gid, box)
    gid, box = _deal_owner_input(sess, [2], 0)
    box[20] ^= 1
    with pytest.raises(ProtocolError):
        call(alice, "mpc.a128.owner_input", sess.sid, x, gid, box)


def test_no_store_holds_a_plaintext_input_and_the_dealer_holds_nothing(deployed: Any) -> None:
    owners, (alice, bob, carol) = deployed
    x, w = torch.randn(4, 3), torch.randn(3, 2)
    sx, sw = x.share(alice, bob, crypto_provider=carol), w.share(alice, bob, crypto_provider=carol)
    out = (sx @ sw).relu().max(1)[0]
    del out
    encoded = {ring.FixedPoint(16).encode(t).numpy().tobytes() for t in (x, w)}
    for owner in owners[:2]:
        for rec in owner.node._objects.values():
            v = rec.value
            assert v.numpy().tobytes() not in encoded
            assert not (v.is_floating_point() and (torch.equal(v, x) or torch.equal(v, w)))
    assert owners[2].node.object_count() == 0  # the dealer stores nothing, least of all shares


def test_the_dealer_receives_shapes_only(deployed: Any) -> None:
    owners, (alice, bob, carol) = deployed
    got: list[Any] = []
    orig = owners[2].node.handle
    owners[2].node.handle = lambda session, call: (got.append(call.msg), orig(session, call))[1]
    x = torch.randn(3, 4).share(alice, bob, crypto_provider=carol)
    ((x * x) @ x.t()).relu().sigmoid()
    assert {m.op for m in got} <= {"mpc.public_key", "mpc.dealer_setup", "mpc.deal"}
    for m in got:
        if m.op == "mpc.deal":
            for kind, params in [tuple(g.items) for g in m.args[1].items]:
                assert isinstance(kind, str) and all(
                    isinstance(v, bool | int | str) or hasattr(v, "items")
                    for v in params.items.values()
                )


def _first_group(sess: MPCSession, shape: list[int]) -> tuple[int, dict[str, Any]]:
    params = {"x": shape, "y": shape, "op": "mul", "trunc": 0}
    ((gid, delta),) = sess.deal([("beaver", params)])
    return gid, params


def test_a_mask_is_never_reused(deployed: Any) -> None:
    _, (alice, bob, carol) = deployed
    x = torch.tensor([5.0, 6.0]).share(alice, bob, crypto_provider=carol)
    sess = x.session
    gid, params = _first_group(sess, [2])
    item = {"gid": gid, "kind": "beaver", "params": params, "inputs": [x.shares[0], x.shares[0]]}
    msession.node_call(alice, "mpc.open", sess.sid, [item])
    with pytest.raises(PermissionDenied, match="already opened"):
        msession.node_call(alice, "mpc.open", sess.sid, [item])
    gid2, _ = _first_group(sess, [2])
    twice = {**item, "gid": gid2}
    with pytest.raises(PermissionDenied, match="already opened"):
        msession.node_call(alice, "mpc.open", sess.sid, [twice, twice])


def test_finish_results_are_private_and_pending_masks_are_not_objects(deployed: Any) -> None:
    owners, (alice, bob, carol) = deployed
    x = torch.tensor([5.0, 6.0]).share(alice, bob, crypto_provider=carol)
    before = {o.id for o in alice.objects()}
    sess = x.session
    gid, params = _first_group(sess, [2])
    item = {"gid": gid, "kind": "beaver", "params": params, "inputs": [x.shares[0], x.shares[0]]}
    e = msession.reply_tensor(msession.node_call(alice, "mpc.open", sess.sid, [item]))
    assert {o.id for o in alice.objects()} == before  # masks live in no object
    reply = msession.node_call(
        alice, "mpc.finish", sess.sid, [{"gid": gid, "opened": [e[:2], e[2:]]}]
    )
    assert all(info.private for info in reply.items)
    with pytest.raises(veil.errors.InvalidRequest, match="no opened group"):
        msession.node_call(alice, "mpc.finish", sess.sid, [{"gid": gid, "opened": [e[:2], e[2:]]}])


def test_a_sealed_seed_cannot_be_replayed_or_redirected(deployed: Any) -> None:
    owners, (alice, bob, carol) = deployed
    keys = [msession.public_key(w) for w in (alice, bob)]
    key_list = [msession._u8(k) for k in keys]
    blob = msession.reply_tensor(msession.node_call(carol, "mpc.dealer_setup", key_list))
    raw = blob.numpy().tobytes()
    sid, box_a, box_b = raw[:32].decode(), raw[32:92], raw[92:152]
    dealer = msession._u8(msession.public_key(carol))
    msession.node_call(alice, "mpc.join", sid, 0, key_list, dealer, msession._u8(box_a))
    with pytest.raises(PermissionDenied, match="already exists"):
        msession.node_call(alice, "mpc.join", sid, 0, key_list, dealer, msession._u8(box_a))
    with pytest.raises(ProtocolError, match="failed authentication"):  # bound to its session
        msession.node_call(alice, "mpc.join", "another-session", 0, key_list, dealer,
                           msession._u8(box_a))  # fmt: skip
    with pytest.raises(ProtocolError, match="failed authentication"):  # bound to its party
        msession.node_call(alice, "mpc.join", "third-session", 0, key_list, dealer,
                           msession._u8(box_b))  # fmt: skip
    other = [key_list[0], msession._u8(seal.KeyPair.generate().public)]
    with pytest.raises(ProtocolError, match="failed authentication"):  # bound to its parties
        msession.node_call(alice, "mpc.join", "fourth-session", 0, other, dealer,
                           msession._u8(box_a))  # fmt: skip
    with pytest.raises(PermissionDenied, match="cannot also be a party"):
        msession.node_call(carol, "mpc.dealer_setup", [key_list[0], dealer])


def _open_item(gid: int, share: Any, n: int = 4) -> dict[str, Any]:
    params = {"x": [n], "y": [n], "op": "mul", "trunc": 0}
    return {"gid": gid, "kind": "beaver", "params": params, "inputs": [share, share]}


def _join_with(alice: Any, dealer: seal.KeyPair, sid: str) -> bytes:
    """Join alice to session ``sid`` as party 0 of [alice, someone] with a seed sealed by
    ``dealer``; returns the seed (which whoever holds ``dealer`` knows)."""
    seed = bytes(range(32))
    keys = [msession.public_key(alice), seal.KeyPair.generate().public]
    box = seal.seal(dealer, keys[0], seed, state.seed_context(sid, 0, keys))
    msession.node_call(alice, "mpc.join", sid, 0, [msession._u8(k) for k in keys],
                       msession._u8(dealer.public), msession._u8(box))  # fmt: skip
    return seed


def test_a_scientist_cannot_read_a_dataset_through_mpc() -> None:
    """Issue 10: a scientist joined a node to a session with a dealer key of its own, then
    opened ``(x * 65536).long()`` of a private dataset and unmasked every value with the
    seed it knew. Now a node joins only with a dealer its owner approved, and it opens
    only shares it made, never other private data."""
    owners, (alice, bob, carol) = _deploy(["alice", "bob", "carol"])
    secret = torch.tensor([3.25, -7.5, 0.125, 42.0])
    owners[0].datasets.create("scans", private=secret, mock=torch.zeros(4))
    data = (alice.datasets["scans"].private * 65536).long()  # private int64, not a share
    # 1. the scientist's own dealer is refused, and the node says how to approve one
    fake = seal.KeyPair.generate()
    with pytest.raises(PermissionDenied, match="veil dealers add") as info:
        _join_with(alice, fake, "forged-session")
    assert "does not accept crypto provider key" in str(info.value)
    # 2. with the approved dealer, the dataset still cannot be opened: it is not a share
    sess = MPCSession([alice, bob], carol)
    params = _open_item(0, None)["params"]
    ((gid, _),) = sess.deal([("beaver", params)])
    with pytest.raises(PermissionDenied, match="opens only arith shares") as info:
        msession.node_call(alice, "mpc.open", sess.sid, [_open_item(gid, data)])
    assert "items.0.inputs.0" in str(info.value)
    # 3. nor can it be made a share: as_share takes public values only
    with pytest.raises(PermissionDenied, match="argument x must be public"):
        msession.node_call(alice, "mpc.as_share", sess.sid, data)
    # 4. even with a dealer key the owner was tricked into approving, only shares open
    veil.mpc.dealers(owners[0]).add("tricked", fake.public)
    _join_with(alice, fake, "tricked-session")
    with pytest.raises(PermissionDenied, match="opens only arith shares"):
        msession.node_call(alice, "mpc.open", "tricked-session", [_open_item(1, data)])
    # 5. nothing computed from the dataset is a share, even with a share in it
    share = torch.zeros(4).share(session=sess).shares[0]
    for k, mixed in enumerate(
        [share + data, share * 0 + data, torch.where(data > 0, share, share)]
    ):
        item = {**_open_item(gid + 100 + k, share), "inputs": [mixed, share]}
        with pytest.raises(PermissionDenied, match="opens only arith shares"):
            msession.node_call(alice, "mpc.open", sess.sid, [item])
    # 6. writing the data into a share (in place, or through a view) takes its label away
    view = share.view(-1)
    view[:] = data
    for k, written in enumerate([share, view]):
        with pytest.raises(PermissionDenied, match="opens only arith shares"):
            msession.node_call(alice, "mpc.open", sess.sid, [_open_item(gid + 200 + k, written)])


def test_shares_open_only_in_their_session_and_domain(deployed: Any) -> None:
    owners, (alice, bob, carol) = deployed
    s1, s2 = MPCSession([alice, bob], carol), MPCSession([alice, bob], carol)
    x = torch.tensor([1.0, 2.0]).share(session=s1)
    with pytest.raises(PermissionDenied, match=f"session {s2.sid}"):
        msession.node_call(alice, "mpc.open", s2.sid, [_open_item(1, x.shares[0], 2)])
    bit = (x > 1.5).shares[0]  # a comparison's result is an arithmetic share again, not XOR
    carry = {"gid": 5000, "kind": "carry", "params": {"x": [2], "shift": 1, "last": False},
             "inputs": [bit] * 3}  # fmt: skip
    with pytest.raises(PermissionDenied, match="opens only xor shares"):
        msession.node_call(alice, "mpc.open", s1.sid, [carry])
    mal = torch.tensor([1.0, 2.0]).share(alice, bob, crypto_provider=carol, security="malicious")
    fake_auth = torch.cat([x.shares[0]] * 4).reshape(4, 2)
    m_item = {"gid": 5001, "kind": "m_trunc", "params": {"x": [2], "f": 16}, "inputs": [fake_auth]}
    with pytest.raises(PermissionDenied, match="opens only auth shares"):
        msession.node_call(alice, "mpc.open", mal.session.sid, [m_item])


def test_a_node_shares_its_data_only_with_the_parties_its_dealer_dealt_for(deployed: Any) -> None:
    """``mpc.split`` used to seal seeds to whatever keys the scientist listed: with keys of
    its own it held every other share, and the node's own share (one approval away) gave
    the data; listing the node twice handed it both shares. Now the keys are the
    session's, bound by the approved dealer into each party's seed box, and each party
    key appears once."""
    owners, (alice, bob, carol) = deployed
    secret = torch.tensor([3.25, -7.5])
    owners[0].datasets.create("scans", private=secret, mock=torch.zeros(2))
    x = (alice.datasets["scans"].private * 65536).long()
    mine = seal.KeyPair.generate()
    mine_u8 = msession._u8(mine.public)
    # the scientist's keys are no argument of split any more
    with pytest.raises(InvalidRequest, match="mpc.split: (5 arguments given|too many positional)"):
        msession.node_call(alice, "mpc.split", "a-session-id", x, [mine_u8, mine_u8], 0, "tag")
    # a session listing alice twice (so that alice would receive bob's share) is refused
    alice_key = msession._u8(msession.public_key(alice))
    with pytest.raises(InvalidRequest, match="appears twice"):
        msession.node_call(carol, "mpc.dealer_setup", [alice_key, alice_key])
    # a seed the dealer sealed for [alice, bob] does not open as [alice, a scientist key]
    bob_key = msession._u8(msession.public_key(bob))
    raw = msession.reply_tensor(msession.node_call(carol, "mpc.dealer_setup", [alice_key, bob_key]))
    sid, box = raw[:32].numpy().tobytes().decode(), raw[32:92]
    with pytest.raises(ProtocolError, match="failed authentication"):
        msession.node_call(alice, "mpc.join", sid, 0, [alice_key, mine_u8],
                           msession._u8(msession.public_key(carol)), box)  # fmt: skip
    # receive takes the holder's key from the session: a seed sealed by another key fails
    sess = MPCSession([alice, bob], carol)
    reply = msession.node_call(alice, "mpc.split", sess.sid, x, "tag-1")
    boxes = veil.PointerTensor(alice, reply.items[1]).get()
    with pytest.raises(InvalidRequest, match="another party's index"):
        msession.node_call(alice, "mpc.receive", sess.sid, 0, boxes, [2], "tag-1")
    forged = seal.seal(mine, msession.public_key(bob), bytes(32),
                       state.context("share|tag-2", sess.sid, 1, 2))  # fmt: skip
    with pytest.raises(ProtocolError):
        msession.node_call(bob, "mpc.receive", sess.sid, 0, msession._u8(forged), [2], "tag-2")
    # the honest path works, and only the parties' shares together give the data
    shared = alice.datasets["scans"].private.fix_precision().share(session=sess)
    parts = [o.node._objects[s.id].value for o, s in zip(owners, shared.shares, strict=False)]
    assert torch.equal(parts[0] + parts[1], ring.FixedPoint(16).encode(secret))


def _uniform01(words: torch.Tensor) -> np.ndarray:
    return ((words >> 11) & ((1 << 53) - 1)).double().numpy() / 2.0**53


def test_views_are_statistically_independent_of_the_secret() -> None:
    """Each party's shares, and the masked openings the scientist sees, have the same
    (uniform) distribution whatever the secret: two-sample KS tests between the views of
    two very different secrets, and one-sample tests against uniform."""
    owners, (alice, bob, dave, carol) = _deploy(["alice", "bob", "dave", "carol"])
    n = 3000
    views: dict[str, list[np.ndarray]] = {}
    opened: list[torch.Tensor] = []
    orig = msession.node_call

    def spy(worker: Any, op: str, *args: Any, **kw: Any) -> Any:
        reply = orig(worker, op, *args, **kw)
        if op == "mpc.open":
            opened.append(msession.reply_tensor(reply))
        return reply

    msession.node_call = spy  # type: ignore[assignment]
    try:
        for secret in (0.0, 12345.678):
            x = torch.full((n,), secret).share(alice, bob, dave, crypto_provider=carol)
            y = torch.full((n,), -secret / 3).share(alice, bob, dave, crypto_provider=carol)
            opened.clear()
            _ = x * y
            for i, o in enumerate(owners[:3]):
                views.setdefault(f"share{i}", []).append(
                    _uniform01(o.node._objects[x.shares[i].id].value)
                )
            views.setdefault("opened", []).append(_uniform01(torch.cat(opened)))
    finally:
        msession.node_call = orig  # type: ignore[assignment]
    for name, (a, b) in views.items():
        assert sps.ks_2samp(a, b).pvalue > 1e-4, name
        assert sps.kstest(a, "uniform").pvalue > 1e-4, name
    # the test has power: shares of a constant *are* distinguishable from uniform
    assert (
        sps.kstest(_uniform01(ring.FixedPoint(16).encode(torch.full((n,), 0.5))), "uniform").pvalue
        < 1e-6
    )


def test_there_is_no_unmasked_opening(deployed: Any) -> None:
    owners, (alice, bob, carol) = deployed
    x = torch.tensor([7.0, -8.0]).share(alice, bob, crypto_provider=carol)
    share = x.shares[0]
    truth = owners[0].node._objects[share.id].value
    for attempt in (share, share + 0, share * 1, share.clone(), share.view(-1)):
        assert attempt.private
        with pytest.raises(PermissionDenied):
            attempt.get()
    sess = x.session
    # opening under a group id the dealer never dealt still masks with a fresh PRG share
    params = {"x": [2], "y": [2], "op": "mul", "trunc": 0}
    item = {"gid": 10_000, "kind": "beaver", "params": params, "inputs": [share, share]}
    e = msession.reply_tensor(msession.node_call(alice, "mpc.open", sess.sid, [item]))
    assert not torch.equal(e[:2], truth) and not torch.equal(e[2:], truth)
    # a kind that would reveal its input is not a kind; finishing an unopened group is refused
    with pytest.raises(veil.errors.InvalidRequest, match="unknown kind"):
        msession.node_call(
            alice, "mpc.open", sess.sid, [{**item, "gid": 10_001, "kind": "identity"}]
        )
    with pytest.raises(veil.errors.InvalidRequest, match="no opened group"):
        msession.node_call(alice, "mpc.finish", sess.sid, [{"gid": 10_002, "opened": []}])
    # bit masks hide bit 0 only, so b2a opens XOR-shared bits (never an arithmetic share)
    # and reveals bit 0 of them only
    bit = {"gid": 10_003, "kind": "b2a", "params": {"x": [2]}, "inputs": [share]}
    with pytest.raises(PermissionDenied, match="opens only xor shares"):
        msession.node_call(alice, "mpc.open", sess.sid, [bit])
    a2b = {"gid": 10_004, "kind": "a2b", "params": {"x": [2]}, "inputs": [share]}
    c = msession.reply_tensor(msession.node_call(alice, "mpc.open", sess.sid, [a2b]))
    g, _ = msession.node_call(alice, "mpc.finish", sess.sid, [{"gid": 10_004, "opened": [c]}]).items
    bit = {**bit, "gid": 10_005, "inputs": [veil.PointerTensor(alice, g)]}
    opened = msession.reply_tensor(msession.node_call(alice, "mpc.open", sess.sid, [bit]))
    assert bool(((opened == 0) | (opened == 1)).all())


def test_a_step_opens_under_the_same_rules(deployed: Any) -> None:
    owners, (alice, bob, carol) = deployed
    x = torch.tensor([1.0, 2.0]).share(alice, bob, crypto_provider=carol)
    sess = x.session
    params = {"x": [2], "y": [2], "op": "mul", "trunc": 0}
    (g1, _), (g2, _), (g3, _) = sess.deal([("beaver", params)] * 3)

    def open_(gid: int) -> dict[str, Any]:
        item = {
            "gid": gid,
            "kind": "beaver",
            "params": params,
            "inputs": [x.shares[0], x.shares[0]],
        }
        e = msession.reply_tensor(msession.node_call(alice, "mpc.open", sess.sid, [item]))
        return {"gid": gid, "opened": [e[:2], e[2:]]}

    again = {"gid": g1, "kind": "beaver", "params": params, "inputs": [["out", 0], ["out", 0]]}
    with pytest.raises(PermissionDenied, match="already opened"):  # a mask is used once here too
        msession.node_call(alice, "mpc.step", sess.sid, [open_(g1)], [again])
    bad = {**again, "gid": g3, "inputs": [["out", 5], ["out", 0]]}
    with pytest.raises(veil.errors.InvalidRequest, match="no result 5"):
        msession.node_call(alice, "mpc.step", sess.sid, [open_(g2)], [bad])


def test_a_group_id_reused_as_another_kind_or_shape_gets_unrelated_randomness() -> None:
    """Each group's PRG key binds its layout: a gid the dealer dealt as one kind (whose delta
    the scientist sees) and a party then opens as another masks with fresh randomness, so
    openings and delta cannot be combined (e.g. into the MAC key)."""
    seed = bytes(range(32))
    mul = get_kind("beaver").slots({"x": [4], "y": [4], "op": "mul", "trunc": 0})
    mul8 = get_kind("beaver").slots({"x": [8], "y": [8], "op": "mul", "trunc": 0})
    masked_input = get_kind("m_input").slots({"x": [3]})  # 12 words, like mul's a, b, c
    a = party_slots(seed, 5, mul)
    assert torch.equal(a["a"], party_slots(seed, 5, mul)["a"])  # the same layout: the same
    words_mul = torch.cat([a[s.name].reshape(-1) for s in mul])
    words_input = party_slots(seed, 5, masked_input)["r"].reshape(-1)
    assert not torch.equal(words_mul, words_input)
    assert not torch.equal(a["a"], party_slots(seed, 5, mul8)["a"][:4])
