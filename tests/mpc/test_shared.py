"""SharedTensor ops against plaintext torch, for 2 and 3 parties (veil.mpc.shared), under every
crypto provider and security mode that supports the op (conftest.MODES)."""

from __future__ import annotations

from typing import Any

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import veil
from veil.mpc import MPCSession, SharedTensor

from .conftest import DEALT, modes

SETTINGS = settings(
    max_examples=12,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
LSB = 2.0**-16


def _floats(lo: float, hi: float, shape: st.SearchStrategy) -> st.SearchStrategy:
    return hnp.arrays(
        np.float64, shape, elements=st.floats(lo, hi, allow_nan=False, allow_infinity=False)
    ).map(torch.from_numpy)


def _shapes() -> st.SearchStrategy:
    return hnp.array_shapes(min_dims=1, max_dims=3, max_side=5)


def _close(got: torch.Tensor, want: torch.Tensor, atol: float) -> None:
    got, want = got.double(), want.double()
    assert got.shape == want.shape
    err = float((got - want).abs().max()) if want.numel() else 0.0
    assert err <= atol, f"max error {err} > {atol}"


@pytest.mark.parametrize("mode", ["dealer", "dealer-free"])
@SETTINGS
@given(data=st.data(), n=st.sampled_from([2, 3]))
def test_linear_ops_are_exact_even_near_the_range(
    data: st.DataObject, n: int, reused: Any, mode: str
) -> None:
    p = reused[mode, n]
    shape = data.draw(_shapes())
    x = data.draw(_floats(-(2.0**40), 2.0**40, st.just(shape)))
    y = data.draw(_floats(-(2.0**40), 2.0**40, st.just(shape)))
    q = lambda t: torch.round(t * 2**16) / 2**16  # noqa: E731 - the representable value
    sx, sy = p.share(x), p.share(y)
    _close((sx + sy).reconstruct().double(), q(x) + q(y), 2.0**40 * 2**-23)
    _close(SharedTensor.get(sx - sy).float_precision().double(), q(x) - q(y), 2.0**40 * 2**-23)
    exact = (sx - sy).get().encoded
    assert torch.equal(exact, torch.round(x * 2**16).long() - torch.round(y * 2**16).long())
    assert torch.equal((-sx).get().encoded, -torch.round(x * 2**16).long())
    assert torch.equal((sx * 3).get().encoded, torch.round(x * 2**16).long() * 3)


@pytest.mark.parametrize("mode", DEALT)
@SETTINGS
@given(data=st.data(), n=st.sampled_from([2, 3]))
def test_products_match_torch(data: st.DataObject, n: int, reused: Any, mode: str) -> None:
    p = reused[mode, n]
    shape = data.draw(_shapes())
    x = data.draw(_floats(-100, 100, st.just(shape)))
    y = data.draw(_floats(-100, 100, st.just(shape)))
    sx, sy = p.share(x), p.share(y)
    tol = 200 * LSB + 2 * LSB
    _close((sx * sy).reconstruct(), x * y, tol)
    _close((sx * y).reconstruct(), x * y, tol)  # public factor: local, then truncation
    _close(sx.square().reconstruct(), x * x, tol)
    _close((sx + 2.5).reconstruct(), x + 2.5, LSB)
    _close((1.0 - sx).reconstruct(), 1 - x, LSB)
    _close((sx / 4.0).reconstruct(), x / 4, 100 * LSB)


@pytest.mark.parametrize("mode", DEALT)
@SETTINGS
@given(m=st.integers(1, 6), k=st.integers(1, 7), n=st.integers(1, 5), parties=st.sampled_from([2, 3]),
       seed=st.integers(0, 999))  # fmt: skip
def test_matmul_matches_torch(
    m: int, k: int, n: int, parties: int, seed: int, reused: Any, mode: str
) -> None:
    p = reused[mode, parties]
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(m, k, generator=g) * 4, torch.randn(k, n, generator=g) * 4
    sa, sb = p.share(a), p.share(b)
    tol = k * 8 * 4 * LSB + 2 * LSB
    _close((sa @ sb).reconstruct(), a @ b, tol)
    _close((sa @ b).reconstruct(), a @ b, tol)
    _close((a @ sb).reconstruct(), a @ b, tol)


def test_products_near_the_range_with_dealer_truncation(two: Any) -> None:
    sess = MPCSession(two.parties, two.provider, truncation="dealer")
    x = torch.tensor([-16000.0, 12000.5, -0.001, 3.0, 16383.0])
    y = torch.tensor([15000.0, -16000.0, 7.0, -0.5, 16383.0])  # |x y| up to 2^28
    got = (x.share(session=sess) * y.share(session=sess)).get().float_precision(torch.float64)
    _close(got, x.double() * y.double(), 2 * LSB * 20000)


@pytest.mark.parametrize("parties", modes(*DEALT), indirect=True)
def test_conv2d_shared_and_public_weights(parties: Any) -> None:
    group = parties
    torch.manual_seed(0)
    x, w, b = torch.randn(2, 3, 7, 7), torch.randn(4, 3, 3, 3), torch.randn(4)
    want = F.conv2d(x, w, b, stride=2, padding=1)
    sx = group.share(x)
    _close(sx.conv2d(group.share(w), group.share(b), stride=2, padding=1).reconstruct(), want, 1e-3)
    _close(sx.conv2d(w, b, stride=2, padding=1).reconstruct(), want, 1e-3)


@pytest.mark.parametrize("parties", modes(*DEALT) + modes("dealer-free", n=(2,)), indirect=True)
def test_reductions_and_shape_ops(parties: Any) -> None:
    group = parties
    x = torch.randn(3, 4, 5)
    sx = group.share(x)
    _close(sx.sum().reconstruct(), x.sum(), 1e-3)
    _close(sx.sum(1).reconstruct(), x.sum(1), 1e-3)
    _close(sx.mean(2, keepdim=True).reconstruct(), x.mean(2, keepdim=True), 1e-3)
    _close(sx.reshape(12, 5).t().reconstruct(), x.reshape(12, 5).t(), LSB)
    _close(sx[1, :, 2:4].reconstruct(), x[1, :, 2:4], LSB)
    _close(sx.permute(2, 0, 1).flatten(1).reconstruct(), x.permute(2, 0, 1).flatten(1), LSB)
    _close(type(sx).cat([sx, sx], 1).reconstruct(), torch.cat([x, x], 1), LSB)
    _close(type(sx).stack([sx, sx]).reconstruct(), torch.stack([x, x]), LSB)


@pytest.mark.parametrize("mode", DEALT)
@SETTINGS
@given(data=st.data(), n=st.sampled_from([2, 3]))
def test_comparisons_and_relu(data: st.DataObject, n: int, reused: Any, mode: str) -> None:
    p = reused[mode, n]
    shape = data.draw(_shapes())
    # values on a coarse grid so that equal pairs occur; and a few large magnitudes
    x = data.draw(_floats(-8, 8, st.just(shape))).mul(4).round().div(4)
    y = data.draw(_floats(-8, 8, st.just(shape))).mul(4).round().div(4)
    x.view(-1)[0] = data.draw(st.sampled_from([-(2.0**40), 2.0**40, -1e-4, 1e-4, 0.0]))
    sx, sy = p.share(x), p.share(y)
    assert torch.equal((sx < sy).reconstruct(), (x < y).float())
    assert torch.equal((sx > sy).reconstruct(), (x > y).float())
    assert torch.equal((sx <= sy).reconstruct(), (x <= y).float())
    assert torch.equal((sx >= y).reconstruct(), (x >= y).float())
    assert torch.equal(sx.eq(sy).reconstruct(), (x == y).float())
    _close(sx.relu().reconstruct().double(), torch.round(x.relu() * 2**16) / 2**16, 0)


@pytest.mark.parametrize("parties", modes(*DEALT), indirect=True)
def test_max_argmax_and_pooling(parties: Any) -> None:
    group = parties
    torch.manual_seed(1)
    x = torch.randn(4, 7)
    x[0, 2] = x[0, 5] = 9.0  # a tie: the first position wins, like torch.argmax
    sx = group.share(x)
    vals, onehot = sx.max(1)
    _close(vals.reconstruct(), x.max(1).values, LSB)
    assert torch.equal(onehot.reconstruct(), F.one_hot(x.argmax(1), 7).float())
    assert torch.equal(
        sx.argmax(0, one_hot=True).reconstruct(), F.one_hot(x.argmax(0), 4).float().t()
    )
    assert torch.equal(sx.argmax(1).reconstruct(), x.argmax(1).float())  # PySyft's: indices
    assert torch.equal(sx.argmax().reconstruct(), x.argmax().float())
    _close(sx.max().reconstruct(), x.max(), LSB)
    img = torch.randn(2, 3, 8, 8)
    simg = group.share(img)
    _close(simg.max_pool2d(2).reconstruct(), F.max_pool2d(img, 2), LSB)
    _close(simg.max_pool2d(3, 2).reconstruct(), F.max_pool2d(img, 3, 2), LSB)
    _close(simg.avg_pool2d(2).reconstruct(), F.avg_pool2d(img, 2), 4 * LSB)


def test_shares_are_private_objects_on_each_party(two: Any) -> None:
    sx = two.share(torch.tensor([1.0, 2.0]))
    assert [s.location for s in sx.shares] == two.parties
    assert all(s.private and s.dtype == torch.int64 for s in sx.shares)
    assert "SharedTensor(shape=2, parties=['alice', 'bob'], provider='carol'" in repr(sx)


def test_configuration_errors_say_what_to_do() -> None:
    a, b = veil.VirtualWorker("a"), veil.VirtualWorker("b")
    # PySyft's crypto_provider=None: between in-process workers, an in-process dealer
    assert torch.ones(2).share(a, b).session.provider.name == "dealer-a-b"
    with pytest.raises(ValueError, match="must not be one of the parties"):
        torch.ones(2).share(a, b, crypto_provider=b)
    with pytest.raises(ValueError, match="at least 2 parties"):
        torch.ones(2).share(a, crypto_provider=b)
    c = veil.VirtualWorker("c")
    x, y = (
        torch.ones(2).share(a, b, crypto_provider=c),
        torch.ones(2).share(b, a, crypto_provider=c),
    )
    with pytest.raises(veil.errors.WorkerMismatch):
        x + y
    with pytest.raises(ZeroDivisionError):
        x / 0
