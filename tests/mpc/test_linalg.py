"""Range-checked reciprocals and the sweep operator on shared matrices (veil.mpc.protocols.linalg),
against float64 numpy."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from veil.mpc.protocols.linalg import pivot_range, reciprocal_in_range, sweep


def _np_sweep(m: np.ndarray, k: int) -> np.ndarray:
    """Goodnight's sweep in float64, written element by element."""
    d = m[k, k]
    out = m.copy()
    for i in range(len(m)):
        for j in range(len(m)):
            if i != k and j != k:
                out[i, j] = m[i, j] - m[i, k] * m[k, j] / d
    out[k, :] = m[k, :] / d
    out[:, k] = -m[:, k] / d
    out[k, k] = 1 / d
    return out


@pytest.mark.parametrize("security", ["semi-honest", "malicious"])
def test_reciprocal_is_precise_over_the_whole_range(two: Any, security: str) -> None:
    lo, hi = pivot_range(20)
    # both ends of every octave from 2^lo to 2^(hi+1), and points inside
    xs = sorted({2.0**e * f for e in range(lo, hi + 1) for f in (1.0, 1.37, 1.99)})
    for x0 in xs[:: max(1, len(xs) // 12)] + [xs[-1]]:
        x = round(x0 * 2**20) / 2**20  # the value the encoding holds
        s = torch.tensor(x, dtype=torch.float64).fix_precision(20)
        shared = s.share(*two.parties, crypto_provider=two.provider, security=security)
        inv, flags = reciprocal_in_range(shared)
        got = float(inv.reconstruct().double())
        # 1/x carries 20 - log2(x) significant bits: relative error 2^-(20 - log2 x) + noise
        assert got == pytest.approx(1 / x, rel=4 * 2.0 ** -(20 - max(np.log2(x), 0)) + 1e-5), x
        assert flags.reconstruct().tolist() == [0.0, 0.0]


def test_out_of_range_inputs_raise_their_flag(two: Any) -> None:
    for x, expected in ((2.0**-12, [1.0, 0.0]), (2.0**12, [0.0, 1.0]), (-1.0, [1.0, 0.0])):
        shared = torch.tensor(x).fix_precision(20).share(*two.parties, crypto_provider=two.provider)
        _, flags = reciprocal_in_range(shared)
        assert flags.reconstruct().tolist() == expected, x


def test_pivot_range_follows_the_precision() -> None:
    assert pivot_range(16) == (-8, 8) and pivot_range(27) == (-13, 13)
    with pytest.raises(ValueError, match="frac_bits must be in 8..30"):
        pivot_range(4)


def test_sweeping_every_pivot_inverts_and_solves(three: Any) -> None:
    rng = np.random.default_rng(2)
    z = rng.normal(size=(40, 3))
    w = np.c_[z, z @ [1.0, -2.0, 0.5] + rng.normal(size=40)]
    m = w.T @ w / 40
    shared = torch.tensor(m).fix_precision(20).share(*three.parties, crypto_provider=three.provider)
    ref = m
    for k in range(3):
        shared, flags = sweep(shared, k)
        ref = _np_sweep(ref, k)
        assert flags.reconstruct().tolist() == [0.0, 0.0]
        np.testing.assert_allclose(shared.reconstruct().double().numpy(), ref, atol=2e-4)
    np.testing.assert_allclose(ref[:3, :3], np.linalg.inv(m[:3, :3]), rtol=1e-9)  # the reference
    np.testing.assert_allclose(ref[:3, 3], np.linalg.solve(m[:3, :3], m[:3, 3]), rtol=1e-9)


def test_a_public_pivot_is_exact_and_checked(two: Any) -> None:
    m = np.array([[1.0, 0.5], [0.5, 2.0]])
    shared = torch.tensor(m).fix_precision(20).share(*two.parties, crypto_provider=two.provider)
    out, flags = sweep(shared, 0, pivot=1.0)
    np.testing.assert_allclose(out.reconstruct().double().numpy(), _np_sweep(m, 0), atol=1e-5)
    assert flags.reconstruct().tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="public pivot must be > 0"):
        sweep(shared, 0, pivot=0.0)
    with pytest.raises(ValueError, match="square matrix and a pivot in 0..1"):
        sweep(shared, 2)
