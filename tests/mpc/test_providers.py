"""Crypto providers: the dealer-free provider sums without a dealer and refuses what needs one."""

from __future__ import annotations

import pytest
import torch

import veil
from veil.errors import UnsupportedError
from veil.mpc import DealerFree, MPCSession, secure_sum
from veil.mpc.providers.base import PROVIDERS, CryptoProvider


def _free(n: int) -> MPCSession:
    names = ["alice", "bob", "dave"][:n]
    return MPCSession([veil.VirtualWorker(nm) for nm in names], DealerFree())


@pytest.mark.parametrize("n", [2, 3])
def test_dealer_free_sum_matches_plaintext(n: int) -> None:
    sess = _free(n)
    xs = [torch.randn(4, 3) for _ in range(n)]
    shared = [x.share(session=sess) for x in xs]
    total = shared[0]
    for s in shared[1:]:
        total = total + s
    want = sum(xs, torch.zeros(4, 3))
    assert torch.allclose(total.reconstruct(), want, atol=1e-4)
    assert torch.allclose(total.sum().reconstruct(), want.sum(), atol=1e-3)
    assert torch.allclose((total - shared[0]).reconstruct(), want - xs[0], atol=1e-4)
    assert torch.allclose((total * 3).reconstruct(), want * 3, atol=1e-4)


@pytest.mark.parametrize("n", [2, 3])
def test_secure_sum_of_each_partys_own_data_matches_plaintext(n: int) -> None:
    sess = _free(n)
    xs = [torch.randn(5) for _ in range(n)]
    ptrs = [x.send(w) for x, w in zip(xs, sess.parties, strict=True)]
    got = secure_sum(ptrs, sess)
    assert torch.allclose(got.reconstruct(), sum(xs, torch.zeros(5)), atol=1e-4)
    # each share alone is masked: it is not the party's own encoded tensor
    own = veil.mpc.FixedPoint(16).encode(xs[0])
    assert not torch.equal(got.shares[0].get(), own)


def test_dealer_free_mean_and_public_float_product_with_two_parties() -> None:
    sess = _free(2)
    x = torch.tensor([[1.0, 2.0], [3.0, -5.0]])
    s = x.share(session=sess)
    assert torch.allclose(s.mean().reconstruct(), x.mean(), atol=1e-3)
    assert torch.allclose(s.mean(0).reconstruct(), x.mean(0), atol=1e-3)
    assert torch.allclose((s * 0.5).reconstruct(), x * 0.5, atol=1e-3)


@pytest.mark.parametrize("op", ["mul", "matmul", "compare", "relu", "trunc3"])
def test_what_needs_a_dealer_says_to_configure_one(op: str) -> None:
    sess = _free(3 if op == "trunc3" else 2)
    x = torch.ones(2, 2).share(session=sess)
    run = {
        "mul": lambda: x * x,
        "matmul": lambda: x @ x,
        "compare": lambda: x > 0,
        "relu": lambda: x.relu(),
        "trunc3": lambda: x * 0.5,
    }[op]
    with pytest.raises(UnsupportedError, match="configure a dealer"):
        run()


def test_dealer_free_refuses_malicious_mode_and_nodes_refuse_opening_without_a_dealer() -> None:
    a, b = veil.VirtualWorker("alice"), veil.VirtualWorker("bob")
    with pytest.raises(ValueError, match="configure a dealer"):
        MPCSession([a, b], DealerFree(), security="malicious")
    sess = MPCSession([a, b], DealerFree())
    x = torch.ones(2).share(session=sess)
    item = {"gid": 1, "kind": "square", "params": {"x": [2], "trunc": 0}, "inputs": [x.shares[0]]}
    with pytest.raises(UnsupportedError, match="configure a dealer"):
        a.call_op("mpc.open", sess.sid, [item])


def test_zero_shares_sum_to_zero_and_a_counter_is_used_once() -> None:
    sess = _free(3)
    zs = [w.call_op("mpc.zero_share", sess.sid, [6], 9) for w in sess.parties]
    total = sum((veil.PointerTensor(w, z).get() for w, z in zip(sess.parties, zs, strict=True)),
                torch.zeros(6, dtype=torch.int64))  # fmt: skip
    assert torch.equal(total, torch.zeros(6, dtype=torch.int64))
    with pytest.raises(veil.PermissionDenied, match="used once"):
        sess.parties[0].call_op("mpc.zero_share", sess.sid, [6], 9)


def test_providers_are_registered_by_kind() -> None:
    assert set(PROVIDERS) == {"dealer", "dealer-free"}
    assert all(issubclass(c, CryptoProvider) for c in PROVIDERS.values())


def test_a_node_shares_its_own_data_in_a_dealer_free_session() -> None:
    sess = _free(3)
    ptr = torch.tensor([1.5, -2.0]).send(sess.parties[1])
    x = ptr.fix_precision().share(session=sess)
    assert torch.allclose((x + x).reconstruct(), torch.tensor([3.0, -4.0]))
