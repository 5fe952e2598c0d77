"""Robust aggregation against faulty or malicious clients: coordinate-wise median, trimmed mean, Krum.

They ignore the number of examples (a client could lie about it) and treat each client's
parameters as one vector.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from veil.fl.strategies.base import FitRes, Parameters
from veil.fl.strategies.fedavg import FedAvg


def _stack(results: Sequence[FitRes]) -> tuple[torch.Tensor, list[torch.Size], list[Any]]:
    if not results:
        raise ValueError("no client results to aggregate")
    first = results[0].parameters
    flat = torch.stack([torch.cat([p.detach().double().flatten() for p in r.parameters])
                        for r in results])  # fmt: skip
    return flat, [p.shape for p in first], [p.dtype for p in first]


def _unflatten(vector: torch.Tensor, shapes: list[torch.Size], dtypes: list[Any]) -> Parameters:
    out, i = [], 0
    for shape, dtype in zip(shapes, dtypes):
        n = shape.numel()
        out.append(vector[i : i + n].reshape(shape).to(dtype))
        i += n
    return out


class FedMedian(FedAvg):
    """The coordinate-wise median of the clients' parameters (Yin et al. 2018).

    Example:
        >>> import torch
        >>> res = [FitRes([torch.tensor([v])], 1) for v in (1.0, 2.0, 100.0)]
        >>> FedMedian().aggregate_fit(1, res, [])[0]
        tensor([2.])
    """

    def aggregate_fit(self, server_round: int, results: Sequence[FitRes],
                      failures: Sequence[BaseException]) -> Parameters:  # fmt: skip
        flat, shapes, dtypes = _stack(results)
        n = flat.shape[0]
        ordered = flat.sort(dim=0).values  # the mean of the middle two for an even count
        med = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
        return _unflatten(med, shapes, dtypes)


class FedTrimmedAvg(FedAvg):
    """The coordinate-wise mean after dropping the ``beta`` fraction of largest and of
    smallest values (Yin et al. 2018).

    Example:
        >>> import torch
        >>> res = [FitRes([torch.tensor([v])], 1) for v in (-50.0, 1.0, 2.0, 3.0, 90.0)]
        >>> FedTrimmedAvg(beta=0.2).aggregate_fit(1, res, [])[0]
        tensor([2.])
    """

    def __init__(self, *, beta: float = 0.2, **kwargs: Any) -> None:
        if not 0 <= beta < 0.5:
            raise ValueError(f"beta must be in [0, 0.5), got {beta}; 0.1 drops a tenth each side")
        super().__init__(**kwargs)
        self.beta = float(beta)

    def aggregate_fit(self, server_round: int, results: Sequence[FitRes],
                      failures: Sequence[BaseException]) -> Parameters:  # fmt: skip
        flat, shapes, dtypes = _stack(results)
        k = int(self.beta * flat.shape[0])
        kept = flat.sort(dim=0).values[k : flat.shape[0] - k]
        return _unflatten(kept.mean(0), shapes, dtypes)


class Krum(FedAvg):
    """Krum (Blanchard et al. 2017): the client whose parameters are closest (sum of squared
    distances to its ``n - f - 2`` nearest others) to the rest; with ``multi=m``, the mean of
    the ``m`` best (Multi-Krum). ``f``: the number of faulty clients tolerated.

    Example:
        >>> import torch
        >>> res = [FitRes([torch.tensor([v])], 1) for v in (1.0, 1.1, 0.9, 1.05, 50.0)]
        >>> Krum(f=1).aggregate_fit(1, res, [])[0]
        tensor([1.0500])
    """

    def __init__(self, *, f: int = 0, multi: int = 1, **kwargs: Any) -> None:
        if f < 0 or multi < 1:
            raise ValueError(f"f must be >= 0 and multi >= 1, got f={f}, multi={multi}")
        super().__init__(**kwargs)
        self.f, self.multi = int(f), int(multi)

    def aggregate_fit(self, server_round: int, results: Sequence[FitRes],
                      failures: Sequence[BaseException]) -> Parameters:  # fmt: skip
        flat, shapes, dtypes = _stack(results)
        n = flat.shape[0]
        near = n - self.f - 2
        if near < 1:
            raise ValueError(f"Krum needs more than f + 2 = {self.f + 2} clients, got {n}")
        dist = torch.cdist(flat, flat) ** 2
        scores = dist.sort(dim=1).values[:, 1 : near + 1].sum(1)  # without itself
        best = scores.argsort()[: min(self.multi, n)]
        return _unflatten(flat[best].mean(0), shapes, dtypes)
