"""The approximations' error bounds, as stated in veil.mpc.approx, on dense grids."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from veil.mpc import approx


def _errors(p: Any, fn: Any, ref: Any, lo: float, hi: float, n: int = 1500) -> tuple[float, float]:
    g = torch.linspace(lo, hi, n, dtype=torch.float64).float()
    got = fn(p.share(g)).reconstruct().double()
    want = ref(g.double())
    err = (got - want).abs()
    return float(err.max()), float((err / want.abs().clamp_min(1e-12)).max())


@pytest.fixture(scope="module")
def p(reused: Any) -> Any:
    return reused[2]


def test_exp(p: Any) -> None:
    assert _errors(p, approx.exp, torch.exp, -4, 4)[1] <= 0.04
    assert _errors(p, approx.exp, torch.exp, -16, 0)[0] <= 5e-3


def test_reciprocal_either_sign(p: Any) -> None:
    assert _errors(p, approx.reciprocal, torch.reciprocal, 0.1, 100)[1] <= 0.01
    assert _errors(p, approx.reciprocal, torch.reciprocal, -100, -0.1)[1] <= 0.01


def test_sqrt(p: Any) -> None:
    assert _errors(p, approx.sqrt, torch.sqrt, 0.1, 100)[1] <= 0.01


def test_log(p: Any) -> None:
    assert _errors(p, approx.log, torch.log, 0.1, 10)[0] <= 2e-2
    assert _errors(p, approx.log, torch.log, 10, 100)[0] <= 5e-2


def test_sigmoid_and_tanh(p: Any) -> None:
    assert _errors(p, approx.sigmoid, torch.sigmoid, -30, 30)[0] <= 2e-3
    assert _errors(p, approx.tanh, torch.tanh, -15, 15)[0] <= 4e-3


def test_softmax(p: Any, reused: Any) -> None:
    torch.manual_seed(0)
    for parties in (p, reused[3]):
        z = torch.rand(16, 10) * 8 - 4  # range < 8
        got = parties.share(z).softmax(1).reconstruct()
        assert float((got - z.softmax(1)).abs().max()) <= 1e-2
        assert (
            torch.equal(got.argmax(1), z.argmax(1))
            or float((got - z.softmax(1)).abs().max()) < 1e-3
        )
