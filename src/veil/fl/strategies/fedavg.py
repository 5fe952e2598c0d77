"""FedAvg (McMahan et al. 2017) with client sampling, and FedProx (Li et al. 2020)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from veil.fl.strategies.base import (
    Evaluate,
    FitIns,
    FitRes,
    Parameters,
    Strategy,
    check_fraction,
    weighted_mean,
)


class FedAvg(Strategy):
    """Federated averaging: sample clients, average their parameters weighted by examples.

    Args:
        fraction_fit: share of the available clients sampled to train each round.
        min_fit_clients: train at least this many (if available).
        min_available_clients: refuse a round with fewer clients available.
        fraction_evaluate / min_evaluate_clients: the same for client evaluation.
        evaluate_fn: ``(round, parameters) -> (loss, metrics)``, a central evaluation.
        config: what each client is told (epochs, batch size, learning rate...).
        seed: the sampling generator's seed (rounds are reproducible).

    Example:
        >>> s = FedAvg(fraction_fit=0.5, min_fit_clients=2, seed=0)
        >>> len(s.configure_fit(1, [], list(range(10))))
        5
    """

    def __init__(self, *, fraction_fit: float = 1.0, min_fit_clients: int = 2,
                 min_available_clients: int = 2, fraction_evaluate: float = 0.0,
                 min_evaluate_clients: int = 0, evaluate_fn: Evaluate | None = None,
                 config: dict[str, Any] | None = None, seed: int = 0) -> None:  # fmt: skip
        self.fraction_fit = check_fraction("fraction_fit", fraction_fit)
        self.fraction_evaluate = float(fraction_evaluate)
        if not 0 <= self.fraction_evaluate <= 1:
            raise ValueError(f"fraction_evaluate must be in [0, 1], got {fraction_evaluate}")
        if min_fit_clients < 1 or min_available_clients < 1:
            raise ValueError("min_fit_clients and min_available_clients must be at least 1")
        self.min_fit_clients = int(min_fit_clients)
        self.min_available_clients = int(min_available_clients)
        self.min_evaluate_clients = int(min_evaluate_clients)
        self.evaluate_fn = evaluate_fn
        self.config = dict(config or {})
        self._gen = torch.Generator().manual_seed(int(seed))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(fraction_fit={self.fraction_fit}, "
                f"min_fit_clients={self.min_fit_clients})")  # fmt: skip

    def sample(self, clients: Sequence[Any], fraction: float, minimum: int) -> list[Any]:
        """A seeded sample of ``fraction`` of ``clients`` (at least ``minimum``)."""
        if len(clients) < self.min_available_clients:
            raise ValueError(
                f"{len(clients)} clients are available, the strategy needs at least "
                f"{self.min_available_clients} (min_available_clients)"
            )
        k = min(len(clients), max(minimum, math.ceil(fraction * len(clients))))
        order = torch.randperm(len(clients), generator=self._gen)[:k].tolist()
        return [clients[i] for i in sorted(order)]

    def fit_config(self, server_round: int) -> dict[str, Any]:
        """What the clients are told this round."""
        return {**self.config, "server_round": server_round}

    def configure_fit(self, server_round: int, parameters: Parameters,
                      clients: Sequence[Any]) -> list[tuple[Any, FitIns]]:  # fmt: skip
        chosen = self.sample(clients, self.fraction_fit, self.min_fit_clients)
        ins = FitIns(parameters, self.fit_config(server_round))
        return [(c, ins) for c in chosen]

    def configure_evaluate(self, server_round: int, parameters: Parameters,
                           clients: Sequence[Any]) -> list[tuple[Any, FitIns]]:  # fmt: skip
        if self.fraction_evaluate == 0:
            return []
        chosen = self.sample(clients, self.fraction_evaluate, self.min_evaluate_clients)
        ins = FitIns(parameters, self.fit_config(server_round))
        return [(c, ins) for c in chosen]

    def aggregate_fit(self, server_round: int, results: Sequence[FitRes],
                      failures: Sequence[BaseException]) -> Parameters:  # fmt: skip
        return weighted_mean(results)

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, float]] | None:  # fmt: skip
        return None if self.evaluate_fn is None else self.evaluate_fn(server_round, parameters)


class FedProx(FedAvg):
    """FedAvg whose clients add ``proximal_mu / 2 * ||w - w_global||^2`` to their loss
    (the client reads ``proximal_mu`` from its config; see :func:`proximal_term`).

    Example:
        >>> FedProx(proximal_mu=0.1).fit_config(3)["proximal_mu"]
        0.1
    """

    def __init__(self, *, proximal_mu: float, **kwargs: Any) -> None:
        if proximal_mu < 0:
            raise ValueError(f"proximal_mu must be >= 0, got {proximal_mu}; try 0.001 to 1")
        super().__init__(**kwargs)
        self.proximal_mu = float(proximal_mu)

    def fit_config(self, server_round: int) -> dict[str, Any]:
        return {**super().fit_config(server_round), "proximal_mu": self.proximal_mu}


def proximal_term(params: Sequence[torch.Tensor], global_params: Sequence[torch.Tensor],
                  mu: float) -> torch.Tensor:  # fmt: skip
    """FedProx's ``mu / 2 * sum ||w - w_global||^2`` (add it to a client's loss).

    Example:
        >>> import torch
        >>> proximal_term([torch.tensor([3.0])], [torch.tensor([1.0])], 0.5)
        tensor(1.)
    """
    total = sum(((p - g.detach()) ** 2).sum() for p, g in zip(params, global_params))
    return torch.as_tensor(total) * (mu / 2)
