"""Mechanisms and exact samplers: distributions, calibration, and Mironov's floating-point attack."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from veil.dp import (
    DiscreteGaussianMechanism,
    DiscreteLaplaceMechanism,
    ExponentialMechanism,
    GaussianMechanism,
    LaplaceMechanism,
    RandomizedResponse,
    SeededSource,
    discrete_gaussian,
    discrete_laplace,
    gaussian_epsilon,
    gaussian_sigma,
)
from veil.dp.samplers import bernoulli_exp, uniform_below

N = 200_000


def _chi2_ok(samples: np.ndarray, pmf: dict[int, float], n: int) -> bool:
    """Chi-square goodness of fit over the support's bulk (cells with >= 20 expected)."""
    stat, dof = 0.0, 0
    for k, p in pmf.items():
        e = p * n
        if e >= 20:
            o = float((samples == k).sum())
            stat += (o - e) ** 2 / e
            dof += 1
    # mean dof, sd sqrt(2 dof): 6 sd is a false alarm rate well below 1e-6
    return stat < dof + 6 * math.sqrt(2 * dof)


@pytest.mark.parametrize("scale", [0.7, 3.0, 12.5])
def test_discrete_laplace_matches_its_pmf(scale: float) -> None:
    z = discrete_laplace(scale, N)
    ks = range(-int(40 * scale) - 5, int(40 * scale) + 6)
    w = {k: math.exp(-abs(k) / scale) for k in ks}
    total = sum(w.values())
    assert _chi2_ok(z, {k: v / total for k, v in w.items()}, N)


@pytest.mark.parametrize("sigma", [0.6, 2.0, 9.3])
def test_discrete_gaussian_matches_its_pmf(sigma: float) -> None:
    z = discrete_gaussian(sigma, N)
    ks = range(-int(12 * sigma) - 3, int(12 * sigma) + 4)
    w = {k: math.exp(-(k**2) / (2 * sigma**2)) for k in ks}
    total = sum(w.values())
    assert _chi2_ok(z, {k: v / total for k, v in w.items()}, N)


def test_large_sigma_discrete_gaussian_has_the_right_spread() -> None:
    z = discrete_gaussian(2.5e6, 100_000)
    assert abs(z.std() / 2.5e6 - 1) < 0.02
    assert abs(z.mean()) < 0.02 * 2.5e6


def test_bernoulli_exp_is_exact_in_mean_for_large_gamma() -> None:
    num = np.full(N, 5, dtype=np.int64)  # γ = 5/2
    den = np.full(N, 2, dtype=np.int64)
    p = math.exp(-2.5)
    assert abs(bernoulli_exp(num, den).mean() - p) < 5 * math.sqrt(p * (1 - p) / N)


def test_uniform_below_covers_large_ranges_uniformly() -> None:
    m = np.full(N, 3 * (1 << 60), dtype=np.int64)  # rejection kicks in: lim < 2**62
    u = uniform_below(m)
    assert u.min() >= 0 and u.max() < 3 * (1 << 60)
    assert abs(u.mean() / (3 * (1 << 60)) - 0.5) < 0.01


def test_seeded_source_is_reproducible_and_default_is_not() -> None:
    a = discrete_gaussian(3.0, 64, SeededSource(7))
    b = discrete_gaussian(3.0, 64, SeededSource(7))
    assert (a == b).all()
    assert not (discrete_gaussian(3.0, 64) == discrete_gaussian(3.0, 64)).all()


def test_a_million_element_release_is_vectorized() -> None:
    # no timing assert: a Python loop per element would take minutes; this finishing is the check
    out = GaussianMechanism(sigma=1.0, delta=1e-5, sensitivity=1.0)(torch.zeros(1_000_000))
    assert out.shape == (1_000_000,) and 0.97 < float(out.std()) < 1.03


# ----------------------------------------------------------------------- Mironov's attack
def _not_on_53bit_grid(y: np.ndarray) -> np.ndarray:
    """Outputs that ``1 + noise`` can never produce when |y| < 0.5: everything ``1 + n`` yields
    there is a multiple of 2**-53 (its noise had |n| >= 0.5, hence that ulp)."""
    scaled = y * 2.0**53
    return (np.abs(y) < 0.5) & (scaled != np.floor(scaled))


def test_textbook_float_laplace_leaks_its_input() -> None:
    """Mironov (2012): the set of floats x + Lap(b) can take depends on x. An observer who
    sees one output in the event E below knows the input was 0 and not 1: ε is infinite."""
    rng = np.random.default_rng(0)
    y0 = 0.0 + rng.laplace(0.0, 1.0, N)
    y1 = 1.0 + rng.laplace(0.0, 1.0, N)
    p0, p1 = _not_on_53bit_grid(y0).mean(), _not_on_53bit_grid(y1).mean()
    assert p0 > 0.2 and p1 == 0.0  # P[E | x=0] / P[E | x=1] = infinity


def test_our_laplace_gives_the_attack_nothing() -> None:
    mech = LaplaceMechanism(epsilon=1.0, sensitivity=1.0)
    y0 = mech(np.zeros(N))
    y1 = mech(np.ones(N))
    g = mech.granularity(N)
    # every output of either input lies on the same grid: the support does not depend on x
    assert (np.mod(y0, g) == 0).all() and (np.mod(y1, g) == 0).all()
    assert _not_on_53bit_grid(y0).mean() == _not_on_53bit_grid(y1).mean() == 0.0
    # and the likelihood ratio of any event stays within e^ε: check coarse bins
    bins = np.linspace(-6, 7, 27)
    h0, _ = np.histogram(y0, bins)
    h1, _ = np.histogram(y1, bins)
    ok = (h0 > 500) & (h1 > 500)
    ratios = h0[ok] / h1[ok]
    assert ratios.max() < math.e * 1.15 and ratios.min() > 1 / (math.e * 1.15)


def test_scalar_release_keeps_the_grid_too() -> None:
    mech = LaplaceMechanism(epsilon=0.5, sensitivity=1.0)
    outs = {mech(0.1) for _ in range(200)}
    g = mech.granularity(1)
    assert all(isinstance(o, float) and (o / g).is_integer() for o in outs)


# ----------------------------------------------------------------------- calibration
def test_laplace_noise_has_the_calibrated_scale() -> None:
    mech = LaplaceMechanism(epsilon=0.5, sensitivity=2.0)
    noise = mech(np.zeros(N))
    b = mech.scale(N)
    assert 4.0 <= b < 4.0 * 1.01  # Δ/ε plus the grid's tiny margin
    assert abs(np.abs(noise).mean() / b - 1) < 0.02


def test_gaussian_calibration_meets_its_target() -> None:
    sigma = gaussian_sigma(1.0, 1e-5, 2.0)
    assert gaussian_epsilon(sigma, 2.0, 1e-5) <= 1.0 + 1e-9
    assert gaussian_epsilon(sigma * 0.99, 2.0, 1e-5) > 1.0  # and is not loose
    m = GaussianMechanism(epsilon=1.0, delta=1e-5, sensitivity=2.0)
    assert m.sigma >= sigma
    out = m(torch.zeros(N, dtype=torch.float32))
    assert out.dtype == torch.float32 and abs(float(out.std()) / m.sigma - 1) < 0.02


def test_discrete_mechanisms_release_integers() -> None:
    x = torch.arange(10)
    y = DiscreteLaplaceMechanism(epsilon=1.0, sensitivity=1)(x)
    assert y.dtype == torch.int64 and y.shape == x.shape
    z = DiscreteGaussianMechanism(epsilon=1.0, delta=1e-5)(np.zeros(N, dtype=np.int64))
    assert abs(z.std() - gaussian_sigma(1.0, 1e-5)) < 0.05
    with pytest.raises(TypeError, match="integers"):
        DiscreteLaplaceMechanism(epsilon=1.0)(torch.tensor([0.5]))


def test_bad_parameters_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="epsilon must be a positive number"):
        LaplaceMechanism(epsilon=0.0, sensitivity=1.0)
    with pytest.raises(ValueError, match="delta must be in"):
        GaussianMechanism(epsilon=1.0, delta=0.0, sensitivity=1.0)
    with pytest.raises(ValueError, match="NaN"):
        LaplaceMechanism(epsilon=1.0, sensitivity=1.0)(float("nan"))
    with pytest.raises(ValueError, match="too large"):
        LaplaceMechanism(epsilon=1.0, sensitivity=1e-12)(1e6)


def test_exponential_mechanism_matches_its_distribution() -> None:
    mech = ExponentialMechanism(epsilon=2.0, sensitivity=1.0)
    u = [0.0, 1.0, 2.0]
    counts = np.bincount([mech.select(u) for _ in range(6000)], minlength=3) / 6000
    expect = np.exp(np.array(u)) / np.exp(np.array(u)).sum()  # exp(ε u / 2Δ) = exp(u)
    assert np.abs(counts - expect).max() < 0.03


def test_randomized_response_is_unbiasable_and_private() -> None:
    rr = RandomizedResponse(epsilon=1.0, k=4)
    p = rr.keep_probability
    q = (1 - p) / 3
    assert p / q <= math.e * (1 + 1e-12)  # the rational keep rate keeps the ratio at e^ε
    truth = np.repeat(np.arange(4), [N // 2, N // 4, N // 8, N // 8])
    est = rr.estimate_counts(rr(truth))
    assert np.allclose(est, np.bincount(truth), rtol=0.05, atol=2000)
