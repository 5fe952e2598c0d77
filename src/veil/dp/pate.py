"""PATE: noisy teacher-vote aggregation (LNMax, GNMax, Confident GNMax) and its privacy analysis.

Aggregators (Papernot et al. 2017, 2018) take a ``(queries, classes)`` array of teacher vote
counts and return one label per query (``-1`` where Confident GNMax abstains). Laplace noisy
max adds exact discrete Laplace noise to the integer counts; the Gaussian ones add Gaussian
noise from a CSPRNG-seeded generator (their outputs are labels, never noisy floats).

:func:`analyze` gives the privacy of answering a set of queries, both *data-independent*
(RDP λ/σ² per GNMax answer, λ/2σ₁² per threshold check) and *data-dependent* (Papernot et
al. 2018, Theorem 6 with the union bound of Proposition 7 on q, and the threshold analysis of
section 4), summed over queries in RDP and converted to (ε, δ). The data-dependent ε depends
on the votes and is itself not private to publish without smooth-sensitivity noise (see the
paper, section 4); it is what one reports internally to choose parameters.

LNMax's own analysis (PATE 2017: the moments accountant with the data-dependent bound of
its Theorem 3, and the smooth sensitivity of that bound) is :func:`lnmax_analysis`, with
PySyft 0.2's :func:`perform_analysis` / :func:`perform_analysis_torch` and its
:func:`noisy_max` (module :mod:`veil.dp.pate_lnmax`, re-exported here).

Example:
    >>> import numpy as np
    >>> votes = np.array([[240, 5, 5], [100, 90, 60]])
    >>> r = analyze(votes, sigma=40.0, delta=1e-5)
    >>> r.data_dependent_epsilon < r.data_independent_epsilon
    True
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from scipy import special

from veil.dp.accountants.rdp import rdp_to_epsilon
from veil.dp.pate_lnmax import (
    LNMaxAnalysis,
    laplace_noisy_max,
    lnmax_analysis,
    noisy_max,
    perform_analysis,
    perform_analysis_torch,
)
from veil.dp.samplers import RandomSource

__all__ = [
    "PATE_ORDERS",
    "LNMaxAnalysis",
    "PATEAnalysis",
    "analyze",
    "confident_gnmax",
    "gnmax",
    "lnmax",
    "lnmax_analysis",
    "noisy_max",
    "perform_analysis",
    "perform_analysis_torch",
    "votes_from_predictions",
]

#: The RDP orders of the PATE 2018 analysis.
PATE_ORDERS: tuple[float, ...] = tuple(
    np.concatenate((np.arange(2, 100.5, 0.5), np.logspace(np.log10(100), np.log10(500), 100)[1:]))
)


def _votes(votes: Any) -> npt.NDArray[np.float64]:
    v = votes.detach().cpu().numpy() if isinstance(votes, torch.Tensor) else np.asarray(votes)
    v = np.atleast_2d(v).astype(np.float64)
    if v.ndim != 2 or v.shape[1] < 2 or (v < 0).any():
        raise ValueError(
            "votes must be a (queries, classes) array of non-negative counts, classes >= 2"
        )
    return v


def votes_from_predictions(predictions: Any, num_classes: int) -> npt.NDArray[np.int64]:
    """Vote counts ``(queries, classes)`` from teacher predictions ``(teachers, queries)``.

    Example:
        >>> votes_from_predictions([[0, 1], [0, 2], [1, 2]], 3).tolist()
        [[2, 1, 0], [0, 1, 2]]
    """
    p = np.asarray(
        predictions.cpu() if isinstance(predictions, torch.Tensor) else predictions, dtype=np.int64
    )
    if p.ndim != 2 or p.min() < 0 or p.max() >= num_classes:
        raise ValueError(f"predictions must be (teachers, queries) labels in 0..{num_classes - 1}")
    out = np.zeros((p.shape[1], num_classes), dtype=np.int64)
    for t in range(p.shape[0]):
        np.add.at(out, (np.arange(p.shape[1]), p[t]), 1)
    return out


def _rng() -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(secrets.randbits(128)))


def _argmax_random_ties(
    x: npt.NDArray[np.float64], rng: np.random.Generator
) -> npt.NDArray[np.int64]:
    jitter = rng.random(x.shape) * 1e-9  # breaks exact ties at random (integer noise can tie)
    return np.argmax(x + jitter * (x == x.max(1, keepdims=True)), axis=1).astype(np.int64)


def lnmax(votes: Any, *, gamma: float, source: RandomSource | None = None) -> npt.NDArray[np.int64]:
    """Laplace noisy max (PATE 2017): argmax of counts + discrete Laplace(1/γ); 2γ-DP per query.
    Noise and tie-breaking both come from ``source`` (a ``SeededSource`` reproduces the labels);
    the privacy analysis is :func:`lnmax_analysis` (or PySyft's :func:`perform_analysis`)."""
    return laplace_noisy_max(_votes(votes), gamma=gamma, source=source)


def gnmax(votes: Any, *, sigma: float) -> npt.NDArray[np.int64]:
    """Gaussian noisy max (PATE 2018): argmax of counts + N(0, σ²)."""
    v = _votes(votes)
    rng = _rng()
    return _argmax_random_ties(v + rng.normal(0.0, sigma, v.shape), rng)


def confident_gnmax(
    votes: Any, *, threshold: float, sigma1: float, sigma2: float
) -> npt.NDArray[np.int64]:
    """Confident GNMax: answer (with GNMax, σ₂) only queries whose top count plus N(0, σ₁²)
    reaches ``threshold``; ``-1`` where it abstains."""
    v = _votes(votes)
    rng = _rng()
    confident = v.max(1) + rng.normal(0.0, sigma1, v.shape[0]) >= threshold
    labels = _argmax_random_ties(v + rng.normal(0.0, sigma2, v.shape), rng)
    return np.where(confident, labels, -1)


# ------------------------------------------------------------------------------ analysis
def _log1mexp(x: float) -> float:
    """log(1 - exp(x)) for x <= 0."""
    if x >= 0:
        return -math.inf
    return math.log(-math.expm1(x)) if x > -0.693 else math.log1p(-math.exp(x))


def _logq_gnmax(votes: npt.NDArray[np.float64], sigma: float) -> float:
    """Union bound on log P[GNMax does not return the top class] (PATE 2018, Proposition 7)."""
    top = int(np.argmax(votes))
    gaps = np.delete(votes[top] - votes, top)
    from scipy import stats  # slow to import: only when PATE is analysed

    logq = float(special.logsumexp(stats.norm.logsf(gaps, scale=math.sqrt(2) * sigma)))
    return min(logq, math.log(1 - 1 / len(votes)))


def _rdp_gnmax_dependent(
    logq: float, sigma: float, orders: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Data-dependent RDP of GNMax given log q (PATE 2018, Theorem 6 with Proposition 10's
    choice of the two higher orders μ₁, μ₂), never above the data-independent λ/σ²."""
    independent = orders / sigma**2
    if logq == -math.inf:
        return np.zeros_like(orders)
    mu2 = sigma * math.sqrt(-logq)
    mu1 = mu2 + 1
    eps1, eps2 = mu1 / sigma**2, mu2 / sigma**2
    applies = (mu1 > orders) & (mu2 > 1)
    # Theorem 6's conditions: q below the bound that keeps A positive and the bound increasing.
    cond = -logq > eps2 and logq <= (mu2 - 1) * eps2 - mu2 * (
        math.log(1 + 1 / (mu1 - 1)) + math.log(1 + 1 / (mu2 - 1))
    )
    if not (applies.any() and cond):
        return independent
    log1mq = _log1mexp(logq)
    log_a = (orders - 1) * (log1mq - _log1mexp((logq + eps2) * (1 - 1 / mu2)))
    log_b = (orders - 1) * (eps1 - logq / (mu1 - 1))
    dependent = np.logaddexp(log1mq + log_a, logq + log_b) / (orders - 1)
    return np.where(applies, np.minimum(independent, dependent), independent)


@dataclass(frozen=True, slots=True)
class PATEAnalysis:
    """Privacy of a set of PATE answers at ``delta``."""

    data_independent_epsilon: float
    data_dependent_epsilon: float
    delta: float
    queries: int
    answered: int
    order: float


def analyze(votes: Any, *, sigma: float, delta: float, threshold: float | None = None,
            sigma1: float | None = None, answered: Any = None,
            orders: tuple[float, ...] = PATE_ORDERS) -> PATEAnalysis:  # fmt: skip
    """Data-independent and data-dependent (ε, δ) of answering ``votes`` with GNMax (σ), or
    with Confident GNMax when ``threshold`` and ``sigma1`` are given.

    Args:
        votes: ``(queries, classes)`` teacher vote counts (see :func:`votes_from_predictions`).
        sigma: σ of GNMax (σ₂ of Confident GNMax).
        delta: the δ to report ε at.
        threshold, sigma1: Confident GNMax's threshold T and its noise σ₁.
        answered: for Confident GNMax, a boolean mask of the queries that were answered (all
            queries pay for the threshold check; only answered ones pay for GNMax). Default:
            the expected cost is not used; every query is taken as answered.
    """
    v = _votes(votes)
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    a = np.asarray(orders, dtype=np.float64)
    confident = threshold is not None
    if confident and not (sigma1 is not None and sigma1 > 0):
        raise ValueError("Confident GNMax needs sigma1 > 0 with the threshold")
    mask = np.ones(len(v), dtype=bool) if answered is None else np.asarray(answered, dtype=bool)
    if mask.shape != (len(v),):
        raise ValueError("answered must be one boolean per query")
    dep = np.zeros_like(a)
    ind = np.zeros_like(a)
    for q, row in enumerate(v):
        if confident:
            assert sigma1 is not None and threshold is not None
            s_t = math.sqrt(2) * sigma1  # the threshold check has sensitivity 1, GNMax's formula 2
            from scipy import stats

            logpr = float(stats.norm.logsf(threshold - row.max(), scale=sigma1))
            logq_t = min(logpr, _log1mexp(logpr))
            dep += _rdp_gnmax_dependent(logq_t, s_t, a)
            ind += a / s_t**2
        if mask[q]:
            dep += _rdp_gnmax_dependent(_logq_gnmax(row, sigma), sigma, a)
            ind += a / sigma**2
    eps_ind, _ = rdp_to_epsilon(tuple(a), ind, delta)
    eps_dep, order = rdp_to_epsilon(tuple(a), dep, delta)
    return PATEAnalysis(eps_ind, eps_dep, delta, len(v), int(mask.sum()), order)
