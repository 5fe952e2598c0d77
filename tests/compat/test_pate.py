"""PySyft 0.2's PATE analysis (``pate.perform_analysis``) and Laplace noisy max, in veil.dp.

Reference values, and where they come from:

- 11.756462732485115 (data-independent) and 1.52655213289881 (data-dependent, every counted
  query unanimous): the output of PySyft 0.2's ``perform_analysis(teacher_preds=preds,
  indices=indices, noise_eps=0.1, delta=1e-5)`` for 100 teachers, 100 queries and 10 labels
  (``preds[:, 0:50] *= 0``), recorded in a notebook of the Secure and Private AI course that
  PySyft's own ``test_pate.py`` mirrors. The first is also the closed form
  min_l 2(l+1) + ln(1e5)/l, reached at l = 2.
- PySyft's ``test_pate.py`` asserted only ``data_dep_eps < data_ind_eps`` for 100 teachers,
  50 queries, ``preds[:, 0:10] *= 0``; that check is reproduced as it was.
- Papernot et al. 2017, Table 2 (δ = 1e-5, γ = 0.05, 250 teachers): MNIST ε = 2.04 after 100
  queries and 8.03 after 1000, SVHN 5.04 after 500 and 8.19 after 1000. Those came from the
  paper's real teacher votes, which are not available here; what synthetic votes reproduce
  is the bracket every such figure must sit in: above the data-dependent ε of unanimous
  votes (the least any votes can cost) and below the data-independent ε of as many queries.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from veil.dp import pate
from veil.dp.pate_lnmax import _logmgf, _q_noisy_max
from veil.dp.samplers import SeededSource


def _course_preds(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    preds = (rng.random((100, 100)) * 10).astype(int)  # fake teacher predictions
    indices = (rng.random(100) * 10).astype(int)  # what the course passed: labels 0..9
    return preds, indices


def test_data_independent_epsilon_matches_pysyft() -> None:
    preds, indices = _course_preds(0)
    dep, ind = pate.perform_analysis(
        teacher_preds=preds, indices=indices, noise_eps=0.1, delta=1e-5
    )
    assert ind == pytest.approx(11.756462732485115, rel=1e-13)
    assert ind == pytest.approx(
        min(2 * (m + 1) + math.log(1e5) / m for m in range(1, 9)), rel=1e-13
    )
    # random votes: the data-dependent bound brings nothing (PySyft printed 11.756462732485105)
    assert dep == pytest.approx(ind, rel=1e-12) and dep <= ind


def test_data_dependent_epsilon_matches_pysyft_on_unanimous_queries() -> None:
    preds, indices = _course_preds(1)
    preds[:, 0:50] *= 0  # every query the labels 0..9 point at is unanimous
    with pytest.warns(UserWarning, match="increase 'moments'"):
        dep, ind = pate.perform_analysis(preds, indices, noise_eps=0.1, delta=1e-5)
    assert dep == pytest.approx(1.52655213289881, rel=1e-12)
    assert ind == pytest.approx(11.756462732485115, rel=1e-13)


def test_pysyft_own_test_and_the_torch_spelling() -> None:
    rng = np.random.default_rng(2)
    preds = (rng.random((100, 50)) * 10).astype(int)
    indices = (rng.random(50) * 10).astype(int)
    preds[:, 0:10] *= 0
    with pytest.warns(UserWarning, match="increase 'moments'"):  # PySyft printed it
        dep, ind = pate.perform_analysis(
            teacher_preds=preds, indices=indices, noise_eps=0.1, delta=1e-5
        )
    assert dep < ind
    with pytest.warns(UserWarning, match="increase 'moments'") as seen:
        t_dep, t_ind = pate.perform_analysis_torch(
            teacher_preds=torch.tensor(preds), indices=torch.tensor(indices), noise_eps=0.1
        )
        assert pate.perform_analysis_torch(torch.tensor(preds), torch.tensor(indices)) == (dep, ind)
    assert (t_dep, t_ind) == (dep, ind)
    assert all(w.filename == __file__ for w in seen)  # the warning points at the caller


def test_papernot_2017_table_2_lies_between_the_bounds_synthetic_votes_give() -> None:
    # 250 teachers all voting for one of ten labels (as in MNIST and SVHN)
    for dataset, queries, published in (
        ("MNIST", 100, 2.04), ("MNIST", 1000, 8.03), ("SVHN", 500, 5.04), ("SVHN", 1000, 8.19)
    ):  # fmt: skip
        r = pate.lnmax_analysis(
            np.tile([250] + [0] * 9, (queries, 1)), gamma=0.05, delta=1e-5, moments=8
        )
        assert r.data_dependent_epsilon < published < r.data_independent_epsilon, dataset
    # the data-independent bound at gamma = 0.05 in closed form: 100 * 2 gamma^2 l(l+1)
    r100 = pate.lnmax_analysis(np.tile([250] + [0] * 9, (100, 1)), gamma=0.05, delta=1e-5)
    assert r100.data_independent_epsilon == pytest.approx(
        min(0.005 * 100 * (m + 1) + math.log(1e5) / m for m in range(1, 9)), rel=1e-13
    )


def test_theorem_3_bound_and_the_q_bound_against_direct_computation() -> None:
    q, eps = 0.01, 0.2
    for m in (1, 2, 5):  # the moment l
        direct = math.log(
            (1 - q) * ((1 - q) / (1 - math.exp(eps) * q)) ** m + q * math.exp(eps * m)
        )
        expected = min(direct, 0.5 * eps * eps * m * (m + 1), eps * m)
        assert _logmgf(q, eps, np.array([float(m)]))[0] == pytest.approx(expected, rel=1e-12)
    assert _logmgf(0.0, eps, np.array([3.0]))[0] == 0.0  # a certain answer costs nothing
    assert _logmgf(0.6, eps, np.array([3.0]))[0] == pytest.approx(min(0.5 * 0.04 * 12, 0.6))
    votes = np.array([30.0, 25.0, 5.0])
    bound = _q_noisy_max(votes, 0.1)
    assert bound == pytest.approx((2.5 / 4) * math.exp(-0.5) + (4.5 / 4) * math.exp(-2.5))
    n = 20_000
    wrong = float((pate.laplace_noisy_max(np.tile(votes, (n, 1)), gamma=0.1,
                                          source=SeededSource(0)) != 0).mean())  # fmt: skip
    assert wrong <= bound  # about 0.40 against a bound of 0.47


def test_more_noise_costs_less_and_consensus_costs_less() -> None:
    votes = np.tile([120, 100, 30] + [0] * 7, (100, 1))
    inds = [pate.lnmax_analysis(votes, gamma=g, delta=1e-5).data_independent_epsilon
            for g in (0.2, 0.1, 0.05, 0.02, 0.01)]  # fmt: skip
    assert all(a > b for a, b in zip(inds, inds[1:], strict=False))
    deps = []
    for gap in (0, 20, 60, 120, 250):
        row = [125 + gap // 2, 125 - gap // 2] + [0] * 8
        r = pate.lnmax_analysis(np.tile(row, (100, 1)), gamma=0.05, delta=1e-5)
        assert r.data_dependent_epsilon <= r.data_independent_epsilon * (1 + 1e-12)
        deps.append(r.data_dependent_epsilon)
    assert all(a >= b for a, b in zip(deps, deps[1:], strict=False)) and deps[0] > 2 * deps[-1]


def test_a_subset_of_queries_costs_what_its_rows_cost() -> None:
    preds, _ = _course_preds(3)
    preds[:, :30] = 4
    answered = np.array([0, 5, 5, 40, 77])  # query 5 answered twice
    with pytest.warns(UserWarning, match="increase 'moments'"):  # mostly unanimous queries
        dep, ind = pate.perform_analysis(preds, answered, noise_eps=0.1)
    votes = pate.votes_from_predictions(preds, 10)[answered]
    r = pate.lnmax_analysis(votes, gamma=0.1, delta=1e-5)
    assert (dep, ind) == (r.data_dependent_epsilon, r.data_independent_epsilon)


def test_noisy_max_is_seeded_and_breaks_ties_evenly() -> None:
    preds = np.repeat([[0, 1, 2, 2, 1]], 40, axis=0)
    preds[:15, 3] = 1  # query 3: 25 votes for 2, 15 for 1
    a = pate.noisy_max(preds, 0.05, source=SeededSource(7))
    assert a.tolist() == pate.noisy_max(preds, 0.05, source=SeededSource(7)).tolist()
    assert pate.noisy_max(preds, 5.0, source=SeededSource(1)).tolist() == [0, 1, 2, 2, 1]
    ties = pate.laplace_noisy_max(np.tile([5, 5], (4000, 1)), gamma=50.0, source=SeededSource(2))
    assert 0.45 < float(ties.mean()) < 0.55  # noise is 0 here: the tie-break decides, evenly
    v = np.tile([5, 5, 0], (50, 1))
    assert (pate.lnmax(v, gamma=50.0, source=SeededSource(4))
            == pate.lnmax(v, gamma=50.0, source=SeededSource(4))).all()  # fmt: skip


def test_smooth_sensitivity_and_its_private_release() -> None:
    r = pate.lnmax_analysis(np.tile([240, 5, 5], (50, 1)), gamma=0.05, delta=1e-5, smooth=True)
    assert r.smooth_sensitivity is not None and all(0 < s < 0.01 for s in r.smooth_sensitivity)
    assert r.ss_epsilon == pytest.approx(2 * 0.09 * math.log(2e5))
    a = r.release(8, source=SeededSource(5))
    assert a == r.release(8, source=SeededSource(5)) and a != r.epsilons[7]
    tied = pate.lnmax_analysis(np.tile([50, 50, 0], (10, 1)), gamma=0.05, delta=1e-5, smooth=True)
    assert tied.smooth_sensitivity == (0.0,) * 8  # q sits at its cap: the bound cannot move
    assert tied.release(3) == tied.epsilons[2]
    big = pate.lnmax_analysis(np.tile([40, 5, 5], (3, 1)), gamma=0.5, delta=1e-5, smooth=True)
    assert big.smooth_sensitivity is not None and math.isinf(big.smooth_sensitivity[4])  # l > 2/γ
    with pytest.raises(ValueError, match="needs l <= 2/gamma"):
        big.release(5)
    with pytest.raises(ValueError, match="smooth=True"):
        pate.lnmax_analysis(np.tile([40, 5, 5], (3, 1)), gamma=0.5, delta=1e-5).release(1)


def test_bad_input_is_refused_with_what_to_do() -> None:
    preds, indices = _course_preds(4)
    for bad in (-0.1, 0.0, float("nan")):
        with pytest.raises(ValueError, match="noise_eps.* must be a finite number > 0"):
            pate.perform_analysis(preds, indices, noise_eps=bad)
    with pytest.raises(ValueError, match=r"delta must be in \(0, 1\)"):
        pate.perform_analysis(preds, indices, noise_eps=0.1, delta=1.5)
    with pytest.raises(ValueError, match="moments must be an integer >= 1"):
        pate.perform_analysis(preds, indices, noise_eps=0.1, moments=0)
    with pytest.raises(ValueError, match="beta must be"):
        pate.perform_analysis(preds, indices, noise_eps=0.1, beta=-1.0)
    with pytest.raises(ValueError, match=r"query positions in 0..99 .* got 0..100"):
        pate.perform_analysis(preds, np.array([0, 100]), noise_eps=0.1)
    with pytest.raises(ValueError, match="1-d array of query positions"):
        pate.perform_analysis(preds, indices.reshape(10, 10), noise_eps=0.1)
    with pytest.raises(ValueError, match=r"\(teachers, queries\) array"):
        pate.perform_analysis(preds[0], indices, noise_eps=0.1)
    with pytest.raises(ValueError, match="labels in 0..9"):
        pate.perform_analysis(preds - 1, indices, noise_eps=0.1, num_classes=10)
    with pytest.raises(ValueError, match="integer labels"):
        pate.perform_analysis(preds + 0.5, indices, noise_eps=0.1)
    with pytest.raises(TypeError, match="pass the teacher predictions once"):
        pate.perform_analysis_torch(torch.tensor(preds), teacher_preds=torch.tensor(preds))
    with pytest.raises(ValueError, match="gamma must be a finite number > 0"):
        pate.noisy_max(preds, noise_eps=-1.0)
