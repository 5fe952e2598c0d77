"""PATE aggregators and the data-independent / data-dependent analysis of Papernot et al. 2018."""

from __future__ import annotations

import math

import numpy as np
import pytest

from veil.dp.accountants.rdp import compute_rdp, rdp_to_epsilon
from veil.dp.pate import (
    PATE_ORDERS,
    _logq_gnmax,
    _rdp_gnmax_dependent,
    analyze,
    confident_gnmax,
    gnmax,
    lnmax,
    votes_from_predictions,
)


def test_votes_from_teacher_predictions() -> None:
    preds = np.array([[0, 1, 2], [0, 1, 1], [2, 1, 1]])  # 3 teachers x 3 queries
    assert votes_from_predictions(preds, 3).tolist() == [[2, 0, 1], [0, 3, 0], [0, 2, 1]]
    with pytest.raises(ValueError, match="labels in 0..2"):
        votes_from_predictions([[3]], 3)


def test_aggregators_answer_clear_majorities_and_abstain_when_unsure() -> None:
    votes = np.array([[230, 10, 10]] * 50 + [[90, 85, 75]] * 50)
    assert (gnmax(votes[:50], sigma=20.0) == 0).all()
    assert (lnmax(votes[:50], gamma=0.1) == 0).all()
    # threshold 6 sigma1 below the clear max and 8 above the unsure one: the noise is drawn from
    # a CSPRNG (no seed), so the margins keep a wrong answer at ~1e-9 per query (with 200 it
    # was 3 sigma: about one run in 15 had an abstention among the 50 clear queries)
    out = confident_gnmax(votes, threshold=170, sigma1=10.0, sigma2=20.0)
    assert (out[:50] == 0).all() and (out[50:] == -1).all()


def test_q_bound_holds_against_monte_carlo() -> None:
    votes = np.array([[100.0, 90.0, 60.0]])
    sigma = 20.0
    q_bound = math.exp(_logq_gnmax(votes[0], sigma))
    n = 20_000
    wrong = float((gnmax(np.repeat(votes, n, 0), sigma=sigma) != 0).mean())
    assert wrong <= q_bound + 4 * math.sqrt(q_bound / n)
    assert q_bound < 0.5  # and the bound is not vacuous here


def test_data_independent_matches_the_gaussian_rdp() -> None:
    """GNMax is the Gaussian mechanism on a histogram with L2 sensitivity √2: RDP λ/σ²."""
    votes = np.tile([120, 80, 50], (30, 1))
    r = analyze(votes, sigma=40.0, delta=1e-5)
    rdp = compute_rdp(
        sample_rate=1.0, noise_multiplier=40.0 / math.sqrt(2), steps=30, orders=PATE_ORDERS
    )
    assert r.data_independent_epsilon == pytest.approx(
        rdp_to_epsilon(PATE_ORDERS, rdp, 1e-5)[0], rel=1e-9
    )


def test_data_dependent_is_never_worse_and_much_better_on_consensus() -> None:
    orders = np.asarray(PATE_ORDERS)
    for gap in (0.0, 20.0, 100.0, 240.0):
        logq = _logq_gnmax(
            np.array([250.0 - gap, gap, 0.0]) if gap < 125 else np.array([gap, 250 - gap, 0.0]),
            40.0,
        )
        dep = _rdp_gnmax_dependent(logq, 40.0, orders)
        assert (dep <= orders / 40.0**2 + 1e-12).all() and (dep >= 0).all()
    unanimous = np.tile([250, 0, 0], (500, 1))
    r = analyze(unanimous, sigma=40.0, delta=1e-5)
    assert r.data_dependent_epsilon < 0.2 * r.data_independent_epsilon
    split = np.tile([90, 85, 75], (500, 1))
    r2 = analyze(split, sigma=40.0, delta=1e-5)
    assert r2.data_dependent_epsilon == pytest.approx(r2.data_independent_epsilon, rel=1e-6)


def test_confident_gnmax_pays_for_every_check_and_each_answer() -> None:
    votes = np.tile([240, 5, 5], (100, 1))
    answered = np.arange(100) < 40
    r = analyze(votes, sigma=40.0, delta=1e-5, threshold=200, sigma1=150, answered=answered)
    all_answered = analyze(votes, sigma=40.0, delta=1e-5, threshold=200, sigma1=150)
    plain = analyze(votes[:40], sigma=40.0, delta=1e-5)
    assert r.answered == 40 and r.queries == 100
    assert (
        plain.data_independent_epsilon
        < r.data_independent_epsilon
        < all_answered.data_independent_epsilon
    )
    assert r.data_dependent_epsilon <= r.data_independent_epsilon
