"""PATE 2017: Laplace noisy max (LNMax) and its moments-accountant privacy analysis.

Papernot, Abadi, Erlingsson, Goodfellow and Talwar, *Semi-supervised Knowledge Transfer for
Deep Learning from Private Training Data* (ICLR 2017), section 3 and appendix C. Answering
one query with noisy max (Laplace noise of scale 1/γ on each vote count) is (2γ, 0)-DP; the
log moment generating function of its privacy loss at moment l is at most

- data-independent: min(2γ² l(l+1), 2γ l) (Dwork and Roth, Theorem 2 of the paper);
- data-dependent, given q >= P[the answer is not the plurality label]:
  log((1-q) ((1-q) / (1 - e^{2γ} q))^l + q e^{2γ l}) (Theorem 3), when q < 1/2 and
  e^{2γ} q < 1; q is bounded from the vote gaps by sum_j (2 + γΔ_j) / (4 e^{γΔ_j})
  (Laplace tail of a difference, the paper's Proposition C).

Moments add over queries; ε = min_l (α(l) - ln δ) / l. The data-dependent ε depends on the
votes, so publishing it spends privacy too: :attr:`LNMaxAnalysis.smooth_sensitivity` is its
β-smooth sensitivity (appendix C.3), and :meth:`LNMaxAnalysis.release` adds the noise of
Nissim, Raskhodnikova and Smith (2007, Corollary 2.4) for an (ε', δ)-DP estimate.

:func:`perform_analysis` and :func:`perform_analysis_torch` keep PySyft 0.2's signatures and
return values (``(data_dependent_eps, data_independent_eps)``).

Example:
    >>> import numpy as np
    >>> preds = np.tile((np.arange(100) % 10)[:, None], (1, 100))  # 100 teachers, evenly split
    >>> preds[:, 60:] = 0                                  # but unanimous on the last 40 queries
    >>> dep, ind = perform_analysis(preds, np.arange(100), noise_eps=0.1, delta=1e-5)
    >>> round(dep, 3), round(ind, 3)
    (8.662, 11.756)
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from veil.dp.samplers import RandomSource, discrete_laplace

__all__ = [
    "LNMaxAnalysis",
    "laplace_noisy_max",
    "lnmax_analysis",
    "noisy_max",
    "perform_analysis",
    "perform_analysis_torch",
]

FloatArray = npt.NDArray[np.float64]


def _array(x: Any) -> npt.NDArray[Any]:
    return np.asarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x)


def _counts(teacher_preds: Any, num_classes: int | None) -> npt.NDArray[np.int64]:
    """Vote counts (queries, classes) from labels (teachers, queries)."""
    p = _array(teacher_preds)
    if p.ndim != 2 or p.size == 0:
        raise ValueError(
            f"teacher_preds must be a (teachers, queries) array of labels, got shape {p.shape}"
        )
    if not np.issubdtype(p.dtype, np.integer):
        if not np.all(np.mod(p, 1) == 0):
            raise ValueError("teacher_preds must hold integer labels (0, 1, ...)")
        p = p.astype(np.int64)
    k = int(p.max()) + 1 if num_classes is None else num_classes
    if p.min() < 0 or p.max() >= k:
        raise ValueError(f"teacher_preds must hold labels in 0..{k - 1}, got {p.min()}..{p.max()}")
    out = np.zeros((p.shape[1], max(k, 2)), dtype=np.int64)
    np.add.at(out, (np.broadcast_to(np.arange(p.shape[1]), p.shape), p), 1)
    return out


def _positive(name: str, v: float, hint: str = "") -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {v!r}{hint}")
    return float(v)


# ------------------------------------------------------------------------ aggregation
def laplace_noisy_max(
    votes: Any, *, gamma: float, source: RandomSource | None = None
) -> npt.NDArray[np.int64]:
    """argmax of each row of ``votes`` (queries, classes) plus discrete Laplace noise of scale
    1/γ: (2γ, 0)-DP per query. Ties are broken uniformly from the same ``source``, so a
    :class:`~veil.dp.SeededSource` makes the labels reproducible.

    Example:
        >>> from veil.dp.samplers import SeededSource
        >>> v = np.array([[90, 5, 5], [10, 80, 10]])
        >>> laplace_noisy_max(v, gamma=0.5, source=SeededSource(0)).tolist()
        [0, 1]
    """
    _positive("gamma", gamma, "; PATE 2017 used 0.05")
    v = np.atleast_2d(_array(votes)).astype(np.int64)
    src = source if source is not None else RandomSource()
    noisy = v + discrete_laplace(1.0 / gamma, v.shape, src)
    # the noisy counts are integers: a uniform fraction in [0, 1) breaks ties only
    jitter = (src.words(v.size) >> np.uint64(11)).astype(np.float64).reshape(v.shape) * 2.0**-53
    return np.argmax(noisy + jitter, axis=1).astype(np.int64)


def noisy_max(
    teacher_preds: Any,
    noise_eps: float,
    *,
    num_classes: int | None = None,
    source: RandomSource | None = None,
) -> npt.NDArray[np.int64]:
    """The labels PATE 2017 hands the student: per query, the teachers' votes plus Laplace
    noise of scale 1/``noise_eps``, arg-maxed (the aggregation of PySyft's PATE tutorials).
    ``teacher_preds`` is (teachers, queries), as :func:`perform_analysis` takes it.

    Example:
        >>> from veil.dp.samplers import SeededSource
        >>> preds = np.array([[0, 1, 2]] * 40)            # 40 teachers, 3 queries
        >>> noisy_max(preds, 0.5, source=SeededSource(1)).tolist()
        [0, 1, 2]
    """
    return laplace_noisy_max(_counts(teacher_preds, num_classes), gamma=noise_eps, source=source)


# ------------------------------------------------------------------------ analysis
def _q_noisy_max(counts: FloatArray, gamma: float) -> float:
    """Upper bound on P[noisy max does not return the plurality label] (appendix C)."""
    winner = int(np.argmax(counts))
    gaps = gamma * np.delete(counts[winner] - counts, winner)
    q = float(np.sum((2.0 + gaps) * np.exp(-gaps) / 4.0))
    return min(q, 1.0 - 1.0 / len(counts))


def _logmgf(q: float, eps: float, moments: FloatArray) -> FloatArray:
    """Bound on the log moments of an eps-DP mechanism that errs with probability <= q."""
    independent = np.minimum(0.5 * eps * eps * moments * (moments + 1), eps * moments)
    if q >= 0.5 or math.exp(eps) * q >= 1.0:
        return independent
    log1mq = math.log1p(-q)
    a = log1mq + moments * (log1mq - math.log1p(-math.exp(eps) * q))
    b = math.log(q) + eps * moments if q > 0 else np.full_like(moments, -math.inf)
    return np.minimum(independent, np.logaddexp(a, b))


def _local_sensitivity(counts: FloatArray, gamma: float, moments: FloatArray, k: int) -> FloatArray:
    """How much one more changed teacher moves the log moment, at distance ``k`` (k votes
    already moved from the top label to the runner-up); inf where l > 2/γ (no bound)."""
    c = np.sort(counts)[::-1].copy()
    if c[0] - c[1] < k:  # the gap is used up: q sits at its cap, the moment no longer moves
        return np.where(0.5 * gamma * moments > 1, math.inf, 0.0)
    c[0] -= k
    c[1] += k
    before = _logmgf(_q_noisy_max(c, gamma), 2 * gamma, moments)
    c[0] -= 1
    c[1] += 1
    after = _logmgf(_q_noisy_max(c, gamma), 2 * gamma, moments)
    return np.where(0.5 * gamma * moments > 1, math.inf, np.abs(after - before))


def _smooth_sensitivity(
    counts: FloatArray, gamma: float, moments: FloatArray, beta: float
) -> FloatArray:
    """β-smooth sensitivity max_k e^{-βk} LS(k) of each log moment (appendix C.3)."""
    out = _local_sensitivity(counts, gamma, moments, 0)
    for k in range(1, int(counts.max()) + 1):
        ls = _local_sensitivity(counts, gamma, moments, k)
        out = np.maximum(out, math.exp(-beta * k) * ls)
        if not np.any(ls[np.isfinite(ls)]):  # zero from here on (inf: no bound at that l)
            break
    return out


@dataclass(frozen=True, slots=True)
class LNMaxAnalysis:
    """The privacy of answering ``queries`` queries with Laplace noisy max.

    ``smooth_sensitivity[i]`` is the β-smooth sensitivity of the data-dependent ε at moment
    ``i + 1`` (None unless asked for); ``ss_epsilon`` = 2β ln(2/δ) is the privacy of
    releasing it with :meth:`release`.
    """

    data_dependent_epsilon: float
    data_independent_epsilon: float
    delta: float
    queries: int
    moment: int
    epsilons: tuple[float, ...]
    beta: float
    smooth_sensitivity: tuple[float, ...] | None = None

    @property
    def ss_epsilon(self) -> float:
        return 2.0 * self.beta * math.log(2.0 / self.delta)

    def release(self, moment: int, *, source: RandomSource | None = None) -> float:
        """An (``ss_epsilon``, δ)-DP estimate of the data-dependent ε at ``moment`` (choose
        it before looking at the data): ε_l plus Laplace noise of scale 2 SS_l / ss_epsilon.

        Example:
            >>> from veil.dp.samplers import SeededSource
            >>> r = lnmax_analysis(np.tile([240, 5, 5], (50, 1)), gamma=0.05, delta=1e-5,
            ...                    smooth=True)
            >>> abs(r.release(8, source=SeededSource(0)) - r.epsilons[7]) < 1.0
            True
        """
        from veil.dp.mechanisms import LaplaceMechanism

        if self.smooth_sensitivity is None:
            raise ValueError("compute the analysis with smooth=True to release its epsilon")
        if not 1 <= moment <= len(self.epsilons):
            raise ValueError(f"moment must be in 1..{len(self.epsilons)}, got {moment}")
        ss = self.smooth_sensitivity[moment - 1]
        if not math.isfinite(ss):
            raise ValueError(f"no sensitivity bound at moment {moment} (it needs l <= 2/gamma)")
        value = torch.tensor([self.epsilons[moment - 1]], dtype=torch.float64)
        if ss == 0:
            return float(value)
        mech = LaplaceMechanism(epsilon=self.ss_epsilon, sensitivity=2.0 * ss, source=source)
        return float(mech(value)[0])


def lnmax_analysis(votes: Any, *, gamma: float, delta: float, moments: int = 8,
                   beta: float = 0.09, smooth: bool = False) -> LNMaxAnalysis:  # fmt: skip
    """Data-dependent and data-independent (ε, δ) of answering every row of ``votes``
    (queries, classes) with Laplace noisy max of parameter γ (noise scale 1/γ).

    Args:
        votes: vote counts, one row per answered query (repeat a row answered twice).
        gamma: the noisy max parameter (PySyft's ``noise_eps``).
        delta: the δ to report ε at.
        moments: the moments l = 1..moments to track.
        beta: smoothness of the smooth-sensitivity bound.
        smooth: also compute the smooth sensitivity (slower: a loop over vote gaps).

    Example:
        >>> r = lnmax_analysis(np.tile([250, 0, 0], (100, 1)), gamma=0.05, delta=1e-5)
        >>> round(r.data_dependent_epsilon, 2), round(r.data_independent_epsilon, 2), r.moment
        (1.44, 5.3, 8)
    """
    g = _positive("gamma (noise_eps)", gamma, "; PATE 2017 used 0.05")
    d = _positive("delta", delta)
    if d >= 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}; typically below 1/n")
    if isinstance(moments, bool) or not isinstance(moments, int) or moments < 1:
        raise ValueError(f"moments must be an integer >= 1, got {moments!r}; 8 is typical")
    b = _positive("beta", beta, "; PATE 2017 used 0.09")
    v = np.atleast_2d(_array(votes)).astype(np.float64)
    if v.ndim != 2 or v.shape[1] < 2 or (v < 0).any():
        raise ValueError("votes must be a (queries, classes) array of counts, classes >= 2")
    ls = np.arange(1, moments + 1, dtype=np.float64)
    dep = np.zeros_like(ls)
    ss = np.zeros_like(ls)
    for row in v:
        dep += _logmgf(_q_noisy_max(row, g), 2 * g, ls)
        if smooth:
            ss += _smooth_sensitivity(row, g, ls, b)
    ind = len(v) * np.minimum(0.5 * (2 * g) ** 2 * ls * (ls + 1), 2 * g * ls)
    eps_dep = (dep - math.log(d)) / ls
    eps_ind = (ind - math.log(d)) / ls
    best = int(np.argmin(eps_dep))
    return LNMaxAnalysis(
        data_dependent_epsilon=float(eps_dep[best]),
        data_independent_epsilon=float(eps_ind.min()),
        delta=d,
        queries=len(v),
        moment=best + 1,
        epsilons=tuple(float(e) for e in eps_dep),
        beta=b,
        smooth_sensitivity=tuple(float(s) for s in ss / ls) if smooth else None,
    )


def perform_analysis(teacher_preds: Any, indices: Any, noise_eps: float, delta: float = 1e-5,
                     moments: int = 8, beta: float = 0.09, *,
                     num_classes: int | None = None) -> tuple[float, float]:  # fmt: skip
    """PySyft 0.2's PATE analysis: ``(data_dependent_eps, data_independent_eps)`` of the
    queries at positions ``indices`` answered with noisy max (γ = ``noise_eps``).

    Args:
        teacher_preds: (teachers, queries) labels in 0..num_classes-1.
        indices: positions (0..queries-1) of the answered queries; one query answered twice
            appears twice. (PySyft's tutorials passed the noisy labels here; those are read
            as positions too, exactly as PySyft did.)
        noise_eps: γ, the inverse of the Laplace noise scale.
        delta: the δ of the reported ε.
        moments: the moments to track; a warning says when the best is the last one.
        beta: the smoothness PySyft used for its (unreturned) smooth sensitivity; see
            :func:`lnmax_analysis` (``smooth=True``) for that bound.
        num_classes: the number of labels (default: the largest label + 1).

    Example:
        >>> preds = np.tile((np.arange(100) % 10)[:, None], (1, 100))  # votes split evenly
        >>> dep, ind = perform_analysis(preds, np.arange(100), noise_eps=0.1, delta=1e-5)
        >>> round(dep, 6), round(ind, 6)  # no consensus: the votes do not help
        (11.756463, 11.756463)
    """
    return _perform(teacher_preds, indices, noise_eps, delta, moments, beta, num_classes, 3)


def _perform(teacher_preds: Any, indices: Any, noise_eps: float, delta: float, moments: int,
             beta: float, num_classes: int | None, stacklevel: int) -> tuple[float, float]:  # fmt: skip
    counts = _counts(teacher_preds, num_classes)
    idx = _array(indices)
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer) and idx.size:
        raise ValueError(f"indices must be a 1-d array of query positions, got {idx!r:.60}")
    if idx.size == 0:
        raise ValueError("indices is empty: pass the positions of the answered queries")
    if idx.min() < 0 or idx.max() >= len(counts):
        raise ValueError(
            f"indices must be query positions in 0..{len(counts) - 1} (teacher_preds has "
            f"{len(counts)} queries), got {idx.min()}..{idx.max()}"
        )
    r = lnmax_analysis(counts[idx], gamma=noise_eps, delta=delta, moments=moments, beta=beta)
    if r.moment == moments and moments > 1:
        warnings.warn(
            f"the smallest epsilon is at the last moment ({moments}): increase 'moments' "
            "and run again for a tighter bound",
            stacklevel=stacklevel,
        )
    return r.data_dependent_epsilon, r.data_independent_epsilon


def perform_analysis_torch(preds: Any = None, indices: Any = None, noise_eps: float = 0.1,
                           delta: float = 1e-5, moments: int = 8, beta: float = 0.09, *,
                           teacher_preds: Any = None) -> tuple[float, float]:  # fmt: skip
    """:func:`perform_analysis` for torch tensors (PySyft 0.2's torch spelling; its own
    tests called it with ``teacher_preds=``, which works too). Returns floats.

    Example:
        >>> preds = torch.arange(100).remainder(10).reshape(100, 1).repeat(1, 100)
        >>> dep, ind = perform_analysis_torch(preds, torch.arange(100), noise_eps=0.1)
        >>> round(ind, 3)
        11.756
    """
    if (preds is None) == (teacher_preds is None):
        raise TypeError("pass the teacher predictions once: preds=... (or teacher_preds=...)")
    if indices is None:
        raise TypeError("perform_analysis_torch needs indices (the answered query positions)")
    chosen = preds if preds is not None else teacher_preds
    return _perform(chosen, indices, noise_eps, delta, moments, beta, None, 3)
