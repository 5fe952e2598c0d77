"""security="malicious": SPDZ2k MACs catch a party that alters its share or its messages."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import veil
from veil.errors import MACCheckFailed
from veil.mpc import node_ops
from veil.mpc.authenticated import AuthenticatedTensor


@pytest.fixture(params=[2, 3], ids=["2-party", "3-party"])
def parties(request: pytest.FixtureRequest) -> tuple[list[Any], Any]:
    names = ["alice", "bob", "dave"][: request.param]
    return [veil.VirtualWorker(n) for n in names], veil.VirtualWorker("carol")


def _share(t: torch.Tensor, p: tuple[list[Any], Any]) -> AuthenticatedTensor:
    return t.share(*p[0], crypto_provider=p[1], security="malicious")  # type: ignore[no-any-return]


def test_malicious_ops_match_plaintext(parties: Any) -> None:
    torch.manual_seed(0)
    x, y = torch.randn(3, 4) * 3, torch.randn(3, 4) * 3
    w = torch.randn(4, 2)
    sx, sy, sw = _share(x, parties), _share(y, parties), _share(w, parties)
    assert isinstance(sx, AuthenticatedTensor) and "AuthenticatedTensor(shape=3x4" in repr(sx)
    assert torch.allclose((sx + sy - 1.5).reconstruct(), x + y - 1.5, atol=1e-4)
    assert torch.allclose((sx * sy).reconstruct(), x * y, atol=2e-3)
    assert torch.allclose((sx * 0.25).reconstruct(), x * 0.25, atol=1e-4)
    assert torch.allclose((sx @ sw).reconstruct(), x @ w, atol=2e-3)
    assert torch.allclose(sx.t().reconstruct(), x.t())
    assert torch.allclose(sx.sum(1).reconstruct(), x.sum(1), atol=1e-4)
    assert torch.equal((sx < sy).reconstruct(), (x < y).float())
    assert torch.equal((sx >= y).reconstruct(), (x >= y).float())
    assert torch.allclose(sx.relu().reconstruct(), x.relu(), atol=1e-4)
    img, k = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)
    got = _share(img, parties).conv2d(_share(k, parties), padding=1).reconstruct()
    assert torch.allclose(got, torch.nn.functional.conv2d(img, k, padding=1), atol=5e-3)


def _tamper(worker: Any, ptr: Any, word: int, delta: int) -> None:
    """The party's node adds ``delta`` to one word of its stored share (value low = 0,
    value high = 1, MAC low = 2, MAC high = 3)."""
    stored = worker.node._objects[ptr.id].value
    stored[word].view(-1)[0] += delta


@pytest.mark.parametrize("op", ["mul", "matmul", "comparison"])
def test_a_party_that_alters_its_share_is_caught_on_the_next_opening(parties: Any, op: str) -> None:
    torch.manual_seed(1)
    x, y = torch.randn(3, 3), torch.randn(3, 3)
    sx, sy = _share(x, parties), _share(y, parties)
    _tamper(parties[0][-1], sx.shares[-1], 0, 1)  # one unit in the last place of one element
    with pytest.raises(MACCheckFailed):
        if op == "mul":
            _ = sx * sy
        elif op == "matmul":
            _ = sx @ sy
        else:
            _ = sx < sy


def test_the_z_2_64_attack_on_mac_keys_is_caught(parties: Any) -> None:
    # Adding 2^63 to the value and the MAC share passes a Z_2^64 MAC check whenever the key
    # is odd; in Z_2^128 the MAC error would have to be alpha * 2^63, which the party cannot
    # guess.
    sx, sy = _share(torch.ones(4), parties), _share(torch.ones(4), parties)
    w = parties[0][0]
    stored = w.node._objects[sx.shares[0].id].value
    stored[0] += -(2**63)  # value += 2^63 (mod 2^64 in the low word)
    stored[2] += -(2**63)  # MAC += 2^63
    with pytest.raises(MACCheckFailed):
        sx * sy


def test_a_party_that_alters_an_opening_or_a_result_is_caught(
    parties: Any, monkeypatch: Any
) -> None:
    sx, sy = _share(torch.tensor([1.0, 2.0]), parties), _share(torch.tensor([3.0, -1.0]), parties)
    orig = node_ops.op_open
    cheater = parties[0][0].node

    def lying_open(ctx: Any, sid: Any, items: Any) -> Any:
        reply = orig(ctx, sid, items)
        if ctx.node is cheater:  # a malicious node shifts the masked value it sends
            t = veil.serde.tensors.tensor_from_data(reply.value, copy=True)
            t[0] += 7
            return ctx.value(t)
        return reply

    monkeypatch.setitem(veil.ops.default_registry()._by_name, "mpc.open",
                        veil.ops.OpSpec("mpc.open", lying_open, effect="node"))  # fmt: skip
    with pytest.raises(MACCheckFailed):
        sx * sy
    monkeypatch.undo()
    z = sx * sy  # honest again: works
    _tamper(parties[0][0], z.shares[0], 2, 5)  # a corrupted MAC share of a result
    with pytest.raises(MACCheckFailed):
        z.reconstruct()


def test_semi_honest_mode_does_not_notice_the_same_tampering() -> None:
    a, b, c = (veil.VirtualWorker(n) for n in ("alice", "bob", "carol"))
    sx = torch.ones(3).share(a, b, crypto_provider=c)
    a.node._objects[sx.shares[0].id].value[0] += 65536
    assert (sx * 2).reconstruct()[0] == 4.0  # a wrong answer, silently: why malicious mode exists


def test_owner_side_sharing_is_refused_in_malicious_mode() -> None:
    a, b, c = (veil.VirtualWorker(n) for n in ("alice", "bob", "carol"))
    ptr = torch.ones(2).send(a)
    with pytest.raises(veil.errors.UnsupportedError, match="semi-honest only"):
        ptr.fix_precision().share(a, b, crypto_provider=c, security="malicious")
